//! turnout_state (one row per migration, written after each step and in each batch's
//! transaction) and the migration lock: a `GET_LOCK` named after the migration, held
//! on a session of its own for as long as the migration runs.

use sqlx::mysql::MySqlConnection;
use sqlx::{ConnectOptions, Connection};

use crate::db::{Backend, StateRow};
use crate::error::{Error, Result};

use super::MySql;
use super::errors::sql_err;
use super::sql::{Bound, hash_hex};

impl MySql {
    pub(super) async fn save_on(
        conn: &mut MySqlConnection,
        row: &StateRow,
    ) -> std::result::Result<(), sqlx::Error> {
        sqlx::query(
            "REPLACE INTO turnout_state (name, plan_hash, phase, body, updated_at) VALUES (?, ?, ?, ?, NOW(6))",
        )
        .bind(&row.name)
        .bind(&row.plan_hash)
        .bind(&row.phase)
        .bind(&row.body)
        .execute(conn)
        .await?;
        Ok(())
    }

    pub(super) async fn create_state_tables(&self) -> Result<()> {
        self.home()?;
        let mut conn = self.conn().await?;
        self.exec(
            &mut conn,
            "CREATE TABLE IF NOT EXISTS turnout_state (name VARCHAR(191) NOT NULL PRIMARY KEY, plan_hash VARCHAR(64) NOT NULL, \
             phase VARCHAR(32) NOT NULL, body LONGTEXT NOT NULL, updated_at TIMESTAMP(6) NOT NULL) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
            "creating turnout_state",
        )
        .await?;
        self.exec(
            &mut conn,
            "CREATE TABLE IF NOT EXISTS turnout_failures (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, migration VARCHAR(191) NOT NULL, \
             direction VARCHAR(16) NOT NULL, key_text TEXT, error TEXT, at TIMESTAMP(6) NOT NULL, KEY (migration)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
            "creating turnout_failures",
        )
        .await
    }

    pub(super) async fn read_state(&self, name: &str) -> Result<Option<StateRow>> {
        let mut conn = self.conn().await?;
        let rows = Self::rows(&mut conn, &Bound {
            sql: "SELECT CAST(name AS CHAR), CAST(plan_hash AS CHAR), CAST(phase AS CHAR), CAST(body AS CHAR) FROM turnout_state WHERE name = ?".into(),
            binds: vec![name.into()],
        })
        .await
        .map_err(sql_err("loading the state"))?;
        Ok(rows.into_iter().map(state_row).find(|r| r.name == name))
    }

    pub(super) async fn read_states(&self) -> Result<Vec<StateRow>> {
        let mut conn = self.conn().await?;
        let rows = Self::rows(&mut conn, &Bound {
            sql: "SELECT CAST(name AS CHAR), CAST(plan_hash AS CHAR), CAST(phase AS CHAR), CAST(body AS CHAR) FROM turnout_state ORDER BY name".into(),
            binds: vec![],
        })
        .await
        .map_err(sql_err("listing the states"))?;
        Ok(rows.into_iter().map(state_row).collect())
    }

    pub(super) async fn write_state(&self, row: &StateRow) -> Result<()> {
        let mut conn = self.conn().await?;
        Self::save_on(&mut conn, row)
            .await
            .map_err(sql_err("saving the state"))
    }

    pub(super) async fn take_lock(&self, migration: &str) -> Result<()> {
        let mut guard = self.lock_conn.lock().await;
        if guard.is_none() {
            let mut c = self
                .options
                .connect()
                .await
                .map_err(|e| Error::Unreachable(e.to_string()))?;
            sqlx::raw_sql("SET SESSION wait_timeout = 31536000")
                .execute(&mut c)
                .await
                .map_err(sql_err("lock session"))?;
            *guard = Some(c);
        }
        let conn = guard
            .as_mut()
            .ok_or_else(|| Error::State("lock connection vanished".into()))?;
        let name = lock_name(self.home.as_deref(), migration);
        // A short wait, not zero: a turnout killed a moment ago still holds the lock
        // until the server notices its connection is gone.
        let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, 2)")
            .bind(&name)
            .fetch_one(&mut *conn)
            .await
            .map_err(sql_err("taking the migration lock"))?;
        if got == Some(1) {
            return Ok(());
        }
        let holder: Option<i64> = sqlx::query_scalar("SELECT CAST(IS_USED_LOCK(?) AS SIGNED)")
            .bind(&name)
            .fetch_one(&mut *conn)
            .await
            .map_err(sql_err("finding the lock holder"))?;
        let mut who = match holder {
            Some(id) => format!("connection {id}"),
            None => "a connection that just released it; try again".into(),
        };
        if let Some(id) = holder {
            let r = Self::rows(conn, &Bound {
                sql: "SELECT CAST(USER AS CHAR), CAST(HOST AS CHAR), CAST(TIME AS CHAR) FROM information_schema.PROCESSLIST WHERE ID = ?".into(),
                binds: vec![id.to_string()],
            })
            .await
            .map_err(sql_err("finding the lock holder"))?;
            if let Some(r) = r.first() {
                let f = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
                who = format!(
                    "connection {id}, {}@{}, in its current state for {}s",
                    f(0),
                    f(1),
                    f(2)
                );
            }
        }
        Err(Error::LockHeld {
            name: migration.to_string(),
            holder: who,
        })
    }

    pub(super) async fn confirm_lock(&self, migration: &str) -> Result<()> {
        {
            let mut guard = self.lock_conn.lock().await;
            if let Some(c) = guard.as_mut() {
                let mine: std::result::Result<Option<i64>, _> =
                    sqlx::query_scalar("SELECT CAST(IS_USED_LOCK(?) = CONNECTION_ID() AS SIGNED)")
                        .bind(lock_name(self.home.as_deref(), migration))
                        .fetch_one(c)
                        .await;
                if let Ok(Some(1)) = mine {
                    return Ok(());
                }
            }
            // The session died (and its lock with it) or lost the lock: start afresh.
            *guard = None;
        }
        tracing::warn!("the migration lock's session was lost; taking the lock again");
        self.lock(migration).await
    }

    pub(super) async fn release_lock(&self, migration: &str) -> Result<()> {
        if let Some(mut c) = self.lock_conn.lock().await.take() {
            // Release explicitly (once per time taken) so the lock is free when this
            // returns; a closing session releases it too, but only once the server has
            // noticed the disconnect.
            for _ in 0..1000 {
                let released: Option<i64> = sqlx::query_scalar("SELECT RELEASE_LOCK(?)")
                    .bind(lock_name(self.home.as_deref(), migration))
                    .fetch_one(&mut c)
                    .await
                    .map_err(sql_err("releasing the migration lock"))?;
                if released != Some(1) {
                    break;
                }
            }
            c.close()
                .await
                .map_err(sql_err("closing the lock session"))?;
        }
        Ok(())
    }
}

fn state_row(r: Vec<Option<String>>) -> StateRow {
    let f = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
    StateRow {
        name: f(0),
        plan_hash: f(1),
        phase: f(2),
        body: f(3),
    }
}

/// GET_LOCK names are limited to 64 characters.
/// `GET_LOCK` names are server-wide while the state lives in one database, so the name
/// carries the database: the same migration name in two databases is two migrations.
fn lock_name(home: Option<&str>, migration: &str) -> String {
    let home = home.unwrap_or("");
    let name = format!("turnout:{home}:{migration}");
    if name.chars().count() <= 64 {
        name
    } else {
        format!(
            "turnout:{}:{}",
            migration.chars().take(30).collect::<String>(),
            hash_hex(&format!("{home}\u{0}{migration}"), 16)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_names_fit_in_64_chars() {
        assert!(lock_name(Some("shop"), &"x".repeat(200)).chars().count() <= 64);
        assert_eq!(lock_name(Some("shop"), "m"), "turnout:shop:m");
        assert_ne!(
            lock_name(Some("a"), &"x".repeat(200)),
            lock_name(Some("b"), &"x".repeat(200))
        );
    }
}
