//! The commands given a directory of plans (`check`, `plan`, `run`/`resume`, `status`):
//! each loads the directory, asks the engine, and renders what it answers — the history
//! as a table for a person or an array with `--json`.

use std::io::{IsTerminal, Write};
use std::path::Path;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::db::Database;
use crate::engine::dir::{self as history, Allow, DirObserver, DirSession, Entry};
use crate::engine::{Observer, Phase, State};
use crate::error::{Error, Result};
use crate::plan::dir::{DirPlan, PlanDir, load_dir};
use crate::with_backend;

/// What a directory run may do that it refuses by default.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct DirFlags {
    /// With a directory: also run a plan that sorts before one already run
    #[arg(long)]
    pub allow_out_of_order: bool,
    /// With a directory: take a done plan whose file changed since as done, and skip it
    #[arg(long)]
    pub allow_edited: bool,
}

impl DirFlags {
    fn allow(self) -> Allow {
        Allow {
            out_of_order: self.allow_out_of_order,
            edited: self.allow_edited,
        }
    }

    /// The flags mean nothing for one plan file: say so rather than ignore them.
    pub(super) fn only_for_directories(self, path: &Path) -> Result<()> {
        if self.allow_out_of_order || self.allow_edited {
            return Err(Error::Usage(format!(
                "--allow-out-of-order and --allow-edited apply to a directory of plans; {} is one plan file",
                path.display()
            )));
        }
        Ok(())
    }
}

/// `turnout check DIR`.
pub(super) async fn check(url: Option<&str>, path: &Path, flags: DirFlags) -> Result<u8> {
    let dir = load_dir(path)?;
    let Some(url) = url else {
        println!(
            "{}: {} valid plans, in this order: {}; pass --database-url to preflight them against the tables",
            dir.path,
            dir.plans.len(),
            dir.plans
                .iter()
                .map(|p| format!("{} ({:?})", p.file, p.plan.file.name))
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Ok(0);
    };
    let db = Database::connect(url).await?;
    let (entries, checked) =
        with_backend!(&db, b => history::check_dir(b, &dir, flags.allow()).await)?;
    for e in entries.iter().filter(|e| e.done()) {
        println!(
            "{}: migration {:?} is done; skipped",
            dir.plans[e.index].file, dir.plans[e.index].plan.file.name
        );
    }
    for c in &checked {
        let p = &dir.plans[c.index];
        let m = &c.migration;
        let against = match c.after {
            None => String::new(),
            Some(k) => format!(
                " (checked against the shape {} leaves; its expressions are compiled when it runs)",
                dir.plans[k].file
            ),
        };
        println!(
            "{}: plan {:?} can be applied to {:?}: {} columns → {} columns, {} indexes, key ({}){against}",
            p.file,
            p.plan.file.name,
            m.table,
            m.before.columns.len(),
            m.after.columns.len(),
            m.after.indexes.len(),
            m.new_key().join(", "),
        );
    }
    if checked.is_empty() {
        println!("{}: every plan is done", dir.path);
    }
    Ok(0)
}

/// `turnout plan DIR`.
pub(super) async fn plan(url: &str, path: &Path, flags: DirFlags) -> Result<u8> {
    let dir = load_dir(path)?;
    let db = Database::connect(url).await?;
    let previews = with_backend!(&db, b => history::preview_dir(b, &dir, flags.allow()).await)?;
    if previews.is_empty() {
        println!("-- {}: every plan is done; nothing to run", dir.path);
    }
    for (c, phases) in previews {
        let p = &dir.plans[c.index];
        println!(
            "-- ===== {}: migration {:?} on {:?}",
            p.file, p.plan.file.name, p.plan.file.table
        );
        for phase in phases {
            println!("-- {}", phase.phase);
            for stmt in phase.statements {
                println!("{stmt};");
            }
            println!();
        }
    }
    Ok(0)
}

/// Prints each plan as the run reaches it and leaves it.
struct Announce<'a> {
    dir: &'a PlanDir,
}

impl DirObserver for Announce<'_> {
    fn plan_starting(&self, p: &DirPlan, saved: Option<&State>) {
        let from = match saved.map(|s| s.phase) {
            None => "starting".to_string(),
            Some(Phase::RolledBack) => "starting again after a rollback".into(),
            Some(phase) => format!("resuming from {phase}"),
        };
        println!(
            "{}: migration {:?} on {:?}: {from}",
            p.file, p.plan.file.name, p.plan.file.table
        );
    }

    fn plan_finished(&self, p: &DirPlan, st: &State) {
        match st.phase.next_step() {
            None => println!("{}: migration {:?} is {}", p.file, st.name, st.phase),
            Some(next) => println!(
                "{}: migration {:?} is {}; next: {next} (`turnout run {}` to go on, `turnout rollback {}` to undo it)",
                p.file, st.name, st.phase, self.dir.path, p.plan.path
            ),
        }
    }
}

/// `turnout run DIR` and `turnout resume DIR`.
pub(super) async fn run(
    url: &str,
    path: &Path,
    until: Option<Phase>,
    yes: bool,
    flags: DirFlags,
    cancel: CancellationToken,
    observer: &dyn Observer,
) -> Result<u8> {
    let dir = load_dir(path)?;
    let db = Database::connect(url).await?;
    let entries = with_backend!(&db, b => history::history(b, &dir).await)?;
    let order = history::schedule(&dir, &entries, flags.allow())?;
    let done = entries.iter().filter(|e| e.done()).count();
    if order.is_empty() {
        println!(
            "nothing to run: all {} plans of {} are done",
            dir.plans.len(),
            dir.path
        );
        return Ok(0);
    }
    let names: Vec<String> = order
        .iter()
        .map(|&i| format!("{} ({:?})", dir.plans[i].file, dir.plans[i].plan.file.name))
        .collect();
    println!(
        "{}: {done} of {} plans done; to run, in order: {}",
        dir.path,
        dir.plans.len(),
        names.join(", ")
    );
    confirm(&dir, &order, yes)?;
    let s = DirSession {
        dir: &dir,
        cancel,
        observer,
        announce: &Announce { dir: &dir },
    };
    let ran = with_backend!(&db, b => history::run_dir(b, &s, flags.allow(), until).await)?;
    let all_done = ran.len() == order.len() && ran.iter().all(|st| st.phase == Phase::Done);
    if all_done {
        println!("all {} plans of {} are done", dir.plans.len(), dir.path);
    }
    Ok(0)
}

/// Asks once for the whole directory, unless `--yes`; refuses when nobody can answer.
fn confirm(dir: &PlanDir, order: &[usize], yes: bool) -> Result<()> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(Error::Usage(format!(
            "stdin is not a terminal, so turnout cannot ask before running the plans of {}; pass --yes to run without asking",
            dir.path
        )));
    }
    eprint!(
        "Run {} migrations of {} in this order? [y/N] ",
        order.len(),
        dir.path
    );
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().read_line(&mut answer);
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(Error::Usage("not confirmed; nothing was changed".into()))
    }
}

/// `turnout status DIR`.
pub(super) async fn status(url: &str, path: &Path, json: bool) -> Result<u8> {
    let dir = load_dir(path)?;
    let db = Database::connect(url).await?;
    let entries = with_backend!(&db, b => history::history(b, &dir).await)?;
    if json {
        let out: Vec<_> = entries.iter().map(|e| entry_json(&dir, e)).collect();
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        print!("{}", table(&dir, &entries));
    }
    Ok(0)
}

/// When it finished: the last change of a migration that reached an end.
fn finished_at(st: &State) -> Option<DateTime<Utc>> {
    matches!(st.phase, Phase::Done | Phase::RolledBack).then_some(st.updated_at)
}

fn phase_of(e: &Entry) -> String {
    e.state
        .as_ref()
        .map_or("pending".to_string(), |s| s.phase.to_string())
}

/// Short words for the table; the full reason is in `run`'s refusal.
fn note(e: &Entry) -> &'static str {
    match &e.problem {
        Some(history::Problem::Edited { .. }) => "file changed since it ran",
        Some(history::Problem::Changed { .. }) => "file changed since it started",
        Some(history::Problem::Gap { .. }) => "pending, sorted before a plan that ran",
        Some(history::Problem::RollingBack) => "rollback interrupted",
        None if e.done() => "",
        None if e
            .state
            .as_ref()
            .is_some_and(|s| s.phase == Phase::RolledBack) =>
        {
            "pending (rolled back)"
        }
        None if e.state.is_some() => "pending (in progress)",
        None => "",
    }
}

fn entry_json(dir: &PlanDir, e: &Entry) -> serde_json::Value {
    let p = &dir.plans[e.index];
    serde_json::json!({
        "file": p.file,
        "path": p.plan.path,
        "name": p.plan.file.name,
        "table": p.plan.file.table,
        "phase": phase_of(e),
        "pending": !e.done(),
        "started_at": e.state.as_ref().map(|s| s.created_at),
        "finished_at": e.state.as_ref().and_then(finished_at),
        "problem": history::explain(dir, e),
    })
}

fn when(t: Option<DateTime<Utc>>) -> String {
    t.map_or("-".into(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
}

/// The history as aligned columns, times in UTC.
fn table(dir: &PlanDir, entries: &[Entry]) -> String {
    let mut rows = vec![[
        "FILE".to_string(),
        "MIGRATION".into(),
        "PHASE".into(),
        "STARTED (UTC)".into(),
        "FINISHED (UTC)".into(),
        "NOTE".into(),
    ]];
    for e in entries {
        let p = &dir.plans[e.index];
        rows.push([
            p.file.clone(),
            p.plan.file.name.clone(),
            phase_of(e),
            when(e.state.as_ref().map(|s| s.created_at)),
            when(e.state.as_ref().and_then(finished_at)),
            note(e).to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
