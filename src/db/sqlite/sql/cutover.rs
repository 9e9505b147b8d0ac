//! Cutover, cleanup and rollback SQL. `ALTER TABLE … RENAME` rewrites references inside
//! triggers and views, so the renames run with `legacy_alter_table` on and the reverse
//! triggers are installed after the swap.

use super::triggers::drop_triggers;
use super::{Names, forward, literal, names, quote, reverse};
use crate::schema::Migration;

/// The swap: the forward triggers go, `<table>` becomes the old table and the shadow
/// becomes `<table>`.
pub(in crate::db::sqlite) fn swap(m: &Migration, n: &Names) -> Vec<String> {
    let mut stmts = Vec::new();
    stmts.extend(drop_triggers(&forward(m, n)));
    stmts.push(format!(
        "ALTER TABLE {} RENAME TO {}",
        quote(&m.table),
        quote(&m.old)
    ));
    stmts.push(format!(
        "ALTER TABLE {} RENAME TO {}",
        quote(&m.shadow),
        quote(&m.table)
    ));
    stmts
}

/// AUTOINCREMENT: `to`, which just took the table's name, never hands out an id `from`
/// ever handed out (deleted rows' ids included, which the copied rows do not tell).
/// Needs `sqlite_sequence`, which SQLite creates with the first AUTOINCREMENT table.
pub(in crate::db::sqlite) fn carry_sequence(from: &str, to: &str) -> Vec<String> {
    let (from, to) = (literal(from), literal(to));
    let highest = format!("(SELECT max(seq) FROM sqlite_sequence WHERE name = {from})");
    vec![
        format!(
            "UPDATE sqlite_sequence SET seq = max(seq, coalesce({highest}, 0)) WHERE name = {to}"
        ),
        format!(
            "INSERT INTO sqlite_sequence (name, seq) SELECT {to}, {highest} WHERE {highest} IS NOT NULL AND NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = {to})"
        ),
    ]
}

/// The reverse triggers go, and the old table unless it is kept.
pub(in crate::db::sqlite) fn cleanup(m: &Migration, keep_old: bool) -> Vec<String> {
    let mut stmts = drop_triggers(&reverse(m, &names(m)));
    if !keep_old {
        stmts.push(format!("DROP TABLE IF EXISTS {}", quote(&m.old)));
    }
    stmts
}

/// Both directions' triggers go.
pub(in crate::db::sqlite) fn drop_all_triggers(m: &Migration, n: &Names) -> Vec<String> {
    let mut stmts = drop_triggers(&reverse(m, n));
    stmts.extend(drop_triggers(&forward(m, n)));
    stmts
}

/// After cutover: `<table>` is the new table; put the original back.
pub(in crate::db::sqlite) fn swap_back(m: &Migration) -> Vec<String> {
    vec![
        format!(
            "ALTER TABLE {} RENAME TO {}",
            quote(&m.table),
            quote(&m.shadow)
        ),
        format!(
            "ALTER TABLE {} RENAME TO {}",
            quote(&m.old),
            quote(&m.table)
        ),
    ]
}

pub(in crate::db::sqlite) fn drop_shadow(m: &Migration) -> String {
    format!("DROP TABLE IF EXISTS {}", quote(&m.shadow))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sequence_is_carried_by_name_as_a_literal() {
        insta::assert_snapshot!(carry_sequence("_it's_old", "it's").join(";\n"));
    }
}
