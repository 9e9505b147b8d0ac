//! The views over the migrated table, read from the catalog: what preflight refuses of them,
//! and their carrying in the cutover transaction (`sql/views.rs` says how and why). The
//! statements that point them back at the old table are written to `turnout_rollback` in
//! the same transaction (see `carry.rs`).

use sqlx::Row;
use sqlx::postgres::PgConnection;

use super::run_all;
use super::sql::{Gen, Grant, View};

/// Every view and materialized view over `$1`, directly or through other views, each once,
/// in an order that creates a view's dependencies before it.
const CLOSURE_SQL: &str = "WITH RECURSIVE deps(oid, depth) AS ( \
     SELECT r.ev_class, 1 FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid \
     WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass \
     AND d.refobjid = to_regclass($1) AND r.ev_class <> d.refobjid \
     UNION \
     SELECT r.ev_class, deps.depth + 1 FROM deps JOIN pg_depend d ON d.refobjid = deps.oid \
     AND d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass \
     JOIN pg_rewrite r ON r.oid = d.objid WHERE r.ev_class <> deps.oid AND deps.depth < 100), \
   closure AS (SELECT oid, max(depth) AS depth, bool_or(depth = 1) AS direct FROM deps GROUP BY oid) \
   SELECT c.oid::bigint, n.nspname::text, c.relname::text, c.relkind::text, closure.direct, \
     pg_get_viewdef(c.oid), coalesce(c.reloptions::text[], '{}'), pg_get_userbyid(c.relowner)::text, \
     obj_description(c.oid, 'pg_class'), \
     (SELECT array_agg(DISTINCT a.attname::text) FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid \
      JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid \
      WHERE r.ev_class = c.oid AND d.classid = 'pg_rewrite'::regclass AND d.refobjid = to_regclass($1) AND d.refobjsubid > 0), \
     (SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a JOIN pg_description ds \
      ON ds.objoid = c.oid AND ds.classoid = 'pg_class'::regclass AND ds.objsubid = a.attnum WHERE a.attrelid = c.oid), \
     (SELECT array_agg(ds.description ORDER BY a.attnum) FROM pg_attribute a JOIN pg_description ds \
      ON ds.objoid = c.oid AND ds.classoid = 'pg_class'::regclass AND ds.objsubid = a.attnum WHERE a.attrelid = c.oid) \
   FROM closure JOIN pg_class c ON c.oid = closure.oid JOIN pg_namespace n ON n.oid = c.relnamespace \
   ORDER BY closure.depth, n.nspname, c.relname";

/// Privileges others hold on a view and its columns.
const GRANTS_SQL: &str = "SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee)::text END, \
     a.privilege_type::text, NULL::text, a.is_grantable \
     FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = $1::bigint::oid AND a.grantee <> c.relowner \
     UNION ALL \
     SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee)::text END, \
     a.privilege_type::text, att.attname::text, a.is_grantable \
     FROM pg_class c JOIN pg_attribute att ON att.attrelid = c.oid AND att.attnum > 0, aclexplode(att.attacl) a \
     WHERE c.oid = $1::bigint::oid AND a.grantee <> c.relowner \
     ORDER BY 3 NULLS FIRST, 1 NULLS FIRST, 2";

/// What lives on a view itself and would not survive a `DROP VIEW`: triggers and rules
/// other than its `SELECT`.
const ON_VIEW_SQL: &str = "SELECT 'trigger ' || quote_ident(tgname) FROM pg_trigger WHERE tgrelid = $1::bigint::oid \
     UNION ALL SELECT 'rule ' || quote_ident(rulename) FROM pg_rewrite WHERE ev_class = $1::bigint::oid AND rulename <> '_RETURN' \
     ORDER BY 1";

/// A view or materialized view over the table: (view, relkind).
async fn closure(
    conn: &mut PgConnection,
    relation: &str,
) -> std::result::Result<Vec<(View, String)>, sqlx::Error> {
    let rows = sqlx::query(CLOSURE_SQL)
        .bind(relation)
        .fetch_all(&mut *conn)
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let oid: i64 = r.get(0);
        let grants = sqlx::query(GRANTS_SQL)
            .bind(oid)
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .map(|g| Grant {
                grantee: g.get(0),
                privilege: g.get(1),
                column: g.get(2),
                grantable: g.get(3),
            })
            .collect();
        let names: Vec<String> = r.get::<Option<Vec<String>>, _>(10).unwrap_or_default();
        let texts: Vec<String> = r.get::<Option<Vec<String>>, _>(11).unwrap_or_default();
        let mut uses: Vec<String> = r.get::<Option<Vec<String>>, _>(9).unwrap_or_default();
        uses.sort();
        let view = View {
            oid,
            schema: r.get(1),
            name: r.get(2),
            definition: r.get::<Option<String>, _>(5).unwrap_or_default(),
            options: r.get(6),
            owner: r.get(7),
            grants,
            comment: r.get(8),
            column_comments: names.into_iter().zip(texts).collect(),
            direct: r.get(4),
            uses,
        };
        out.push((view, r.get(3)));
    }
    Ok(out)
}

/// The plain views over `relation`, in creation order (preflight refuses the rest).
pub(super) async fn dependent_views(
    conn: &mut PgConnection,
    relation: &str,
) -> std::result::Result<Vec<View>, sqlx::Error> {
    Ok(closure(conn, relation)
        .await?
        .into_iter()
        .filter(|(_, kind)| kind == "v")
        .map(|(v, _)| v)
        .collect())
}

/// What preflight refuses of the views over the table, and of its own rules.
pub(super) async fn problems(
    conn: &mut PgConnection,
    g: &Gen<'_>,
) -> std::result::Result<Vec<String>, sqlx::Error> {
    let t = &g.m.table;
    let mut out = Vec::new();
    let rules: Vec<String> = sqlx::query_scalar(
        "SELECT rulename::text FROM pg_rewrite WHERE ev_class = to_regclass($1) AND rulename <> '_RETURN' ORDER BY 1",
    )
    .bind(g.live())
    .fetch_all(&mut *conn)
    .await?;
    for r in rules {
        out.push(format!("table {t:?}: rule {r:?} would stay on the old table at cutover, which turnout does not carry; drop it for the migration and recreate it after"));
    }
    let all = closure(conn, &g.live()).await?;
    let views: Vec<View> = all
        .iter()
        .filter(|(_, k)| k == "v")
        .map(|(v, _)| v.clone())
        .collect();
    for (v, kind) in &all {
        let name = format!("{}.{}", v.schema, v.name);
        if kind != "v" {
            out.push(format!("table {t:?}: materialized view {name:?} reads it (directly or through a view) and would keep reading the old table; turnout does not carry materialized views yet: drop it for the migration and recreate it after"));
        } else if v.direct && g.planned_view(v).is_none() {
            for c in g.view_lost_columns(v) {
                out.push(format!("table {t:?}: view {name:?} uses column {c:?}, which the plan drops, renames or computes; give the view's new definition in the plan (`views: [{{name: {}, definition: \"SELECT …\"}}]`), or keep the column", v.name));
            }
        }
    }
    for (i, p) in g.m.views.iter().enumerate() {
        let schema = p.schema.as_deref().unwrap_or(&g.schema);
        if !views.iter().any(|v| v.name == p.name && v.schema == schema) {
            out.push(format!("views[{i}]: {schema}.{} is not a view over table {t:?} (directly or through another view); remove it from the plan", p.name));
        }
    }
    if g.views_recreated(&views) {
        for v in &views {
            let lost: Vec<String> = sqlx::query_scalar(ON_VIEW_SQL)
                .bind(v.oid)
                .fetch_all(&mut *conn)
                .await?;
            for x in lost {
                out.push(format!("table {t:?}: view \"{}.{}\" has {x}, and must be re-created at cutover because the plan changes the type of a column it reads (or gives it a new definition), which would lose it; drop it for the migration and recreate it after", v.schema, v.name));
            }
        }
    }
    Ok(out)
}

/// Re-reads the views' definitions: after the cutover's renames, the old table's.
async fn definitions(
    conn: &mut PgConnection,
    views: &[View],
) -> std::result::Result<Vec<String>, sqlx::Error> {
    let mut out = Vec::with_capacity(views.len());
    for v in views {
        let d: Option<String> = sqlx::query_scalar("SELECT pg_get_viewdef($1::bigint::oid)")
            .bind(v.oid)
            .fetch_one(&mut *conn)
            .await?;
        out.push(d.unwrap_or_default());
    }
    Ok(out)
}

/// In the cutover transaction, after the renames: points `views` (read before them) at
/// the new table, and returns the statements that point them back at the old one.
pub(super) async fn carry(
    conn: &mut PgConnection,
    g: &Gen<'_>,
    views: &[View],
) -> std::result::Result<Vec<String>, sqlx::Error> {
    if views.is_empty() {
        return Ok(Vec::new());
    }
    let recreate = g.views_recreated(views);
    let back = definitions(conn, views).await?;
    let back: Vec<&str> = back.iter().map(String::as_str).collect();
    let undo = g.carry_views(views, &back, recreate);
    let forward: Vec<&str> = views
        .iter()
        .map(|v| g.planned_view(v).unwrap_or(&v.definition))
        .collect();
    run_all(conn, &g.carry_views(views, &forward, recreate)).await?;
    Ok(undo)
}
