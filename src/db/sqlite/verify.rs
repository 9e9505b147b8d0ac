//! Verify: one read transaction (one WAL snapshot) walking the live table chunk by
//! chunk, comparing each chunk with the shadow.

use sqlx::Row;

use super::sql::verify::ChunkSql;
use super::{Sqlite, sql};
use crate::db::{RowDiff, VerifyReport, VerifyRequest};
use crate::error::{Error, Result};
use crate::schema::Migration;

impl Sqlite {
    pub(super) async fn verify(
        &self,
        m: &Migration,
        req: &VerifyRequest,
        progress: &(dyn Fn(u64) + Sync),
        stop: &(dyn Fn() -> bool + Sync),
    ) -> Result<VerifyReport> {
        let ctx = |e| Error::db(format!("verify of {}", m.table), e);
        // The live table's generated columns, which the shadow declares the same way.
        let generated = self.furniture(&m.table).await?.text.generated;
        let chunk = ChunkSql::new(m, &generated);

        // One read transaction: in WAL mode it reads one snapshot from its first SELECT on,
        // while the application keeps writing.
        let mut conn = self.pool.acquire().await.map_err(ctx)?;
        sqlx::query("BEGIN")
            .execute(&mut *conn)
            .await
            .map_err(ctx)?;
        let mut report = VerifyReport::default();
        let mut lo: Option<String> = None;
        let result: Result<()> = async {
            loop {
                if stop() {
                    return Ok(());
                }
                let hi: Option<String> =
                    sqlx::query_scalar(sql(chunk.upper_bound(lo.is_some(), req.chunk_rows)))
                        .bind(lo.as_deref())
                        .fetch_optional(&mut *conn)
                        .await
                        .map_err(ctx)?;
                let (has_lo, has_hi) = (lo.is_some(), hi.is_some());
                let skip = req.sample_rate.is_some_and(|r| rand::random::<f64>() >= r);
                if skip {
                    report.chunks_skipped += 1;
                } else {
                    let c = sqlx::query(sql(chunk.counts(has_lo, has_hi)))
                        .bind(lo.as_deref())
                        .bind(hi.as_deref())
                        .fetch_one(&mut *conn)
                        .await
                        .map_err(ctx)?;
                    let (rows, bad): (i64, i64) =
                        (c.get(0), c.get::<i64, _>(1) + c.get::<i64, _>(2));
                    report.rows += rows.max(0) as u64;
                    report.chunks += 1;
                    let room = req.max_diffs.saturating_sub(report.diffs.len() as u64);
                    if bad > 0 && room > 0 {
                        let found = sqlx::query(sql(chunk.differing(has_lo, has_hi, room)))
                            .bind(lo.as_deref())
                            .bind(hi.as_deref())
                            .fetch_all(&mut *conn)
                            .await
                            .map_err(ctx)?;
                        for r in found {
                            report.diffs.push(RowDiff {
                                key: r.get(0),
                                expected: r.get(1),
                                shadow: r.get(2),
                            });
                        }
                    }
                }
                progress(report.rows);
                match hi {
                    Some(h) => lo = Some(h),
                    None => return Ok(()),
                }
                if report.diffs.len() as u64 >= req.max_diffs {
                    return Ok(());
                }
            }
        }
        .await;
        let _ = sqlx::query("COMMIT").execute(&mut *conn).await;
        result?;
        Ok(report)
    }
}
