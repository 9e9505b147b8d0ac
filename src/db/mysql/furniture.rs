//! What the table carries besides columns and plain indexes, judged before anything is
//! touched: each thing is either carried by the swap itself or refused here by name,
//! with why and what to do instead; nothing is half-carried.
//!
//! Carried without any work, because MariaDB/MySQL resolve them by *name* at the moment
//! a statement runs and the swap is one atomic `RENAME TABLE`:
//! - views over the table: a view's stored definition names `db`.`t`, so before the
//!   swap every query through it reads the old table and after it the new one (and the
//!   old one again after a rollback's swap back). There is no statement that sees a mix,
//!   because the rename is atomic and a view is expanded per statement. A view that uses
//!   a column the plan drops or renames would break, so it is refused naming the view
//!   and the column.
//! - table and column privileges (`mysql.tables_priv` / `columns_priv` are keyed by
//!   name, and `RENAME TABLE` does not move them), so the grants on `t` apply to
//!   whichever table is named `t`.
//!
//! Carried by turnout's own work: foreign keys in both directions (`foreign_keys`) and,
//! on MariaDB, CHECK constraints (created on the shadow under their own names, which
//! MariaDB scopes to the table, so every write after the swap is checked).
//!
//! Refused (not carried yet): CHECK constraints on MySQL 8 (names per database), column
//! comments, invisible columns, descending, ignored or commented indexes. Where a
//! primary-key type change meets a child column whose integer type must equal the
//! key's, the child column is named: it must change in the same step, which needs a
//! multi-table plan.

use sqlx::mysql::MySqlConnection;

use crate::error::Result;
use crate::schema::{Migration, Source};

use super::MySql;
use super::errors::sql_err;
use super::key_types::{KeyType, Widening, judge, parse};
use super::sql::shadow::Check;
use super::sql::{Bound, quote};

impl MySql {
    /// Problems with what the table carries (see the module documentation).
    pub(super) async fn furniture_problems(
        &self,
        conn: &mut MySqlConnection,
        m: &Migration,
        plan: &[Migration],
        schema: &str,
    ) -> Result<Vec<String>> {
        let t = m.table.as_str();
        let mut problems = Vec::new();
        problems.extend(self.key_change_problems(conn, m, plan, schema).await?);
        problems.extend(self.foreign_key_problems(conn, m, plan, schema).await?);
        let q = |sql: &str, binds: Vec<String>| Bound {
            sql: sql.into(),
            binds,
        };
        let on_t = vec![schema.to_string(), t.to_string()];
        problems.extend(self.check_problems(conn, m, schema).await?);
        let cols = Self::rows(conn, &q(
            "SELECT CAST(COLUMN_NAME AS CHAR), CAST(COLUMN_COMMENT AS CHAR), CAST(EXTRA AS CHAR), CAST(TABLE_NAME AS CHAR) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
            on_t.clone(),
        ))
        .await
        .map_err(sql_err("preflight: column comments"))?;
        for r in cols.iter().filter(|r| r[3].as_deref() == Some(t)) {
            let col = r[0].as_deref().unwrap_or("?");
            if r[1].as_deref().is_some_and(|c| !c.is_empty()) {
                problems.push(format!(
                    "column {col} of {t} has a comment, which turnout does not copy yet; remove it for the migration (ALTER TABLE … MODIFY without COMMENT) and set it again after"
                ));
            }
            if r[2]
                .as_deref()
                .unwrap_or_default()
                .to_uppercase()
                .contains("INVISIBLE")
            {
                problems.push(format!(
                    "column {col} of {t} is INVISIBLE, which turnout does not copy yet; make it visible for the migration"
                ));
            }
        }
        let idx = Self::rows(conn, &q(
            "SELECT CAST(INDEX_NAME AS CHAR), CAST(COLLATION AS CHAR), CAST(INDEX_COMMENT AS CHAR), CAST(TABLE_NAME AS CHAR) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
            on_t.clone(),
        ))
        .await
        .map_err(sql_err("preflight: index options"))?;
        let mut named = std::collections::BTreeSet::new();
        for r in idx.iter().filter(|r| r[3].as_deref() == Some(t)) {
            let name = r[0].as_deref().unwrap_or("?");
            if r[1].as_deref() == Some("D") && named.insert((name, "desc")) {
                problems.push(format!(
                    "index {name} of {t} has a descending column, which turnout does not rebuild yet; use an ascending index for the migration"
                ));
            }
            if r[2].as_deref().is_some_and(|c| !c.is_empty()) && named.insert((name, "comment")) {
                problems.push(format!(
                    "index {name} of {t} has a comment, which turnout does not copy yet; remove it for the migration"
                ));
            }
        }
        if self.mariadb {
            let ignored = Self::rows(conn, &q(
                "SELECT DISTINCT CAST(INDEX_NAME AS CHAR), CAST(TABLE_NAME AS CHAR) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND IGNORED = 'YES'",
                on_t.clone(),
            ))
            .await
            .map_err(sql_err("preflight: ignored indexes"))?;
            for r in ignored.iter().filter(|r| r[1].as_deref() == Some(t)) {
                problems.push(format!(
                    "index {} of {t} is IGNORED, which turnout does not copy yet; make it NOT IGNORED for the migration",
                    r[0].as_deref().unwrap_or("?")
                ));
            }
        }
        problems.extend(self.view_problems(conn, m, schema).await?);
        Ok(problems)
    }

    /// The table's CHECK constraints as the catalog shows them.
    async fn checks(
        &self,
        conn: &mut MySqlConnection,
        table: &str,
        schema: &str,
    ) -> Result<Vec<Check>> {
        let sql = if self.mariadb {
            "SELECT CAST(CONSTRAINT_NAME AS CHAR), CAST(TABLE_NAME AS CHAR), CAST(LEVEL AS CHAR), CAST(CHECK_CLAUSE AS CHAR) FROM information_schema.CHECK_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = ? AND TABLE_NAME = ? ORDER BY CONSTRAINT_NAME"
        } else {
            "SELECT CAST(c.CONSTRAINT_NAME AS CHAR), CAST(t.TABLE_NAME AS CHAR), 'Table', CAST(c.CHECK_CLAUSE AS CHAR) FROM information_schema.TABLE_CONSTRAINTS t JOIN information_schema.CHECK_CONSTRAINTS c ON c.CONSTRAINT_SCHEMA = t.CONSTRAINT_SCHEMA AND c.CONSTRAINT_NAME = t.CONSTRAINT_NAME WHERE t.TABLE_SCHEMA = ? AND t.TABLE_NAME = ? AND t.CONSTRAINT_TYPE = 'CHECK' ORDER BY c.CONSTRAINT_NAME"
        };
        let rows = Self::rows(
            conn,
            &Bound {
                sql: sql.into(),
                binds: vec![schema.to_string(), table.to_string()],
            },
        )
        .await
        .map_err(sql_err("reading CHECK constraints"))?;
        Ok(rows
            .into_iter()
            .filter(|r| r[1].as_deref() == Some(table))
            .map(|r| {
                let name = r[0].clone().unwrap_or_default();
                Check {
                    column: (r[2].as_deref() == Some("Column")).then(|| name.clone()),
                    name,
                    clause: r[3].clone().unwrap_or_default(),
                }
            })
            .collect())
    }

    /// Which of the live table's CHECK constraints the new table gets, and why any
    /// cannot be carried. MariaDB scopes CHECK names to their table, so the shadow takes
    /// them under their own names; a column-level one (MariaDB names it after its
    /// column) goes with its column, and is left out with a column the plan drops; the
    /// `json_valid` check MariaDB gives a JSON column stays with the column while its type
    /// does. MySQL 8 scopes the names to the database, so they stay refused there.
    fn judge_checks(&self, m: &Migration, checks: Vec<Check>) -> (Vec<Check>, Vec<String>) {
        let t = m.table.as_str();
        let mut carried = Vec::new();
        let mut problems = Vec::new();
        let renamed = |col: &str| {
            m.forward
                .iter()
                .any(|mp| mp.source == Source::Column(col.to_string()) && mp.target != col)
        };
        for ch in checks {
            if !self.mariadb {
                problems.push(format!(
                    "CHECK constraint {} of {t}: MySQL 8 names CHECK constraints per database, so the new table cannot take the same name while the old one has it; turnout does not carry them on MySQL yet: drop it and add it again after the migration",
                    ch.name
                ));
                continue;
            }
            match ch.column.clone() {
                Some(col) => {
                    let json_type = ch.clause == format!("json_valid({})", quote(&col));
                    let same_type = m.before.column(&col).map(|c| &c.sql_type)
                        == m.after.column(&col).map(|c| &c.sql_type);
                    if renamed(&col) {
                        problems.push(format!(
                            "CHECK constraint {} of {t} is on column {col}, which the plan renames: the constraint would name a column the new table does not have; keep the name, or drop the constraint first",
                            ch.name
                        ));
                    } else if m.after.column(&col).is_some() && (same_type || !json_type) {
                        carried.push(ch);
                    }
                }
                None => {
                    let gone: Vec<&str> = m
                        .before
                        .columns
                        .iter()
                        .map(|c| c.name.as_str())
                        .filter(|c| m.after.column(c).is_none() && ch.clause.contains(&quote(c)))
                        .collect();
                    if gone.is_empty() {
                        carried.push(ch);
                    } else {
                        problems.push(format!(
                            "CHECK constraint {} of {t} uses column {}, which the plan drops or renames: the constraint could not be carried; change the constraint first, or keep the column",
                            ch.name,
                            gone.join(", ")
                        ));
                    }
                }
            }
        }
        (carried, problems)
    }

    pub(super) async fn carried_checks(
        &self,
        conn: &mut MySqlConnection,
        m: &Migration,
        schema: &str,
    ) -> Result<Vec<Check>> {
        let checks = self.checks(conn, &m.table, schema).await?;
        Ok(self.judge_checks(m, checks).0)
    }

    async fn check_problems(
        &self,
        conn: &mut MySqlConnection,
        m: &Migration,
        schema: &str,
    ) -> Result<Vec<String>> {
        let checks = self.checks(conn, &m.table, schema).await?;
        Ok(self.judge_checks(m, checks).1)
    }

    /// Views are carried by name (module documentation); a view that uses a column the
    /// new table no longer has is refused. MariaDB stores the definition with every
    /// column qualified, so a view mentioning the table and the column's quoted name is
    /// counted as using it (a false match only refuses, never breaks a view).
    async fn view_problems(
        &self,
        conn: &mut MySqlConnection,
        m: &Migration,
        schema: &str,
    ) -> Result<Vec<String>> {
        let gone = m.columns_gone();
        if gone.is_empty() {
            return Ok(vec![]);
        }
        let views = Self::rows(conn, &Bound {
            sql: "SELECT CAST(TABLE_NAME AS CHAR), CAST(VIEW_DEFINITION AS CHAR) FROM information_schema.VIEWS WHERE TABLE_SCHEMA = ?".into(),
            binds: vec![schema.to_string()],
        })
        .await
        .map_err(sql_err("preflight: views"))?;
        let table_ref = format!("{}.{}", quote(schema), quote(&m.table));
        let mut problems = Vec::new();
        for r in &views {
            let (Some(view), Some(def)) = (r[0].as_deref(), r[1].as_deref()) else {
                continue;
            };
            if !def.contains(&table_ref) {
                continue;
            }
            for col in gone.iter().filter(|c| def.contains(&quote(c))) {
                problems.push(format!(
                    "view {view} uses column {col} of {}, which the plan drops or renames: the view would break at cutover; keep the column, or change the view first so it does not use it",
                    m.table
                ));
            }
        }
        Ok(problems)
    }

    /// Each primary-key type change is judged (key_types); an accepted signed-to-unsigned
    /// one is checked for negative keys, and a child column that references the key and
    /// must share its integer type is named.
    async fn key_change_problems(
        &self,
        conn: &mut MySqlConnection,
        m: &Migration,
        plan: &[Migration],
        schema: &str,
    ) -> Result<Vec<String>> {
        let t = m.table.as_str();
        let mut problems = Vec::new();
        for c in m.key_type_changes() {
            let Some(old) = m
                .key
                .iter()
                .find(|k| k.new == c.column)
                .map(|k| k.old.clone())
            else {
                continue;
            };
            match judge(t, &c) {
                Err(why) => problems.push(why),
                Ok(Widening::Plain) => {}
                Ok(Widening::NoNegatives) => {
                    let sql = format!(
                        "SELECT CAST(MIN({k}) AS CHAR) FROM {}.{} WHERE {k} < 0",
                        quote(schema),
                        quote(t),
                        k = quote(&old)
                    );
                    let r = Self::rows(conn, &Bound { sql, binds: vec![] })
                        .await
                        .map_err(sql_err("preflight: looking for negative keys"))?;
                    if let Some(min) = r.first().and_then(|r| r[0].clone()) {
                        problems.push(format!(
                            "primary key column {} of {t}: {} cannot hold the existing key {min}; keep the key signed (e.g. BIGINT)",
                            c.column, c.to
                        ));
                    }
                }
            }
            if !matches!(parse(&c.from), KeyType::Int { .. }) {
                continue;
            }
            let children = Self::rows(conn, &Bound {
                sql: "SELECT CAST(TABLE_NAME AS CHAR), CAST(COLUMN_NAME AS CHAR), CAST(CONSTRAINT_NAME AS CHAR), CAST(REFERENCED_TABLE_NAME AS CHAR), CAST(REFERENCED_COLUMN_NAME AS CHAR) \
                      FROM information_schema.KEY_COLUMN_USAGE WHERE REFERENCED_TABLE_SCHEMA = ? AND REFERENCED_TABLE_NAME = ? AND REFERENCED_COLUMN_NAME = ?"
                    .into(),
                binds: vec![schema.to_string(), t.to_string(), old.clone()],
            })
            .await
            .map_err(sql_err("preflight: columns referencing the key"))?;
            for r in children
                .iter()
                .filter(|r| r[3].as_deref() == Some(t) && r[4].as_deref() == Some(old.as_str()))
            {
                let (child, col, fk) = (
                    r[0].as_deref().unwrap_or("?"),
                    r[1].as_deref().unwrap_or("?"),
                    r[2].as_deref().unwrap_or("?"),
                );
                if child == t {
                    problems.push(format!(
                        "column {child}.{col} references {t}.{old} (foreign key {fk}) and MySQL/MariaDB require it to have exactly the key's integer type: a table referencing itself cannot widen its key yet; keep the key's type"
                    ));
                    continue;
                }
                let in_plan = plan.iter().find(|p| p.table == child);
                let new_type = in_plan
                    .and_then(|p| p.after.column(col))
                    .map(|c| c.sql_type.as_str());
                match new_type {
                    Some(ty) if same_integer(ty, &c.to) => {}
                    Some(ty) => problems.push(format!(
                        "column {child}.{col} references {t}.{old} (foreign key {fk}): the plan makes the key {} and the column {ty}, and MySQL/MariaDB require exactly the same integer type on both; give both the same type",
                        c.to
                    )),
                    None => problems.push(format!(
                        "column {child}.{col} references {t}.{old} (foreign key {fk}) and MySQL/MariaDB require it to have exactly the key's integer type: it must change to {} too, in the same cutover; add to the plan's tables `- table: {child}` with `changes: [{{alter_column: {{name: {col}, type: {}}}}}]`",
                        c.to, c.to
                    )),
                }
            }
        }
        Ok(problems)
    }
}

/// Whether two column types are the same integer type (size and signedness), as a
/// foreign key between them requires.
pub(super) fn same_integer(a: &str, b: &str) -> bool {
    matches!(parse(a), KeyType::Int { .. }) && parse(a) == parse(b)
}
