//! The boundary between the engine and the databases. The engine asks the questions of
//! [`Backend`] (what does the table look like, copy the next batch, swap the names) and
//! each database answers them in its own SQL in its own module. No SQL crosses this
//! boundary except the user's own expressions, carried inside [`crate::schema::Migration`].

pub mod copiers;
pub mod mysql;
pub mod postgres;
pub mod replicas;
pub mod sqlite;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::plan::Change;
use crate::schema::{Migration, TableShape};
pub use replicas::Replicas;

/// One row of `turnout_state`, as the database stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct StateRow {
    pub name: String,
    pub plan_hash: String,
    pub phase: String,
    /// The engine's state as JSON; opaque to the database modules.
    pub body: String,
}

impl StateRow {
    /// A `turnout_state` row read as (name, plan_hash, phase, body), from any driver.
    pub fn from_sql<R: sqlx::Row>(r: &R) -> StateRow
    where
        for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        usize: sqlx::ColumnIndex<R>,
    {
        StateRow {
            name: r.get(0),
            plan_hash: r.get(1),
            phase: r.get(2),
            body: r.get(3),
        }
    }
}

/// Where keyset pagination stands: the last primary key done, in a form the database
/// module chose (it alone reads it back). Stored in the state row.
pub type Cursor = serde_json::Value;

/// What one committed backfill batch did.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchDone {
    /// Rows read from the live table in this batch (0: the table is exhausted).
    pub rows: u64,
    /// The key of the last row read; the next batch starts after it.
    pub last: Option<Cursor>,
    /// A rest the database asks for before the next batch, so waiting application
    /// writes get their turn (SQLite's single writer); zero elsewhere.
    pub rest: std::time::Duration,
}

/// How to compare the live table with its shadow.
#[derive(Debug, Clone)]
pub struct VerifyRequest {
    /// Rows per chunk compared by hash.
    pub chunk_rows: u64,
    /// `Some(rate)`: compare only a random sample of about this fraction of chunks.
    pub sample_rate: Option<f64>,
    /// Stop narrowing after this many differing rows.
    pub max_diffs: u64,
    /// Chunks compared at once, each on a connection of its own (PostgreSQL and
    /// MySQL/MariaDB; SQLite compares one chunk at a time).
    pub workers: usize,
}

/// A row that differs: its primary key and the two row images (JSON objects, `None`
/// where the row is missing on that side), as the mapped live row and the shadow row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowDiff {
    pub key: String,
    pub expected: Option<String>,
    pub shadow: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub rows: u64,
    pub chunks: u64,
    pub chunks_skipped: u64,
    pub diffs: Vec<RowDiff>,
}

/// Verify's work list, shared by the workers comparing chunks at once: each claims the
/// next key range in order; what they find is put back in key order at the end.
#[derive(Debug, Default)]
pub struct Chunks {
    /// The lower bound of the next chunk to claim (`Some(None)`: the table's start);
    /// None when every chunk is claimed or enough differences are found.
    next: Option<Option<Vec<String>>>,
    /// Chunks claimed so far; a chunk's number orders its diffs.
    claimed: u64,
    diffs: std::collections::BTreeMap<u64, Vec<RowDiff>>,
    /// At least one: a difference found is what makes verification fail.
    max_diffs: u64,
    report: VerifyReport,
}

/// A key range `(lo, hi]`; None: open on that side.
pub type KeyRange = (Option<Vec<String>>, Option<Vec<String>>);

impl Chunks {
    pub fn new(max_diffs: u64) -> Chunks {
        Chunks {
            next: Some(None),
            max_diffs: max_diffs.max(1),
            ..Chunks::default()
        }
    }

    /// The next chunk's lower bound, to be claimed with [`Chunks::claim`] once its upper
    /// bound is found; None when there is nothing left to claim.
    pub fn next_start(&mut self) -> Option<Option<Vec<String>>> {
        self.next.take()
    }

    /// Claims `(lo, hi]`; the next chunk starts after `hi` (None: this one is the last).
    pub fn claim(&mut self, lo: Option<Vec<String>>, hi: Option<Vec<String>>) -> (u64, KeyRange) {
        self.next = hi.clone().map(Some);
        self.claimed += 1;
        (self.claimed, (lo, hi))
    }

    /// After a worker's error: hand out no further chunk, so the others stop soon.
    pub fn abandon(&mut self) {
        self.next = None;
    }

    pub fn skipped(&mut self) {
        self.report.chunks_skipped += 1;
    }

    /// Records chunk `n`; returns the rows compared so far. Once `max_diffs` rows differ
    /// no further chunk is handed out.
    pub fn compared(&mut self, n: u64, rows: u64, diffs: Vec<RowDiff>) -> u64 {
        self.report.rows += rows;
        self.report.chunks += 1;
        if !diffs.is_empty() {
            self.diffs.insert(n, diffs);
        }
        if self.found() >= self.max_diffs {
            self.next = None;
        }
        self.report.rows
    }

    /// How many more differing rows are worth narrowing to.
    pub fn room(&self) -> u64 {
        self.max_diffs.saturating_sub(self.found())
    }

    fn found(&self) -> u64 {
        self.diffs.values().map(|d| d.len() as u64).sum()
    }

    /// The report, diffs in key order, at most `max_diffs` of them.
    pub fn into_report(self) -> VerifyReport {
        let mut report = self.report;
        report.diffs = self.diffs.into_values().flatten().collect();
        report.diffs.truncate(self.max_diffs as usize);
        report
    }
}

/// Runs one verify worker; its error makes the others stop claiming chunks.
pub async fn abandon_on_error<T>(
    chunks: &tokio::sync::Mutex<Chunks>,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let r = work.await;
    if r.is_err() {
        chunks.lock().await.abandon();
    }
    r
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutoverOutcome {
    Swapped,
    /// The lock was not granted within the timeout; nothing changed.
    LockTimeout,
}

/// A session that holds, or waits for, a lock on a table the cutover must lock, inside a
/// transaction older than the grace the engine allows ordinary traffic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Blocker {
    /// What ends it: the PostgreSQL pid or the MySQL/MariaDB connection id.
    pub session: String,
    pub user: String,
    pub application: String,
    pub state: String,
    /// How long its transaction (or statement, outside one) has been open.
    pub transaction_ms: u64,
    /// The start of its current or last query.
    pub query: String,
    /// False where the database cannot say which tables a session holds (MariaDB without
    /// the metadata_lock_info plugin): then it is only a transaction old enough to be one.
    pub certain: bool,
}

impl Blocker {
    /// One line for a person: who, doing what, for how long.
    pub fn describe(&self) -> String {
        let mut who = format!("session {}", self.session);
        if !self.user.is_empty() {
            who.push_str(&format!(" (user {}", self.user));
            if !self.application.is_empty() {
                who.push_str(&format!(", application {:?}", self.application));
            }
            who.push(')');
        }
        let query: String = self.query.split_whitespace().collect::<Vec<_>>().join(" ");
        let query: String = query.chars().take(60).collect();
        format!(
            "{who}, {}, transaction open {}, query {query:?}{}",
            if self.state.is_empty() {
                "state unknown"
            } else {
                &self.state
            },
            humantime::format_duration(Duration::from_millis(self.transaction_ms)),
            if self.certain {
                ""
            } else {
                " (may hold the table: the server does not say which tables it locks)"
            }
        )
    }
}

/// One statement of the instant path, with the statement that undoes it. Plain data,
/// stored with the state so a rollback runs what the forward path was given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstantStep {
    /// The plan's change it makes, as the plan names it (`changes[1].rename_column`).
    pub change: String,
    pub forward: String,
    pub reverse: String,
    /// What running `reverse` cannot give back, in words; `None`: nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loses: Option<String>,
    /// An index built without a transaction (PostgreSQL's `CREATE INDEX CONCURRENTLY`),
    /// named here so a build cut short can be found and rebuilt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online_index: Option<String>,
}

/// Whether the database can make every change of a table without rewriting it and
/// without blocking writes beyond a brief lock.
#[derive(Debug, Clone, PartialEq)]
pub enum InstantVerdict {
    /// The statements, in plan order.
    Instant(Vec<InstantStep>),
    /// Why not, one reason per change that cannot be made instantly, each naming it.
    Copy(Vec<String>),
}

/// SQL of each phase, for `turnout plan`.
#[derive(Debug, Clone)]
pub struct PhaseSql {
    pub phase: String,
    pub statements: Vec<String>,
}

/// The questions the engine asks of a database. Every mutating method must be safe to
/// call again after a crash at any instant: it looks at the catalog and does only what is
/// missing. `save` is the state row to persist once the step's effect is durable; where
/// the database allows it, in the same transaction as the step itself.
#[allow(async_fn_in_trait)]
pub trait Backend: Replicas {
    /// `postgres`, `mysql` or `sqlite`.
    fn dialect(&self) -> &'static str;

    /// Quotes an identifier: the one function every name goes through.
    fn quote(&self, ident: &str) -> String;

    /// The connection's default schema or database, used when the plan names none.
    async fn default_schema(&self) -> Result<Option<String>>;

    async fn ensure_state_table(&self) -> Result<()>;
    async fn load_state(&self, name: &str) -> Result<Option<StateRow>>;
    async fn list_states(&self) -> Result<Vec<StateRow>>;
    async fn save_state(&self, row: &StateRow) -> Result<()>;

    /// Takes the migration's exclusive lock for as long as this backend lives, or
    /// fails with [`Error::LockHeld`] naming the holder.
    async fn lock(&self, migration: &str) -> Result<()>;
    async fn unlock(&self, migration: &str) -> Result<()>;

    /// Confirms the lock is still this turnout's (its session may have been ended by the
    /// server), taking it again when it is free; [`Error::LockHeld`] when another turnout
    /// took it meanwhile. Called before every batch and every step.
    async fn keep_lock(&self, migration: &str) -> Result<()> {
        let _ = migration;
        Ok(())
    }

    /// The table's shape, or `None` when there is no such table.
    async fn describe(&self, schema: Option<&str>, table: &str) -> Result<Option<TableShape>>;

    /// What stops this migration on this database, without changing anything: every
    /// expression compiles against the live table, the shadow and old names are free,
    /// types exist, the key is usable. Each problem names the table and column.
    async fn preflight(&self, m: &Migration) -> Result<Vec<String>>;

    /// The SQL of every phase, changing nothing.
    fn preview(&self, m: &Migration) -> Vec<PhaseSql>;

    /// Creates the shadow table in the new shape, with its keys and indexes.
    async fn prepare(&self, m: &Migration, save: &StateRow) -> Result<()>;

    /// Installs the forward triggers live → shadow.
    async fn start_dual_write(&self, m: &Migration, save: &StateRow) -> Result<()>;

    /// Rows in the live table, estimated cheaply (for progress and ETA).
    async fn estimate_rows(&self, m: &Migration) -> Result<u64>;

    /// Copies the next `limit` live rows after `after` (by primary key) into the shadow
    /// through the forward mapping, and commits them with the state row `checkpoint`
    /// builds from the batch's result, in one transaction where the database allows.
    async fn copy_batch(
        &self,
        m: &Migration,
        after: Option<&Cursor>,
        limit: u64,
        checkpoint: &(dyn Fn(&BatchDone) -> StateRow + Sync),
    ) -> Result<BatchDone>;

    /// Work after the last batch (statistics, deferred indexes).
    async fn finish_backfill(&self, m: &Migration) -> Result<()>;

    /// Compares the mapped live rows with the shadow rows in one consistent snapshot.
    /// `progress` is told the rows checked so far; `stop` is asked between chunks.
    async fn verify(
        &self,
        m: &Migration,
        req: &VerifyRequest,
        progress: &(dyn Fn(u64) + Sync),
        stop: &(dyn Fn() -> bool + Sync),
    ) -> Result<VerifyReport>;

    /// Analyzes the shadow, then in one transaction bounded by `lock_timeout` swaps the
    /// names and turns dual-write around (new → old through the reverse mapping).
    async fn cutover(
        &self,
        m: &Migration,
        lock_timeout: Duration,
        save: &StateRow,
    ) -> Result<CutoverOutcome>;

    /// Whether [`Backend::cutover_all`] swaps several tables in one atomic step here;
    /// plans of several tables are refused where it does not.
    fn swaps_several_at_once(&self) -> bool {
        false
    }

    /// [`Backend::preflight`] of `m` as one table of `plan` (every table of it, `m` too):
    /// where a foreign key between two of them can be carried only because both ends
    /// change together, the database judges it here.
    async fn preflight_in_plan(&self, m: &Migration, plan: &[Migration]) -> Result<Vec<String>> {
        let _ = plan;
        self.preflight(m).await
    }

    /// What stops the plan's tables together (each passed [`Backend::preflight`]): a
    /// foreign key between two of them whose column types would no longer match.
    async fn preflight_together(&self, ms: &[Migration]) -> Result<Vec<String>> {
        let _ = ms;
        Ok(Vec::new())
    }

    /// [`Backend::cutover`] of every table of the plan at once: all are swapped or none.
    /// Where several cannot be swapped at once, only a plan of one table gets here.
    async fn cutover_all(
        &self,
        ms: &[Migration],
        lock_timeout: Duration,
        save: &StateRow,
    ) -> Result<CutoverOutcome> {
        match ms {
            [m] => self.cutover(m, lock_timeout, save).await,
            _ => Err(several_unsupported(self.dialect())),
        }
    }

    /// [`Backend::rollback`] of every table of the plan at once.
    async fn rollback_all(&self, ms: &[Migration], save: &StateRow) -> Result<()> {
        match ms {
            [m] => self.rollback(m, save).await,
            _ => Err(several_unsupported(self.dialect())),
        }
    }

    /// Drops the reverse triggers and, unless `keep_old`, the old table.
    async fn cleanup(&self, m: &Migration, keep_old: bool, save: &StateRow) -> Result<()>;

    /// Puts everything back as it was before prepare: swaps the names back when the
    /// catalog shows a cutover, then drops every trigger and the shadow table.
    async fn rollback(&self, m: &Migration, save: &StateRow) -> Result<()>;

    /// Rows whose mapping failed inside a trigger and were recorded (`on_error: record`).
    async fn trigger_failures(&self, m: &Migration) -> Result<Vec<String>>;

    /// Runs the plan's throttle query and returns its value.
    async fn throttle_value(&self, sql: &str) -> Result<f64>;

    /// Sessions other than this one whose transactions, open longer than `grace`, hold or
    /// wait for a lock on a table the cutover (or rollback) of `m` locks.
    async fn blockers(&self, m: &Migration, grace: Duration) -> Result<Vec<Blocker>>;

    /// Whether a waiting lock request makes later writers queue behind it (PostgreSQL's
    /// and MariaDB's lock queues); then the engine caps the cutover's wait. SQLite's busy
    /// writers poll instead, so its cutover may wait the whole `lock_timeout`.
    fn lock_requests_queue(&self) -> bool {
        true
    }

    /// Ends a blocker's session (`cutover.kill_blockers_after`).
    async fn end_session(&self, session: &str) -> Result<()>;

    /// Whether `changes` (the plan's, for the table of `m`) can be made instantly here,
    /// and with what statements. Changes nothing.
    async fn instant_path(&self, m: &Migration, changes: &[Change]) -> Result<InstantVerdict> {
        let _ = (m, changes);
        Ok(InstantVerdict::Copy(vec![format!(
            "turnout has no instant path on {} yet",
            self.dialect()
        )]))
    }

    /// Runs `statements` (steps without an online index) in one transaction whose locks
    /// wait at most `lock_timeout`, with the state row `save`.
    async fn apply_instant(
        &self,
        m: &Migration,
        statements: &[String],
        lock_timeout: Duration,
        save: &StateRow,
    ) -> Result<CutoverOutcome> {
        let _ = (m, statements, lock_timeout, save);
        Err(Error::State(format!(
            "turnout has no instant path on {}",
            self.dialect()
        )))
    }

    /// Builds (`undo` false) or drops (`undo` true) a step's online index outside any
    /// transaction. Safe to repeat: a valid index is kept, one a crash left invalid is
    /// dropped and built again.
    async fn online_index(&self, m: &Migration, step: &InstantStep, undo: bool) -> Result<()> {
        let _ = (m, step, undo);
        Err(Error::State(format!(
            "turnout builds no online index on {}",
            self.dialect()
        )))
    }
}

fn several_unsupported(dialect: &str) -> Error {
    Error::State(format!(
        "plans of several tables are not supported on {dialect} yet; roll back with the same turnout that started it"
    ))
}

/// The three native pools, chosen by the URL's scheme (sqlx's Any driver would lose
/// uuid, json and timestamps).
pub enum Database {
    Postgres(postgres::Postgres),
    MySql(mysql::MySql),
    Sqlite(sqlite::Sqlite),
}

impl Database {
    pub async fn connect(url: &str) -> Result<Database> {
        let scheme = url.split(':').next().unwrap_or_default();
        match scheme {
            "postgres" | "postgresql" => {
                Ok(Database::Postgres(postgres::Postgres::connect(url).await?))
            }
            "mysql" | "mariadb" => Ok(Database::MySql(mysql::MySql::connect(url).await?)),
            "sqlite" => Ok(Database::Sqlite(sqlite::Sqlite::connect(url).await?)),
            _ => Err(Error::Usage(format!(
                "unsupported database URL {}: expected postgres://, mysql:// or sqlite://",
                redact(url)
            ))),
        }
    }
}

/// A URL fit for messages and logs: the password is replaced by `***`.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => match (url.find("://"), url.rfind('@')) {
            (Some(s), Some(at)) if at > s => format!("{}://***{}", &url[..s], &url[at..]),
            _ => url.to_string(),
        },
    }
}

/// Expands to `$body` with `$b` bound to whichever backend `$db` holds, so generic
/// engine code runs on any of the three.
#[macro_export]
macro_rules! with_backend {
    ($db:expr, $b:ident => $body:expr) => {
        match $db {
            $crate::db::Database::Postgres($b) => $body,
            $crate::db::Database::MySql($b) => $body,
            $crate::db::Database::Sqlite($b) => $body,
        }
    };
}

/// Renders a mapping source over a row whose columns are reached by `column`.
pub fn render_source(
    mapped: &crate::schema::Mapped,
    column: &dyn Fn(&str) -> String,
    cast: &dyn Fn(&str, &str) -> String,
) -> String {
    let value = match &mapped.source {
        crate::schema::Source::Column(c) => column(c),
        crate::schema::Source::Expr(sql) => format!("({sql})"),
    };
    match &mapped.cast {
        Some(t) => cast(&value, t),
        None => value,
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    const HOSTILE: &[&str] = &[
        "a\"b",
        "a`b",
        "x; DROP TABLE t; --",
        "/* c */",
        "it's",
        "\"\"",
        "``",
        "名前 😀",
        "-- x",
    ];

    /// Undoes one dialect's quoting: what the database would read as the name.
    fn unquote(quoted: &str, q: char) -> Option<String> {
        let inner = quoted.strip_prefix(q)?.strip_suffix(q)?;
        let doubled = format!("{q}{q}");
        // Every quote inside must come doubled, or the name would end early.
        if inner.replace(&doubled, "").contains(q) {
            return None;
        }
        Some(inner.replace(&doubled, &q.to_string()))
    }

    #[test]
    fn each_dialect_quotes_every_hostile_name_into_exactly_that_name() {
        for name in HOSTILE {
            assert_eq!(
                unquote(&super::postgres::quote(name), '"').as_deref(),
                Some(*name),
                "postgres {name}"
            );
            assert_eq!(
                unquote(&super::sqlite::quote(name), '"').as_deref(),
                Some(*name),
                "sqlite {name}"
            );
            assert_eq!(
                unquote(&super::mysql::quote(name), '`').as_deref(),
                Some(*name),
                "mysql {name}"
            );
        }
    }

    #[test]
    fn redact_hides_the_password_only() {
        assert_eq!(
            redact("postgres://u:s3cret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(
            redact("mysql://root@127.0.0.1/test"),
            "mysql://root@127.0.0.1/test"
        );
        assert!(!redact("postgres://u:p%40ss;@h/db").contains("p%40ss"));
    }
}
