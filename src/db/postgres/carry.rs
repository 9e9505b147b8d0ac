//! What hangs off the table and must follow it at cutover (views: `views.rs`; row-level
//! security: `rls.rs`; owner, comments, storage parameters: `sql/furniture.rs`;
//! publication membership: `publications.rs`; rules: `rules.rs`):
//! read before the renames, carried after them in the cutover transaction. Each carrier
//! also returns the statements that undo it, which the same transaction writes to
//! `turnout_rollback`; a rollback after cutover runs them first, in its own transaction
//! (before the new table is dropped), and cleanup forgets them. Stored rather than read
//! again at rollback because by then the catalog only knows the new table's side: a view
//! over the new table cannot say what it read from the old one.

use sqlx::Row;
use sqlx::postgres::PgConnection;

use super::sql::{
    Gen, Membership, RowSecurity, Rule, TableAttributes, View, forget_undo as forget, undo_key,
    undo_rows, undo_table,
};
use super::views;

/// What the cutover reads before its renames.
pub(super) struct Before {
    views: Vec<View>,
    matviews: Vec<View>,
    row_security: RowSecurity,
    furniture: TableAttributes,
    publications: Vec<Membership>,
    rules: Vec<Rule>,
}

/// Read under the cutover's `SHARE UPDATE EXCLUSIVE` lock, before the exclusive one:
/// every statement that changes these takes a lock that conflicts with it. Views are the
/// exception (`CREATE VIEW` takes only `ACCESS SHARE` on the table): [`read_views`].
pub(super) async fn read_before(
    conn: &mut PgConnection,
    g: &Gen<'_>,
) -> std::result::Result<Before, sqlx::Error> {
    Ok(Before {
        views: Vec::new(),
        matviews: Vec::new(),
        row_security: super::rls::read(conn, &g.live()).await?,
        furniture: read_furniture(conn, &g.live()).await?,
        publications: super::publications::read(conn, &g.live()).await?,
        rules: super::rules::read(conn, &g.live()).await?,
    })
}

/// Under the exclusive lock, which no new view over the table can pass.
pub(super) async fn read_views(
    conn: &mut PgConnection,
    g: &Gen<'_>,
    before: &mut Before,
) -> std::result::Result<(), sqlx::Error> {
    (before.views, before.matviews) = views_over(conn, g).await?;
    Ok(())
}

/// [`read_views`] with its answer dropped, to prepare its statements before the lock.
pub(super) async fn rehearse_views(
    conn: &mut PgConnection,
    g: &Gen<'_>,
) -> std::result::Result<(), sqlx::Error> {
    views_over(conn, g).await.map(|_| ())
}

/// The views over the live table, and its materialized views.
async fn views_over(
    conn: &mut PgConnection,
    g: &Gen<'_>,
) -> std::result::Result<(Vec<View>, Vec<View>), sqlx::Error> {
    Ok((
        views::dependent_views(conn, &g.live()).await?,
        views::direct_matviews(conn, &g.live()).await?,
    ))
}

/// Before the renames, in the cutover transaction: what must be true of the shadow for
/// the cutover's own statements (its owner, for the sequences it takes over).
pub(super) async fn prepare(
    conn: &mut PgConnection,
    g: &Gen<'_>,
    before: &Before,
) -> std::result::Result<(), sqlx::Error> {
    super::run_all(conn, &g.furniture_before_renames(&before.furniture)).await
}

async fn read_furniture(
    conn: &mut PgConnection,
    relation: &str,
) -> std::result::Result<TableAttributes, sqlx::Error> {
    let r = sqlx::query(
        "SELECT pg_get_userbyid(c.relowner)::text, obj_description(c.oid, 'pg_class'), \
         coalesce(c.reloptions::text[], '{}'), coalesce(t.reloptions::text[], '{}'), \
         (SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a JOIN pg_description ds \
          ON ds.objoid = c.oid AND ds.classoid = 'pg_class'::regclass AND ds.objsubid = a.attnum \
          WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), \
         (SELECT array_agg(ds.description ORDER BY a.attnum) FROM pg_attribute a JOIN pg_description ds \
          ON ds.objoid = c.oid AND ds.classoid = 'pg_class'::regclass AND ds.objsubid = a.attnum \
          WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), \
         c.relreplident::text, \
         (SELECT ic.relname::text FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid WHERE i.indrelid = c.oid AND i.indisreplident) \
         FROM pg_class c LEFT JOIN pg_class t ON t.oid = c.reltoastrelid WHERE c.oid = to_regclass($1)",
    )
    .bind(relation)
    .fetch_one(&mut *conn)
    .await?;
    let names: Vec<String> = r.get::<Option<Vec<String>>, _>(4).unwrap_or_default();
    let texts: Vec<String> = r.get::<Option<Vec<String>>, _>(5).unwrap_or_default();
    Ok(TableAttributes {
        owner: r.get(0),
        comment: r.get(1),
        options: r.get(2),
        toast_options: r.get(3),
        column_comments: names.into_iter().zip(texts).collect(),
        replica_identity: r.get(6),
        replica_index: r.get(7),
    })
}

/// After the cutover's renames, in its transaction: carries everything and records the
/// way back.
pub(super) async fn carry(
    conn: &mut PgConnection,
    g: &Gen<'_>,
    home: &str,
    before: &Before,
) -> std::result::Result<(), sqlx::Error> {
    let mut undo = views::carry(conn, g, &before.views).await?;
    undo.extend(views::prepare_matviews(conn, g, &before.matviews).await?);
    // The old table keeps its own row security: nothing for a rollback to undo.
    super::run_all(conn, &g.carry_row_security(&before.row_security)).await?;
    super::run_all(conn, &g.carry_furniture(&before.furniture)).await?;
    let (publications, back) = g.carry_publications(&before.publications);
    super::run_all(conn, &publications).await?;
    undo.extend(back);
    undo.extend(super::rules::carry(conn, g, &before.rules).await?);
    sqlx::raw_sql(super::sql(forget(home, g.m)))
        .execute(&mut *conn)
        .await?;
    if undo.is_empty() {
        return Ok(());
    }
    sqlx::query(super::sql(format!(
        "INSERT INTO {} (migration, position, statement) SELECT $1, o::integer, s FROM unnest($2::text[]) WITH ORDINALITY AS u(s, o)",
        undo_table(home)
    )))
    .bind(undo_key(g.m))
    .bind(&undo)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// In a rollback after cutover: the recorded way back, in order, and forgotten with the
/// rollback's commit.
pub(super) async fn take_undo(
    conn: &mut PgConnection,
    g: &Gen<'_>,
    home: &str,
) -> std::result::Result<Vec<String>, sqlx::Error> {
    let stmts: Vec<String> = sqlx::query_scalar(super::sql(format!(
        "SELECT statement FROM {} WHERE {} ORDER BY migration, position",
        undo_table(home),
        undo_rows(g.m)
    )))
    .fetch_all(&mut *conn)
    .await?;
    sqlx::raw_sql(super::sql(forget(home, g.m)))
        .execute(&mut *conn)
        .await?;
    Ok(stmts)
}

/// What preflight refuses of the table's furniture: a replica identity index the new
/// table will not have, a publication's column list or row filter it cannot follow, and
/// rules it cannot carry.
pub(super) async fn problems(
    conn: &mut PgConnection,
    g: &Gen<'_>,
) -> std::result::Result<Vec<String>, sqlx::Error> {
    let t = &g.m.table;
    let mut out = Vec::new();
    let f = read_furniture(conn, &g.live()).await?;
    if let Some(idx) = f.replica_index.filter(|_| f.replica_identity == "i") {
        let plain = g.m.before.indexes.iter().any(|i| i.name == idx);
        let kept = g.m.after.indexes.iter().any(|i| i.name == idx);
        if !plain || !kept {
            out.push(format!("table {t:?}: its replica identity is index {idx:?}, which the new table will not have under that name (turnout carries a replica identity index only if it is a plain index the plan keeps); use REPLICA IDENTITY DEFAULT or FULL for the migration"));
        }
    }
    out.extend(super::publications::problems(conn, g).await?);
    out.extend(super::rules::problems(conn, g).await?);
    Ok(out)
}
