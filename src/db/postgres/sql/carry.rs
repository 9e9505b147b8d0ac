//! turnout's `turnout_rollback` table: the statements a rollback after cutover runs first,
//! written by the cutover transaction (see `carry.rs` for why they are stored).

use super::{literal, qualified};

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

/// Cleanup's statement: the way back is gone with the old table.
pub(in crate::db::postgres) fn forget_undo(home: &str, migration: &str) -> String {
    format!(
        "DELETE FROM {} WHERE migration = {}",
        undo_table(home),
        literal(migration)
    )
}
