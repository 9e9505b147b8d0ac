//! The sessions that would make the cutover's lock request queue (and every application
//! write behind it), and ending one when the plan says to.

use std::time::Duration;

use sqlx::Row;

use super::{Postgres, sql};
use crate::db::Blocker;
use crate::error::{Error, Result};
use crate::schema::Migration;

impl Postgres {
    pub(super) async fn find_blockers(
        &self,
        m: &Migration,
        grace: Duration,
    ) -> Result<Vec<Blocker>> {
        let rows = sqlx::query(sql(self.gen_for(m).blockers()))
            .bind(grace.as_secs_f64())
            .fetch_all(&self.pool)
            .await
            .map_err(|e| Error::db("looking for sessions that block the cutover", e))?;
        Ok(rows
            .iter()
            .map(|r| Blocker {
                session: r.get(0),
                user: r.get(1),
                application: r.get(2),
                state: r.get(3),
                transaction_ms: r.get::<i64, _>(4).max(0) as u64,
                query: r.get(5),
                certain: true,
            })
            .collect())
    }

    pub(super) async fn terminate(&self, session: &str) -> Result<()> {
        let pid: i32 = session
            .parse()
            .map_err(|_| Error::State(format!("{session:?} is not a PostgreSQL pid")))?;
        sqlx::query("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .execute(&self.pool)
            .await
            .map_err(|e| {
                Error::db(
                    format!("ending session {pid}, which blocked the cutover"),
                    e,
                )
            })?;
        Ok(())
    }
}
