//! Dual-write triggers, forward (live table into the shadow) and reverse (after cutover,
//! the new table into the old one). SQLite triggers cannot catch errors: a write the
//! mapping cannot store fails, whatever `dual_write.on_error` says.

use super::{Direction, quote, strs, upsert};

fn row_of(prefix: &str, columns: &[&str]) -> String {
    let cols = columns
        .iter()
        .map(|c| format!("{prefix}.{} AS {}", quote(c), quote(c)))
        .collect::<Vec<_>>()
        .join(", ");
    format!("SELECT {cols}")
}

fn key_match(target_key: &[&str], source_key: &[&str], prefix: &str) -> String {
    target_key
        .iter()
        .zip(source_key)
        .map(|(t, s)| format!("{} = {prefix}.{}", quote(t), quote(s)))
        .collect::<Vec<_>>()
        .join(" AND ")
}

fn key_changed(source_key: &[&str]) -> String {
    source_key
        .iter()
        .map(|k| format!("NEW.{} IS NOT OLD.{}", quote(k), quote(k)))
        .collect::<Vec<_>>()
        .join(" OR ")
}

pub(in crate::db::sqlite) fn triggers(d: &Direction) -> Vec<String> {
    let src = quote(&d.source);
    let tgt = quote(&d.target);
    let new_row = row_of("NEW", &strs(&d.source_columns));
    let (sk, tk) = (strs(&d.source_key), strs(&d.target_key));
    vec![
        format!(
            "CREATE TRIGGER IF NOT EXISTS {} AFTER INSERT ON {src} BEGIN {}; END",
            quote(&d.triggers[0]),
            upsert(d, &new_row, true)
        ),
        format!(
            "CREATE TRIGGER IF NOT EXISTS {} AFTER UPDATE ON {src} BEGIN DELETE FROM {tgt} WHERE ({}) AND ({}); {}; END",
            quote(&d.triggers[1]),
            key_match(&tk, &sk, "OLD"),
            key_changed(&sk),
            upsert(d, &new_row, true)
        ),
        format!(
            "CREATE TRIGGER IF NOT EXISTS {} AFTER DELETE ON {src} BEGIN DELETE FROM {tgt} WHERE {}; END",
            quote(&d.triggers[2]),
            key_match(&tk, &sk, "OLD")
        ),
    ]
}

pub(in crate::db::sqlite) fn drop_triggers(d: &Direction) -> Vec<String> {
    d.triggers
        .iter()
        .map(|t| format!("DROP TRIGGER IF EXISTS {}", quote(t)))
        .collect()
}
