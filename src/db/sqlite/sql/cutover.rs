//! Cutover, cleanup and rollback SQL. `ALTER TABLE … RENAME` rewrites references inside
//! triggers and views, so the renames run with `legacy_alter_table` on and the reverse
//! triggers are installed after the swap.

use super::triggers::drop_triggers;
use super::{Names, forward, names, quote, reverse};
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
