//! Verify: the live and shadow tables compared chunk by chunk inside one REPEATABLE READ
//! snapshot, exported by the first transaction and imported by the other workers', each
//! chunk hashed in the server and narrowed to its differing rows when the hashes differ.

use sqlx::Row;
use tokio::sync::Mutex;

use super::backfill::{cursor_values, parse_cursor};
use super::sql::{Gen, literal};
use super::{PgQuery, Postgres, bind_texts, sql};
use crate::db::{Chunks, RowDiff, VerifyReport, VerifyRequest, abandon_on_error};
use crate::error::{Error, Result};
use crate::schema::Migration;

impl Postgres {
    pub(super) async fn compare(
        &self,
        m: &Migration,
        req: &VerifyRequest,
        progress: &(dyn Fn(u64) + Sync),
        stop: &(dyn Fn() -> bool + Sync),
    ) -> Result<VerifyReport> {
        let g = self.gen_for(m);
        let ctx = |e| Error::db(format!("verify of {}", m.table), e);
        // One snapshot for the whole comparison, while the application keeps writing:
        // the first transaction exports it and the other workers' transactions import it.
        let snapshot_tx = || {
            self.pool
                .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        };
        let mut first = snapshot_tx().await.map_err(ctx)?;
        let mut txs = Vec::new();
        if req.workers > 1 {
            let id: String = sqlx::query_scalar("SELECT pg_export_snapshot()")
                .fetch_one(&mut *first)
                .await
                .map_err(ctx)?;
            for _ in 1..req.workers.min(4) {
                let mut tx = snapshot_tx().await.map_err(ctx)?;
                sqlx::raw_sql(sql(format!("SET TRANSACTION SNAPSHOT {}", literal(&id))))
                    .execute(&mut *tx)
                    .await
                    .map_err(ctx)?;
                txs.push(tx);
            }
        }
        txs.insert(0, first);
        let chunks = Mutex::new(Chunks::new(req.max_diffs));
        let runs = txs.into_iter().map(|tx| {
            abandon_on_error(
                &chunks,
                self.verify_worker(&g, tx, &chunks, req, progress, stop),
            )
        });
        for r in futures_util::future::join_all(runs).await {
            r?;
        }
        Ok(chunks.into_inner().into_report())
    }

    /// Compares chunks in `tx` until none is left to claim.
    async fn verify_worker(
        &self,
        g: &Gen<'_>,
        mut tx: sqlx::Transaction<'static, sqlx::Postgres>,
        chunks: &Mutex<Chunks>,
        req: &VerifyRequest,
        progress: &(dyn Fn(u64) + Sync),
        stop: &(dyn Fn() -> bool + Sync),
    ) -> Result<()> {
        let ctx = |e| Error::db(format!("verify of {}", g.m.table), e);
        let nkey = g.m.key.len();
        loop {
            if stop() {
                break;
            }
            let (n, (lo, hi)) = {
                let mut c = chunks.lock().await;
                let Some(lo) = c.next_start() else {
                    break;
                };
                let mut q = sqlx::query(sql(g.chunk_end(lo.is_some(), req.chunk_rows.max(1))));
                if let Some(l) = &lo {
                    q = bind_texts(q, l);
                }
                let hi = match q.fetch_optional(&mut *tx).await.map_err(ctx)? {
                    Some(r) => Some(cursor_values(&parse_cursor(&r.get::<String, _>(0))?, nkey)?),
                    None => None,
                };
                c.claim(lo, hi)
            };
            let bind_range = |mut q: PgQuery<'static>| {
                if let Some(l) = &lo {
                    q = bind_texts(q, l);
                }
                if let Some(h) = &hi {
                    q = bind_texts(q, h);
                }
                q
            };
            if req.sample_rate.is_some_and(|r| rand::random::<f64>() >= r) {
                chunks.lock().await.skipped();
                continue;
            }
            let r = bind_range(sqlx::query(sql(g.chunk_hashes(lo.is_some(), hi.is_some()))))
                .fetch_one(&mut *tx)
                .await
                .map_err(ctx)?;
            let rows: i64 = r.get(0);
            let (live_hash, shadow_hash): (String, String) = (r.get(1), r.get(2));
            let room = chunks.lock().await.room();
            let mut diffs = Vec::new();
            if live_hash != shadow_hash && room > 0 {
                let found = bind_range(sqlx::query(sql(g.chunk_diffs(
                    lo.is_some(),
                    hi.is_some(),
                    room,
                ))))
                .fetch_all(&mut *tx)
                .await
                .map_err(ctx)?;
                diffs = found
                    .into_iter()
                    .map(|d| RowDiff {
                        key: d.get(0),
                        expected: d.get(1),
                        shadow: d.get(2),
                    })
                    .collect();
            }
            let rows_done = chunks.lock().await.compared(n, rows.max(0) as u64, diffs);
            progress(rows_done);
        }
        tx.rollback().await.map_err(ctx)?;
        Ok(())
    }
}
