//! turnout's `turnout_rollback` table: the statements a rollback after cutover runs first,
//! written by the cutover transaction (see `carry.rs` for why they are stored).

use super::{literal, qualified};
use crate::schema::Migration;

/// turnout's table of the statements a rollback after cutover runs first.
pub(in crate::db::postgres) fn undo_table(home: &str) -> String {
    qualified(home, "turnout_rollback")
}

pub(in crate::db::postgres) fn create_undo_table(home: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} (migration text NOT NULL, position integer NOT NULL, statement text NOT NULL, PRIMARY KEY (migration, position))",
        undo_table(home)
    )
}

/// The key of one table's statements: the migration and the table, since a plan of
/// several tables records a way back for each.
pub(in crate::db::postgres) fn undo_key(m: &Migration) -> String {
    format!("{} @ {}", m.name, m.table)
}

/// Which rows are one table's: its key, or the migration's name alone as turnout wrote it
/// before plans had several tables (a migration cut over by that turnout).
pub(in crate::db::postgres) fn undo_rows(m: &Migration) -> String {
    format!(
        "migration IN ({}, {})",
        literal(&undo_key(m)),
        literal(&m.name)
    )
}

/// Cleanup's statement: the way back is gone with the old table.
pub(in crate::db::postgres) fn forget_undo(home: &str, m: &Migration) -> String {
    format!("DELETE FROM {} WHERE {}", undo_table(home), undo_rows(m))
}
