//! The errors turnout can end with, typed so the binary can map each to the exit code
//! of the product contract and tell the operator what to run next.

use std::time::Duration;

/// Where a plan problem sits in the plan file, for diagnostics that point into the YAML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanLocation {
    pub line: usize,
    pub column: usize,
}

/// A plan that cannot be run: the file, where in it, which key, and what was expected.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{file}{at}: {key}{message}", at = self.at(), key = if self.key.is_empty() { String::new() } else { format!("{}: ", self.key) })]
pub struct PlanProblem {
    pub file: String,
    pub location: Option<PlanLocation>,
    /// Dotted key path, e.g. `changes[2].add_column.type`; empty for the whole document.
    pub key: String,
    pub message: String,
}

impl PlanProblem {
    fn at(&self) -> String {
        match &self.location {
            Some(l) => format!(":{}:{}", l.line, l.column),
            None => String::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The plan is malformed or impossible; nothing was touched. Exit 2.
    #[error("{}", render_problems(.0))]
    Plan(Vec<PlanProblem>),

    /// The command line is invalid. Exit 2.
    #[error("{0}")]
    Usage(String),

    /// The live table does not allow the plan (preflight); nothing was touched. Exit 2.
    #[error("the plan cannot be applied to {table}:\n{}", .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Refused {
        table: String,
        problems: Vec<String>,
    },

    /// The state table holds this migration with another plan. Exit 2.
    #[error(
        "migration {name:?} was started with a different plan; resuming it with this one is refused.\nWhat changed (- started with, + this file):\n{diff}\nRestore the original plan to resume, or roll back with the original plan first."
    )]
    PlanChanged { name: String, diff: String },

    /// A directory of plans disagrees with what already ran (a done plan edited since, a
    /// new plan sorted before one that ran); nothing was touched. Exit 2.
    #[error("{dir}: the plans of this directory cannot be run as they stand; nothing was changed:\n{}", .problems.iter().map(|p| format!("  - {}", p.replace('\n', "\n    "))).collect::<Vec<_>>().join("\n"))]
    History { dir: String, problems: Vec<String> },

    /// The database could not be reached. Exit 3.
    #[error("cannot reach the database: {0}")]
    Unreachable(String),

    /// The database refused for lack of privileges. Exit 3.
    #[error(
        "the database refused {context}: {message}\nThe user in the database URL lacks a privilege turnout needs (see the README's security section)"
    )]
    Denied { context: String, message: String },

    /// Another turnout holds this migration's lock. Exit 3.
    #[error(
        "migration {name:?} is being run by another turnout ({holder}); wait for it to finish, or stop it, then run `turnout resume`"
    )]
    LockHeld { name: String, holder: String },

    /// The cutover could not get its lock within the plan's attempts. Exit 3.
    #[error(
        "cutover could not take the lock on {table} in {attempts} attempts (each waiting at most {timeout:?}, so no application write queued behind it longer); the migration is still verified and dual-writing.{blockers} Run `turnout run` again when the table is quieter, raise cutover.attempts / retry_delay, or set cutover.kill_blockers_after"
    )]
    LockTimeout {
        table: String,
        attempts: u32,
        timeout: Duration,
        /// Who held the tables at the last attempt, in words (empty: nobody was seen).
        blockers: String,
    },

    /// The connection broke mid-way; state is consistent. Exit 3.
    #[error(
        "lost the connection to the database during {context}: {message}\nThe state is consistent; run `turnout resume {plan}` to carry on"
    )]
    ConnectionLost {
        context: String,
        message: String,
        plan: String,
    },

    /// A value that does not fit its new column, found by backfill or a trigger. Exit 1.
    #[error(
        "{table}: row with key {key}: column {column}: {message}\nThe batch was not copied and the checkpoint is where it was: fix that row and run `turnout resume`, or run `turnout rollback` and change the plan"
    )]
    Data {
        table: String,
        key: String,
        column: String,
        message: String,
    },

    /// Verification found differences. Exit 1.
    #[error(
        "verification found {mismatches} differing rows between {table} and its shadow; cutover is refused{details}"
    )]
    VerifyFailed {
        table: String,
        mismatches: u64,
        details: String,
    },

    /// A phase failed in the database. Exit 1.
    #[error(
        "{context}: {source}\nThe last checkpoint is saved: `turnout status` shows where the migration stands, and `turnout resume` carries on once the cause is fixed (every step is safe to repeat)"
    )]
    Database {
        context: String,
        #[source]
        source: sqlx::Error,
    },

    /// A request that the migration's state does not allow (rollback after cleanup, …). Exit 1.
    #[error("{0}")]
    State(String),

    /// Ctrl-C: the batch in hand finished and the checkpoint was saved.
    #[error(
        "interrupted during {phase}; the checkpoint is saved. Run `turnout resume {plan}` to carry on"
    )]
    Interrupted { phase: String, plan: String },
}

fn render_problems(problems: &[PlanProblem]) -> String {
    problems
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

impl Error {
    /// The exit code of the product contract.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Plan(_)
            | Error::Usage(_)
            | Error::Refused { .. }
            | Error::PlanChanged { .. }
            | Error::History { .. } => 2,
            Error::Unreachable(_)
            | Error::Denied { .. }
            | Error::LockHeld { .. }
            | Error::LockTimeout { .. }
            | Error::ConnectionLost { .. } => 3,
            Error::Interrupted { .. } => 130,
            Error::Data { .. }
            | Error::VerifyFailed { .. }
            | Error::Database { .. }
            | Error::State(_) => 1,
        }
    }

    /// Wraps a driver error, telling a lost connection apart from a failed statement.
    pub fn db(context: impl Into<String>, source: sqlx::Error) -> Error {
        let context = context.into();
        if is_connection_error(&source) {
            return Error::ConnectionLost {
                context,
                message: source.to_string(),
                plan: "PLAN".into(),
            };
        }
        if is_privilege_error(&source) {
            let message = match &source {
                sqlx::Error::Database(d) => d.message().to_string(),
                other => other.to_string(),
            };
            return Error::Denied { context, message };
        }
        Error::Database { context, source }
    }

    /// Fills in the plan path of a resume hint.
    pub fn with_plan_path(mut self, path: &str) -> Error {
        match &mut self {
            Error::ConnectionLost { plan, .. } | Error::Interrupted { plan, .. } => {
                *plan = path.to_string()
            }
            _ => {}
        }
        self
    }
}

/// Errors after which a retry on a fresh connection may succeed.
pub fn is_connection_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Protocol(_) | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(d) => {
            // PostgreSQL: admin shutdown / terminated by administrator (57P01..57P03);
            // MySQL: 1927 connection killed, 2006/2013 server gone.
            matches!(
                d.code().as_deref(),
                Some("57P01" | "57P02" | "57P03" | "08006" | "08003" | "70100" | "1927")
            )
        }
        _ => false,
    }
}

/// Errors that mean "not allowed": PostgreSQL insufficient_privilege (42501); MySQL
/// access denied (1044, 1045, 1142, 1143, 1227, 1370); SQLite read-only database (8).
pub fn is_privilege_error(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(d) = e else {
        return false;
    };
    if let Some(my) = d.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        return matches!(my.number(), 1044 | 1045 | 1142 | 1143 | 1227 | 1370);
    }
    if d.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        return matches!(
            d.code().as_deref(),
            Some("8" | "264" | "520" | "776" | "1032")
        );
    }
    d.code().as_deref() == Some("42501")
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
