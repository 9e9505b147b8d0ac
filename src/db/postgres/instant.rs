//! The instant path on PostgreSQL: which of the plan's added defaults are volatile is
//! asked of the server (on a scratch table, rolled back); the statements run in one
//! transaction bounded by the cutover's lock timeout with the state row; an index is
//! built `CONCURRENTLY` outside any transaction, and one a crash left INVALID is
//! dropped and built again.

use std::collections::HashSet;
use std::time::Duration;

use super::errors::{is_conflict, is_lock_timeout};
use super::sql::instant as isql;
use super::sql::lock_wait;
use super::state::save_in;
use super::{Postgres, run_all, sql};
use crate::db::{CutoverOutcome, InstantStep, InstantVerdict, StateRow};
use crate::error::{Error, Result};
use crate::plan::Change;
use crate::schema::Migration;

impl Postgres {
    pub(super) async fn instant_verdict(
        &self,
        m: &Migration,
        changes: &[Change],
    ) -> Result<InstantVerdict> {
        let mut volatile = HashSet::new();
        for d in isql::defaults(changes) {
            if self.rewrites_for(&d).await? {
                volatile.insert(d);
            }
        }
        let schema = self.gen_for(m).schema;
        Ok(match isql::plan(m, &schema, changes, &volatile) {
            Ok(steps) => InstantVerdict::Instant(steps),
            Err(why) => InstantVerdict::Copy(why),
        })
    }

    /// Whether adding a column with this default rewrites a table: the server itself
    /// answers, on a scratch table in a transaction that is rolled back.
    async fn rewrites_for(&self, d: &isql::AddedDefault) -> Result<bool> {
        let ctx = |e| Error::db(format!("asking whether the default {} is volatile", d.1), e);
        let [create, insert, add, filenode] = isql::volatility_probe(d);
        let mut tx = self.pool.begin().await.map_err(ctx)?;
        run_all(&mut tx, &[create, insert]).await.map_err(ctx)?;
        let before: String = sqlx::query_scalar(sql(filenode.clone()))
            .fetch_one(&mut *tx)
            .await
            .map_err(ctx)?;
        run_all(&mut tx, &[add]).await.map_err(ctx)?;
        let after: String = sqlx::query_scalar(sql(filenode))
            .fetch_one(&mut *tx)
            .await
            .map_err(ctx)?;
        tx.rollback().await.map_err(ctx)?;
        Ok(before != after)
    }

    pub(super) async fn run_instant(
        &self,
        m: &Migration,
        statements: &[String],
        lock_timeout: Duration,
        save: &StateRow,
    ) -> Result<CutoverOutcome> {
        let ctx = |e| Error::db(format!("instant change of {}", m.table), e);
        let mut tx = self.pool.begin().await.map_err(ctx)?;
        let attempt: std::result::Result<(), sqlx::Error> = async {
            sqlx::raw_sql(sql(lock_wait(lock_timeout)))
                .execute(&mut *tx)
                .await?;
            run_all(&mut tx, statements).await
        }
        .await;
        match attempt {
            Ok(()) => {}
            Err(e) if is_lock_timeout(&e) || is_conflict(&e) => {
                tx.rollback().await.map_err(ctx)?;
                return Ok(CutoverOutcome::LockTimeout);
            }
            Err(e) => return Err(ctx(e)),
        }
        crate::fault::point("instant.inside");
        save_in(&mut tx, &self.home, save).await?;
        tx.commit().await.map_err(ctx)?;
        Ok(CutoverOutcome::Swapped)
    }

    pub(super) async fn build_online_index(
        &self,
        m: &Migration,
        step: &InstantStep,
        undo: bool,
    ) -> Result<()> {
        let Some(name) = &step.online_index else {
            return Err(Error::State(format!(
                "{} is not an online index build",
                step.change
            )));
        };
        let ctx = |e| Error::db(format!("index {name:?} on {}", m.table), e);
        if undo {
            return sqlx::raw_sql(sql(step.reverse.clone()))
                .execute(&self.pool)
                .await
                .map(|_| ())
                .map_err(ctx);
        }
        let schema = self.gen_for(m).schema;
        let valid: Option<bool> = sqlx::query_scalar(isql::index_validity())
            .bind(&schema)
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(ctx)?;
        match valid {
            Some(true) => return Ok(()),
            Some(false) => {
                tracing::info!(
                    "index {name:?} was left INVALID by a build cut short; building it again"
                );
                sqlx::raw_sql(sql(isql::drop_invalid(&schema, name)))
                    .execute(&self.pool)
                    .await
                    .map_err(ctx)?;
            }
            None => {}
        }
        sqlx::raw_sql(sql(step.forward.clone()))
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(ctx)
    }
}
