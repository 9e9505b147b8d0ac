//! The instant path on MySQL/MariaDB: the plan's ALTER TABLE is first run on an empty
//! `CREATE TABLE … LIKE` copy with the algorithm it must use (the server refuses what it
//! cannot make in place, saying why), then on the live table under the cutover's lock
//! wait. DDL auto-commits, so the state row is saved after it; a resume that finds the
//! table already in the target shape only saves the state.

use std::time::Duration;

use sqlx::mysql::MySqlConnection;

use super::errors::is_lock_timeout;
use super::sql::instant as isql;
use super::{MySql, errors::sql_err};
use crate::db::{CutoverOutcome, InstantVerdict, StateRow};
use crate::error::Result;
use crate::plan::Change;
use crate::schema::{Migration, TableShape};

fn server_says(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(d) => d.message().to_string(),
        other => other.to_string(),
    }
}

async fn run(conn: &mut MySqlConnection, stmt: &str) -> std::result::Result<(), sqlx::Error> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(stmt.to_string()))
        .execute(conn)
        .await
        .map(|_| ())
}

/// Whether `live` has the shape of `target` where `target` and `other` differ (names,
/// types, nullability, index names): the side of the plan's ALTER the table is on.
fn on_side_of(live: &TableShape, target: &TableShape, other: &TableShape) -> bool {
    let names = |s: &TableShape| s.columns.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
    if names(live) != names(target) {
        return false;
    }
    for t in &target.columns {
        let (Some(l), Some(o)) = (live.column(&t.name), other.column(&t.name)) else {
            continue;
        };
        if !t.sql_type.eq_ignore_ascii_case(&o.sql_type)
            && !l.sql_type.eq_ignore_ascii_case(&t.sql_type)
        {
            return false;
        }
        if t.nullable != o.nullable && l.nullable != t.nullable {
            return false;
        }
    }
    let has = |s: &TableShape, n: &str| s.indexes.iter().any(|i| i.name == n);
    target.indexes.iter().all(|i| has(live, &i.name))
        && other
            .indexes
            .iter()
            .filter(|i| !has(target, &i.name))
            .all(|i| !has(live, &i.name))
}

impl MySql {
    pub(super) async fn instant_verdict(
        &self,
        m: &Migration,
        changes: &[Change],
    ) -> Result<InstantVerdict> {
        let clauses = match isql::clauses(m, changes) {
            Ok(c) => c,
            Err(why) => return Ok(InstantVerdict::Copy(why)),
        };
        let schema = self.schema_of(m);
        let live = isql::rel(schema.as_deref(), &m.table);
        let probe = isql::rel(schema.as_deref(), &isql::probe_name(&m.table));
        let algorithm = isql::algorithm(&clauses);
        let ctx = format!("asking the server whether it changes {} in place", m.table);
        let mut conn = self.conn().await?;
        let fresh = format!("DROP TABLE IF EXISTS {probe}");
        let like = format!("CREATE TABLE {probe} LIKE {live}");
        let mut why = Vec::new();
        let asked: std::result::Result<(), sqlx::Error> = async {
            run(&mut conn, &fresh).await?;
            run(&mut conn, &like).await?;
            for c in &clauses {
                let one = isql::alter(&probe, std::slice::from_ref(&c.forward), algorithm);
                if let Err(e) = run(&mut conn, &one).await {
                    why.push(format!(
                        "{}: the server does not make it in place ({})",
                        c.change,
                        server_says(&e)
                    ));
                    // Made anyway, so the later changes are asked of the shape they follow.
                    let _ = run(&mut conn, &format!("ALTER TABLE {probe} {}", c.forward)).await;
                }
            }
            if why.is_empty() {
                run(&mut conn, &fresh).await?;
                run(&mut conn, &like).await?;
                let all: Vec<String> = clauses.iter().map(|c| c.forward.clone()).collect();
                if let Err(e) = run(&mut conn, &isql::alter(&probe, &all, algorithm)).await {
                    why.push(format!(
                        "changes: the server does not make them in place together ({})",
                        server_says(&e)
                    ));
                }
            }
            Ok(())
        }
        .await;
        let dropped = run(&mut conn, &fresh).await;
        asked.map_err(sql_err(ctx.clone()))?;
        dropped.map_err(sql_err(ctx))?;
        Ok(if why.is_empty() {
            InstantVerdict::Instant(vec![isql::step(&live, &clauses)])
        } else {
            InstantVerdict::Copy(why)
        })
    }

    pub(super) async fn run_instant(
        &self,
        m: &Migration,
        statements: &[String],
        lock_timeout: Duration,
        save: &StateRow,
    ) -> Result<CutoverOutcome> {
        let context = format!("instant change of {}", m.table);
        // The rollback's state row says rolled_back: its statements lead back to `before`.
        let (target, other) = if save.phase == "rolled_back" {
            (&m.before, &m.after)
        } else {
            (&m.after, &m.before)
        };
        let done = match self.describe_table(m.schema.as_deref(), &m.table).await? {
            Some(live) => on_side_of(&live, target, other) && !on_side_of(&live, other, target),
            None => false,
        };
        let mut conn = self.conn().await?;
        if !done {
            // Whole seconds are what the server takes; never more than the plan allows.
            let secs = lock_timeout.as_secs().max(1);
            self.exec(
                &mut conn,
                &format!("SET SESSION lock_wait_timeout = {secs}"),
                &context,
            )
            .await?;
            for stmt in statements {
                match run(&mut conn, stmt).await {
                    Ok(()) => {}
                    Err(e) if is_lock_timeout(&e) => {
                        let _ = run(&mut conn, "SET SESSION lock_wait_timeout = DEFAULT").await;
                        return Ok(CutoverOutcome::LockTimeout);
                    }
                    Err(e) => {
                        let _ = run(&mut conn, "SET SESSION lock_wait_timeout = DEFAULT").await;
                        return Err(sql_err(context)(e));
                    }
                }
            }
            let _ = run(&mut conn, "SET SESSION lock_wait_timeout = DEFAULT").await;
            crate::fault::point("instant.inside");
        }
        Self::save_on(&mut conn, save)
            .await
            .map_err(sql_err("saving the checkpoint"))?;
        Ok(CutoverOutcome::Swapped)
    }
}
