//! The turnout_state table (one checkpoint row per migration) and the migration's lease.
//! SQLite has no advisory locks: a lease row with holder, pid and heartbeat takes their
//! place, kept alive by a heartbeat task and taken over once stale or once its process
//! is gone.

use std::time::Duration;

use sqlx::Row;

use super::Sqlite;
use crate::db::StateRow;
use crate::error::{Error, Result};

/// How long a lease lives without a heartbeat before another turnout may take it over.
const LEASE_STALE_AFTER: Duration = Duration::from_secs(30);
const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);

fn save_sql() -> &'static str {
    "INSERT INTO turnout_state (name, plan_hash, phase, body, updated_at) VALUES (?1, ?2, ?3, ?4, strftime('%Y-%m-%dT%H:%M:%fZ','now')) \
     ON CONFLICT (name) DO UPDATE SET plan_hash = excluded.plan_hash, phase = excluded.phase, body = excluded.body, updated_at = excluded.updated_at"
}

pub(super) async fn save_in<'c, E>(e: E, row: &StateRow) -> Result<()>
where
    E: sqlx::Executor<'c, Database = sqlx::Sqlite>,
{
    sqlx::query(save_sql())
        .bind(&row.name)
        .bind(&row.plan_hash)
        .bind(&row.phase)
        .bind(&row.body)
        .execute(e)
        .await
        .map_err(|e| Error::db("saving the checkpoint", e))?;
    Ok(())
}

impl Sqlite {
    pub(super) async fn ensure_state_table(&self) -> Result<()> {
        for stmt in [
            "CREATE TABLE IF NOT EXISTS turnout_state (name TEXT PRIMARY KEY, plan_hash TEXT NOT NULL, phase TEXT NOT NULL, body TEXT NOT NULL, updated_at TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS turnout_lease (name TEXT PRIMARY KEY, holder TEXT NOT NULL, pid INTEGER NOT NULL, host TEXT NOT NULL, heartbeat REAL NOT NULL)",
        ] {
            sqlx::query(stmt)
                .execute(&self.pool)
                .await
                .map_err(|e| Error::db("creating turnout_state", e))?;
        }
        Ok(())
    }

    pub(super) async fn load_state(&self, name: &str) -> Result<Option<StateRow>> {
        let exists = self.exists("table", "turnout_state").await?;
        if !exists {
            return Ok(None);
        }
        let row =
            sqlx::query("SELECT name, plan_hash, phase, body FROM turnout_state WHERE name = ?1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| Error::db("reading turnout_state", e))?;
        Ok(row.as_ref().map(StateRow::from_sql))
    }

    pub(super) async fn list_states(&self) -> Result<Vec<StateRow>> {
        let rows =
            sqlx::query("SELECT name, plan_hash, phase, body FROM turnout_state ORDER BY name")
                .fetch_all(&self.pool)
                .await
                .map_err(|e| Error::db("reading turnout_state", e))?;
        Ok(rows.into_iter().map(|r| StateRow::from_sql(&r)).collect())
    }

    pub(super) async fn save_state(&self, row: &StateRow) -> Result<()> {
        let mut tx = self
            .begin_immediate()
            .await
            .map_err(|e| Error::db("saving the checkpoint", e))?;
        save_in(&mut *tx, row).await?;
        tx.commit()
            .await
            .map_err(|e| Error::db("saving the checkpoint", e))
    }

    pub(super) async fn lock(&self, migration: &str) -> Result<()> {
        let host = self
            .holder
            .rsplit(" on ")
            .next()
            .unwrap_or_default()
            .to_string();
        let mut tx = self
            .begin_immediate()
            .await
            .map_err(|e| Error::db("taking the lease", e))?;
        let current = sqlx::query(
            "SELECT holder, pid, host, (julianday('now') - julianday(heartbeat, 'unixepoch')) * 86400.0 FROM turnout_lease WHERE name = ?1",
        )
        .bind(migration)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| Error::db("reading the lease", e))?;
        if let Some(r) = current {
            let (holder, pid, their_host, age): (String, i64, String, f64) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            let gone =
                their_host == host && !std::path::Path::new(&format!("/proc/{pid}")).exists();
            let stale = age > LEASE_STALE_AFTER.as_secs_f64();
            if holder != self.holder && !gone && !stale {
                return Err(Error::LockHeld {
                    name: migration.to_string(),
                    holder: format!("{holder}, heartbeat {age:.0}s ago"),
                });
            }
        }
        sqlx::query(
            "INSERT INTO turnout_lease (name, holder, pid, host, heartbeat) VALUES (?1, ?2, ?3, ?4, unixepoch('subsec')) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, pid = excluded.pid, host = excluded.host, heartbeat = excluded.heartbeat",
        )
        .bind(migration)
        .bind(&self.holder)
        .bind(i64::from(std::process::id()))
        .bind(&host)
        .execute(&mut *tx)
        .await
        .map_err(|e| Error::db("taking the lease", e))?;
        tx.commit()
            .await
            .map_err(|e| Error::db("taking the lease", e))?;

        let pool = self.pool.clone();
        let name = migration.to_string();
        let holder = self.holder.clone();
        let beat = tokio::spawn(async move {
            loop {
                tokio::time::sleep(HEARTBEAT_EVERY).await;
                let _ = sqlx::query("UPDATE turnout_lease SET heartbeat = unixepoch('subsec') WHERE name = ?1 AND holder = ?2")
                    .bind(&name)
                    .bind(&holder)
                    .execute(&pool)
                    .await;
            }
        });
        if let Some(old) = self.heartbeat.lock().await.replace(beat) {
            old.abort();
        }
        Ok(())
    }

    pub(super) async fn keep_lock(&self, migration: &str) -> Result<()> {
        let holder: Option<String> =
            sqlx::query_scalar("SELECT holder FROM turnout_lease WHERE name = ?1")
                .bind(migration)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| Error::db("reading the lease", e))?;
        match holder {
            Some(h) if h == self.holder => Ok(()),
            // Taken over after our heartbeat went stale: the other turnout owns it now.
            Some(h) => Err(Error::LockHeld {
                name: migration.to_string(),
                holder: h,
            }),
            None => self.lock(migration).await,
        }
    }

    pub(super) async fn unlock(&self, migration: &str) -> Result<()> {
        if let Some(beat) = self.heartbeat.lock().await.take() {
            beat.abort();
        }
        sqlx::query("DELETE FROM turnout_lease WHERE name = ?1 AND holder = ?2")
            .bind(migration)
            .bind(&self.holder)
            .execute(&self.pool)
            .await
            .map_err(|e| Error::db("releasing the lease", e))?;
        Ok(())
    }
}
