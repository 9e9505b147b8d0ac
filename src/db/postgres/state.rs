//! turnout's own tables in the connection's default schema (`turnout_state`, one row per
//! migration, and `turnout_failures`, written by `on_error: record` triggers) and the
//! migration lock: a session advisory lock held on a dedicated connection for as long as
//! the backend lives, re-taken if the server ends that session.

use sqlx::postgres::PgConnection;
use sqlx::{Connection, Row};

use super::errors::sqlstate;
use super::sql::{LOCK_CLASS, qualified};
use super::{Postgres, sql};
use crate::db::{Backend, StateRow};
use crate::error::{Error, Result};

pub(super) fn save_sql(home: &str) -> String {
    format!(
        "INSERT INTO {} (name, plan_hash, phase, body, updated_at) VALUES ($1, $2, $3, $4, now()) \
         ON CONFLICT (name) DO UPDATE SET plan_hash = EXCLUDED.plan_hash, phase = EXCLUDED.phase, body = EXCLUDED.body, updated_at = EXCLUDED.updated_at",
        qualified(home, "turnout_state")
    )
}

pub(super) async fn save_in(conn: &mut PgConnection, home: &str, row: &StateRow) -> Result<()> {
    sqlx::query(sql(save_sql(home)))
        .bind(&row.name)
        .bind(&row.plan_hash)
        .bind(&row.phase)
        .bind(&row.body)
        .execute(&mut *conn)
        .await
        .map_err(|e| Error::db("saving the checkpoint", e))?;
    Ok(())
}

impl Postgres {
    pub(super) async fn create_state_tables(&self) -> Result<()> {
        for stmt in [
            format!(
                "CREATE TABLE IF NOT EXISTS {} (name text PRIMARY KEY, plan_hash text NOT NULL, phase text NOT NULL, body text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())",
                qualified(&self.home, "turnout_state")
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {} (migration text NOT NULL, direction text NOT NULL, key text, error text, at timestamptz NOT NULL DEFAULT now())",
                qualified(&self.home, "turnout_failures")
            ),
            super::sql::create_undo_table(&self.home),
        ] {
            if let Err(e) = sqlx::raw_sql(sql(stmt)).execute(&self.pool).await {
                // Two turnouts (or a turnout and a `status`) creating the table at once: the
                // loser sees a duplicate key, relation or row type.
                if !matches!(sqlstate(&e).as_deref(), Some("23505" | "42P07" | "42710")) {
                    return Err(Error::db("creating turnout_state", e));
                }
            }
        }
        Ok(())
    }

    pub(super) async fn read_state(&self, name: &str) -> Result<Option<StateRow>> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| Error::db("reading turnout_state", e))?;
        if !self
            .relation_exists(&mut conn, &qualified(&self.home, "turnout_state"))
            .await?
        {
            return Ok(None);
        }
        let row = sqlx::query(sql(format!(
            "SELECT name, plan_hash, phase, body FROM {} WHERE name = $1",
            qualified(&self.home, "turnout_state")
        )))
        .bind(name)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| Error::db("reading turnout_state", e))?;
        Ok(row.as_ref().map(StateRow::from_sql))
    }

    pub(super) async fn read_states(&self) -> Result<Vec<StateRow>> {
        let rows = sqlx::query(sql(format!(
            "SELECT name, plan_hash, phase, body FROM {} ORDER BY name",
            qualified(&self.home, "turnout_state")
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| Error::db("reading turnout_state", e))?;
        Ok(rows.into_iter().map(|r| StateRow::from_sql(&r)).collect())
    }

    pub(super) async fn write_state(&self, row: &StateRow) -> Result<()> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| Error::db("saving the checkpoint", e))?;
        save_in(&mut conn, &self.home, row).await
    }

    pub(super) async fn take_lock(&self, migration: &str) -> Result<()> {
        let mut guard = self.lock_conn.lock().await;
        let mut fresh = false;
        let got = loop {
            let conn = match &mut *guard {
                Some(c) => c,
                None => {
                    fresh = true;
                    let c = PgConnection::connect_with(&self.options)
                        .await
                        .map_err(|e| Error::db("connecting for the migration lock", e))?;
                    guard.insert(c)
                }
            };
            let r: std::result::Result<bool, sqlx::Error> =
                sqlx::query_scalar("SELECT pg_try_advisory_lock($1, hashtext($2))")
                    .bind(LOCK_CLASS)
                    .bind(format!("turnout:{migration}"))
                    .fetch_one(&mut *conn)
                    .await;
            match r {
                Ok(got) => break got,
                // The lock session died (and its locks with it): take them on a new one.
                Err(e) if !fresh && crate::error::is_connection_error(&e) => *guard = None,
                Err(e) => return Err(Error::db("taking the migration lock", e)),
            }
        };
        if got {
            return Ok(());
        }
        Err(Error::LockHeld {
            name: migration.to_string(),
            holder: self.holder_of(migration).await,
        })
    }

    pub(super) async fn confirm_lock(&self, migration: &str) -> Result<()> {
        {
            let mut guard = self.lock_conn.lock().await;
            if let Some(conn) = &mut *guard {
                // A session lock lives as long as its session: a live session still holds it.
                if sqlx::query("SELECT 1").execute(&mut *conn).await.is_ok() {
                    return Ok(());
                }
            }
            *guard = None;
        }
        tracing::warn!("the migration lock's session was lost; taking the lock again");
        self.lock(migration).await
    }

    pub(super) async fn release_lock(&self, migration: &str) -> Result<()> {
        let mut guard = self.lock_conn.lock().await;
        if let Some(conn) = &mut *guard {
            sqlx::query("SELECT pg_advisory_unlock($1, hashtext($2))")
                .bind(LOCK_CLASS)
                .bind(format!("turnout:{migration}"))
                .execute(&mut *conn)
                .await
                .map_err(|e| Error::db("releasing the migration lock", e))?;
        }
        Ok(())
    }

    async fn holder_of(&self, migration: &str) -> String {
        let row = sqlx::query(
            "SELECT a.pid, coalesce(a.application_name, ''), coalesce(host(a.client_addr), 'local socket'), \
             coalesce(to_char(a.backend_start, 'YYYY-MM-DD HH24:MI:SS TZ'), '?') \
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted AND l.classid = $1::int4::oid \
             AND l.objid = hashtext($2)::oid AND l.objsubid = 2 \
             AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) LIMIT 1",
        )
        .bind(LOCK_CLASS)
        .bind(format!("turnout:{migration}"))
        .fetch_optional(&self.pool)
        .await;
        match row {
            Ok(Some(r)) => format!(
                "pid {}, application {:?}, from {}, connected since {}",
                r.get::<i32, _>(0),
                r.get::<String, _>(1),
                r.get::<String, _>(2),
                r.get::<String, _>(3)
            ),
            _ => "another session".to_string(),
        }
    }
}
