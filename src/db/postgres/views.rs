//! The views over the migrated table, read from the catalog: what preflight refuses of them,
//! and their carrying in the cutover transaction (`sql/views.rs` says how and why). The
//! statements that point them back at the old table are written to `turnout_rollback` in
//! the same transaction (see `carry.rs`).

use sqlx::Row;
use sqlx::postgres::PgConnection;

use super::sql::{Gen, MatviewIndex, View, lock_wait};
use super::{DDL_ATTEMPTS, DDL_LOCK_TIMEOUT, Postgres, run_all, sql};
use crate::error::{Error, Result};

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

/// What lives on a view itself and would not survive a `DROP VIEW`: triggers and rules
/// other than its `SELECT`.
const ON_VIEW_SQL: &str = "SELECT 'trigger ' || quote_ident(tgname) FROM pg_trigger WHERE tgrelid = $1::bigint::oid \
     UNION ALL SELECT 'rule ' || quote_ident(rulename) FROM pg_rewrite WHERE ev_class = $1::bigint::oid AND rulename <> '_RETURN' \
     ORDER BY 1";

/// What reads a materialized view (other than itself): views and materialized views.
const READERS_SQL: &str = "SELECT DISTINCT n.nspname::text || '.' || c.relname::text FROM pg_depend d \
     JOIN pg_rewrite r ON r.oid = d.objid JOIN pg_class c ON c.oid = r.ev_class JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass \
     AND d.refobjid = $1::bigint::oid AND r.ev_class <> d.refobjid ORDER BY 1";

/// The indexes of a materialized view, with what `pg_get_indexdef` prints for their names.
const INDEXES_SQL: &str = "SELECT i.indexrelid::bigint, ic.relname::text, pg_get_indexdef(i.indexrelid), \
     quote_ident(ic.relname)::text, (quote_ident(n.nspname) || '.' || quote_ident(c.relname))::text, \
     ts.spcname::text, obj_description(i.indexrelid, 'pg_class') \
     FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_class c ON c.oid = i.indrelid \
     JOIN pg_namespace n ON n.oid = c.relnamespace LEFT JOIN pg_tablespace ts ON ts.oid = ic.reltablespace \
     WHERE i.indrelid = $1::bigint::oid ORDER BY ic.relname";

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
        let grants = super::cutover::grants_on(conn, oid).await?;
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

/// The materialized views that read `relation` itself (others read it through plain
/// views, which the cutover carries).
pub(super) async fn direct_matviews(
    conn: &mut PgConnection,
    relation: &str,
) -> std::result::Result<Vec<View>, sqlx::Error> {
    Ok(closure(conn, relation)
        .await?
        .into_iter()
        .filter(|(v, kind)| kind == "m" && v.direct)
        .map(|(v, _)| v)
        .collect())
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

/// What preflight refuses of the views over the table.
pub(super) async fn problems(
    conn: &mut PgConnection,
    g: &Gen<'_>,
) -> std::result::Result<Vec<String>, sqlx::Error> {
    let t = &g.m.table;
    let mut out = Vec::new();
    let all = closure(conn, &g.live()).await?;
    let views: Vec<View> = all
        .iter()
        .filter(|(_, k)| k == "v")
        .map(|(v, _)| v.clone())
        .collect();
    for (v, kind) in &all {
        let name = format!("{}.{}", v.schema, v.name);
        if kind != "v" {
            out.extend(matview_problems(conn, g, v, &views).await?);
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

/// What preflight refuses of a materialized view over the table.
async fn matview_problems(
    conn: &mut PgConnection,
    g: &Gen<'_>,
    v: &View,
    views: &[View],
) -> std::result::Result<Vec<String>, sqlx::Error> {
    let t = &g.m.table;
    let name = format!("{}.{}", v.schema, v.name);
    let mut out = Vec::new();
    let readers: Vec<String> = sqlx::query_scalar(READERS_SQL)
        .bind(v.oid)
        .fetch_all(&mut *conn)
        .await?;
    for r in readers {
        out.push(format!("table {t:?}: materialized view {name:?} reads it and is read by {r:?}, which turnout cannot carry with it (the materialized view is replaced at cleanup); drop {r:?} for the migration and recreate it after"));
    }
    if v.direct {
        for c in g.view_lost_columns(v) {
            out.push(format!("table {t:?}: materialized view {name:?} uses column {c:?}, which the plan drops, renames or computes; drop the materialized view for the migration and recreate it after with its new definition, or keep the column"));
        }
        let indexes = matview_indexes(conn, v.oid).await?;
        for i in &indexes {
            if g.matview_index(&v.schema, "x", i).is_none() {
                out.push(format!("table {t:?}: index {:?} of materialized view {name:?} is not in the form turnout can build again ({}); drop it for the migration and recreate it after", i.name, i.definition));
            }
        }
    }
    if g.views_recreated(views) {
        let oids: Vec<i64> = views.iter().map(|w| w.oid).collect();
        let through: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT n.nspname::text || '.' || c.relname::text FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid \
             JOIN pg_class c ON c.oid = d.refobjid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE r.ev_class = $1::bigint::oid AND d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass \
             AND d.refobjid::bigint = ANY($2) ORDER BY 1",
        )
        .bind(v.oid)
        .bind(&oids)
        .fetch_all(&mut *conn)
        .await?;
        for w in through {
            out.push(format!("table {t:?}: materialized view {name:?} reads view {w:?}, which must be re-created at cutover because the plan changes the type of a column it reads (or gives it a new definition), and a materialized view over it prevents that; drop {name:?} for the migration and recreate it after"));
        }
    }
    Ok(out)
}

async fn matview_indexes(
    conn: &mut PgConnection,
    oid: i64,
) -> std::result::Result<Vec<MatviewIndex>, sqlx::Error> {
    Ok(sqlx::query(INDEXES_SQL)
        .bind(oid)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|r| MatviewIndex {
            oid: r.get(0),
            name: r.get(1),
            definition: r.get::<Option<String>, _>(2).unwrap_or_default(),
            printed_name: r.get(3),
            printed_relation: r.get(4),
            tablespace: r.get(5),
            comment: r.get(6),
        })
        .collect())
}

/// In the cutover transaction, after the renames: a placeholder for each of `matviews`
/// (read before them), bound to the new table; returns the statements that drop them.
pub(super) async fn prepare_matviews(
    conn: &mut PgConnection,
    g: &Gen<'_>,
    matviews: &[View],
) -> std::result::Result<Vec<String>, sqlx::Error> {
    let mut undo = Vec::with_capacity(matviews.len());
    for v in matviews {
        let space: Option<String> = sqlx::query_scalar(
            "SELECT t.spcname::text FROM pg_class c JOIN pg_tablespace t ON t.oid = c.reltablespace WHERE c.oid = $1::bigint::oid",
        )
        .bind(v.oid)
        .fetch_optional(&mut *conn)
        .await?;
        let (create, drop) = g.matview_prepare(v, space.as_deref());
        run_all(conn, &[create]).await?;
        undo.push(drop);
    }
    Ok(undo)
}

/// The original materialized view as the catalog shows it now: owner, grants, comments.
async fn matview_now(
    conn: &mut PgConnection,
    schema: &str,
    oid: i64,
) -> std::result::Result<View, sqlx::Error> {
    let r = sqlx::query(
        "SELECT c.relname::text, pg_get_userbyid(c.relowner)::text, obj_description(c.oid, 'pg_class'), \
         (SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a JOIN pg_description ds \
          ON ds.objoid = c.oid AND ds.classoid = 'pg_class'::regclass AND ds.objsubid = a.attnum WHERE a.attrelid = c.oid), \
         (SELECT array_agg(ds.description ORDER BY a.attnum) FROM pg_attribute a JOIN pg_description ds \
          ON ds.objoid = c.oid AND ds.classoid = 'pg_class'::regclass AND ds.objsubid = a.attnum WHERE a.attrelid = c.oid) \
         FROM pg_class c WHERE c.oid = $1::bigint::oid",
    )
    .bind(oid)
    .fetch_one(&mut *conn)
    .await?;
    let grants = super::cutover::grants_on(conn, oid).await?;
    let names: Vec<String> = r.get::<Option<Vec<String>>, _>(3).unwrap_or_default();
    let texts: Vec<String> = r.get::<Option<Vec<String>>, _>(4).unwrap_or_default();
    Ok(View {
        oid,
        schema: schema.to_string(),
        name: r.get(0),
        definition: String::new(),
        options: Vec::new(),
        owner: r.get(1),
        grants,
        comment: r.get(2),
        column_comments: names.into_iter().zip(texts).collect(),
        direct: true,
        uses: Vec::new(),
    })
}

impl Postgres {
    /// At cleanup, before the old table is dropped: each placeholder the cutover made is
    /// filled and indexed, then takes its original's place (see `sql/matviews.rs`). Found
    /// from the catalog, so a cleanup killed anywhere in it finishes on resume.
    pub(super) async fn finish_matviews(&self, g: &Gen<'_>) -> Result<()> {
        let ctx = |e| Error::db(format!("materialized views over {}", g.m.table), e);
        let prefix = g.matview_placeholder_prefix();
        let placeholders: Vec<(String, String, bool)> = sqlx::query_as(
            "SELECT n.nspname::text, c.relname::text, c.relispopulated FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'm' AND starts_with(c.relname::text, $1) ORDER BY c.oid",
        )
        .bind(&prefix)
        .fetch_all(&self.pool)
        .await
        .map_err(ctx)?;
        for (schema, placeholder, filled) in placeholders {
            let oid: i64 = placeholder[prefix.len()..].parse().map_err(|_| {
                Error::State(format!(
                    "materialized view {schema}.{placeholder} looks like turnout's but names no original; drop it and run cleanup again"
                ))
            })?;
            let original: Option<bool> = sqlx::query_scalar(
                "SELECT relispopulated FROM pg_class WHERE oid = $1::bigint::oid AND relkind = 'm'",
            )
            .bind(oid)
            .fetch_optional(&self.pool)
            .await
            .map_err(ctx)?;
            let Some(populated) = original else {
                return Err(Error::State(format!(
                    "materialized view {schema}.{placeholder} was to replace one that is gone; inspect it, rename or drop it, and run cleanup again"
                )));
            };
            // Filled and indexed in one transaction: a kill leaves it as the cutover made it.
            let mut tx = self.pool.begin().await.map_err(ctx)?;
            let q = super::sql::qualified(&schema, &placeholder);
            if populated && !filled {
                sqlx::raw_sql(sql(format!("REFRESH MATERIALIZED VIEW {q}")))
                    .execute(&mut *tx)
                    .await
                    .map_err(ctx)?;
            }
            for i in matview_indexes(&mut tx, oid).await.map_err(ctx)? {
                let temp = super::sql::qualified(&schema, &g.matview_index_placeholder(i.oid));
                let there: Option<i64> = sqlx::query_scalar("SELECT to_regclass($1)::oid::bigint")
                    .bind(&temp)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(ctx)?;
                if there.is_some() {
                    continue;
                }
                let stmts = g.matview_index(&schema, &placeholder, &i).ok_or_else(|| {
                    Error::State(format!(
                        "index {:?} of materialized view {schema}.{oid} cannot be built again ({}); drop it and run cleanup again",
                        i.name, i.definition
                    ))
                })?;
                run_all(&mut tx, &stmts).await.map_err(ctx)?;
            }
            tx.commit().await.map_err(ctx)?;
            crate::fault::point("cleanup.matview.built");
            self.swap_matview(g, &schema, oid).await?;
        }
        Ok(())
    }

    /// The short transaction: the original goes, the placeholder takes its place.
    async fn swap_matview(&self, g: &Gen<'_>, schema: &str, oid: i64) -> Result<()> {
        let ctx = |e| Error::db(format!("materialized views over {}", g.m.table), e);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result: std::result::Result<(), sqlx::Error> = async {
                let mut tx = self.pool.begin().await?;
                sqlx::raw_sql(sql(lock_wait(DDL_LOCK_TIMEOUT)))
                    .execute(&mut *tx)
                    .await?;
                // `LOCK TABLE` does not take materialized views; the drop that follows
                // in this transaction takes its lock.
                let v = matview_now(&mut tx, schema, oid).await?;
                let indexes = matview_indexes(&mut tx, oid).await?;
                run_all(&mut tx, &g.matview_swap(&v, &indexes)).await?;
                crate::fault::point("cleanup.matview.inside");
                tx.commit().await
            }
            .await;
            match result {
                Ok(()) => return Ok(()),
                Err(e)
                    if (super::errors::is_lock_timeout(&e) || super::errors::is_conflict(&e))
                        && attempt < DDL_ATTEMPTS =>
                {
                    tracing::info!(
                        attempt,
                        "materialized view swap: lock not granted, retrying"
                    );
                    tokio::time::sleep(super::ddl_backoff(attempt)).await;
                }
                Err(e) => return Err(ctx(e)),
            }
        }
    }
}
