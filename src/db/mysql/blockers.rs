//! The sessions that would make the swap's metadata-lock request queue (and every
//! application write behind it), and ending one when the plan says to. sql/blockers.rs
//! says what the server can and cannot tell.

use std::time::Duration;

use sqlx::AssertSqlSafe;

use super::MySql;
use super::errors::sql_err;
use crate::db::Blocker;
use crate::error::{Error, Result};
use crate::schema::Migration;

impl MySql {
    pub(super) async fn find_blockers(
        &self,
        m: &Migration,
        grace: Duration,
    ) -> Result<Vec<Blocker>> {
        let g = self.sql(m);
        let mut conn = self.conn().await?;
        let certain: i64 = sqlx::query_scalar(super::sql::Gen::lock_info_available())
            .fetch_one(&mut *conn)
            .await
            .map_err(sql_err("asking whether metadata_lock_info is installed"))?;
        let grace_ms = grace.as_millis() as u64;
        let query = if certain > 0 {
            g.blockers_certain(grace_ms)
        } else {
            g.blockers_possible(grace_ms)
        };
        let rows = Self::rows(&mut conn, &query)
            .await
            .map_err(sql_err("looking for sessions that block the cutover"))?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let text = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
                Blocker {
                    session: text(0),
                    user: text(1),
                    application: String::new(),
                    state: text(2),
                    transaction_ms: text(3).parse().unwrap_or(0),
                    query: text(4),
                    certain: certain > 0,
                }
            })
            .collect())
    }

    pub(super) async fn kill(&self, session: &str) -> Result<()> {
        let id: u64 = session
            .parse()
            .map_err(|_| Error::State(format!("{session:?} is not a connection id")))?;
        let mut conn = self.conn().await?;
        sqlx::raw_sql(AssertSqlSafe(format!("KILL CONNECTION {id}")))
            .execute(&mut *conn)
            .await
            .map_err(sql_err(format!(
                "ending connection {id}, which blocked the cutover"
            )))?;
        Ok(())
    }
}
