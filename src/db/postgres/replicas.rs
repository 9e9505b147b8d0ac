//! A standby's replay lag, read by turnout's heartbeat (`crate::db::replicas` argues why):
//! the primary writes its clock into `turnout_heartbeat`, the standby is asked which beat
//! it has replayed. The standby is asked through a session of its own, kept by the engine.

use std::str::FromStr;
use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};

use super::errors::{db_message, sqlstate};
use super::{Postgres, sql};
use crate::db::replicas::{ReplicaResult, Replicas};
use crate::error::{Error, Result};

use super::sql::replicas as q;

/// A standby that does not answer within this is taken as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// `undefined_table`: the heartbeat table has not reached the standby yet.
const UNDEFINED_TABLE: &str = "42P01";

impl Replicas for Postgres {
    type Replica = PgConnection;

    async fn beat(&self, migration: &str) -> Result<i64> {
        let write = || {
            sqlx::query_scalar::<_, i64>(sql(q::beat(&self.home)))
                .bind(migration)
                .fetch_one(&self.pool)
        };
        match write().await {
            Err(e) if sqlstate(&e).as_deref() == Some(UNDEFINED_TABLE) => {
                sqlx::raw_sql(sql(q::heartbeat_table(&self.home)))
                    .execute(&self.pool)
                    .await
                    .map_err(|e| Error::db("creating turnout_heartbeat", e))?;
                write()
                    .await
                    .map_err(|e| Error::db("writing the replicas' heartbeat", e))
            }
            r => r.map_err(|e| Error::db("writing the replicas' heartbeat", e)),
        }
    }

    async fn connect_replica(&self, url: &str) -> ReplicaResult<PgConnection> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| e.to_string())?
            .application_name("turnout (replica lag)");
        let mut conn = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options))
            .await
            .map_err(|_| format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()))?
            .map_err(|e| db_message(&e))?;
        let standby: bool = sqlx::query_scalar(q::IN_RECOVERY)
            .fetch_one(&mut conn)
            .await
            .map_err(|e| db_message(&e))?;
        if !standby {
            return Err(
                "it is not a standby (pg_is_in_recovery() is false), so it replays nothing of this primary"
                    .into(),
            );
        }
        Ok(conn)
    }

    async fn replayed_beat(
        &self,
        replica: &mut PgConnection,
        migration: &str,
    ) -> ReplicaResult<Option<i64>> {
        match sqlx::query_scalar::<_, i64>(sql(q::replayed(&self.home)))
            .bind(migration)
            .fetch_optional(&mut *replica)
            .await
        {
            Err(e) if sqlstate(&e).as_deref() == Some(UNDEFINED_TABLE) => Ok(None),
            r => r.map_err(|e| db_message(&e)),
        }
    }
}
