//! Backfill: rows are copied in key order, each batch of the engine's in slices of about
//! [`SLICE_TIME`] (20 ms), one transaction per slice committed with its checkpoint, so a
//! kill loses at most the slice that had not committed and resume copies it again. A
//! slice that is a deadlock victim is run again; one that fails on a row's data is
//! narrowed to the row (its rows copied one at a time). Also here: the deferred indexes
//! built after the last batch, the row estimate for progress and the plan's throttle
//! query, which paces the batches.
//!
//! Slices go two at a time (the copiers), each on its own connection, the second over
//! the range after the first's from the last key the first has read (a retry copies the
//! same range, so no gap opens between them). The first commits its own checkpoint, the
//! pair's is saved once both have committed; a crash before it copies the second range
//! again, keeping the rows the shadow holds. Measured on the benchmark's 1M rows: 4.92 s
//! with one copier, 4.69 s with two (the deferred index build is most of the rest).
//!
//! # Why a slice still takes a locking read of the live rows
//! A slice reads its range of the live table with `LOCK IN SHARE MODE` (REPEATABLE READ,
//! next-key locks), so an application write to one of its rows waits for the slice to
//! commit: at most one slice, about 20 ms, where it used to be one whole batch. The lock
//! closes the race between the copy and the triggers: a row the application deletes or
//! re-keys cannot be copied after its trigger has removed it from the shadow (the delete
//! waits for the slice, then its trigger deletes the copy; or the slice waits for the
//! delete and no longer sees the row), and an update is either read by the slice or
//! rewritten over the copy by its trigger once the slice has committed.
//!
//! A non-locking read (READ COMMITTED, where `INSERT … SELECT` reads the live table as a
//! consistent read) was measured and rejected:
//! - It does not shorten the wait. The trigger of an update to a row of the open slice
//!   writes that key into the shadow, where the slice's insert holds it locked: held open
//!   1 s, an update waited 837 ms without the locking read and 865 ms with it (the same
//!   update outside the slice: 29 ms; an ad-hoc run on MariaDB 10.11, 20,000 rows, a
//!   trigger like the forward ones). Exactly as on PostgreSQL (`db/postgres/backfill.rs`).
//! - It reopens the race: an application transaction that deleted a row (its trigger's
//!   delete of the shadow key finding nothing yet) and commits after the slice read the
//!   row leaves it copied into the shadow for good; measured, the deleted row was there.
//!   Closing that needs the triggers to leave tombstones, or a log of changed keys
//!   replayed after each slice, which is a change to the triggers, not to the copy.
//!
//! InnoDB's `innodb_flush_log_at_trx_commit` would make the more frequent commits cheaper,
//! but it is a global setting (no session scope on MariaDB), so turnout leaves it alone.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sqlx::{AssertSqlSafe, Row};

use crate::db::{BatchDone, Cursor, StateRow, copiers};
use crate::error::{Error, Result};
use crate::schema::Migration;

use super::MySql;
use super::errors::{is_data_error, is_deadlock, sql_err};
use super::sql::{Bound, Gen, cursor_values, key_cmp, parse_key_json};

/// How long one slice holds the share locks of the live rows it copies: the longest an
/// application write to one of them waits for the backfill.
pub(super) const SLICE_TIME: Duration = Duration::from_millis(20);

/// The first slice's rows, before any slice has been timed.
pub(super) const FIRST_SLICE_ROWS: u64 = 1_000;

/// The next slice's rows, steered toward [`SLICE_TIME`], at most doubling or halving so
/// one slow slice (a checkpoint flush, a lock wait) does not swing it.
fn next_slice(rows: u64, took: Duration) -> u64 {
    let ideal = rows as f64 * SLICE_TIME.as_secs_f64() / took.as_secs_f64().max(0.000_1);
    ideal
        .clamp(rows as f64 / 2.0, rows as f64 * 2.0)
        .clamp(50.0, 100_000.0) as u64
}

/// A slice's row count and last key (None: no rows).
type SliceRange = (u64, Option<Vec<String>>);

/// Why a backfill slice did not commit: the copy itself (narrowed to a row when it is a
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

    /// One batch of the engine's, committed in slices of about [`SLICE_TIME`], each with
    /// its checkpoint: a kill loses at most the slice that had not committed, and resume
    /// copies it again from the last slice's cursor. The slices go by [`copiers::count`] at a
    /// time over consecutive key ranges, each on its own connection.
    pub(super) async fn copy_next_batch(
        &self,
        m: &Migration,
        after: Option<&Cursor>,
        limit: u64,
        checkpoint: &(dyn Fn(&BatchDone) -> StateRow + Sync),
    ) -> Result<BatchDone> {
        let limit = limit.max(1);
        let mut done = BatchDone {
            rows: 0,
            last: after.cloned(),
            rest: Duration::ZERO,
        };
        loop {
            let want = match crate::fault::knob("TURNOUT_SLICE_ROWS", 0) {
                0 => self.slice_rows.load(Ordering::Relaxed),
                fixed => fixed,
            }
            .clamp(1, limit - done.rows);
            let second_want = copiers::second_rows(copiers::count(), want, limit - done.rows);
            let base = done.clone();
            let first_checkpoint = |d: &BatchDone| checkpoint(&copiers::within(&base, d));
            let (first, second) = copiers::pair(
                |tell| {
                    self.copy_slice(
                        m,
                        base.last.as_ref(),
                        want,
                        Some(&first_checkpoint),
                        Some(tell),
                    )
                },
                second_want,
                |from| async move {
                    self.copy_slice(m, Some(&from), second_want, None, None)
                        .await
                },
            )
            .await;
            let (first, held) = first?;
            let second = second.transpose()?;
            // Only a full slice says how long `want` rows take; the tail says nothing. The
            // time steered leaves out the commit's flush and the round trips around the
            // slice: counting them would shrink every slice without shortening any wait.
            if first.rows == want {
                self.slice_rows
                    .store(next_slice(want, held), Ordering::Relaxed);
            }
            let mut full = copiers::add(&mut done, &first, want);
            if let Some((second, _)) = second {
                full = copiers::add(&mut done, &second, second_want) && full;
                // Its checkpoint only now that the first slice's rows are committed too: a
                // crash before it copies the second range again, which keeps what the
                // shadow holds.
                if second.rows > 0 {
                    crate::fault::point("mysql.backfill.pair.unsaved");
                    let mut conn = self.conn().await?;
                    Self::save_on(&mut conn, &checkpoint(&done))
                        .await
                        .map_err(sql_err("backfill: saving the checkpoint"))?;
                }
            }
            crate::fault::point("mysql.backfill.slice");
            if !full || done.rows >= limit {
                return Ok(done);
            }
        }
    }

    /// One slice, run again when the server picks it as a deadlock victim: the shadow's
    /// foreign keys make the copy lock parent rows after the live rows, and a parent
    /// delete cascading into the live table locks them the other way round. The slice
    /// and its checkpoint (when given one) were rolled back together, so running it again
    /// is safe; every attempt copies the range the first one read, which `tell` learns
    /// (its last key, None: no rows). Returns how long the slice that committed held its
    /// rows.
    async fn copy_slice(
        &self,
        m: &Migration,
        after: Option<&Cursor>,
        limit: u64,
        checkpoint: Option<&(dyn Fn(&BatchDone) -> StateRow + Sync)>,
        mut tell: Option<copiers::Tell>,
    ) -> Result<(BatchDone, Duration)> {
        let mut attempt = 0;
        let mut range = None;
        loop {
            attempt += 1;
            match self
                .copy_slice_once(m, after, limit, checkpoint, &mut range, &mut tell)
                .await
            {
                Err(Error::Database { source, .. }) if attempt < 10 && is_deadlock(&source) => {
                    tracing::warn!(
                        attempt,
                        "backfill: the slice was a deadlock victim, running it again"
                    );
                    tokio::time::sleep(Duration::from_millis(20 * attempt)).await;
                }
                r => return r,
            }
        }
    }

    async fn copy_slice_once(
        &self,
        m: &Migration,
        after: Option<&Cursor>,
        limit: u64,
        checkpoint: Option<&(dyn Fn(&BatchDone) -> StateRow + Sync)>,
        range: &mut Option<SliceRange>,
        tell: &mut Option<copiers::Tell>,
    ) -> Result<(BatchDone, Duration)> {
        let g = self.sql(m);
        let after = after.map(|c| cursor_values(c, m.key.len())).transpose()?;
        let mut conn = self.conn().await?;
        // REPEATABLE READ: the slice's locking read takes next-key locks, so no row can
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
        // From the locking read to the COMMIT: the part of the slice's lock time that its
        // size decides; the commit's log flush costs the same at any size.
        let locked_from = Instant::now();
        let result: std::result::Result<BatchDone, BatchFail> = async {
            let (count, last) = match range.clone() {
                Some(known) => known,
                None => {
                    let read = self
                        .read_slice_range(&mut conn, &g, after.as_deref(), limit.max(1))
                        .await
                        .map_err(BatchFail::Other)?;
                    *range = Some(read.clone());
                    if let Some(tell) = tell.take() {
                        let _ = tell.send(read.1.as_ref().map(|l| serde_json::json!(l)));
                    }
                    read
                }
            };
            let done = match last {
                None => BatchDone {
                    rows: 0,
                    last: after.as_ref().map(|a| serde_json::json!(a)),
                    rest: Duration::ZERO,
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
                        rest: Duration::ZERO,
                    }
                }
            };
            if let Some(checkpoint) = checkpoint {
                Self::save_on(&mut conn, &checkpoint(&done))
                    .await
                    .map_err(|e| {
                        BatchFail::Other(Error::db("backfill: saving the checkpoint", e))
                    })?;
            }
            // The slice's rows are locked and its checkpoint written, nothing committed.
            crate::fault::point("mysql.backfill.slice.open");
            Ok(done)
        }
        .await;
        match result {
            Ok(done) => {
                let held = locked_from.elapsed();
                self.exec(&mut conn, "COMMIT", "backfill: committing the slice")
                    .await?;
                Ok((done, held))
            }
            Err(fail) => {
                // Nothing of the slice may stay: not its rows, not its checkpoint.
                let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
                match fail {
                    BatchFail::Copy(_last, e) if is_data_error(&e) => {
                        // Only now are the slice's keys needed, to find the row.
                        let keys =
                            Self::rows(&mut conn, &g.batch_keys(after.as_deref(), limit.max(1)))
                                .await
                                .map_err(sql_err("backfill: reading the failed slice"))?
                                .into_iter()
                                .filter_map(|r| r.into_iter().next().flatten())
                                .map(|s| parse_key_json(&s))
                                .collect::<Result<Vec<_>>>()?;
                        Err(self.find_bad_row(&g, &keys, &e).await?)
                    }
                    BatchFail::Copy(_, e) => Err(Error::db("backfill: copying the slice", e)),
                    BatchFail::Other(e) => Err(e),
                }
            }
        }
    }

    /// The slice's row count and last key (None: no rows), read with a locking read that
    /// holds the range until the slice commits.
    async fn read_slice_range(
        &self,
        conn: &mut sqlx::MySqlConnection,
        g: &Gen<'_>,
        after: Option<&[String]>,
        limit: u64,
    ) -> Result<SliceRange> {
        let parse = |rows: Vec<Vec<Option<String>>>| -> Result<Vec<Vec<String>>> {
            rows.into_iter()
                .filter_map(|r| r.into_iter().next().flatten())
                .map(|s| parse_key_json(&s))
                .collect()
        };
        let reading = || sql_err("backfill: reading the next slice");
        let last_key = parse(
            Self::rows(conn, &g.batch_last_key(after, limit))
                .await
                .map_err(reading())?,
        )?;
        // A full slice: `limit` rows up to that key. The tail: read its keys.
        Ok(match last_key.into_iter().next() {
            Some(last) => (limit, Some(last)),
            None => {
                let keys = parse(
                    Self::rows(conn, &g.batch_keys(after, limit))
                        .await
                        .map_err(reading())?,
                )?;
                (keys.len() as u64, keys.last().cloned())
            }
        })
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
                .ddl_waiting(&mut conn, &sql, "backfill: building the indexes")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slice_is_steered_toward_its_time_at_most_doubling_or_halving() {
        assert_eq!(next_slice(1000, SLICE_TIME), 1000);
        assert_eq!(next_slice(1000, SLICE_TIME * 2), 500);
        assert_eq!(next_slice(1000, SLICE_TIME / 2), 2000);
        // A very slow or very fast slice moves it by half or double, no further.
        assert_eq!(next_slice(1000, Duration::from_secs(5)), 500);
        assert_eq!(next_slice(1000, Duration::ZERO), 2000);
        // Never below 50 rows a slice, never above 100,000.
        assert_eq!(next_slice(60, Duration::from_secs(1)), 50);
        assert_eq!(next_slice(90_000, Duration::from_millis(1)), 100_000);
    }
}
