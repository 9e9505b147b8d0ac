//! What the table is (`describe`, from SQLite's pragmas) and what stops the migration
//! (`preflight`: names turnout needs, expressions that do not compile, the furniture
//! turnout cannot carry, and a rehearsal of the whole swap in a rolled-back transaction).

use sqlx::Row;

use super::errors::db_message;
use super::sql::shadow::shadow_index_name;
use super::sql::{list, mapped_select, quote};
use super::{Sqlite, sql};
use crate::error::{Error, Result};
use crate::schema::{Column, Generated, Index, Migration, TableShape};

impl Sqlite {
    pub(super) async fn describe(
        &self,
        schema: Option<&str>,
        table: &str,
    ) -> Result<Option<TableShape>> {
        if schema.is_some_and(|s| s != "main") || !self.exists("table", table).await? {
            return Ok(None);
        }
        let ctx = |e| Error::db(format!("describing table {table:?}"), e);
        let rows = sqlx::query("SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info(?1) ORDER BY cid")
            .bind(table)
            .fetch_all(&self.pool)
            .await
            .map_err(ctx)?;
        let mut pk: Vec<(i64, String)> = Vec::new();
        let mut columns = Vec::new();
        for r in &rows {
            let name: String = r.get(0);
            let sql_type: String = r.get(1);
            let notnull: i64 = r.get(2);
            let default: Option<String> = r.get(3);
            let pk_pos: i64 = r.get(4);
            if pk_pos > 0 {
                pk.push((pk_pos, name.clone()));
            }
            columns.push(Column {
                name,
                sql_type,
                nullable: notnull == 0,
                default,
                generated: None,
            });
        }
        pk.sort();
        let primary_key: Vec<String> = pk.into_iter().map(|(_, n)| n).collect();
        if primary_key.len() == 1
            && let Some(c) = columns.iter_mut().find(|c| c.name == primary_key[0])
            && c.sql_type.eq_ignore_ascii_case("integer")
        {
            // INTEGER PRIMARY KEY is the rowid: never NULL, filled by SQLite.
            c.nullable = false;
            c.generated = Some(Generated::AutoIncrement);
        }
        let idx_rows =
            sqlx::query("SELECT name, \"unique\", origin FROM pragma_index_list(?1) ORDER BY name")
                .bind(table)
                .fetch_all(&self.pool)
                .await
                .map_err(ctx)?;
        let mut indexes = Vec::new();
        for r in idx_rows {
            let name: String = r.get(0);
            let unique: i64 = r.get(1);
            let origin: String = r.get(2);
            if origin == "pk" {
                continue;
            }
            let cols = sqlx::query("SELECT name FROM pragma_index_info(?1) ORDER BY seqno")
                .bind(&name)
                .fetch_all(&self.pool)
                .await
                .map_err(ctx)?;
            let columns: Vec<String> = cols
                .iter()
                .map(|c| c.get::<Option<String>, _>(0).unwrap_or_default())
                .collect();
            indexes.push(Index {
                name,
                columns,
                unique: unique == 1,
                ..Default::default()
            });
        }
        Ok(Some(TableShape {
            columns,
            primary_key,
            indexes,
        }))
    }

    /// Key columns that hold, or by their declared type would keep, a BLOB: batches and
    /// verify chunks carry the key from one statement to the next as JSON, which has no
    /// bytes, so the backfill would stop at the first such key.
    async fn blob_keys(&self, m: &Migration) -> Result<Vec<String>> {
        let t = &m.table;
        let mut problems = Vec::new();
        for k in m.old_key() {
            let declared = m
                .before
                .column(k)
                .map(|c| c.sql_type.as_str())
                .unwrap_or_default();
            let holds_blob: Option<i64> = sqlx::query_scalar(sql(format!(
                "SELECT 1 FROM {} WHERE typeof({}) = 'blob' LIMIT 1",
                self.table(t),
                quote(k)
            )))
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| Error::db(format!("preflight of {t}"), e))?;
            let shown = if declared.trim().is_empty() {
                "no type (BLOB affinity)".to_string()
            } else {
                format!("type {declared}")
            };
            if super::types::affinity(declared) == "BLOB" || holds_blob.is_some() {
                problems.push(format!(
                    "key column {k:?} of {t:?} ({shown}) {}: turnout cannot carry a key whose values are bytes yet; give the key an INTEGER or TEXT type (and store its values as such) first",
                    if holds_blob.is_some() { "holds BLOB values" } else { "takes BLOB values as they are" }
                ));
            }
        }
        Ok(problems)
    }

    pub(super) async fn preflight(&self, m: &Migration) -> Result<Vec<String>> {
        let mut problems = Vec::new();
        let t = &m.table;
        if m.schema.as_deref().is_some_and(|s| s != "main") {
            problems.push(format!(
                "schema: SQLite migrations run on the main database; found {:?}",
                m.schema
            ));
        }
        for name in [&m.shadow, &m.old] {
            if self.exists("table", name).await? {
                problems.push(format!("a table {name:?} already exists; turnout needs that name for {t:?} (drop it, or roll back the migration that left it)"));
            }
        }
        for idx in &m.after.indexes {
            let carried = m.before.indexes.iter().any(|b| b.name == idx.name);
            let name = shadow_index_name(idx, carried);
            if self.exists("index", &name).await? && (!carried || name != idx.name) {
                problems.push(format!(
                    "index name {name:?} is taken; turnout needs it for the new {t:?}"
                ));
            }
        }
        // Only the plan's own type names: one the table already uses was SQLite's choice before.
        for c in &m.after.columns {
            if !m.before.columns.iter().any(|b| b.sql_type == c.sql_type)
                && let Some(why) = super::types::accidental(&c.name, &c.sql_type)
            {
                problems.push(why);
            }
        }
        problems.extend(self.blob_keys(m).await?);
        let before_cols: Vec<&str> = m.before.columns.iter().map(|c| c.name.as_str()).collect();
        for mp in &m.forward {
            let rows = format!(
                "SELECT {} FROM {} LIMIT 0",
                list(&before_cols),
                self.table(t)
            );
            let probe = mapped_select(std::slice::from_ref(mp), &rows);
            if let Err(e) = sqlx::query(sql(probe)).fetch_all(&self.pool).await {
                problems.push(format!(
                    "column {:?}: the forward expression does not compile against {t:?}: {}",
                    mp.target,
                    db_message(&e)
                ));
            }
        }
        let typed_nulls = m
            .after
            .columns
            .iter()
            .map(|c| format!("CAST(NULL AS {}) AS {}", c.sql_type, quote(&c.name)))
            .collect::<Vec<_>>()
            .join(", ");
        for mp in &m.reverse {
            let probe = mapped_select(
                std::slice::from_ref(mp),
                &format!("SELECT {typed_nulls} LIMIT 0"),
            );
            if let Err(e) = sqlx::query(sql(probe)).fetch_all(&self.pool).await {
                problems.push(format!("column {:?}: the reverse expression does not compile against the new shape: {}", mp.target, db_message(&e)));
            }
        }
        let f = self.furniture(t).await?;
        problems.extend(self.furniture_problems(m, &f).await?);
        problems.extend(self.dry_run(m, &f).await?);
        Ok(problems)
    }
}
