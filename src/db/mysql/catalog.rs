//! What the table is and what stops the migration: `describe` reads the live table's
//! shape from information_schema, `preflight` lists every problem (engine, names,
//! keys, triggers, generated columns, indexes turnout cannot rebuild, and through
//! `furniture` and `foreign_keys` what the table carries) and compiles the plan's
//! expressions against temporary tables, changing nothing.
//!
//! What is carried and what is refused on MySQL/MariaDB:
//! - carried: foreign keys from this table to others, from others to it and from it to
//!   itself, with their names and ON DELETE / ON UPDATE actions (`foreign_keys` says
//!   how, and why every moment is right); CHECK constraints on MariaDB, the `json_valid`
//!   one of a JSON column included (`furniture`); views and grants, by name; widened
//!   primary keys (`key_types`).
//! - refused, by name, with what to do instead: a foreign key across databases, one
//!   whose column (or referenced column) the plan changes, CHECK constraints on MySQL 8
//!   (their names are per database), and the rest listed in `furniture`.
//! - carried on MariaDB: the table's own triggers (`own_triggers` says how), unless
//!   the plan drops or renames a column (a trigger's body may use it); refused on
//!   MySQL 8, which has no `CREATE OR REPLACE TRIGGER`.
//! - carried: prefix, FULLTEXT and SPATIAL indexes (`Index::kind` and `prefix`, read
//!   from STATISTICS' INDEX_TYPE and SUB_PART).
//! - carried: generated columns, VIRTUAL and STORED/PERSISTENT (`Generated::Computed`,
//!   read from COLUMNS' EXTRA and GENERATION_EXPRESSION): the shadow declares each with
//!   the catalog's expression, and the backfill's INSERT … SELECT and the dual-write
//!   triggers leave them out of their column lists (the server computes them and
//!   refuses a value, 1906); indexes on them are built like any other, and verify
//!   compares them like any other column, so a new table that computes a different
//!   value is a difference. Refused by name: one in the primary key, one the plan alters
//!   (type, nullability), one computed from a column the plan drops, renames or
//!   transforms (`using`: verify would find every row differ), and
//!   every generated column on MySQL 8 (tested on MariaDB 10.11 only).

use std::collections::BTreeMap;

use sqlx::AssertSqlSafe;
use sqlx::mysql::MySqlConnection;

use crate::error::Result;
use crate::schema::{Column, Generated, Index, Mapped, Migration, Source, TableShape};

use super::MySql;
use super::errors::sql_err;
use super::sql::{Bound, Gen, hash_hex, lit, quote};

impl MySql {
    /// The names of a table's indexes, as the catalog has them now.
    pub(super) async fn index_names(
        conn: &mut MySqlConnection,
        schema: &str,
        table: &str,
    ) -> Result<Vec<String>> {
        let rows = Self::rows(conn, &Bound {
            sql: "SELECT DISTINCT CAST(INDEX_NAME AS CHAR), CAST(TABLE_NAME AS CHAR) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?".into(),
            binds: vec![schema.to_string(), table.to_string()],
        })
        .await
        .map_err(sql_err("reading a table's indexes"))?;
        Ok(rows
            .into_iter()
            .filter(|r| r.get(1).cloned().flatten().as_deref() == Some(table))
            .filter_map(|r| r.into_iter().next().flatten())
            .collect())
    }

    pub(super) async fn describe_table(
        &self,
        schema: Option<&str>,
        table: &str,
    ) -> Result<Option<TableShape>> {
        let schema = match schema.map(str::to_string).or_else(|| self.home.clone()) {
            Some(s) => s,
            None => return Ok(None),
        };
        let mut conn = self.conn().await?;
        let t = Self::rows(&mut conn, &Bound {
            sql: "SELECT CAST(TABLE_NAME AS CHAR), CAST(TABLE_COLLATION AS CHAR) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?".into(),
            binds: vec![schema.clone(), table.into()],
        })
        .await
        .map_err(sql_err("describing the table"))?;
        let Some(trow) = t.into_iter().find(|r| r[0].as_deref() == Some(table)) else {
            return Ok(None);
        };
        let table_coll = trow[1].clone().unwrap_or_default();
        let cols = Self::rows(&mut conn, &Bound {
            sql: "SELECT CAST(COLUMN_NAME AS CHAR), CAST(COLUMN_TYPE AS CHAR), CAST(IS_NULLABLE AS CHAR), CAST(COLUMN_DEFAULT AS CHAR), \
                  CAST(EXTRA AS CHAR), CAST(CHARACTER_SET_NAME AS CHAR), CAST(COLLATION_NAME AS CHAR), CAST(TABLE_NAME AS CHAR), \
                  CAST(GENERATION_EXPRESSION AS CHAR) \
                  FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION"
                .into(),
            binds: vec![schema.clone(), table.into()],
        })
        .await
        .map_err(sql_err("describing the columns"))?;
        let mut columns = Vec::new();
        for r in cols.into_iter().filter(|r| r[7].as_deref() == Some(table)) {
            let name = r[0].clone().unwrap_or_default();
            let mut sql_type = r[1].clone().unwrap_or_default();
            let extra = r[4].clone().unwrap_or_default();
            let lower = extra.to_lowercase();
            if let (Some(cs), Some(coll)) = (&r[5], &r[6])
                && *coll != table_coll
            {
                sql_type.push_str(&format!(" CHARACTER SET {cs} COLLATE {coll}"));
            }
            if let Some(at) = lower.find("on update ") {
                sql_type.push_str(&format!(
                    " ON UPDATE {}",
                    extra[at + "on update ".len()..].trim()
                ));
            }
            let default = match r[3].clone() {
                None => None,
                Some(d) if self.mariadb => Some(d).filter(|d| d != "NULL"),
                // MySQL 8 shows literals bare and marks expressions DEFAULT_GENERATED.
                Some(d) if lower.contains("default_generated") => {
                    Some(if d.to_lowercase().starts_with("current_timestamp") {
                        d
                    } else {
                        format!("({d})")
                    })
                }
                Some(d) => Some(lit(&d)),
            };
            let generated = match computed(&lower, r[8].as_deref()) {
                Some(g) => Some(g),
                None => lower
                    .contains("auto_increment")
                    .then_some(Generated::AutoIncrement),
            };
            // A generated column has no default of its own (MariaDB shows NULL).
            let default = default.filter(|_| !is_computed(&generated));
            columns.push(Column {
                name,
                sql_type,
                nullable: r[2].as_deref() == Some("YES"),
                default,
                generated,
            });
        }
        let stats = Self::rows(&mut conn, &Bound {
            sql: "SELECT CAST(INDEX_NAME AS CHAR), CAST(COLUMN_NAME AS CHAR), CAST(NON_UNIQUE AS CHAR), CAST(TABLE_NAME AS CHAR), \
                  CAST(INDEX_TYPE AS CHAR), CAST(SUB_PART AS CHAR) \
                  FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY INDEX_NAME, SEQ_IN_INDEX"
                .into(),
            binds: vec![schema, table.into()],
        })
        .await
        .map_err(sql_err("describing the indexes"))?;
        let mut primary_key = Vec::new();
        let mut indexes: BTreeMap<String, Index> = BTreeMap::new();
        for r in stats.into_iter().filter(|r| r[3].as_deref() == Some(table)) {
            let (iname, col) = (
                r[0].clone().unwrap_or_default(),
                r[1].clone().unwrap_or_default(),
            );
            if iname == "PRIMARY" {
                primary_key.push(col);
            } else {
                let idx = indexes.entry(iname.clone()).or_insert_with(|| Index {
                    name: iname,
                    unique: r[2].as_deref() == Some("0"),
                    kind: r[4]
                        .clone()
                        .filter(|k| matches!(k.as_str(), "FULLTEXT" | "SPATIAL")),
                    ..Default::default()
                });
                idx.columns.push(col);
                // MariaDB shows a SUB_PART for SPATIAL parts too (32), which is no prefix.
                let prefix = r[5].as_deref().and_then(|p| p.parse::<u32>().ok());
                idx.prefix.push(prefix.filter(|_| idx.kind.is_none()));
            }
        }
        let mut indexes: Vec<Index> = indexes.into_values().collect();
        for idx in &mut indexes {
            if idx.prefix.iter().all(Option::is_none) {
                idx.prefix.clear();
            }
        }
        Ok(Some(TableShape {
            columns,
            primary_key,
            indexes,
        }))
    }

    pub(super) async fn find_problems(
        &self,
        m: &Migration,
        plan: &[Migration],
    ) -> Result<Vec<String>> {
        let g = self.sql(m);
        let n = &g.n;
        let mut problems = Vec::new();
        let Some(schema) = n.schema.clone() else {
            return Ok(vec![
                "the URL names no database and the plan no schema".into(),
            ]);
        };
        let mut conn = self.conn().await?;
        let t = &m.table;
        let tables = Self::rows(&mut conn, &Bound {
            sql: "SELECT CAST(TABLE_NAME AS CHAR), CAST(ENGINE AS CHAR), CAST(TABLE_TYPE AS CHAR) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ?".into(),
            binds: vec![schema.clone()],
        })
        .await
        .map_err(sql_err("preflight"))?;
        let find = |name: &str| tables.iter().find(|r| r[0].as_deref() == Some(name));
        match find(t) {
            None => problems.push(format!("table {schema}.{t} does not exist")),
            Some(r) if r[2].as_deref() == Some("VIEW") => problems.push(format!("{t} is a view, not a table")),
            Some(r) if r[2].as_deref() != Some("BASE TABLE") => problems.push(format!(
                "{t} is a {} table, which turnout cannot copy (only plain tables)",
                r[2].as_deref().unwrap_or("special")
            )),
            Some(r) if !r[1].as_deref().unwrap_or_default().eq_ignore_ascii_case("InnoDB") => problems.push(format!(
                "table {t} uses the {} engine; turnout needs InnoDB (transactions and row locks)",
                r[1].as_deref().unwrap_or("unknown")
            )),
            _ => {}
        }
        for name in [
            &n.shadow,
            &n.old,
            &n.gate,
            &n.gate_f,
            &n.gate_r,
            &n.own_saved,
            &n.own_flag,
        ] {
            if find(name).is_some() {
                problems.push(format!("a table named {name} already exists; turnout needs that name (drop or rename it)"));
            }
            if name.chars().count() > 64 {
                problems.push(format!(
                    "the name {name} is longer than MySQL's 64 characters; rename the table first"
                ));
            }
        }
        if m.key.is_empty() {
            problems.push(format!(
                "table {t} has no primary key; turnout pages through rows by it"
            ));
        }
        let trig = Self::rows(&mut conn, &Bound {
            sql: "SELECT CAST(TRIGGER_NAME AS CHAR), CAST(EVENT_OBJECT_TABLE AS CHAR) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = ?".into(),
            binds: vec![schema.clone()],
        })
        .await
        .map_err(sql_err("preflight: triggers"))?;
        let gone = m.columns_gone();
        for r in trig.iter().filter(|r| r[1].as_deref() == Some(t)) {
            let name = r[0].as_deref().unwrap_or("?");
            if !self.mariadb {
                problems.push(format!(
                    "table {t} has its own trigger {name}: turnout carries a table's triggers only on MariaDB (it needs CREATE OR REPLACE TRIGGER, which MySQL 8 lacks), so {t} cannot be migrated by turnout on MySQL; plan the change for a maintenance window, or move the trigger's work into the application or into a trigger on another table"
                ));
            } else if !gone.is_empty() {
                problems.push(format!(
                    "table {t} has its own trigger {name}, and the plan drops or renames column {}: the trigger's body may use it, and turnout does not rewrite trigger bodies; keep the column for this migration, or drop the trigger and create it again after",
                    gone.join(", ")
                ));
            }
        }
        problems.extend(generated_problems(m, self.mariadb));
        problems.extend(self.furniture_problems(&mut conn, m, plan, &schema).await?);
        if !problems.is_empty() {
            return Ok(problems);
        }
        // Expressions compile and fit their columns: inserts of zero rows into temporary
        // tables of the new and old shapes (temporary tables touch no shared catalog).
        let tmp_new = format!("_turnout_pf_new_{}", hash_hex(&m.name, 8));
        let tmp_old = format!("_turnout_pf_old_{}", hash_hex(&m.name, 8));
        // InnoDB refuses FULLTEXT indexes on temporary tables; the rest of the shape,
        // prefixes and SPATIAL included, is compiled here.
        let mut m_tmp = m.clone();
        m_tmp
            .after
            .indexes
            .retain(|i| i.kind.as_deref() != Some("FULLTEXT"));
        let mut tg = Gen {
            m: &m_tmp,
            n: n.clone(),
            mariadb: self.mariadb,
        };
        tg.n.schema = None;
        tg.n.shadow = tmp_new.clone();
        let create_new = tg.create_shadow("ENGINE=InnoDB").replacen(
            "CREATE TABLE IF NOT EXISTS",
            "CREATE TEMPORARY TABLE",
            1,
        );
        if let Err(e) = sqlx::raw_sql(AssertSqlSafe(create_new))
            .execute(&mut *conn)
            .await
        {
            problems.push(format!("the new shape of {t} is not valid: {e}"));
            return Ok(problems);
        }
        let fwd_src = format!(
            "(SELECT {} FROM {} LIMIT 0) AS turnout_src",
            g.old_columns(),
            n.q(t)
        );
        let fwd = g.insert_mapped(&quote(&tmp_new), &g.forward_written(), &fwd_src);
        if let Err(e) = sqlx::raw_sql(AssertSqlSafe(fwd)).execute(&mut *conn).await {
            problems.push(
                name_failing_column(
                    &mut conn,
                    &m.forward,
                    &fwd_src,
                    "forward expression (from/using)",
                    t,
                    e,
                )
                .await,
            );
        }
        let create_old = format!("CREATE TEMPORARY TABLE {} LIKE {}", quote(&tmp_old), n.q(t));
        if sqlx::raw_sql(AssertSqlSafe(create_old))
            .execute(&mut *conn)
            .await
            .is_ok()
        {
            let cols: Vec<String> = m.after.columns.iter().map(|c| quote(&c.name)).collect();
            let rev_src = format!(
                "(SELECT {} FROM {} LIMIT 0) AS turnout_src",
                cols.join(", "),
                quote(&tmp_new)
            );
            let rev = g.insert_mapped(&quote(&tmp_old), &g.reverse_written(), &rev_src);
            if let Err(e) = sqlx::raw_sql(AssertSqlSafe(rev)).execute(&mut *conn).await {
                problems.push(
                    name_failing_column(
                        &mut conn,
                        &m.reverse,
                        &rev_src,
                        "reverse expression",
                        t,
                        e,
                    )
                    .await,
                );
            }
        }
        let drop = format!(
            "DROP TEMPORARY TABLE IF EXISTS {}, {}",
            quote(&tmp_new),
            quote(&tmp_old)
        );
        self.exec(&mut conn, &drop, "preflight: dropping temporary tables")
            .await?;
        Ok(problems)
    }
}

/// Generated columns are declared again on the new table with the catalog's expression
/// (never copied); what that cannot carry is refused by name: one in the primary key
/// (the cursor and the triggers' key moves write the key), one the plan alters (its type
/// or expression would have to change with it), and one whose expression uses a column
/// the plan drops or renames (the new table could not compute it).
/// On MySQL 8 they stay refused: its GENERATION_EXPRESSION is not the DDL's text (string
/// literals come back with their introducers and escaped quotes), and turnout is tested
/// with generated columns on MariaDB only.
fn generated_problems(m: &Migration, mariadb: bool) -> Vec<String> {
    let t = m.table.as_str();
    let gone = m.columns_gone();
    let mut problems = Vec::new();
    for c in &m.before.columns {
        let Some(Generated::Computed { expression, .. }) = &c.generated else {
            continue;
        };
        if !mariadb {
            problems.push(format!(
                "column {} of {t} is a generated column: turnout carries generated columns on MariaDB only (MySQL 8's catalog does not give the expression back as it was written); {t} cannot be migrated by turnout on MySQL yet",
                c.name
            ));
            continue;
        }
        if m.before.primary_key.contains(&c.name) {
            problems.push(format!(
                "column {} of {t} is a generated column in the primary key, which turnout does not carry (it pages through and moves rows by their key); migrate {t} another way",
                c.name
            ));
            continue;
        }
        let own = Source::Column(c.name.clone());
        // Dropped: nothing to carry (the old table keeps computing it for a rollback).
        let Some(mp) = m
            .forward
            .iter()
            .find(|mp| mp.source == own || mp.target == c.name)
        else {
            continue;
        };
        let unchanged = mp.source == own
            && mp.cast.is_none()
            && m.after.column(&mp.target).is_some_and(|a| {
                a.sql_type == c.sql_type && a.nullable == c.nullable && a.generated == c.generated
            });
        if !unchanged {
            problems.push(format!(
                "column {} of {t} is a generated column, and the plan alters it: turnout does not change a generated column's type, nullability or expression; leave it as it is in this plan, or drop it here and add it again after",
                c.name
            ));
            continue;
        }
        let used: Vec<&str> = gone
            .iter()
            .copied()
            .filter(|g| *g != c.name && expression.contains(&quote(g)))
            .collect();
        if !used.is_empty() {
            problems.push(format!(
                "generated column {} of {t} is computed from column {}, which the plan drops or renames: the new table could not compute it; keep the column, or drop the generated column in the same plan",
                c.name,
                used.join(", ")
            ));
        }
        // Verify compares the generated column with the old table's value, which a
        // transformed input would make differ on every row.
        let transformed: Vec<&str> = m
            .forward
            .iter()
            .filter(|f| {
                matches!(f.source, Source::Expr(_))
                    && m.before.column(&f.target).is_some()
                    && f.target != c.name
                    && expression.contains(&quote(&f.target))
            })
            .map(|f| f.target.as_str())
            .collect();
        if !transformed.is_empty() {
            problems.push(format!(
                "generated column {} of {t} is computed from column {}, whose values the plan transforms (`using`): the new table would compute other values than the old one holds, so the copy could not be verified; transform the column in a plan of its own without the generated column, or drop the generated column in the same plan",
                c.name,
                transformed.join(", ")
            ));
        }
    }
    problems
}

/// A generated column from its EXTRA (lower-cased: `virtual generated`, `stored
/// generated`, MariaDB's older `persistent generated`) and GENERATION_EXPRESSION.
/// `default_generated` (MySQL 8's mark of an expression default) is no generated column.
fn computed(extra: &str, expression: Option<&str>) -> Option<Generated> {
    if extra.contains("default_generated") {
        return None;
    }
    let stored = extra.contains("stored") || extra.contains("persistent");
    let expression = expression.filter(|e| !e.is_empty())?;
    (stored || extra.contains("virtual")).then(|| Generated::Computed {
        expression: expression.to_string(),
        stored,
    })
}

pub(super) fn is_computed(g: &Option<Generated>) -> bool {
    matches!(g, Some(Generated::Computed { .. }))
}

/// Finds which mapping made a probe fail, compiling each expression on its own, so the
/// refusal names the column.
async fn name_failing_column(
    conn: &mut sqlx::MySqlConnection,
    maps: &[Mapped],
    src: &str,
    what: &str,
    table: &str,
    whole: sqlx::Error,
) -> String {
    for mp in maps {
        let probe = format!("SELECT {} FROM {src}", Gen::value(mp));
        if let Err(e) = sqlx::raw_sql(AssertSqlSafe(probe))
            .execute(&mut *conn)
            .await
        {
            return format!(
                "column {:?}: the {what} does not work on {table}: {e}",
                mp.target
            );
        }
    }
    format!("the {what}s do not work on {table}: {whole}")
}
