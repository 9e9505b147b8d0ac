//! Row-level security read from the catalog for the cutover (`sql/rls.rs` says how it is
//! carried) and what preflight refuses of it.

use sqlx::Row;
use sqlx::postgres::PgConnection;

use super::sql::{Gen, Policy, RowSecurity};

pub(super) async fn read(
    conn: &mut PgConnection,
    relation: &str,
) -> std::result::Result<RowSecurity, sqlx::Error> {
    let flags = sqlx::query(
        "SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = to_regclass($1)",
    )
    .bind(relation)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(flags) = flags else {
        return Ok(RowSecurity::default());
    };
    let policies = sqlx::query(
        "SELECT polname::text, polcmd::text, polpermissive, \
         (SELECT array_agg(CASE WHEN r = 0 THEN NULL ELSE pg_get_userbyid(r)::text END ORDER BY o) \
          FROM unnest(polroles) WITH ORDINALITY AS u(r, o)), \
         pg_get_expr(polqual, polrelid), pg_get_expr(polwithcheck, polrelid) \
         FROM pg_policy WHERE polrelid = to_regclass($1) ORDER BY polname",
    )
    .bind(relation)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|r| Policy {
        name: r.get(0),
        command: r.get(1),
        permissive: r.get(2),
        roles: r
            .get::<Option<Vec<Option<String>>>, _>(3)
            .unwrap_or_default(),
        using: r.get(4),
        check: r.get(5),
    })
    .collect();
    Ok(RowSecurity {
        enabled: flags.get(0),
        forced: flags.get(1),
        policies,
    })
}

/// A policy that reads a column the plan drops or renames, and row security turnout's
/// role would be subject to (its copying would miss the rows the policies hide).
pub(super) async fn problems(
    conn: &mut PgConnection,
    g: &Gen<'_>,
) -> std::result::Result<Vec<String>, sqlx::Error> {
    let t = &g.m.table;
    let mut out = Vec::new();
    let uses = sqlx::query(
        "SELECT p.polname::text, array_agg(DISTINCT a.attname::text) FROM pg_policy p \
         JOIN pg_depend d ON d.classid = 'pg_policy'::regclass AND d.objid = p.oid AND d.refobjid = p.polrelid AND d.refobjsubid > 0 \
         JOIN pg_attribute a ON a.attrelid = p.polrelid AND a.attnum = d.refobjsubid \
         WHERE p.polrelid = to_regclass($1) GROUP BY p.polname ORDER BY p.polname",
    )
    .bind(g.live())
    .fetch_all(&mut *conn)
    .await?;
    for r in uses {
        let (name, cols): (String, Vec<String>) = (r.get(0), r.get(1));
        for c in g.columns_lost(&cols) {
            out.push(format!("table {t:?}: row-level security policy {name:?} uses column {c:?}, which the plan drops, renames or computes; keep the column, or drop the policy for the migration and recreate it after"));
        }
    }
    let exposed: Option<bool> = sqlx::query_scalar(
        "SELECT c.relrowsecurity AND NOT (r.rolsuper OR r.rolbypassrls) \
         AND (c.relforcerowsecurity OR c.relowner <> r.oid) \
         FROM pg_class c, pg_roles r WHERE c.oid = to_regclass($1) AND r.rolname = current_user",
    )
    .bind(g.live())
    .fetch_optional(&mut *conn)
    .await?;
    if exposed == Some(true) {
        out.push(format!("table {t:?}: row-level security is enabled and turnout's role does not bypass it, so its copying would miss the rows the policies hide; run turnout as a role with BYPASSRLS (or a superuser)"));
    }
    Ok(out)
}
