//! Backfill: rows are copied in key order, each batch of the engine's in slices of about
//! 20 ms, one transaction per slice committed with its checkpoint; a slice that deadlocks
//! or times out waiting for the application is retried, and one that fails on a row's data
//! is narrowed to the key and column that made it fail. After the last batch the deferred
//! indexes are built concurrently (`sql/shadow.rs`).
//!
//! Slices go two at a time (the copiers), each on its own connection: the second copies
//! the range after the first's, from the last key the first has read, and every retry of
//! the first copies exactly that range, so the two leave no gap. The first commits the
//! checkpoint of its range; the pair's is saved once both have committed. A crash before
//! that resumes from the first's checkpoint and copies the second range again, which
//! leaves out every row the shadow holds (they came from that slice or from the triggers,
//! and the triggers have kept them current since). One copier takes 1M rows in 5.2 s of
//! the benchmark, two in 3.9 s.
//!
//! A slice reads the live rows without locking them, so no application write waits on the
//! live table for the backfill, and the copy writes nothing there (a share lock would mark
//! every row it copies: a WAL record each, and a full-page image of every page after each
//! checkpoint, which the application's commits then wait to flush). Why the shadow still
//! ends exactly as the application wrote, for a row R of the slice's key range:
//!
//! - The slice inserts R as its snapshot saw it unless the shadow holds R already: that row
//!   came from the triggers and is newer. (A trigger's row of the range committed after the
//!   snapshot, or still open, makes the insert fail on the shadow's key or wait for it; the
//!   slice is then copied again `ON CONFLICT DO NOTHING`, which skips such a row in the
//!   same way, slower.) An application write to R whose trigger runs while the slice's
//!   insert of R is uncommitted waits for it on the shadow's key (at most one slice, about
//!   20 ms) and then overwrites it; one whose trigger ran first has its row kept, or, if it
//!   rolled back, leaves the slice to insert R as it is.
//! - A delete of R (or a change of its key) is the one write the slice could undo: its
//!   trigger's `DELETE` cannot see the slice's uncommitted insert of R, which would then
//!   commit a row the application deleted. So the slice holds an advisory lock (the
//!   barrier, one per copier) exclusively for its whole transaction, and the forward
//!   trigger takes every copier's shared before deleting from the shadow. A delete during
//!   a slice waits for that slice to commit and then deletes what it copied; a slice
//!   opened after a delete waits until the deleting transaction ends (its shared lock
//!   lasts as long), so its snapshot no longer holds R. Either way the deleted row cannot
//!   come back.
//! - The barrier is the slice's first statement, before it touches the shadow, so a
//!   deleting transaction waiting for the barrier holds nothing the slice waits for unless
//!   it also wrote a shadow row of the slice's range; for that cycle the slice's later waits
//!   are bounded (`lock_timeout` at most half the server's `deadlock_timeout`) and it is the
//!   slice that gives way and is retried.
//!
//! An application transaction at REPEATABLE READ or SERIALIZABLE whose snapshot predates a
//! slice's commit cannot see the rows that slice copied, so its delete of one of them misses
//! it (as it did with the share lock); verify finds such a row and refuses the cutover.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sqlx::Row;

use super::errors::{db_message, is_conflict, is_lock_timeout, sqlstate};
use super::sql::{Gen, full_cast, list, loose_cast, quote};
use super::state::save_in;
use super::{Postgres, bind_texts, sql};
use crate::db::{BatchDone, Cursor, StateRow, copiers, render_source};
use crate::error::{Error, Result};
use crate::schema::Migration;

/// A batch that deadlocks with the application is retried this many times.
const BATCH_ATTEMPTS: u32 = 5;

/// A slice whose copy times out waiting for an application transaction (see the module
/// doc) is retried this many times, about a minute in all, before the backfill stops with
/// a state that `resume` continues from.
const SLICE_WAIT_ATTEMPTS: u32 = 300;

/// How long one slice of a batch holds its rows: the longest an application write to one
/// of them waits for the backfill.
pub(super) const SLICE_TIME: Duration = Duration::from_millis(20);

/// The first slice's rows, before any slice has been timed.
pub(super) const FIRST_SLICE_ROWS: u64 = 1_000;

/// The next slice's rows, steered toward [`SLICE_TIME`], at most doubling or halving.
fn next_slice(rows: u64, took: Duration) -> u64 {
    let ideal = rows as f64 * SLICE_TIME.as_secs_f64() / took.as_secs_f64().max(0.000_1);
    ideal
        .clamp(rows as f64 / 2.0, rows as f64 * 2.0)
        .clamp(50.0, 100_000.0) as u64
}

/// The values of a cursor, as the text the key columns are cast back from.
pub(super) fn cursor_values(c: &Cursor, n: usize) -> Result<Vec<String>> {
    let bad = || {
        Error::State(format!(
            "the saved backfill cursor {c} is not a key of {n} values; roll back and start again"
        ))
    };
    let arr = c.as_array().ok_or_else(bad)?;
    if arr.len() != n {
        return Err(bad());
    }
    arr.iter()
        .map(|v| match v {
            serde_json::Value::String(s) => Ok(s.clone()),
            serde_json::Value::Null => Err(bad()),
            other => Ok(other.to_string()),
        })
        .collect()
}

pub(super) fn parse_cursor(text: &str) -> Result<Cursor> {
    serde_json::from_str(text).map_err(|e| {
        Error::State(format!(
            "the database returned a key that is not JSON ({e}): {text}"
        ))
    })
}

impl Postgres {
    pub(super) async fn count_live_rows(&self, m: &Migration) -> Result<u64> {
        let g = self.gen_for(m);
        let ctx = |e| Error::db("estimating rows", e);
        // Counting is exact and cheap up to this many rows; beyond, the planner's estimate.
        const COUNT_UP_TO: i64 = 100_000;
        let counted: i64 = sqlx::query_scalar(sql(format!(
            "SELECT count(*) FROM (SELECT 1 FROM {} LIMIT {COUNT_UP_TO}) AS c",
            g.live()
        )))
        .fetch_one(&self.pool)
        .await
        .map_err(ctx)?;
        if counted < COUNT_UP_TO {
            return Ok(counted.max(0) as u64);
        }
        let estimate: Option<f64> = sqlx::query_scalar(
            "SELECT reltuples::float8 FROM pg_class WHERE oid = to_regclass($1)",
        )
        .bind(g.live())
        .fetch_optional(&self.pool)
        .await
        .map_err(ctx)?;
        Ok(estimate.unwrap_or(0.0).max(counted as f64) as u64)
    }

    /// One batch of the engine's, committed in slices of about [`SLICE_TIME`] each with its
    /// checkpoint, so an application write that must wait for the backfill (see the module
    /// doc) waits for one slice, not for the whole batch. The slices go by [`copiers::count`] at a
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
            let steered = self.slice_rows.load(Ordering::Relaxed);
            let want = match crate::fault::knob("TURNOUT_SLICE_ROWS", 0) {
                0 => steered,
                fixed => fixed,
            }
            .min(limit - done.rows);
            let second_want = copiers::second_rows(copiers::count(), want, limit - done.rows);
            let t0 = Instant::now();
            let base = done.clone();
            let first_checkpoint = |d: &BatchDone| checkpoint(&copiers::within(&base, d));
            let (first, second) = copiers::pair(
                |tell| {
                    self.copy_slice(
                        m,
                        base.last.as_ref(),
                        want,
                        0,
                        Some(&first_checkpoint),
                        Some(tell),
                    )
                },
                second_want,
                |from| async move {
                    self.copy_slice(m, Some(&from), second_want, 1, None, None)
                        .await
                },
            )
            .await;
            let first = first?;
            let second = second.transpose()?;
            if first.rows == want {
                self.slice_rows
                    .store(next_slice(want, t0.elapsed()), Ordering::Relaxed);
            }
            let mut full = copiers::add(&mut done, &first, want);
            if let Some(second) = second {
                full = copiers::add(&mut done, &second, second_want) && full;
                // Its checkpoint only now that the first slice's rows are committed too: a
                // crash before it copies the second range again, which leaves out what
                // the shadow holds.
                if second.rows > 0 {
                    crate::fault::point("postgres.backfill.pair.unsaved");
                    self.save_checkpoint(&checkpoint(&done)).await?;
                }
            }
            crate::fault::point("postgres.backfill.slice");
            if !full || done.rows >= limit {
                if done.rows == 0 {
                    done.last = None;
                }
                return Ok(done);
            }
        }
    }

    /// A checkpoint in a transaction of its own, which a crash may lose like a slice's.
    async fn save_checkpoint(&self, row: &StateRow) -> Result<()> {
        let ctx = |e| Error::db("saving the backfill checkpoint", e);
        let mut tx = self.pool.begin().await.map_err(ctx)?;
        sqlx::raw_sql("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await
            .map_err(ctx)?;
        save_in(&mut tx, &self.home, row).await?;
        tx.commit().await.map_err(ctx)
    }

    /// Copies up to `limit` rows after `after` in one transaction behind copier `copier`'s
    /// barrier, committed with the checkpoint of what it copied when given one. `tell`
    /// learns the range's last key (None: no rows) once it is read; every attempt of the
    /// slice then copies exactly that range, so a slice started from it leaves no gap.
    async fn copy_slice(
        &self,
        m: &Migration,
        after: Option<&Cursor>,
        limit: u64,
        copier: usize,
        checkpoint: Option<&(dyn Fn(&BatchDone) -> StateRow + Sync)>,
        mut tell: Option<copiers::Tell>,
    ) -> Result<BatchDone> {
        let g = self.gen_for(m);
        let ctx = |e| Error::db(format!("backfill of {}", m.table), e);
        let cursor = after.map(|c| cursor_values(c, m.key.len())).transpose()?;
        let limit = limit.max(1);
        let mut attempt = 0;
        let mut waits = 0;
        // The copy without ON CONFLICT first (see `Gen::batch_copy_absent`).
        let mut careful = false;
        // The range's size and last key, read by the first attempt.
        let mut range: Option<Option<(i64, String)>> = None;
        loop {
            attempt += 1;
            let mut tx = self.pool.begin().await.map_err(ctx)?;
            sqlx::raw_sql(sql(g.slice_opening(copier)))
                .execute(&mut *tx)
                .await
                .map_err(ctx)?;
            let bounds = match &range {
                Some(known) => known.clone(),
                None => {
                    let mut q =
                        sqlx::query(sql(g.batch_bounds(cursor.is_some(), &limit.to_string())));
                    if let Some(c) = &cursor {
                        q = bind_texts(q, c);
                    }
                    let read = q
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(ctx)?
                        .map(|b| (b.get::<i64, _>(0), b.get::<String, _>(1)));
                    range = Some(read.clone());
                    read
                }
            };
            let last_cursor = bounds
                .as_ref()
                .map(|(_, text)| parse_cursor(text))
                .transpose()?;
            if let Some(tell) = tell.take() {
                let _ = tell.send(last_cursor.clone());
            }
            let (Some((rows, _)), Some(last_cursor)) = (bounds, last_cursor) else {
                let done = BatchDone {
                    rows: 0,
                    last: None,
                    rest: Duration::ZERO,
                };
                if let Some(checkpoint) = checkpoint {
                    save_in(&mut tx, &self.home, &checkpoint(&done)).await?;
                }
                tx.commit().await.map_err(ctx)?;
                return Ok(done);
            };
            let last = cursor_values(&last_cursor, m.key.len())?;
            let copy = if careful {
                g.batch_copy(cursor.is_some())
            } else {
                g.batch_copy_absent(cursor.is_some())
            };
            let mut q = sqlx::query(sql(copy));
            if let Some(c) = &cursor {
                q = bind_texts(q, c);
            }
            match bind_texts(q, &last).execute(&mut *tx).await {
                Ok(_) => {}
                // A trigger wrote a row of the range after the slice's snapshot.
                Err(e) if !careful && sqlstate(&e).as_deref() == Some("23505") => {
                    drop(tx);
                    careful = true;
                    continue;
                }
                Err(e) if is_conflict(&e) && attempt < BATCH_ATTEMPTS => {
                    drop(tx);
                    tracing::info!(
                        attempt,
                        "backfill batch deadlocked with the application; retrying"
                    );
                    tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                    continue;
                }
                Err(e) if is_lock_timeout(&e) && waits < SLICE_WAIT_ATTEMPTS => {
                    drop(tx);
                    waits += 1;
                    attempt -= 1;
                    tracing::debug!(
                        waits,
                        "a backfill slice gave way to an application transaction; retrying"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                Err(e) if is_lock_timeout(&e) => {
                    return Err(Error::db(
                        format!(
                            "backfill of {}: a slice gave way {waits} times to an application \
                             transaction holding rows it copies",
                            m.table
                        ),
                        e,
                    ));
                }
                Err(e) if matches!(sqlstate(&e).as_deref().map(|s| &s[..2]), Some("22" | "23")) => {
                    drop(tx);
                    return Err(self
                        .explain_batch_error(&g, cursor.as_deref(), &last, e)
                        .await);
                }
                Err(e) => return Err(ctx(e)),
            }
            let done = BatchDone {
                rows: rows.max(0) as u64,
                last: Some(last_cursor),
                // Row locks, not a single writer: the application never waits for a rest.
                rest: Duration::ZERO,
            };
            if let Some(checkpoint) = checkpoint {
                save_in(&mut tx, &self.home, &checkpoint(&done)).await?;
            }
            crate::fault::point("postgres.backfill.slice.open");
            tx.commit().await.map_err(ctx)?;
            return Ok(done);
        }
    }

    /// After the last batch: the deferred indexes (`sql/shadow.rs`), then statistics.
    pub(super) async fn finish_copy(&self, m: &Migration) -> Result<()> {
        self.build_deferred_indexes(m).await?;
        let g = self.gen_for(m);
        sqlx::raw_sql(sql(format!("ANALYZE {}", g.shadow())))
            .execute(&self.pool)
            .await
            .map_err(|e| Error::db("analyzing the shadow table", e))?;
        Ok(())
    }

    /// Builds each deferred index the shadow lacks, concurrently: the triggers' writes go
    /// on meanwhile. Safe to call again after a crash at any point: a valid index is kept,
    /// an INVALID one (a build cut short) is dropped and built again.
    async fn build_deferred_indexes(&self, m: &Migration) -> Result<()> {
        let g = self.gen_for(m);
        let deferred = g.deferred_indexes();
        if deferred.is_empty() {
            return Ok(());
        }
        let ctx = |e| Error::db(format!("backfill: building the indexes of {}", m.shadow), e);
        // One connection, so the session settings below apply to every build.
        let mut conn = self.pool.acquire().await.map_err(ctx)?;
        let validity: Vec<(String, bool)> =
            sqlx::query_as(super::sql::shadow::SHADOW_INDEX_VALIDITY)
                .bind(&g.schema)
                .bind(&m.shadow)
                .fetch_all(&mut *conn)
                .await
                .map_err(ctx)?;
        // The sort of a build gets memory and workers: the server's defaults (64MB, 2) are
        // sized for a background vacuum, not for building an index over a whole table.
        sqlx::raw_sql(
            "SET maintenance_work_mem = '256MB'; SET max_parallel_maintenance_workers = 2",
        )
        .execute(&mut *conn)
        .await
        .map_err(ctx)?;
        let built = async {
            for (name, build) in &deferred {
                match validity.iter().find(|(n, _)| n == name) {
                    Some((_, true)) => continue,
                    Some((_, false)) => {
                        tracing::info!(index = %name, "rebuilding an index a crash left invalid");
                        sqlx::raw_sql(sql(g.drop_invalid_index(name)))
                            .execute(&mut *conn)
                            .await?;
                    }
                    None => {}
                }
                crate::fault::point("postgres.backfill.before_index");
                sqlx::raw_sql(sql(build.clone()))
                    .execute(&mut *conn)
                    .await?;
            }
            Ok::<(), sqlx::Error>(())
        }
        .await;
        let reset =
            sqlx::raw_sql("RESET maintenance_work_mem; RESET max_parallel_maintenance_workers")
                .execute(&mut *conn)
                .await;
        built.map_err(ctx)?;
        reset.map_err(ctx)?;
        Ok(())
    }

    /// Names the key and column of the row that made a batch fail: the batch's rows are
    /// retried one by one (each in a savepoint of a transaction that is rolled back).
    async fn explain_batch_error(
        &self,
        g: &Gen<'_>,
        cursor: Option<&[String]>,
        last: &[String],
        e: sqlx::Error,
    ) -> Error {
        let context = format!("backfill of {}", g.m.table);
        let first_message = db_message(&e);
        let found: std::result::Result<Option<(String, String, String)>, sqlx::Error> = async {
            let mut tx = self.pool.begin().await?;
            let old_key = g.old_key();
            let keys_sql = format!(
                "SELECT {}, {} FROM {} WHERE {} ORDER BY {}",
                g.cursor_json("", &old_key),
                g.shown_key("", &old_key),
                g.live(),
                g.range("", &old_key, cursor.is_some(), true),
                g.order("", &old_key, false)
            );
            let mut q = sqlx::query(sql(keys_sql));
            if let Some(c) = cursor {
                q = bind_texts(q, c);
            }
            let keys = bind_texts(q, last).fetch_all(&mut *tx).await?;
            let types = g.key_types();
            let one = |prefix: &str| {
                old_key
                    .iter()
                    .zip(&types)
                    .enumerate()
                    .map(|(i, (k, t))| format!("{prefix}{} = CAST(${} AS {t})", quote(k), i + 1))
                    .collect::<Vec<_>>()
                    .join(" AND ")
            };
            let row_sql = format!(
                "SELECT {} FROM {} WHERE {}",
                list(&g.old_cols()),
                g.live(),
                one("")
            );
            let insert_one = g.upsert(&g.forward(), &row_sql, false);
            for r in keys {
                let cursor_key: String = r.get(0);
                let shown: String = r.get(1);
                let values = cursor_values(&parse_cursor(&cursor_key).unwrap_or_default(), old_key.len())
                    .unwrap_or_default();
                sqlx::raw_sql("SAVEPOINT turnout_probe").execute(&mut *tx).await?;
                let res = bind_texts(sqlx::query(sql(insert_one.clone())), &values)
                    .execute(&mut *tx)
                    .await;
                sqlx::raw_sql("ROLLBACK TO SAVEPOINT turnout_probe").execute(&mut *tx).await?;
                let Err(err) = res else { continue };
                let message = db_message(&err);
                if let sqlx::Error::Database(d) = &err
                    && let Some(pg) = d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                    && let Some(col) = pg.column()
                {
                    return Ok(Some((shown, col.to_string(), message)));
                }
                // A CHECK or EXCLUDE constraint the new table carries (`shape.rs`).
                if let sqlx::Error::Database(d) = &err
                    && let Some(c) = d.constraint()
                {
                    return Ok(Some((shown, format!("(constraint {c:?} of the new table)"), message)));
                }
                // Which expression fails, or which value the exact type would alter.
                for mp in g.m.forward.iter() {
                    let loose = render_source(mp, &|c| quote(c), &loose_cast);
                    let exact = render_source(mp, &|c| quote(c), &full_cast);
                    let probe = format!(
                        "SELECT ({exact})::text IS DISTINCT FROM ({loose})::text FROM ({row_sql}) AS t"
                    );
                    sqlx::raw_sql("SAVEPOINT turnout_probe").execute(&mut *tx).await?;
                    let res: std::result::Result<Option<bool>, sqlx::Error> =
                        bind_texts(sqlx::query(sql(probe)), &values)
                            .fetch_optional(&mut *tx)
                            .await
                            .map(|r| r.and_then(|r| r.get::<Option<bool>, _>(0)));
                    sqlx::raw_sql("ROLLBACK TO SAVEPOINT turnout_probe").execute(&mut *tx).await?;
                    let altered = mp.cast.is_some() && matches!(res, Ok(Some(true)));
                    if res.is_err() || altered {
                        return Ok(Some((shown, mp.target.clone(), message)));
                    }
                }
                return Ok(Some((shown, "(unknown column)".to_string(), message)));
            }
            tx.rollback().await?;
            Ok(None)
        }
        .await;
        match found {
            Ok(Some((key, column, message))) => Error::Data {
                table: g.m.table.clone(),
                key,
                column,
                message,
            },
            // The failing row is gone or the failure was not the row's: report it as is.
            Ok(None) | Err(_) => {
                tracing::debug!("could not narrow the batch error: {first_message}");
                Error::db(context, e)
            }
        }
    }
}
