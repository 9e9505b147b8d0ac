//! The backfill: short batches, each one write transaction with its checkpoint, then a
//! gap that lets the application's writes in; the row estimate, the closing ANALYZE, and
//! what to say when a batch fails on a row.

use std::time::Duration;

use sqlx::Row;

use super::errors::db_message;
use super::sql::{backfill, forward, names, upsert};
use super::state::save_in;
use super::{Sqlite, sql};
use crate::db::{BatchDone, Cursor, StateRow};
use crate::error::{Error, Result};
use crate::schema::Migration;

/// SQLite has one writer, and a waiting application polls for the lock with growing
/// sleeps (SQLite's busy handler: steps of at most 25 ms during the first ~128 ms of a
/// wait, then 50 ms, then 100 ms). A gap after each batch at least as long as the poll
/// step the waiter has reached guarantees it gets in before the next batch: then no
/// application write waits much longer than one batch.
fn gap_after(batch: Duration) -> Duration {
    match batch.as_millis() {
        0..=100 => Duration::from_millis(30),
        101..=300 => Duration::from_millis(55),
        _ => Duration::from_millis(105),
    }
}

impl Sqlite {
    pub(super) async fn estimate_rows(&self, m: &Migration) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(sql(backfill::count_rows(m)))
            .fetch_one(&self.pool)
            .await
            .map_err(|e| Error::db("counting rows", e))?;
        Ok(n.max(0) as u64)
    }

    pub(super) async fn copy_batch(
        &self,
        m: &Migration,
        after: Option<&Cursor>,
        limit: u64,
        checkpoint: &(dyn Fn(&BatchDone) -> StateRow + Sync),
    ) -> Result<BatchDone> {
        let f = forward(m, &names(m));
        let cursor = after.map(|c| c.to_string());
        let ctx = |e| Error::db(format!("backfill of {}", m.table), e);

        let began = std::time::Instant::now();
        let mut tx = self.begin_immediate().await.map_err(ctx)?;
        // The batch's last key, found on the primary key alone; the copy is then a range.
        let hi: Option<String> =
            sqlx::query_scalar(sql(backfill::last_key(m, cursor.is_some(), limit)))
                .bind(cursor.as_deref())
                .fetch_optional(&mut *tx)
                .await
                .map_err(ctx)?;
        let rows = backfill::rows(m, cursor.is_some(), hi.is_some());
        let (count, last) = match &hi {
            Some(h) => (limit, Some(h.clone())),
            None => {
                let tail = sqlx::query(sql(backfill::tail(m, cursor.is_some(), hi.is_some())))
                    .bind(cursor.as_deref())
                    .bind(hi.as_deref())
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(ctx)?;
                (
                    tail.get::<i64, _>(0).max(0) as u64,
                    tail.get::<Option<String>, _>(1),
                )
            }
        };
        if count > 0
            && let Err(e) = sqlx::query(sql(upsert(&f, &rows, false)))
                .bind(cursor.as_deref())
                .bind(hi.as_deref())
                .execute(&mut *tx)
                .await
        {
            drop(tx);
            return Err(self
                .explain_batch_error(m, &rows, cursor.as_deref(), hi.as_deref(), e)
                .await);
        }
        let done = BatchDone {
            rows: count,
            last: last.and_then(|l| serde_json::from_str(&l).ok()),
            rest: gap_after(began.elapsed()),
        };
        save_in(&mut *tx, &checkpoint(&done)).await?;
        tx.commit().await.map_err(ctx)?;
        // Fold this batch's pages back into the database file now, on turnout's time, so
        // the WAL stays small and no application commit inherits a long checkpoint.
        let _ = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&self.pool)
            .await;
        Ok(done)
    }

    pub(super) async fn finish_backfill(&self, m: &Migration) -> Result<()> {
        match sqlx::query(sql(backfill::analyze_shadow(m)))
            .execute(&self.pool)
            .await
        {
            // ANALYZE only refreshes statistics (cutover runs it again); a writer that
            // committed between its read and its write makes SQLite refuse it at once,
            // busy timeout or not, and that must not fail the backfill.
            Err(e) if super::errors::is_busy(&e) => {
                tracing::warn!("statistics of {} not refreshed: {e}", m.shadow);
                Ok(())
            }
            Err(e) => Err(Error::db("analyzing the shadow table", e)),
            Ok(_) => Ok(()),
        }
    }

    /// Names the constraint, and the key of the first row of the batch it refuses.
    async fn explain_check(
        &self,
        m: &Migration,
        rows: &str,
        cursor: Option<&str>,
        hi: Option<&str>,
        message: String,
        e: sqlx::Error,
    ) -> Error {
        let Ok(f) = self.furniture(&m.table).await else {
            return Error::db(format!("backfill of {}", m.table), e);
        };
        // SQLite names the constraint, or writes an unnamed one's expression: that one
        // first, then the others.
        let said = message.rsplit(": ").next().unwrap_or_default().trim();
        let mut checks: Vec<_> = f.text.checks.iter().collect();
        checks.sort_by_key(|k| k.name.as_deref().unwrap_or(&k.expr) != said);
        for k in checks {
            let found =
                sqlx::query_scalar::<_, String>(sql(backfill::first_refused_key(m, &k.expr, rows)))
                    .bind(cursor)
                    .bind(hi)
                    .fetch_optional(&self.pool)
                    .await;
            if let Ok(Some(key)) = found {
                return Error::Data {
                    table: m.table.clone(),
                    key,
                    column: k.column.clone().unwrap_or_else(|| k.label()),
                    message: format!("{message} ({} on the new table)", k.label()),
                };
            }
        }
        Error::db(format!("backfill of {}", m.table), e)
    }

    /// Names the key and column of the row that made a batch fail.
    async fn explain_batch_error(
        &self,
        m: &Migration,
        rows: &str,
        cursor: Option<&str>,
        hi: Option<&str>,
        e: sqlx::Error,
    ) -> Error {
        let message = db_message(&e);
        if message.contains("CHECK constraint failed") {
            return self.explain_check(m, rows, cursor, hi, message, e).await;
        }
        let column = message
            .rsplit_once(&format!("{}.", m.shadow))
            .map(|(_, c)| c.trim().to_string())
            .or_else(|| {
                m.forward
                    .iter()
                    .find(|mp| message.contains(&mp.target))
                    .map(|mp| mp.target.clone())
            });
        let Some(column) = column else {
            return Error::db(format!("backfill of {}", m.table), e);
        };
        let key = match m.forward.iter().find(|mp| mp.target == column) {
            Some(mp) => sqlx::query_scalar::<_, String>(sql(backfill::first_null_key(m, mp, rows)))
                .bind(cursor)
                .bind(hi)
                .fetch_optional(&self.pool)
                .await
                .ok()
                .flatten(),
            None => None,
        };
        Error::Data {
            table: m.table.clone(),
            key: key.unwrap_or_else(|| "(in the batch after the saved cursor)".into()),
            column,
            message,
        }
    }
}
