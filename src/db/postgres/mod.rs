//! PostgreSQL answers the engine's questions. What this dialect gives us and how we use it:
//! DDL is transactional, so every step's DDL commits together with its state row; triggers
//! are plpgsql functions that can catch errors (`on_error: record`); the migration lock is a
//! session advisory lock held on a dedicated connection; verification reads one
//! REPEATABLE READ snapshot and compares chunk hashes computed inside the server.
//!
//! Sequences: a serial column's sequence is shared by the shadow (same `nextval` default)
//! and its ownership moves to the new table at cutover, back at rollback. An identity
//! column is a plain column on the shadow while rows are copied (identity sequences
//! cannot be shared) and becomes an identity again at cutover, starting above every id
//! the old sequence handed out or the table holds. When the key widens, a serial's
//! sequence is altered `AS <new type>` in the cutover transaction and back at rollback
//! (`sql/keys.rs`).
//!
//! The layout: this file holds the backend, its connection and the `Backend` answers, each
//! handed to the file of its concern (`state`, `catalog`, `prepare`, `backfill`, `verify`,
//! `cutover`, `errors`); `sql/` generates every statement without I/O.

mod backfill;
mod blockers;
mod carry;
mod catalog;
mod children;
mod cutover;
mod errors;
mod instant;
mod prepare;
mod publications;
mod replicas;
mod rls;
mod rules;
mod shape;
mod sql;
mod state;
mod verify;
mod views;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::{AssertSqlSafe, PgPool};
use tokio::sync::Mutex;

use crate::db::{
    Backend, BatchDone, Cursor, CutoverOutcome, PhaseSql, StateRow, VerifyReport, VerifyRequest,
};
use crate::error::{Error, Result};
use crate::schema::{Migration, TableShape};

use errors::{is_conflict, is_lock_timeout};
pub use sql::quote;
use sql::{Gen, lock_wait};
use state::save_sql;

/// DDL that needs a brief lock on the live table (triggers, drops) waits at most this
/// long per attempt, so it never queues the application behind a long transaction; and
/// below the server's deadlock_timeout (1 s by default), so that a lock cycle with an
/// application transaction (one that writes a child and then its parent, while cleanup
/// drops an old parent its old child references) ends with turnout's attempt timing out,
/// not with the server aborting the application's transaction: 2 s here lost one such
/// transaction in a four-table cleanup.
const DDL_LOCK_TIMEOUT: Duration = Duration::from_millis(50);
const DDL_ATTEMPTS: u32 = 60;

/// The pause before DDL attempt `attempt + 1`: growing, at most 2 s.
fn ddl_backoff(attempt: u32) -> Duration {
    Duration::from_millis((50 * u64::from(attempt)).min(2000))
}

pub struct Postgres {
    pub pool: PgPool,
    /// Boxed: the options are large and `Database` holds this backend inline.
    options: Box<PgConnectOptions>,
    /// The connection's default schema: where `turnout_state` and `turnout_failures` live.
    home: String,
    /// The session that holds the advisory locks, for as long as this backend lives.
    lock_conn: Mutex<Option<PgConnection>>,
    /// Rows per committed slice of a batch, steered toward `backfill::SLICE_TIME`.
    slice_rows: std::sync::atomic::AtomicU64,
}

// ---------------------------------------------------------------------------------------
// I/O helpers
// ---------------------------------------------------------------------------------------

fn sql(s: String) -> AssertSqlSafe<String> {
    AssertSqlSafe(s)
}

/// Runs each statement with the simple protocol (no prepared-statement cache for DDL).
async fn run_all(
    conn: &mut PgConnection,
    stmts: &[String],
) -> std::result::Result<(), sqlx::Error> {
    for s in stmts {
        sqlx::raw_sql(sql(s.clone())).execute(&mut *conn).await?;
    }
    Ok(())
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

fn bind_texts<'q>(mut q: PgQuery<'q>, values: &[String]) -> PgQuery<'q> {
    for v in values {
        q = q.bind(v.clone());
    }
    q
}

impl Postgres {
    pub async fn connect(url: &str) -> Result<Postgres> {
        let shown = crate::db::redact(url);
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| Error::Unreachable(format!("{shown}: {e}")))?
            .application_name("turnout");
        let pool = PgPoolOptions::new()
            .max_connections(5)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone())
            .await
            .map_err(|e| Error::Unreachable(format!("{shown}: {e}")))?;
        let home: Option<String> = sqlx::query_scalar("SELECT current_schema()::text")
            .fetch_one(&pool)
            .await
            .map_err(|e| Error::Unreachable(format!("{shown}: {e}")))?;
        Ok(Postgres {
            pool,
            options: Box::new(options),
            // No schema of the search_path exists: fall back to the standard one.
            home: home.unwrap_or_else(|| "public".to_string()),
            lock_conn: Mutex::new(None),
            slice_rows: std::sync::atomic::AtomicU64::new(backfill::FIRST_SLICE_ROWS),
        })
    }

    fn gen_for<'a>(&self, m: &'a Migration) -> Gen<'a> {
        Gen::new(m, &self.home)
    }

    /// Runs `body` in a transaction whose locks wait at most [`DDL_LOCK_TIMEOUT`], retrying
    /// a lock timeout or a deadlock so a busy table delays the step instead of failing it.
    /// `fault` names the crash point visited inside the transaction (fault-injection tests).
    async fn ddl_txn(
        &self,
        context: &str,
        stmts: &[String],
        save: &StateRow,
        fault: Option<&str>,
    ) -> Result<()> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result: std::result::Result<(), sqlx::Error> = async {
                let mut tx = self.pool.begin().await?;
                sqlx::raw_sql(sql(lock_wait(DDL_LOCK_TIMEOUT)))
                    .execute(&mut *tx)
                    .await?;
                run_all(&mut tx, stmts).await?;
                if let Some(point) = fault {
                    crate::fault::point(point);
                }
                sqlx::query(sql(save_sql(&self.home)))
                    .bind(&save.name)
                    .bind(&save.plan_hash)
                    .bind(&save.phase)
                    .bind(&save.body)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await
            }
            .await;
            match result {
                Ok(()) => return Ok(()),
                Err(e) if (is_lock_timeout(&e) || is_conflict(&e)) && attempt < DDL_ATTEMPTS => {
                    tracing::info!(attempt, "{context}: lock not granted, retrying");
                    tokio::time::sleep(ddl_backoff(attempt)).await;
                }
                Err(e) => return Err(Error::db(context.to_string(), e)),
            }
        }
    }
}

impl Backend for Postgres {
    fn dialect(&self) -> &'static str {
        "postgres"
    }

    fn quote(&self, ident: &str) -> String {
        quote(ident)
    }

    async fn default_schema(&self) -> Result<Option<String>> {
        let s: Option<String> = sqlx::query_scalar("SELECT current_schema()::text")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| Error::db("reading the default schema", e))?;
        Ok(s.or_else(|| Some(self.home.clone())))
    }

    async fn ensure_state_table(&self) -> Result<()> {
        self.create_state_tables().await
    }

    async fn load_state(&self, name: &str) -> Result<Option<StateRow>> {
        self.read_state(name).await
    }

    async fn list_states(&self) -> Result<Vec<StateRow>> {
        self.read_states().await
    }

    async fn save_state(&self, row: &StateRow) -> Result<()> {
        self.write_state(row).await
    }

    async fn lock(&self, migration: &str) -> Result<()> {
        self.take_lock(migration).await
    }

    async fn keep_lock(&self, migration: &str) -> Result<()> {
        self.confirm_lock(migration).await
    }

    async fn unlock(&self, migration: &str) -> Result<()> {
        self.release_lock(migration).await
    }

    async fn describe(&self, schema: Option<&str>, table: &str) -> Result<Option<TableShape>> {
        self.describe_table(schema, table).await
    }

    async fn preflight(&self, m: &Migration) -> Result<Vec<String>> {
        self.check_migration(m).await
    }

    fn preview(&self, m: &Migration) -> Vec<PhaseSql> {
        sql::preview(m, &self.home)
    }

    async fn prepare(&self, m: &Migration, save: &StateRow) -> Result<()> {
        self.create_shadow_table(m, save).await
    }

    async fn start_dual_write(&self, m: &Migration, save: &StateRow) -> Result<()> {
        self.install_forward_triggers(m, save).await
    }

    async fn estimate_rows(&self, m: &Migration) -> Result<u64> {
        self.count_live_rows(m).await
    }

    async fn copy_batch(
        &self,
        m: &Migration,
        after: Option<&Cursor>,
        limit: u64,
        checkpoint: &(dyn Fn(&BatchDone) -> StateRow + Sync),
    ) -> Result<BatchDone> {
        self.copy_next_batch(m, after, limit, checkpoint).await
    }

    async fn finish_backfill(&self, m: &Migration) -> Result<()> {
        self.finish_copy(m).await
    }

    async fn verify(
        &self,
        m: &Migration,
        req: &VerifyRequest,
        progress: &(dyn Fn(u64) + Sync),
        stop: &(dyn Fn() -> bool + Sync),
    ) -> Result<VerifyReport> {
        self.compare(m, req, progress, stop).await
    }

    async fn cutover(
        &self,
        m: &Migration,
        lock_timeout: Duration,
        save: &StateRow,
    ) -> Result<CutoverOutcome> {
        self.swap(std::slice::from_ref(m), lock_timeout, save).await
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
        self.swap(ms, lock_timeout, save).await
    }

    async fn rollback_all(&self, ms: &[Migration], save: &StateRow) -> Result<()> {
        self.roll_back(ms, save).await
    }

    async fn cleanup(&self, m: &Migration, keep_old: bool, save: &StateRow) -> Result<()> {
        self.clean_up(m, keep_old, save).await
    }

    async fn rollback(&self, m: &Migration, save: &StateRow) -> Result<()> {
        self.roll_back(std::slice::from_ref(m), save).await
    }

    async fn trigger_failures(&self, m: &Migration) -> Result<Vec<String>> {
        self.read_trigger_failures(m).await
    }

    async fn throttle_value(&self, query: &str) -> Result<f64> {
        self.read_throttle_value(query).await
    }

    async fn blockers(&self, m: &Migration, grace: Duration) -> Result<Vec<crate::db::Blocker>> {
        self.find_blockers(m, grace).await
    }

    async fn end_session(&self, session: &str) -> Result<()> {
        self.terminate(session).await
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

    async fn online_index(
        &self,
        m: &Migration,
        step: &crate::db::InstantStep,
        undo: bool,
    ) -> Result<()> {
        self.build_online_index(m, step, undo).await
    }
}
