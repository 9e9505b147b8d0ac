//! Backfill: keyset batches copied in one transaction with their checkpoint, the row
//! a failed batch could not map (found by copying its rows one at a time), the
//! deferred indexes built once the copy is done, the row estimate for progress and the
//! plan's throttle query, which paces the batches.

use sqlx::{AssertSqlSafe, Row};

use crate::db::{BatchDone, Cursor, StateRow};
use crate::error::{Error, Result};
use crate::schema::Migration;

use super::MySql;
use super::errors::{is_data_error, is_deadlock, sql_err};
use super::sql::{Bound, Gen, cursor_values, key_cmp, parse_key_json};

/// Why a backfill batch did not commit: the copy itself (narrowed to a row when it is a
/// value that does not fit) or anything else.
enum BatchFail {
    /// The copy up to this last key failed.
    Copy(Vec<String>, sqlx::Error),
    Other(Error),
}

impl MySql {
    /// The first row of a failed batch that does not map, with the column and message.
    async fn find_bad_row(
        &self,
        g: &Gen<'_>,
        keys: &[Vec<String>],
        first: &sqlx::Error,
    ) -> Result<Error> {
        let mut conn = self.conn().await?;
        let cols = g.old_key_cols();
        for key in keys {
            self.exec(
                &mut conn,
                "START TRANSACTION",
                "backfill: narrowing a failed batch",
            )
            .await?;
            let mut b = g.batch_insert(None, key);
            let ge = key_cmp(&cols, key, ">", true);
            // `(k) <= key AND (k) >= key`: exactly this row.
            b.sql = b
                .sql
                .replacen(" WHERE ", &format!(" WHERE {} AND ", ge.sql), 1);
            let mut binds = ge.binds;
            binds.extend(b.binds);
            b.binds = binds;
            let res = Self::rows(&mut conn, &b).await;
            self.exec(&mut conn, "ROLLBACK", "backfill: narrowing a failed batch")
                .await?;
            if let Err(e) = res {
                if is_data_error(&e) {
                    return Ok(self.data_error(g, key, &e));
                }
                return Err(Error::db("backfill: narrowing a failed batch", e));
            }
        }
        Ok(self.data_error(g, keys.first().map(Vec::as_slice).unwrap_or(&[]), first))
    }

    pub(super) async fn estimate_live_rows(&self, m: &Migration) -> Result<u64> {
        let g = self.sql(m);
        let mut conn = self.conn().await?;
        let r = Self::rows(&mut conn, &Bound {
            sql: "SELECT CAST(TABLE_ROWS AS CHAR), CAST(TABLE_NAME AS CHAR) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?".into(),
            binds: vec![g.n.schema.clone().unwrap_or_default(), m.table.clone()],
        })
        .await
        .map_err(sql_err("estimating rows"))?;
        Ok(r.into_iter()
            .find(|r| r[1].as_deref() == Some(m.table.as_str()))
            .and_then(|r| r[0].clone())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0))
    }

    /// One batch, run again when the server picks it as a deadlock victim: the shadow's
    /// foreign keys make the copy lock parent rows after the live rows, and a parent
    /// delete cascading into the live table locks them the other way round. The batch
    /// and its checkpoint were rolled back together, so running it again is safe.
    pub(super) async fn copy_next_batch(
        &self,
        m: &Migration,
        after: Option<&Cursor>,
        limit: u64,
        checkpoint: &(dyn Fn(&BatchDone) -> StateRow + Sync),
    ) -> Result<BatchDone> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.copy_batch_once(m, after, limit, checkpoint).await {
                Err(Error::Database { source, .. }) if attempt < 10 && is_deadlock(&source) => {
                    tracing::warn!(
                        attempt,
                        "backfill: the batch was a deadlock victim, running it again"
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(20 * attempt)).await;
                }
                r => return r,
            }
        }
    }

    async fn copy_batch_once(
        &self,
        m: &Migration,
        after: Option<&Cursor>,
        limit: u64,
        checkpoint: &(dyn Fn(&BatchDone) -> StateRow + Sync),
    ) -> Result<BatchDone> {
        let g = self.sql(m);
        let after = after.map(|c| cursor_values(c, m.key.len())).transpose()?;
        let mut conn = self.conn().await?;
        // REPEATABLE READ: the batch's locking read takes next-key locks, so no row can
        // appear in or leave the range until the copy commits, and INSERT … SELECT reads
        // the same (current, locked) rows.
        self.exec(
            &mut conn,
            "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
            "backfill",
        )
        .await?;
        self.exec(&mut conn, "START TRANSACTION", "backfill")
            .await?;
        let result: std::result::Result<BatchDone, BatchFail> = async {
            let parse = |rows: Vec<Vec<Option<String>>>| -> Result<Vec<Vec<String>>> {
                rows.into_iter()
                    .filter_map(|r| r.into_iter().next().flatten())
                    .map(|s| parse_key_json(&s))
                    .collect()
            };
            let last_key = Self::rows(&mut conn, &g.batch_last_key(after.as_deref(), limit.max(1)))
                .await
                .map_err(|e| BatchFail::Other(Error::db("backfill: reading the next batch", e)))?;
            let last_key = parse(last_key).map_err(BatchFail::Other)?;
            // A full batch: `limit` rows up to that key. The tail: read its keys.
            let (count, last) = match last_key.into_iter().next() {
                Some(last) => (limit.max(1), Some(last)),
                None => {
                    let keys = Self::rows(&mut conn, &g.batch_keys(after.as_deref(), limit.max(1)))
                        .await
                        .map_err(|e| {
                            BatchFail::Other(Error::db("backfill: reading the next batch", e))
                        })?;
                    let keys = parse(keys).map_err(BatchFail::Other)?;
                    (keys.len() as u64, keys.last().cloned())
                }
            };
            let done = match last {
                None => BatchDone {
                    rows: 0,
                    last: after.as_ref().map(|a| serde_json::json!(a)),
                    rest: std::time::Duration::ZERO,
                },
                Some(last) => {
                    if let Err(e) =
                        Self::rows(&mut conn, &g.batch_insert(after.as_deref(), &last)).await
                    {
                        return Err(BatchFail::Copy(last, e));
                    }
                    BatchDone {
                        rows: count,
                        last: Some(serde_json::json!(last)),
                        rest: std::time::Duration::ZERO,
                    }
                }
            };
            Self::save_on(&mut conn, &checkpoint(&done))
                .await
                .map_err(|e| BatchFail::Other(Error::db("backfill: saving the checkpoint", e)))?;
            Ok(done)
        }
        .await;
        match result {
            Ok(done) => {
                self.exec(&mut conn, "COMMIT", "backfill: committing the batch")
                    .await?;
                Ok(done)
            }
            Err(fail) => {
                // Nothing of the batch may stay: not its rows, not its checkpoint.
                let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
                match fail {
                    BatchFail::Copy(_last, e) if is_data_error(&e) => {
                        // Only now are the batch's keys needed, to find the row.
                        let keys =
                            Self::rows(&mut conn, &g.batch_keys(after.as_deref(), limit.max(1)))
                                .await
                                .map_err(sql_err("backfill: reading the failed batch"))?
                                .into_iter()
                                .filter_map(|r| r.into_iter().next().flatten())
                                .map(|s| parse_key_json(&s))
                                .collect::<Result<Vec<_>>>()?;
                        Err(self.find_bad_row(&g, &keys, &e).await?)
                    }
                    BatchFail::Copy(_, e) => Err(Error::db("backfill: copying the batch", e)),
                    BatchFail::Other(e) => Err(e),
                }
            }
        }
    }

    pub(super) async fn build_deferred_indexes(&self, m: &Migration) -> Result<()> {
        let g = self.sql(m);
        let mut conn = self.conn().await?;
        // Idempotent: after a crash the indexes already built are skipped.
        let schema = g.n.schema.clone().unwrap_or_default();
        let existing = Self::index_names(&mut conn, &schema, &g.n.shadow).await?;
        if let Some(sql) = g.add_indexes(&existing) {
            crate::fault::point("mysql.backfill.before_indexes");
            let built = self
                .ddl_retry(&mut conn, &sql, "backfill: building the indexes")
                .await;
            // A turnout killed during the build leaves the server finishing it: once it
            // has, this one's ALTER fails on the names, and the indexes are there.
            if let Err(e) = built {
                let now = Self::index_names(&mut conn, &schema, &g.n.shadow).await?;
                if g.add_indexes(&now).is_some() {
                    return Err(e);
                }
            }
            crate::fault::point("mysql.backfill.after_indexes");
        }
        self.exec(
            &mut conn,
            &format!("ANALYZE TABLE {}", g.n.q(&g.n.shadow)),
            "analyzing the shadow",
        )
        .await
    }

    pub(super) async fn run_throttle_query(&self, sql: &str) -> Result<f64> {
        let mut conn = self.conn().await?;
        let row = sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
            .fetch_optional(&mut *conn)
            .await
            .map_err(sql_err("running the throttle query"))?;
        let Some(row) = row else { return Ok(0.0) };
        let v = row
            .try_get::<Option<f64>, _>(0)
            .ok()
            .flatten()
            .or_else(|| {
                row.try_get::<Option<i64>, _>(0)
                    .ok()
                    .flatten()
                    .map(|v| v as f64)
            })
            .or_else(|| {
                row.try_get::<Option<u64>, _>(0)
                    .ok()
                    .flatten()
                    .map(|v| v as f64)
            })
            .or_else(|| {
                row.try_get::<Option<String>, _>(0)
                    .ok()
                    .flatten()
                    .and_then(|s| s.trim().parse().ok())
            });
        Ok(v.unwrap_or(0.0))
    }
}
