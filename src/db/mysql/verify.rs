//! Verify: workers claim key ranges from the shared chunk list and compare each
//! chunk's checksum on the live and shadow side in a snapshot of their own; a chunk
//! whose checksums differ is read row by row to report the differing rows.

use std::collections::BTreeMap;

use sqlx::mysql::MySqlConnection;
use tokio::sync::Mutex;

use crate::db::{Chunks, RowDiff, VerifyReport, VerifyRequest, abandon_on_error};
use crate::error::{Error, Result};
use crate::schema::Migration;

use super::MySql;
use super::errors::{is_data_error, sql_err};
use super::sql::{Bound, Gen, parse_key_json, show_key};

/// Keys in the table's order as far as text allows: numbers as numbers.
fn key_order(a: &[String], b: &[String]) -> std::cmp::Ordering {
    let part = |x: &String, y: &String| match (x.parse::<f64>(), y.parse::<f64>()) {
        (Ok(p), Ok(q)) => p.total_cmp(&q),
        _ => x.cmp(y),
    };
    a.iter()
        .zip(b)
        .map(|(x, y)| part(x, y))
        .find(|o| o.is_ne())
        .unwrap_or(a.len().cmp(&b.len()))
}

impl MySql {
    pub(super) async fn compare_chunks(
        &self,
        m: &Migration,
        req: &VerifyRequest,
        progress: &(dyn Fn(u64) + Sync),
        stop: &(dyn Fn() -> bool + Sync),
    ) -> Result<VerifyReport> {
        let g = self.sql(m);
        let shared = Mutex::new(Chunks::new(req.max_diffs));
        let workers = req.workers.clamp(1, 4);
        let runs = (0..workers).map(|_| {
            abandon_on_error(
                &shared,
                self.verify_worker(&g, &shared, req, progress, stop),
            )
        });
        let results = futures_util::future::join_all(runs).await;
        for r in results {
            r?;
        }
        Ok(shared.into_inner().into_report())
    }

    /// Compares chunks until none is left: each worker claims the next key range and
    /// hashes it on both sides in a snapshot of its own. One snapshot per chunk is
    /// enough: the triggers keep the two tables equal at every commit, so any snapshot
    /// must show a chunk equal on both sides, and the ranges cover every key once.
    async fn verify_worker(
        &self,
        g: &Gen<'_>,
        shared: &Mutex<Chunks>,
        req: &VerifyRequest,
        progress: &(dyn Fn(u64) + Sync),
        stop: &(dyn Fn() -> bool + Sync),
    ) -> Result<()> {
        let mut conn = self.conn().await?;
        loop {
            if stop() {
                return Ok(());
            }
            let (n, range) = {
                let mut chunks = shared.lock().await;
                let Some(lo) = chunks.next_start() else {
                    return Ok(());
                };
                let hi = self.chunk_end(g, &mut conn, lo.as_deref(), req).await?;
                chunks.claim(lo, hi)
            };
            let sampled = match req.sample_rate {
                Some(rate) => rand::random::<f64>() < rate,
                None => true,
            };
            if !sampled {
                shared.lock().await.skipped();
                continue;
            }
            self.exec(
                &mut conn,
                "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
                "verify",
            )
            .await?;
            self.exec(
                &mut conn,
                "START TRANSACTION WITH CONSISTENT SNAPSHOT",
                "verify: opening the snapshot",
            )
            .await?;
            let compared = self.compare_chunk(g, &mut conn, &range).await;
            let _ = sqlx::raw_sql("COMMIT").execute(&mut *conn).await;
            let (rows, diffs) = compared?;
            let rows_done = shared.lock().await.compared(n, rows, diffs);
            progress(rows_done);
        }
    }

    /// The chunk's upper key; None: the rest of the table (which also catches shadow rows
    /// beyond the last live key; the first chunk, those before it).
    async fn chunk_end(
        &self,
        g: &Gen<'_>,
        conn: &mut MySqlConnection,
        lo: Option<&[String]>,
        req: &VerifyRequest,
    ) -> Result<Option<Vec<String>>> {
        let b = g.keys_after(lo, &format!("LIMIT 1 OFFSET {}", req.chunk_rows.max(1) - 1));
        let hi = Self::rows(conn, &b)
            .await
            .map_err(sql_err("verify: finding the chunk"))?;
        match hi
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next().flatten())
        {
            Some(s) => Ok(Some(parse_key_json(&s)?)),
            None => Ok(None),
        }
    }

    /// Rows of the chunk and, when its hashes differ, the differing rows.
    async fn compare_chunk(
        &self,
        g: &Gen<'_>,
        conn: &mut MySqlConnection,
        range: &(Option<Vec<String>>, Option<Vec<String>>),
    ) -> Result<(u64, Vec<RowDiff>)> {
        let live = self
            .one(conn, &g.checksum(false, range), "verify: hashing live rows")
            .await;
        let live = match live {
            Err(Error::Database { source, .. }) if is_data_error(&source) => {
                return Err(self.data_error(g, range.1.as_deref().unwrap_or(&[]), &source));
            }
            other => other?,
        };
        let shadow = self
            .one(
                conn,
                &g.checksum(true, range),
                "verify: hashing shadow rows",
            )
            .await?;
        let rows: u64 = live
            .split(':')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let diffs = if live == shadow {
            Vec::new()
        } else {
            self.chunk_diffs(g, conn, range).await?
        };
        Ok((rows, diffs))
    }

    async fn one(&self, conn: &mut MySqlConnection, b: &Bound, context: &str) -> Result<String> {
        let r = Self::rows(conn, b)
            .await
            .map_err(sql_err(context.to_string()))?;
        Ok(r.into_iter()
            .next()
            .and_then(|r| r.into_iter().next().flatten())
            .unwrap_or_default())
    }

    async fn chunk_diffs(
        &self,
        g: &Gen<'_>,
        conn: &mut MySqlConnection,
        range: &(Option<Vec<String>>, Option<Vec<String>>),
    ) -> Result<Vec<RowDiff>> {
        let read =
            |rows: Vec<Vec<Option<String>>>| -> Result<BTreeMap<Vec<String>, Option<String>>> {
                rows.into_iter()
                    .map(|r| {
                        let k = parse_key_json(
                            r.first().cloned().flatten().as_deref().unwrap_or("[]"),
                        )?;
                        Ok((k, r.get(1).cloned().flatten()))
                    })
                    .collect()
            };
        let live = read(
            Self::rows(conn, &g.images(false, range))
                .await
                .map_err(sql_err("verify: reading live rows"))?,
        )?;
        let shadow = read(
            Self::rows(conn, &g.images(true, range))
                .await
                .map_err(sql_err("verify: reading shadow rows"))?,
        )?;
        let mut keys: Vec<&Vec<String>> = live.keys().chain(shadow.keys()).collect();
        keys.sort_by(|a, b| key_order(a, b));
        keys.dedup();
        let mut diffs = Vec::new();
        for k in keys {
            let (a, b) = (
                live.get(k).cloned().flatten(),
                shadow.get(k).cloned().flatten(),
            );
            let same = match (&a, &b) {
                (Some(x), Some(y)) => {
                    serde_json::from_str::<serde_json::Value>(x).ok()
                        == serde_json::from_str::<serde_json::Value>(y).ok()
                        && x.len() == y.len()
                        || x == y
                }
                _ => false,
            };
            if !same {
                diffs.push(RowDiff {
                    key: show_key(k),
                    expected: a,
                    shadow: b,
                });
            }
        }
        Ok(diffs)
    }
}
