//! The table's own rules read from the catalog for the cutover (`sql/rules.rs` says how
//! they move) and what preflight refuses of them.

use sqlx::Row;
use sqlx::postgres::PgConnection;

use super::run_all;
use super::sql::{Gen, Rule};

type Sql<T> = std::result::Result<T, sqlx::Error>;

const RULES_SQL: &str = "SELECT oid::bigint, rulename::text, pg_get_ruledef(oid), ev_enabled::text, \
     ARRAY(SELECT a.attname::text FROM pg_depend d JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid \
           WHERE d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid AND d.refobjid = r.ev_class AND d.refobjsubid > 0 ORDER BY a.attnum) \
     FROM pg_rewrite r WHERE ev_class = to_regclass($1) AND rulename <> '_RETURN' ORDER BY rulename";

/// Before the cutover's renames: the rules on the live table.
pub(super) async fn read(conn: &mut PgConnection, relation: &str) -> Sql<Vec<Rule>> {
    Ok(sqlx::query(RULES_SQL)
        .bind(relation)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|r| Rule {
            oid: r.get(0),
            name: r.get(1),
            definition: r.get(2),
        })
        .collect())
}

/// After the renames, in the cutover transaction: moves the rules, returns the undo.
pub(super) async fn carry(
    conn: &mut PgConnection,
    g: &Gen<'_>,
    rules: &[Rule],
) -> Sql<Vec<String>> {
    let mut back = Vec::with_capacity(rules.len());
    for r in rules {
        let d: Option<String> = sqlx::query_scalar("SELECT pg_get_ruledef($1::bigint::oid)")
            .bind(r.oid)
            .fetch_one(&mut *conn)
            .await?;
        back.push(d.unwrap_or_default());
    }
    let (stmts, undo) = g.carry_rules(rules, &back);
    run_all(conn, &stmts).await?;
    Ok(undo)
}

/// A rule's definition is carried as text, so every column it names must keep its name
/// (a widened one reads the same); a disabled or replica-only rule is not carried.
pub(super) async fn problems(conn: &mut PgConnection, g: &Gen<'_>) -> Sql<Vec<String>> {
    let t = &g.m.table;
    let mut out = Vec::new();
    for r in sqlx::query(RULES_SQL)
        .bind(g.live())
        .fetch_all(&mut *conn)
        .await?
    {
        let (name, enabled, used): (String, String, Vec<String>) = (r.get(1), r.get(3), r.get(4));
        if enabled != "O" {
            out.push(format!("table {t:?}: rule {name:?} is disabled or fires only on replicas, which turnout does not carry; enable it (ALTER TABLE … ENABLE RULE) or drop it for the migration and recreate it after"));
        }
        for c in used {
            if g.new_name_of(&c).as_deref() != Some(c.as_str()) {
                out.push(format!("table {t:?}: rule {name:?} uses column {c:?}, which the plan drops, renames or changes, and turnout carries the rule's definition as it is; drop the rule for the migration and recreate it after, or keep the column"));
            }
        }
    }
    Ok(out)
}
