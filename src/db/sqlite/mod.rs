//! SQLite answers the engine's questions. What differs from the server databases:
//! one writer at a time (every write transaction is `BEGIN IMMEDIATE` under a busy
//! timeout, and batches stay short so the application never waits long), no advisory
//! locks (a lease row with holder, pid and heartbeat instead), `ALTER TABLE … RENAME`
//! rewrites references inside triggers and views (so cutover renames with
//! `legacy_alter_table` on and installs the reverse triggers after the swap), index
//! names cannot be changed (carried-over indexes alternate between `x` and `x_new`),
//! and triggers cannot catch errors (a write the mapping cannot store fails, whatever
//! `dual_write.on_error` says).
//!
//! This file holds the backend and its connection; each `Backend` method calls the
//! inherent method of the same name in the file of its concern (inherent methods take
//! precedence over the trait's). The SQL itself is generated in [`sql`].

mod backfill;
mod blockers;
mod catalog;
mod cutover;
mod errors;
mod furniture;
mod instant;
mod prepare;
mod sql;
mod state;
mod types;
mod verify;

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{AssertSqlSafe, ConnectOptions, SqlitePool};
use tokio::sync::Mutex;

use crate::db::{
    Backend, BatchDone, Cursor, CutoverOutcome, PhaseSql, StateRow, VerifyReport, VerifyRequest,
};
use crate::error::{Error, Result};
use crate::schema::{Migration, TableShape};
use errors::is_busy;

pub use sql::quote;

pub struct Sqlite {
    pub pool: SqlitePool,
    holder: String,
    heartbeat: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

fn sql(s: String) -> AssertSqlSafe<String> {
    AssertSqlSafe(s)
}

impl Sqlite {
    pub async fn connect(url: &str) -> Result<Sqlite> {
        let shown = crate::db::redact(url);
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(|e| Error::Unreachable(format!("{shown}: {e}")))?
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .disable_statement_logging();
        Self::with_options(opts, &shown).await
    }

    pub async fn with_options(opts: SqliteConnectOptions, shown: &str) -> Result<Sqlite> {
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(opts)
            .await
            .map_err(|e| Error::Unreachable(format!("{shown}: {e}")))?;
        let host = std::fs::read_to_string("/etc/hostname")
            .unwrap_or_default()
            .trim()
            .to_string();
        let holder = format!(
            "pid {} on {}",
            std::process::id(),
            if host.is_empty() { "localhost" } else { &host }
        );
        Ok(Sqlite {
            pool,
            holder,
            heartbeat: Mutex::new(None),
        })
    }

    fn table(&self, name: &str) -> String {
        quote(name)
    }

    /// A write transaction. The busy timeout already waits for the application's writes;
    /// past it, a few more tries with a pause, as an application would retry.
    async fn begin_immediate(
        &self,
    ) -> std::result::Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        let mut tries = 0;
        loop {
            match self.pool.begin_with("BEGIN IMMEDIATE").await {
                Err(e) if is_busy(&e) && tries < 3 => {
                    tries += 1;
                    tracing::warn!(
                        "the database stayed locked through the busy timeout; trying again"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => return other,
            }
        }
    }

    async fn exists(&self, kind: &str, name: &str) -> Result<bool> {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM sqlite_master WHERE type = ?1 AND name = ?2")
                .bind(kind)
                .bind(name)
                .fetch_one(&self.pool)
                .await
                .map_err(|e| Error::db("reading the catalog", e))?;
        Ok(n > 0)
    }
}

impl Backend for Sqlite {
    fn dialect(&self) -> &'static str {
        "sqlite"
    }

    fn quote(&self, ident: &str) -> String {
        quote(ident)
    }

    async fn default_schema(&self) -> Result<Option<String>> {
        Ok(None)
    }

    async fn ensure_state_table(&self) -> Result<()> {
        Sqlite::ensure_state_table(self).await
    }

    async fn load_state(&self, name: &str) -> Result<Option<StateRow>> {
        Sqlite::load_state(self, name).await
    }

    async fn list_states(&self) -> Result<Vec<StateRow>> {
        Sqlite::list_states(self).await
    }

    async fn save_state(&self, row: &StateRow) -> Result<()> {
        Sqlite::save_state(self, row).await
    }

    async fn lock(&self, migration: &str) -> Result<()> {
        Sqlite::lock(self, migration).await
    }

    async fn keep_lock(&self, migration: &str) -> Result<()> {
        Sqlite::keep_lock(self, migration).await
    }

    async fn unlock(&self, migration: &str) -> Result<()> {
        Sqlite::unlock(self, migration).await
    }

    async fn describe(&self, schema: Option<&str>, table: &str) -> Result<Option<TableShape>> {
        Sqlite::describe(self, schema, table).await
    }

    async fn preflight(&self, m: &Migration) -> Result<Vec<String>> {
        Sqlite::preflight(self, m).await
    }

    fn preview(&self, m: &Migration) -> Vec<PhaseSql> {
        sql::preview(m)
    }

    async fn prepare(&self, m: &Migration, save: &StateRow) -> Result<()> {
        Sqlite::prepare(self, m, save).await
    }

    async fn start_dual_write(&self, m: &Migration, save: &StateRow) -> Result<()> {
        Sqlite::start_dual_write(self, m, save).await
    }

    async fn estimate_rows(&self, m: &Migration) -> Result<u64> {
        Sqlite::estimate_rows(self, m).await
    }

    async fn copy_batch(
        &self,
        m: &Migration,
        after: Option<&Cursor>,
        limit: u64,
        checkpoint: &(dyn Fn(&BatchDone) -> StateRow + Sync),
    ) -> Result<BatchDone> {
        Sqlite::copy_batch(self, m, after, limit, checkpoint).await
    }

    async fn finish_backfill(&self, m: &Migration) -> Result<()> {
        Sqlite::finish_backfill(self, m).await
    }

    async fn verify(
        &self,
        m: &Migration,
        req: &VerifyRequest,
        progress: &(dyn Fn(u64) + Sync),
        stop: &(dyn Fn() -> bool + Sync),
    ) -> Result<VerifyReport> {
        Sqlite::verify(self, m, req, progress, stop).await
    }

    async fn cutover(
        &self,
        m: &Migration,
        lock_timeout: Duration,
        save: &StateRow,
    ) -> Result<CutoverOutcome> {
        Sqlite::cutover(self, std::slice::from_ref(m), lock_timeout, save).await
    }

    fn swaps_several_at_once(&self) -> bool {
        true
    }

    async fn cutover_all(
        &self,
        ms: &[Migration],
        lock_timeout: Duration,
        save: &StateRow,
    ) -> Result<CutoverOutcome> {
        Sqlite::cutover(self, ms, lock_timeout, save).await
    }

    async fn rollback_all(&self, ms: &[Migration], save: &StateRow) -> Result<()> {
        Sqlite::rollback(self, ms, save).await
    }

    async fn cleanup(&self, m: &Migration, keep_old: bool, save: &StateRow) -> Result<()> {
        Sqlite::cleanup(self, m, keep_old, save).await
    }

    async fn rollback(&self, m: &Migration, save: &StateRow) -> Result<()> {
        Sqlite::rollback(self, std::slice::from_ref(m), save).await
    }

    async fn trigger_failures(&self, m: &Migration) -> Result<Vec<String>> {
        Sqlite::trigger_failures(self, m).await
    }

    async fn throttle_value(&self, query: &str) -> Result<f64> {
        Sqlite::throttle_value(self, query).await
    }

    async fn blockers(&self, m: &Migration, grace: Duration) -> Result<Vec<crate::db::Blocker>> {
        self.find_blockers(m, grace).await
    }

    fn lock_requests_queue(&self) -> bool {
        false
    }

    async fn end_session(&self, session: &str) -> Result<()> {
        self.end(session)
    }

    async fn instant_path(
        &self,
        m: &Migration,
        changes: &[crate::plan::Change],
    ) -> Result<crate::db::InstantVerdict> {
        self.instant_verdict(m, changes).await
    }

    async fn apply_instant(
        &self,
        m: &Migration,
        statements: &[String],
        lock_timeout: Duration,
        save: &StateRow,
    ) -> Result<CutoverOutcome> {
        self.run_instant(m, statements, lock_timeout, save).await
    }
}
