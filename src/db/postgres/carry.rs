//! What hangs off the table and must follow it at cutover (views: `views.rs`; row-level
//! security: `rls.rs`):
//! read before the renames, carried after them in the cutover transaction. Each carrier
//! also returns the statements that undo it, which the same transaction writes to
//! `turnout_rollback`; a rollback after cutover runs them first, in its own transaction
//! (before the new table is dropped), and cleanup forgets them. Stored rather than read
//! again at rollback because by then the catalog only knows the new table's side: a view
//! over the new table cannot say what it read from the old one.

use sqlx::postgres::PgConnection;

use super::sql::{Gen, RowSecurity, View, forget_undo as forget, undo_table};
use super::views;

/// What the cutover reads before its renames.
pub(super) struct Before {
    views: Vec<View>,
    row_security: RowSecurity,
}

pub(super) async fn read_before(
    conn: &mut PgConnection,
    g: &Gen<'_>,
) -> std::result::Result<Before, sqlx::Error> {
    Ok(Before {
        views: views::dependent_views(conn, &g.live()).await?,
        row_security: super::rls::read(conn, &g.live()).await?,
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
    let undo = views::carry(conn, g, &before.views).await?;
    // The old table keeps its own row security: nothing for a rollback to undo.
    super::run_all(conn, &g.carry_row_security(&before.row_security)).await?;
    sqlx::raw_sql(super::sql(forget(home, &g.m.name)))
        .execute(&mut *conn)
        .await?;
    if undo.is_empty() {
        return Ok(());
    }
    sqlx::query(super::sql(format!(
        "INSERT INTO {} (migration, position, statement) SELECT $1, o::integer, s FROM unnest($2::text[]) WITH ORDINALITY AS u(s, o)",
        undo_table(home)
    )))
    .bind(&g.m.name)
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
        "SELECT statement FROM {} WHERE migration = $1 ORDER BY position",
        undo_table(home)
    )))
    .bind(&g.m.name)
    .fetch_all(&mut *conn)
    .await?;
    sqlx::raw_sql(super::sql(forget(home, &g.m.name)))
        .execute(&mut *conn)
        .await?;
    Ok(stmts)
}
