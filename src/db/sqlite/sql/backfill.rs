//! Batch SQL of the backfill: a batch is found by its last key on the primary key alone,
//! then copied as a key range, with the cursor and last key bound as JSON arrays (`?1`,
//! `?2`).

use super::{after_cursor, cast, key_json, list, quote, range};
use crate::db::render_source;
use crate::schema::{Mapped, Migration};

/// The batch's last key, found on the primary key alone; the copy is then a range.
pub(in crate::db::sqlite) fn last_key(m: &Migration, after: bool, limit: u64) -> String {
    let key = m.old_key();
    let filter = if after {
        format!("WHERE {}", after_cursor(&key, "?1"))
    } else {
        String::new()
    };
    let live = quote(&m.table);
    format!(
        "SELECT {} FROM {live} {filter} ORDER BY {} LIMIT 1 OFFSET {}",
        key_json(&key, ""),
        list(&key),
        limit.saturating_sub(1)
    )
}

/// The live rows of the batch, the source of the copy.
pub(in crate::db::sqlite) fn rows(m: &Migration, lo: bool, hi: bool) -> String {
    let old_cols: Vec<&str> = m.before.columns.iter().map(|c| c.name.as_str()).collect();
    let live = quote(&m.table);
    let range = range(&m.old_key(), lo, hi);
    format!("SELECT {} FROM {live} WHERE {range}", list(&old_cols))
}

/// The last batch (fewer rows than the limit): how many rows it has and its last key.
pub(in crate::db::sqlite) fn tail(m: &Migration, lo: bool, hi: bool) -> String {
    let key = m.old_key();
    let live = quote(&m.table);
    let range = range(&key, lo, hi);
    format!(
        "SELECT count(*), (SELECT {} FROM {live} WHERE {range} ORDER BY {} LIMIT 1) FROM {live} WHERE {range}",
        key_json(&key, ""),
        key.iter()
            .map(|k| format!("{} DESC", quote(k)))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

pub(in crate::db::sqlite) fn count_rows(m: &Migration) -> String {
    format!("SELECT count(*) FROM {}", quote(&m.table))
}

pub(in crate::db::sqlite) fn analyze_shadow(m: &Migration) -> String {
    format!("PRAGMA analysis_limit = 1000; ANALYZE {}", quote(&m.shadow))
}

/// The key of the first row of `rows` whose mapping `mp` yields NULL.
pub(in crate::db::sqlite) fn first_null_key(m: &Migration, mp: &Mapped, rows: &str) -> String {
    let expr = render_source(mp, &|c| quote(c), &cast);
    let keys = key_json(&m.old_key(), "");
    format!("SELECT {keys} FROM ({rows}) AS t WHERE ({expr}) IS NULL LIMIT 1")
}

/// The key of the first row of `rows` that, mapped, the CHECK `expr` refuses (false;
/// NULL passes, as in SQLite).
pub(in crate::db::sqlite) fn first_refused_key(m: &Migration, expr: &str, rows: &str) -> String {
    let exprs = m
        .forward
        .iter()
        .map(|mp| {
            format!(
                "{} AS {}",
                render_source(mp, &|c| quote(c), &cast),
                quote(&mp.target)
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let keys = key_json(&m.new_key(), "");
    format!(
        "SELECT {keys} FROM (SELECT {exprs} FROM ({rows}) AS t) AS t WHERE NOT ({expr}) LIMIT 1"
    )
}
