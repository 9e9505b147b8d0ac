//! A replica's replay lag, read by turnout's heartbeat (`crate::db::replicas` argues why,
//! and why not `Seconds_Behind_Master`): the primary writes its clock into
//! `turnout_heartbeat`, the replica is asked which beat its SQL thread has applied. The
//! replica is asked through a session of its own, kept by the engine.

use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlDatabaseError};
use sqlx::{AssertSqlSafe, Connection};

use super::MySql;
use super::errors::sql_err;
use super::sql::replicas as q;
use crate::db::replicas::{ReplicaResult, Replicas};
use crate::error::Result;

/// A replica that does not answer within this is taken as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// ER_NO_SUCH_TABLE: the heartbeat table has not reached the replica yet.
const NO_SUCH_TABLE: u16 = 1146;

fn message(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(d) => d.message().to_string(),
        other => other.to_string(),
    }
}

fn is_no_such_table(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d)
        if d.try_downcast_ref::<MySqlDatabaseError>().is_some_and(|m| m.number() == NO_SUCH_TABLE))
}

impl Replicas for MySql {
    type Replica = MySqlConnection;

    async fn beat(&self, migration: &str) -> Result<i64> {
        let home = self.home()?;
        let mut conn = self.conn().await?;
        let clock: i64 = sqlx::query_scalar(q::CLOCK)
            .fetch_one(&mut *conn)
            .await
            .map_err(sql_err("reading the primary's clock"))?;
        let write = sqlx::query(AssertSqlSafe(q::beat(home)))
            .bind(migration)
            .bind(clock);
        match write.execute(&mut *conn).await {
            Err(e) if is_no_such_table(&e) => {
                self.exec(
                    &mut conn,
                    &q::heartbeat_table(home),
                    "creating turnout_heartbeat",
                )
                .await?;
                sqlx::query(AssertSqlSafe(q::beat(home)))
                    .bind(migration)
                    .bind(clock)
                    .execute(&mut *conn)
                    .await
                    .map_err(sql_err("writing the replicas' heartbeat"))?;
            }
            r => {
                r.map_err(sql_err("writing the replicas' heartbeat"))?;
            }
        }
        Ok(clock)
    }

    async fn connect_replica(&self, url: &str) -> ReplicaResult<MySqlConnection> {
        let options: MySqlConnectOptions = url.parse().map_err(|e: sqlx::Error| message(&e))?;
        let mut conn =
            tokio::time::timeout(CONNECT_TIMEOUT, MySqlConnection::connect_with(&options))
                .await
                .map_err(|_| format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()))?
                .map_err(|e| message(&e))?;
        let status = sqlx::raw_sql(q::REPLICA_STATUS)
            .fetch_all(&mut conn)
            .await
            .map_err(|e| message(&e))?;
        if status.is_empty() {
            return Err(
                "it is not a replica (SHOW REPLICA STATUS is empty), so it replays nothing of this primary"
                    .into(),
            );
        }
        Ok(conn)
    }

    async fn replayed_beat(
        &self,
        replica: &mut MySqlConnection,
        migration: &str,
    ) -> ReplicaResult<Option<i64>> {
        let home = self.home().map_err(|e| e.to_string())?;
        match sqlx::query_scalar::<_, i64>(AssertSqlSafe(q::replayed(home)))
            .bind(migration)
            .fetch_optional(&mut *replica)
            .await
        {
            Err(e) if is_no_such_table(&e) => Ok(None),
            r => r.map_err(|e| message(&e)),
        }
    }
}
