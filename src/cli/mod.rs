//! The command line: parse arguments, set up logging and progress, call the library,
//! and turn the outcome into the exit codes of the product contract. Results go to
//! stdout; logs and progress bars to stderr.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::db::Database;
use crate::engine::{self, Phase, RunOptions, Session, State};
use crate::error::{Error, Result};
use crate::plan::{self, Plan};
use crate::progress::Progress;
use crate::with_backend;

mod confirm;
mod control;
mod dir;
mod logging;
mod plan_source;
mod status;

use confirm::confirm;
use dir::DirFlags;
use logging::init_logging;
use plan_source::show_in_source;
use status::{status_json, status_text};

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
    /// Validate the plan (or directory of plans); with a database, also preflight it against the live table
    Check {
        /// The plan file (YAML), or a directory of plan files
        plan: PathBuf,
        #[command(flatten)]
        dir: DirFlags,
    },
    /// Print the SQL of every phase; change nothing
    Plan {
        /// The plan file (YAML), or a directory of plan files
        plan: PathBuf,
        #[command(flatten)]
        dir: DirFlags,
    },
    /// Run from the current phase onward; with a directory, each plan not done in file-name order
    Run {
        /// The plan file (YAML), or a directory of plan files
        plan: PathBuf,
        /// Stop once the migration reaches this phase (prepared, dual_writing, backfilled, verified, cut_over, done)
        #[arg(long)]
        until: Option<String>,
        /// Do not ask for confirmation (required when stdin is not a terminal)
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        dir: DirFlags,
    },
    /// Run exactly one phase
    Step {
        /// The plan file (YAML)
        plan: PathBuf,
        /// Do not ask for confirmation (required when stdin is not a terminal)
        #[arg(long)]
        yes: bool,
    },
    /// Alias of run, for after an interruption
    Resume {
        /// The plan file (YAML), or a directory of plan files
        plan: PathBuf,
        /// Stop once the migration reaches this phase (prepared, dual_writing, backfilled, verified, cut_over, done)
        #[arg(long)]
        until: Option<String>,
        /// Do not ask for confirmation (required when stdin is not a terminal)
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        dir: DirFlags,
    },
    /// Compare the live table with its shadow, any time between backfill and cutover
    Verify {
        /// The plan file (YAML)
        plan: PathBuf,
    },
    /// Put the table back as it was, from any phase before done
    Rollback {
        /// The plan file (YAML)
        plan: PathBuf,
        /// Roll back after cutover even though some columns cannot be restored
        #[arg(long)]
        accept_loss: bool,
        /// Do not ask for confirmation (required when stdin is not a terminal)
        #[arg(long)]
        yes: bool,
    },
    /// Phase, progress, rates, ETA and last checkpoint; with DIR its history; every migration without either
    Status {
        /// Show only this plan's migration, or a directory's history
        plan: Option<PathBuf>,
        /// Print JSON (one object per migration) instead of text
        #[arg(long)]
        json: bool,
    },
    /// Ask the running migration (on any machine) to stop after the batch in hand and wait
    Pause {
        /// The plan file (YAML) of the running migration
        plan: PathBuf,
    },
    /// Let a paused migration carry on
    Unpause {
        /// The plan file (YAML) of the paused migration
        plan: PathBuf,
    },
    /// Change the backfill's settings from the next batch, without stopping it
    Tune {
        /// The plan file (YAML) of the migration to retune
        plan: PathBuf,
        /// Rows per batch, or `auto` (steered toward the target batch time)
        #[arg(long, value_parser = control::parse_batch_size)]
        batch_size: Option<crate::plan::BatchSize>,
        /// Sleep between batches (e.g. 100ms, 0s)
        #[arg(long, value_parser = control::parse_duration)]
        pause: Option<std::time::Duration>,
        /// What `auto` batch sizes aim for (e.g. 200ms)
        #[arg(long, value_parser = control::parse_positive_duration)]
        target_batch_time: Option<std::time::Duration>,
        /// Go back to the plan's values (the other options then apply on top)
        #[arg(long)]
        reset: bool,
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
    exit_quietly_on_a_closed_pipe();
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

/// `turnout status | head -1`: once the reader has gone, printing fails with a broken
/// pipe, which `println!` turns into a panic. Exit as a program stopped by a closed pipe
/// does (quietly, status 141 = 128 + SIGPIPE) instead of printing a panic at the user;
/// every other panic still reaches the default hook.
fn exit_quietly_on_a_closed_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to std") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
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
        Command::Check { plan: path, dir } => {
            if path.is_dir() {
                return dir::check(cli.database_url.as_deref(), path, *dir).await;
            }
            dir.only_for_directories(path)?;
            let plan = plan::load(path)?;
            let Some(url) = cli.database_url.as_deref() else {
                println!(
                    "{}: valid plan {:?} ({}); pass --database-url to preflight it against the {}",
                    plan.path,
                    plan.file.name,
                    plan.file
                        .specs()
                        .iter()
                        .map(|t| if plan.file.tables.is_empty() {
                            format!("{} changes", t.changes.len())
                        } else {
                            format!("{}: {} changes", t.table, t.changes.len())
                        })
                        .collect::<Vec<_>>()
                        .join(", "),
                    if plan.file.tables.is_empty() {
                        "table"
                    } else {
                        "tables"
                    }
                );
                return Ok(0);
            };
            let db = Database::connect(url).await?;
            let ms = with_backend!(&db, b => engine::check(b, &plan).await)?;
            for m in &ms {
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
            }
            if ms.len() > 1 {
                println!(
                    "{}: the {} tables are swapped together in one cutover",
                    plan.path,
                    ms.len()
                );
            }
            Ok(0)
        }
        Command::Plan { plan: path, dir } => {
            if path.is_dir() {
                return dir::plan(database_url(&cli.database_url)?, path, *dir).await;
            }
            dir.only_for_directories(path)?;
            let plan = plan::load(path)?;
            let db = Database::connect(database_url(&cli.database_url)?).await?;
            let tables = with_backend!(&db, b => engine::preview(b, &plan).await)?;
            let several = tables.len() > 1;
            for (m, phases) in tables {
                for phase in phases {
                    if several && phase.phase == "cutover" {
                        println!(
                            "-- cutover ({}: one swap with every table of the plan)",
                            m.table
                        );
                    } else if several {
                        println!("-- {} ({})", phase.phase, m.table);
                    } else {
                        println!("-- {}", phase.phase);
                    }
                    for stmt in phase.statements {
                        println!("{stmt};");
                    }
                    println!();
                }
            }
            Ok(0)
        }
        Command::Run {
            plan: path,
            until,
            yes,
            dir,
        }
        | Command::Resume {
            plan: path,
            until,
            yes,
            dir,
        } => {
            let until = parse_until(until)?;
            if path.is_dir() {
                let url = database_url(&cli.database_url)?;
                return dir::run(url, path, until, *yes, *dir, cancel, &observer).await;
            }
            dir.only_for_directories(path)?;
            let plan = plan::load(path)?;
            let db = Database::connect(database_url(&cli.database_url)?).await?;
            confirm(&plan, "Run", *yes)?;
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
            confirm(&plan, "Run", *yes)?;
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
            yes,
        } => {
            let plan = plan::load(path)?;
            let db = Database::connect(database_url(&cli.database_url)?).await?;
            confirm(&plan, "Roll back", *yes)?;
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
        Command::Pause { plan: path } => {
            let plan = plan::load(path)?;
            let db = Database::connect(database_url(&cli.database_url)?).await?;
            control::pause(&db, &plan).await.map(|()| 0)
        }
        Command::Unpause { plan: path } => {
            let plan = plan::load(path)?;
            let db = Database::connect(database_url(&cli.database_url)?).await?;
            control::unpause(&db, &plan).await.map(|()| 0)
        }
        Command::Tune {
            plan: path,
            batch_size,
            pause,
            target_batch_time,
            reset,
        } => {
            let plan = plan::load(path)?;
            let db = Database::connect(database_url(&cli.database_url)?).await?;
            let t = crate::engine::control::Tuning {
                batch_size: *batch_size,
                pause: *pause,
                target_batch_time: *target_batch_time,
                reset: *reset,
            };
            control::tune(&db, &plan, &t).await.map(|()| 0)
        }
        Command::Status { plan: path, json } => {
            if let Some(p) = path.as_deref().filter(|p| p.is_dir()) {
                return dir::status(database_url(&cli.database_url)?, p, *json).await;
            }
            let name = match path {
                Some(p) => Some(plan::load(p)?.file.name),
                None => None,
            };
            let db = Database::connect(database_url(&cli.database_url)?).await?;
            let states = with_backend!(&db, b => engine::status(b, name.as_deref()).await)?;
            if *json {
                let out: Vec<_> = states
                    .iter()
                    .map(|e| status_json(&e.state, &e.failures, &e.control))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
            } else if states.is_empty() {
                println!(
                    "no migrations{}",
                    name.map(|n| format!(" named {n:?}")).unwrap_or_default()
                );
            } else {
                for e in &states {
                    println!("{}", status_text(&e.state, &e.failures, &e.control));
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// `turnout <command> --help` describes every argument and flag of every command.
    #[test]
    fn every_argument_of_every_command_has_help_text() {
        let cli = super::Cli::command();
        let mut missing = Vec::new();
        for cmd in std::iter::once(&cli).chain(cli.get_subcommands()) {
            for arg in cmd.get_arguments() {
                if arg
                    .get_help()
                    .is_none_or(|h| h.to_string().trim().is_empty())
                {
                    missing.push(format!("{} {}", cmd.get_name(), arg.get_id()));
                }
            }
        }
        assert!(missing.is_empty(), "no help text: {missing:?}");
        assert!(cli.get_subcommands().count() >= 10);
    }

    /// The commands that change the database all take `--yes`.
    #[test]
    fn every_changing_command_takes_yes() {
        let cli = super::Cli::command();
        for name in ["run", "step", "resume", "rollback"] {
            let cmd = cli.find_subcommand(name).expect(name);
            assert!(
                cmd.get_arguments().any(|a| a.get_long() == Some("yes")),
                "`turnout {name}` takes no --yes"
            );
        }
    }
}
