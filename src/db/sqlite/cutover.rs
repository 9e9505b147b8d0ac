//! Cutover (the swap, in one `BEGIN IMMEDIATE` under the lock timeout), cleanup and
//! rollback; trigger failures (none on SQLite) and the throttle query. Both swaps run on
//! a connection in rename mode (foreign keys off, legacy renames: see [`super::furniture`])
//! and move the application's triggers along inside the same transaction.

use std::time::Duration;

use sqlx::Row;

use super::errors::is_busy;
use super::furniture::{move_triggers, rename_mode, user_triggers};
use super::sql::cutover::{carry_sequence, drop_all_triggers, drop_shadow, swap, swap_back};
use super::sql::triggers::triggers;
use super::sql::{backfill::analyze_shadow, names, reverse};
use super::state::save_in;
use super::{Sqlite, sql};
use crate::db::{CutoverOutcome, StateRow};
use crate::error::{Error, Result};
use crate::schema::Migration;

impl Sqlite {
    /// Swaps every table of the plan in one transaction: the application sees all of
    /// them swapped or none. Children of a migrated table that are migrated too
    /// reference it by name, so from the commit on the new child references the new
    /// parent.
    pub(super) async fn cutover(
        &self,
        ms: &[Migration],
        lock_timeout: Duration,
        save: &StateRow,
    ) -> Result<CutoverOutcome> {
        let tables = ms
            .iter()
            .map(|m| m.table.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let ctx = |e| Error::db(format!("cutover of {tables}"), e);
        for m in ms {
            sqlx::query(sql(analyze_shadow(m)))
                .execute(&self.pool)
                .await
                .ok();
        }
        let mut conn = self.pool.acquire().await.map_err(ctx)?;
        let ms_timeout = lock_timeout.as_millis().max(1);
        sqlx::query(sql(format!("PRAGMA busy_timeout = {ms_timeout}")))
            .execute(&mut *conn)
            .await
            .map_err(ctx)?;
        // Views, triggers and children's foreign keys that name the table must keep naming
        // `<table>`, i.e. follow the new table.
        rename_mode(&mut conn, true).await?;
        let outcome: Result<CutoverOutcome> = async {
            if let Err(e) = sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await {
                if is_busy(&e) {
                    return Ok(CutoverOutcome::LockTimeout);
                }
                return Err(ctx(e));
            }
            let mut stmts = Vec::new();
            let sequences = self.exists("table", "sqlite_sequence").await?;
            for m in ms {
                let n = names(m);
                let swapped =
                    self.exists("table", &m.old).await? && !self.exists("table", &m.shadow).await?;
                if !swapped {
                    let user = user_triggers(&mut conn, m).await?;
                    stmts.extend(move_triggers(&user, swap(m, &n)));
                }
                if sequences {
                    stmts.extend(carry_sequence(&m.old, &m.table));
                }
                stmts.extend(triggers(&reverse(m, &n)));
            }
            for (i, stmt) in stmts.into_iter().enumerate() {
                if i > 0 {
                    crate::fault::point("cutover.between");
                }
                if let Err(e) = sqlx::query(sql(stmt)).execute(&mut *conn).await {
                    let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                    return Err(ctx(e));
                }
            }
            crate::fault::point("cutover.inside");
            if let Err(e) = save_in(&mut *conn, save).await {
                let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                return Err(e);
            }
            sqlx::query("COMMIT")
                .execute(&mut *conn)
                .await
                .map_err(ctx)?;
            Ok(CutoverOutcome::Swapped)
        }
        .await;
        let _ = rename_mode(&mut conn, false).await;
        let _ = sqlx::query("PRAGMA busy_timeout = 10000")
            .execute(&mut *conn)
            .await;
        outcome
    }

    pub(super) async fn cleanup(
        &self,
        m: &Migration,
        keep_old: bool,
        save: &StateRow,
    ) -> Result<()> {
        let ctx = |e| Error::db(format!("cleanup of {}", m.table), e);
        let mut tx = self.begin_immediate().await.map_err(ctx)?;
        let stmts = sql::cutover::cleanup(m, keep_old);
        for stmt in stmts {
            sqlx::query(sql(stmt))
                .execute(&mut *tx)
                .await
                .map_err(ctx)?;
        }
        crate::fault::point("cleanup.inside");
        save_in(&mut *tx, save).await?;
        tx.commit().await.map_err(ctx)
    }

    /// Puts every table of the plan back in one transaction.
    pub(super) async fn rollback(&self, ms: &[Migration], save: &StateRow) -> Result<()> {
        let tables = ms
            .iter()
            .map(|m| m.table.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let ctx = |e| Error::db(format!("rollback of {tables}"), e);
        let mut conn = self.pool.acquire().await.map_err(ctx)?;
        rename_mode(&mut conn, true).await?;
        let result: Result<()> = async {
            sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await.map_err(ctx)?;
            let mut stmts = Vec::new();
            let sequences = self.exists("table", "sqlite_sequence").await?;
            for m in ms {
                let n = names(m);
                stmts.extend(drop_all_triggers(m, &n));
                if self.exists("table", &m.old).await? {
                    // After cutover: `<table>` is the new table; put the original back.
                    if self.exists("table", &m.shadow).await? {
                        let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                        return Err(Error::State(format!(
                            "both {} and {} exist next to {}; turnout cannot tell which is the original. Inspect them and drop the wrong one",
                            m.old, m.shadow, m.table
                        )));
                    }
                    let user = user_triggers(&mut conn, m).await?;
                    stmts.extend(move_triggers(&user, swap_back(m)));
                    if sequences {
                        stmts.extend(carry_sequence(&m.shadow, &m.table));
                    }
                }
                stmts.push(drop_shadow(m));
            }
            for (i, stmt) in stmts.into_iter().enumerate() {
                if i > 0 {
                    crate::fault::point("rollback.between");
                }
                if let Err(e) = sqlx::query(sql(stmt)).execute(&mut *conn).await {
                    let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                    return Err(ctx(e));
                }
            }
            crate::fault::point("rollback.inside");
            if let Err(e) = save_in(&mut *conn, save).await {
                let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                return Err(e);
            }
            sqlx::query("COMMIT").execute(&mut *conn).await.map_err(ctx)?;
            Ok(())
        }
        .await;
        let _ = rename_mode(&mut conn, false).await;
        result
    }

    pub(super) async fn trigger_failures(&self, _m: &Migration) -> Result<Vec<String>> {
        // SQLite triggers cannot catch errors: a failing mapping fails the application's
        // statement itself, so nothing is ever recorded.
        Ok(Vec::new())
    }

    pub(super) async fn throttle_value(&self, query: &str) -> Result<f64> {
        let row = sqlx::query(sql(query.to_string()))
            .fetch_one(&self.pool)
            .await
            .map_err(|e| Error::db("running the throttle query", e))?;
        row.try_get::<f64, _>(0)
            .or_else(|_| row.try_get::<i64, _>(0).map(|v| v as f64))
            .map_err(|e| Error::db("reading the throttle query's value", e))
    }
}
