//! The instant path on SQLite: what refers to a column the plan drops is read from the
//! catalog (SQLite refuses to drop such a column, so the plan copies instead), and the
//! statements run in one `BEGIN IMMEDIATE` transaction under the cutover's lock timeout,
//! with the state row.

use std::time::Duration;

use sqlx::Row;

use super::errors::is_busy;
use super::sql::instant as isql;
use super::state::save_in;
use super::{Sqlite, sql};
use crate::db::{CutoverOutcome, InstantVerdict, StateRow};
use crate::error::{Error, Result};
use crate::plan::Change;
use crate::schema::Migration;

impl Sqlite {
    pub(super) async fn instant_verdict(
        &self,
        m: &Migration,
        changes: &[Change],
    ) -> Result<InstantVerdict> {
        let dropped = isql::dropped(changes);
        let uses = if dropped.is_empty() {
            isql::Uses::new()
        } else {
            self.column_uses(m, &dropped).await?
        };
        Ok(match isql::plan(m, changes, &uses) {
            Ok(steps) => InstantVerdict::Instant(steps),
            Err(why) => InstantVerdict::Copy(why),
        })
    }

    /// What in the schema names each of `columns` of the table.
    async fn column_uses(&self, m: &Migration, columns: &[String]) -> Result<isql::Uses> {
        let ctx = |e| {
            Error::db(
                format!("reading what refers to the columns of {}", m.table),
                e,
            )
        };
        let mut uses = isql::Uses::new();
        let mut note = |col: &str, what: String| {
            let list = uses.entry(col.to_string()).or_default();
            if !list.contains(&what) {
                list.push(what);
            }
        };
        let indexes = sqlx::query(isql::index_columns())
            .bind(&m.table)
            .fetch_all(&self.pool)
            .await
            .map_err(ctx)?;
        for r in &indexes {
            let (index, column): (String, Option<String>) = (r.get(0), r.get(1));
            let text: Option<String> = r.get(2);
            for c in columns {
                let named = text.as_deref().is_some_and(|t| isql::mentions(t, c) > 0);
                if column.as_deref() == Some(c.as_str()) || named {
                    note(c, format!("in index {index:?}"));
                }
            }
        }
        let texts = sqlx::query(isql::schema_texts())
            .bind(&m.table)
            .fetch_all(&self.pool)
            .await
            .map_err(ctx)?;
        for r in &texts {
            let (kind, name, text): (String, String, String) = (r.get(0), r.get(1), r.get(2));
            for c in columns {
                let n = isql::mentions(&text, c);
                // The table's text names the column once in its own definition.
                if kind == "table" && n > 1 {
                    note(
                        c,
                        "named by a constraint or generated column of the table".into(),
                    );
                } else if kind != "table" && n > 0 {
                    note(c, format!("named by {kind} {name:?}"));
                }
            }
        }
        let fks = sqlx::query(isql::foreign_keys())
            .fetch_all(&self.pool)
            .await
            .map_err(ctx)?;
        for r in &fks {
            let (child, parent, from): (String, String, String) = (r.get(0), r.get(1), r.get(2));
            let to: Option<String> = r.get(3);
            for c in columns {
                if child == m.table && from == *c {
                    note(c, format!("in a foreign key to {parent:?}"));
                }
                let key = to
                    .as_deref()
                    .map_or(m.before.primary_key.contains(c), |t| t == c);
                if parent.eq_ignore_ascii_case(&m.table) && key {
                    note(c, format!("referenced by a foreign key of {child:?}"));
                }
            }
        }
        Ok(uses)
    }

    pub(super) async fn run_instant(
        &self,
        m: &Migration,
        statements: &[String],
        lock_timeout: Duration,
        save: &StateRow,
    ) -> Result<CutoverOutcome> {
        let ctx = |e| Error::db(format!("instant change of {}", m.table), e);
        let mut conn = self.pool.acquire().await.map_err(ctx)?;
        sqlx::query(sql(format!(
            "PRAGMA busy_timeout = {}",
            lock_timeout.as_millis().max(1)
        )))
        .execute(&mut *conn)
        .await
        .map_err(ctx)?;
        let outcome: Result<CutoverOutcome> = async {
            if let Err(e) = sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await {
                if is_busy(&e) {
                    return Ok(CutoverOutcome::LockTimeout);
                }
                return Err(ctx(e));
            }
            for stmt in statements {
                if let Err(e) = sqlx::query(sql(stmt.clone())).execute(&mut *conn).await {
                    let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                    return Err(ctx(e));
                }
            }
            crate::fault::point("instant.inside");
            if let Err(e) = save_in(&mut *conn, save).await {
                let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                return Err(e);
            }
            sqlx::query("COMMIT")
                .execute(&mut *conn)
                .await
                .map_err(ctx)?;
            Ok(CutoverOutcome::Swapped)
        }
        .await;
        let _ = sqlx::query("PRAGMA busy_timeout = 10000")
            .execute(&mut *conn)
            .await;
        outcome
    }
}
