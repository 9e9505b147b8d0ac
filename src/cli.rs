//! The command line: parse arguments, set up logging and progress, call the library,
//! and turn the outcome into the exit codes of the product contract. Results go to
//! stdout; logs and progress bars to stderr.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::Span;
use tracing_indicatif::span_ext::IndicatifSpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::db::{Database, RowDiff};
use crate::engine::{self, Observer, Phase, RunOptions, Session, State};
use crate::error::{Error, Result};
use crate::plan::{self, Plan};
use crate::with_backend;

#[derive(Debug, Parser)]
#[command(name = "turnout", version, about = "Change the shape of a live table without downtime", long_about = None)]
pub struct Cli {
    /// postgres://…, mysql://… or sqlite://… (the password is never printed)
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,

    /// More logs (-v info, -vv debug); RUST_LOG overrides
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the plan; with a database, also preflight it against the live table
    Check { plan: PathBuf },
    /// Print the SQL of every phase; change nothing
    Plan { plan: PathBuf },
    /// Run from the current phase onward
    Run {
        plan: PathBuf,
        /// Stop once the migration reaches this phase (prepared, dual_writing, backfilled, verified, cut_over, done)
        #[arg(long)]
        until: Option<String>,
        /// Do not ask for confirmation (required when stdin is not a terminal)
        #[arg(long)]
        yes: bool,
    },
    /// Run exactly one phase
    Step {
        plan: PathBuf,
        #[arg(long)]
        yes: bool,
    },
    /// Alias of run, for after an interruption
    Resume {
        plan: PathBuf,
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        yes: bool,
    },
    /// Compare the live table with its shadow, any time between backfill and cutover
    Verify { plan: PathBuf },
    /// Put the table back as it was, from any phase before done
    Rollback {
        plan: PathBuf,
        /// Roll back after cutover even though some columns cannot be restored
        #[arg(long)]
        accept_loss: bool,
    },
    /// Phase, progress, rates, ETA and last checkpoint; every migration without PLAN
    Status {
        plan: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// The whole story on an embedded SQLite database
    Demo {
        /// The demo database file
        #[arg(long, default_value = "turnout-demo.db")]
        file: PathBuf,
        /// Rows in the demo table
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
    },
    /// Print the JSON Schema of plan files
    Schema,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let bars = std::io::stderr().is_terminal();
    init_logging(cli.verbose, bars);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("turnout: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let cancel = CancellationToken::new();
    let on_ctrl_c = cancel.clone();
    runtime.spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!(
                "\nturnout: stopping after the batch in hand (Ctrl-C again to abort at once)"
            );
            on_ctrl_c.cancel();
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });
    let result = runtime.block_on(execute(cli, cancel, bars));
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("turnout: {e}");
            if let Error::Plan(problems) = &e {
                for p in problems {
                    show_in_source(p);
                }
            }
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
        }
    }
}

/// The plan's line under a problem, with the key underlined (miette's rendering).
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("{key}")]
struct InSource {
    key: String,
    #[source_code]
    src: miette::NamedSource<String>,
    #[label("{message}")]
    at: miette::SourceSpan,
    message: String,
}

fn show_in_source(p: &crate::error::PlanProblem) {
    let (Some(loc), Ok(text)) = (&p.location, std::fs::read_to_string(&p.file)) else {
        return;
    };
    let offset: usize = text
        .lines()
        .take(loc.line.saturating_sub(1))
        .map(|l| l.len() + 1)
        .sum::<usize>()
        + loc.column.saturating_sub(1);
    if offset > text.len() {
        return;
    }
    let len = text[offset..]
        .find([':', '\n', ',', '}'])
        .unwrap_or(0)
        .max(1);
    let report = miette::Report::new(InSource {
        key: if p.key.is_empty() {
            "here".into()
        } else {
            p.key.clone()
        },
        src: miette::NamedSource::new(&p.file, text.clone()),
        at: (offset, len).into(),
        message: p.message.clone(),
    });
    eprintln!("{report:?}");
}

fn init_logging(verbose: u8, bars: bool) {
    let default = match verbose {
        0 => "warn",
        1 => "turnout=info",
        _ => "turnout=debug,info",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    if bars {
        let indicatif = tracing_indicatif::IndicatifLayer::new();
        let fmt = tracing_subscriber::fmt::layer()
            .with_writer(indicatif.get_stderr_writer())
            .with_target(false);
        let _ = tracing_subscriber::registry()
            .with(fmt.with_filter(filter))
            .with(indicatif.with_filter(tracing_indicatif::filter::IndicatifFilter::new(false)))
            .try_init();
    } else {
        let fmt = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_target(false);
        let _ = tracing_subscriber::registry()
            .with(fmt.with_filter(filter))
            .try_init();
    }
}

fn database_url(cli_url: &Option<String>) -> Result<&str> {
    cli_url.as_deref().ok_or_else(|| {
        Error::Usage("no database: pass --database-url URL or set DATABASE_URL (postgres://…, mysql://…, sqlite://…)".into())
    })
}

fn parse_until(until: &Option<String>) -> Result<Option<Phase>> {
    match until {
        None => Ok(None),
        Some(u) => Phase::parse(u).filter(|p| *p <= Phase::Done && *p != Phase::Planned).map(Some).ok_or_else(|| {
            Error::Usage(format!(
                "--until {u:?}: expected one of prepared, dual_writing, backfilled, verified, cut_over, done"
            ))
        }),
    }
}

/// Asks before touching the database, unless `--yes`; refuses when nobody can answer.
fn confirm(plan: &Plan, yes: bool) -> Result<()> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(Error::Usage(format!(
            "stdin is not a terminal, so turnout cannot ask before changing {:?}; pass --yes to run without asking",
            plan.file.table
        )));
    }
    eprint!(
        "Run migration {:?} on table {:?}? [y/N] ",
        plan.file.name, plan.file.table
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

async fn execute(cli: Cli, cancel: CancellationToken, bars: bool) -> Result<u8> {
    let observer = Progress::new(bars);
    match &cli.command {
        Command::Schema => {
            println!("{}", plan::json_schema());
            Ok(0)
        }
        Command::Demo { file, rows } => {
            crate::demo::run(file, *rows, cancel, bars).await.map(|_| 0)
        }
        Command::Check { plan: path } => {
            let plan = plan::load(path)?;
            let Some(url) = cli.database_url.as_deref() else {
                println!(
                    "{}: valid plan {:?} ({} changes); pass --database-url to preflight it against the table",
                    plan.path,
                    plan.file.name,
                    plan.file.changes.len()
                );
                return Ok(0);
            };
            let db = Database::connect(url).await?;
            let m = with_backend!(&db, b => engine::check(b, &plan).await)?;
            println!(
                "{}: plan {:?} can be applied to {:?}: {} columns → {} columns, {} indexes, key ({}){}",
                plan.path,
                plan.file.name,
                m.table,
                m.before.columns.len(),
                m.after.columns.len(),
                m.after.indexes.len(),
                m.new_key().join(", "),
                if m.lossy.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; rollback after cutover cannot restore: {}",
                        m.lossy.join(", ")
                    )
                }
            );
            Ok(0)
        }
        Command::Plan { plan: path } => {
            let plan = plan::load(path)?;
            let db = Database::connect(database_url(&cli.database_url)?).await?;
            let phases = with_backend!(&db, b => engine::preview(b, &plan).await)?;
            for phase in phases {
                println!("-- {}", phase.phase);
                for stmt in phase.statements {
                    println!("{stmt};");
                }
                println!();
            }
            Ok(0)
        }
        Command::Run {
            plan: path,
            until,
            yes,
        }
        | Command::Resume {
            plan: path,
            until,
            yes,
        } => {
            let plan = plan::load(path)?;
            let until = parse_until(until)?;
            let db = Database::connect(database_url(&cli.database_url)?).await?;
            confirm(&plan, *yes)?;
            let s = Session {
                plan: &plan,
                cancel,
                observer: &observer,
            };
            let st = with_backend!(&db, b => engine::run(b, &s, &RunOptions { until, single_step: false }).await)?;
            report_where(&st, &plan);
            Ok(0)
        }
        Command::Step { plan: path, yes } => {
            let plan = plan::load(path)?;
            let db = Database::connect(database_url(&cli.database_url)?).await?;
            confirm(&plan, *yes)?;
            let s = Session {
                plan: &plan,
                cancel,
                observer: &observer,
            };
            let st = with_backend!(&db, b => engine::run(b, &s, &RunOptions { until: None, single_step: true }).await)?;
            report_where(&st, &plan);
            Ok(0)
        }
        Command::Verify { plan: path } => {
            let plan = plan::load(path)?;
            let db = Database::connect(database_url(&cli.database_url)?).await?;
            let s = Session {
                plan: &plan,
                cancel,
                observer: &observer,
            };
            let report = with_backend!(&db, b => engine::verify_only(b, &s).await)?;
            println!(
                "{} rows identical in {} chunks{}",
                report.rows,
                report.chunks,
                if report.chunks_skipped > 0 {
                    format!(" ({} chunks sampled out)", report.chunks_skipped)
                } else {
                    String::new()
                }
            );
            Ok(0)
        }
        Command::Rollback {
            plan: path,
            accept_loss,
        } => {
            let plan = plan::load(path)?;
            let db = Database::connect(database_url(&cli.database_url)?).await?;
            let s = Session {
                plan: &plan,
                cancel,
                observer: &observer,
            };
            let st = with_backend!(&db, b => engine::rollback(b, &s, *accept_loss).await)?;
            println!(
                "{}",
                st.events
                    .last()
                    .map(|e| e.message.as_str())
                    .unwrap_or("rolled back")
            );
            Ok(0)
        }
        Command::Status { plan: path, json } => {
            let name = match path {
                Some(p) => Some(plan::load(p)?.file.name),
                None => None,
            };
            let db = Database::connect(database_url(&cli.database_url)?).await?;
            let states = with_backend!(&db, b => engine::status(b, name.as_deref()).await)?;
            if *json {
                let out: Vec<_> = states
                    .iter()
                    .map(|e| status_json(&e.state, &e.failures))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
            } else if states.is_empty() {
                println!(
                    "no migrations{}",
                    name.map(|n| format!(" named {n:?}")).unwrap_or_default()
                );
            } else {
                for e in &states {
                    println!("{}", status_text(&e.state, &e.failures));
                }
            }
            Ok(0)
        }
    }
}

fn report_where(st: &State, plan: &Plan) {
    match st.phase.next_step() {
        None => println!("migration {:?} is {}", st.name, st.phase),
        Some(next) => println!(
            "migration {:?} is {}; next: {next} (`turnout run {}` to go on, `turnout rollback {}` to undo)",
            st.name, st.phase, plan.path, plan.path
        ),
    }
}

fn rate_and_eta(st: &State) -> (Option<f64>, Option<Duration>) {
    let b = &st.backfill;
    let (Some(start), end) = (b.started_at, b.finished_at.unwrap_or(st.updated_at)) else {
        return (None, None);
    };
    let secs = (end - start).num_milliseconds() as f64 / 1000.0;
    if secs <= 0.0 || b.rows_copied == 0 {
        return (None, None);
    }
    let rate = b.rows_copied as f64 / secs;
    let left = b.estimated_rows.saturating_sub(b.rows_copied) as f64;
    let eta = (st.phase == Phase::DualWriting).then(|| Duration::from_secs_f64(left / rate));
    (Some(rate), eta)
}

fn status_text(st: &State, failures: &[String]) -> String {
    let (rate, eta) = rate_and_eta(st);
    let mut out = format!("{}: {}", st.name, st.phase);
    if let Some(m) = &st.migration {
        out.push_str(&format!(" (table {:?})", m.table));
    }
    if st.backfill.started_at.is_some() {
        out.push_str(&format!(
            "\n  backfill: {} of ~{} rows in {} batches",
            st.backfill.rows_copied, st.backfill.estimated_rows, st.backfill.batches
        ));
        if let Some(r) = rate {
            out.push_str(&format!(", {r:.0} rows/s"));
        }
        if let Some(e) = eta {
            out.push_str(&format!(
                ", ETA {}",
                humantime::format_duration(Duration::from_secs(e.as_secs()))
            ));
        }
    }
    if let Some(passed) = st.verify.passed {
        out.push_str(&format!(
            "\n  verify: {} ({} rows, {} mismatches)",
            if passed { "passed" } else { "FAILED" },
            st.verify.rows_checked,
            st.verify.mismatches
        ));
    }
    if !failures.is_empty() {
        out.push_str(&format!(
            "\n  {} application writes the triggers could not map (cutover is refused until the plan is fixed): {}",
            failures.len(),
            failures.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
        ));
    }
    out.push_str(&format!(
        "\n  last checkpoint: {}",
        st.updated_at.to_rfc3339()
    ));
    if let Some(e) = st.events.last() {
        out.push_str(&format!(
            "\n  last event: {} — {}",
            e.at.to_rfc3339(),
            e.message
        ));
    }
    out
}

fn status_json(st: &State, failures: &[String]) -> serde_json::Value {
    let (rate, eta) = rate_and_eta(st);
    serde_json::json!({
        "name": st.name,
        "phase": st.phase,
        "table": st.migration.as_ref().map(|m| m.table.clone()),
        "plan_hash": st.plan_hash,
        "backfill": {
            "rows_copied": st.backfill.rows_copied,
            "rows_estimated": st.backfill.estimated_rows,
            "batches": st.backfill.batches,
            "batch_size": st.backfill.batch_size,
            "rows_per_second": rate,
            "eta_seconds": eta.map(|e| e.as_secs()),
        },
        "verify": st.verify,
        "cutover_attempts": st.cutover_attempts,
        "trigger_failures": failures,
        "last_checkpoint": st.updated_at,
        "events": st.events,
    })
}

/// Progress bars on stderr (when it is a terminal) and one result line per phase on stdout.
pub struct Progress {
    bars: bool,
    span: Mutex<Option<Span>>,
}

impl Progress {
    pub fn new(bars: bool) -> Progress {
        Progress {
            bars,
            span: Mutex::new(None),
        }
    }

    fn with_span(&self, f: impl FnOnce(&Span)) {
        if let Ok(guard) = self.span.lock()
            && let Some(span) = guard.as_ref()
        {
            f(span);
        }
    }
}

impl Observer for Progress {
    fn phase_started(&self, phase: &str) {
        if !self.bars || !matches!(phase, "backfill" | "verify") {
            return;
        }
        let span = tracing::info_span!("progress", indicatif.pb_show = tracing::field::Empty);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg:>9} [{bar:30}] {human_pos}/{human_len} rows  {per_sec}  ETA {eta}",
        ) {
            span.pb_set_style(&style.progress_chars("=> "));
        }
        span.pb_set_message(phase);
        span.pb_start();
        if let Ok(mut guard) = self.span.lock() {
            *guard = Some(span);
        }
    }

    fn phase_finished(&self, phase: &str, took: Duration, summary: &str) {
        if let Ok(mut guard) = self.span.lock() {
            guard.take();
        }
        println!("{phase:>10}  {:>8.2?}  {summary}", took);
    }

    fn backfill_progress(&self, done: u64, total: u64) {
        self.with_span(|s| {
            s.pb_set_length(total);
            s.pb_set_position(done);
        });
    }

    fn verify_progress(&self, done: u64, total: u64) {
        self.backfill_progress(done, total);
    }

    fn diff(&self, _diff: &RowDiff, rendered: &str) {
        println!("{rendered}");
    }
}
