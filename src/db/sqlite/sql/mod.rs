//! The SQL turnout runs on SQLite, generated without a database: quoting, the names of
//! the objects a migration creates, the two directions of dual-write, the column-list and
//! key helpers every statement shares, and [`preview`], the SQL of every phase as
//! `turnout plan` shows it. The files below hold the statements of one concern each;
//! the files of the parent folder execute them.

pub(super) mod backfill;
pub(super) mod cutover;
pub(super) mod furniture;
pub(super) mod instant;
pub(super) mod keys;
pub(super) mod shadow;
pub(super) mod table_text;
pub(super) mod triggers;
pub(super) mod verify;

use crate::db::{PhaseSql, render_source};
use crate::schema::Migration;

/// The one quoting function of this dialect.
pub fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Deterministic names of the objects a migration creates.
pub(in crate::db::sqlite) struct Names {
    fwd_insert: String,
    fwd_update: String,
    fwd_delete: String,
    rev_insert: String,
    rev_update: String,
    rev_delete: String,
}

pub(in crate::db::sqlite) fn names(m: &Migration) -> Names {
    let base = format!("turnout_{}", short_hash(&format!("{}/{}", m.name, m.table)));
    Names {
        fwd_insert: format!("{base}_fwd_ins"),
        fwd_update: format!("{base}_fwd_upd"),
        fwd_delete: format!("{base}_fwd_del"),
        rev_insert: format!("{base}_rev_ins"),
        rev_update: format!("{base}_rev_upd"),
        rev_delete: format!("{base}_rev_del"),
    }
}

impl Names {
    /// Every trigger turnout creates for the migration, to tell them from the user's.
    pub(in crate::db::sqlite) fn own(&self) -> [&str; 6] {
        [
            &self.fwd_insert,
            &self.fwd_update,
            &self.fwd_delete,
            &self.rev_insert,
            &self.rev_update,
            &self.rev_delete,
        ]
    }
}

fn short_hash(s: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(s.as_bytes())
        .iter()
        .take(5)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One direction of dual-write: rows of `source` copied into `target`.
pub(in crate::db::sqlite) struct Direction {
    source: String,
    target: String,
    mapped: Vec<crate::schema::Mapped>,
    source_key: Vec<String>,
    target_key: Vec<String>,
    source_columns: Vec<String>,
    triggers: [String; 3],
}

pub(in crate::db::sqlite) fn forward(m: &Migration, n: &Names) -> Direction {
    Direction {
        source: m.table.clone(),
        target: m.shadow.clone(),
        mapped: m.forward.clone(),
        source_key: m.key.iter().map(|k| k.old.clone()).collect(),
        target_key: m.key.iter().map(|k| k.new.clone()).collect(),
        source_columns: m.before.columns.iter().map(|c| c.name.clone()).collect(),
        triggers: [
            n.fwd_insert.clone(),
            n.fwd_update.clone(),
            n.fwd_delete.clone(),
        ],
    }
}

pub(in crate::db::sqlite) fn reverse(m: &Migration, n: &Names) -> Direction {
    Direction {
        source: m.table.clone(),
        target: m.old.clone(),
        mapped: m.reverse.clone(),
        source_key: m.key.iter().map(|k| k.new.clone()).collect(),
        target_key: m.key.iter().map(|k| k.old.clone()).collect(),
        source_columns: m.after.columns.iter().map(|c| c.name.clone()).collect(),
        triggers: [
            n.rev_insert.clone(),
            n.rev_update.clone(),
            n.rev_delete.clone(),
        ],
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

pub(in crate::db::sqlite) fn list(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| quote(n))
        .collect::<Vec<_>>()
        .join(", ")
}

fn cast(value: &str, t: &str) -> String {
    format!("CAST({value} AS {t})")
}

/// `SELECT <mapped> FROM (<rows>) AS t`: the plan's expressions read the source row's
/// columns unqualified, whatever the rows come from.
pub(in crate::db::sqlite) fn mapped_select(mapped: &[crate::schema::Mapped], rows: &str) -> String {
    let exprs = mapped
        .iter()
        .map(|mp| render_source(mp, &|c| quote(c), &cast))
        .collect::<Vec<_>>()
        .join(", ");
    format!("SELECT {exprs} FROM ({rows}) AS t")
}

pub(in crate::db::sqlite) fn upsert(d: &Direction, rows: &str, on_conflict_update: bool) -> String {
    let targets: Vec<&str> = d.mapped.iter().map(|mp| mp.target.as_str()).collect();
    let updates: Vec<String> = targets
        .iter()
        .filter(|t| !d.target_key.iter().any(|k| k == *t))
        .map(|t| format!("{} = excluded.{}", quote(t), quote(t)))
        .collect();
    let action = if on_conflict_update && !updates.is_empty() {
        format!("DO UPDATE SET {}", updates.join(", "))
    } else {
        "DO NOTHING".to_string()
    };
    // `WHERE true` keeps SQLite from reading ON CONFLICT as part of the SELECT's join.
    format!(
        "INSERT INTO {} ({}) {} WHERE true ON CONFLICT ({}) {action}",
        quote(&d.target),
        list(&targets),
        mapped_select(&d.mapped, rows),
        list(&strs(&d.target_key))
    )
}

/// Keys as JSON arrays so keyset pagination binds them back with their storage class.
fn key_json(cols: &[&str], prefix: &str) -> String {
    let parts = cols
        .iter()
        .map(|c| format!("{prefix}{}", quote(c)))
        .collect::<Vec<_>>()
        .join(", ");
    format!("json_array({parts})")
}

fn after_cursor(cols: &[&str], param: &str) -> String {
    let vals = (0..cols.len())
        .map(|i| format!("json_extract({param}, '$[{i}]')"))
        .collect::<Vec<_>>()
        .join(", ");
    format!("({}) > ({vals})", list(cols))
}

fn at_or_before(cols: &[&str], param: &str) -> String {
    let vals = (0..cols.len())
        .map(|i| format!("json_extract({param}, '$[{i}]')"))
        .collect::<Vec<_>>()
        .join(", ");
    format!("({}) <= ({vals})", list(cols))
}

/// The key range of a batch or chunk: after the cursor bound as `?1` when there is one,
/// up to and including the last key bound as `?2` when there is one.
fn range(cols: &[&str], lo: bool, hi: bool) -> String {
    let mut w = Vec::new();
    if lo {
        w.push(after_cursor(cols, "?1"));
    }
    if hi {
        w.push(at_or_before(cols, "?2"));
    }
    if w.is_empty() {
        "true".to_string()
    } else {
        w.join(" AND ")
    }
}

/// The SQL of every phase, for `turnout plan`.
pub(in crate::db::sqlite) fn preview(m: &Migration) -> Vec<PhaseSql> {
    let n = names(m);
    let f = forward(m, &n);
    let r = reverse(m, &n);
    let old_cols: Vec<&str> = m.before.columns.iter().map(|c| c.name.as_str()).collect();
    let key = m.old_key();
    let last_key = format!(
        "SELECT {} FROM {} WHERE {} ORDER BY {} LIMIT 1 OFFSET :batch_size - 1",
        key_json(&key, ""),
        quote(&m.table),
        after_cursor(&key, ":cursor"),
        list(&key)
    );
    let batch_rows = format!(
        "SELECT {} FROM {} WHERE {} AND {}",
        list(&old_cols),
        quote(&m.table),
        after_cursor(&key, ":cursor"),
        at_or_before(&key, ":last_key")
    );
    let mut cutover = vec!["BEGIN IMMEDIATE".to_string()];
    cutover.extend(cutover::swap(m, &n));
    cutover.extend(triggers::triggers(&r));
    cutover.push("COMMIT".into());
    let cleanup = cutover::cleanup(m, false);
    vec![
        PhaseSql {
            phase: "prepare".into(),
            statements: shadow::create_shadow(m, &furniture::Furniture::default()),
        },
        PhaseSql {
            phase: "dual-write".into(),
            statements: triggers::triggers(&f),
        },
        PhaseSql {
            phase: "backfill (each batch)".into(),
            statements: vec![
                "BEGIN IMMEDIATE".into(),
                last_key,
                upsert(&f, &batch_rows, false),
                "-- save the checkpoint".into(),
                "COMMIT".into(),
            ],
        },
        PhaseSql {
            phase: "cutover".into(),
            statements: cutover,
        },
        PhaseSql {
            phase: "cleanup".into(),
            statements: cleanup,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn migration() -> Migration {
        let before = crate::schema::fixtures::orders(["INTEGER", "INTEGER", "TEXT"], false);
        let plan = crate::plan::parse(
            "version: 1\nname: m\ntable: orders\nchanges:\n  - add_column: {name: amount, type: NUMERIC, from: amount_cents / 100.0}\n  - drop_column: {name: amount_cents, reverse: 'CAST(round(amount * 100) AS INTEGER)'}\n  - rename_column: {from: note, to: comment}\n",
            "p.yaml",
        )
        .expect("plan");
        Migration::derive(&plan, &before).expect("derive")
    }

    /// The SQL of every phase, reviewed as a snapshot: a change to it is deliberate.
    #[test]
    fn the_sql_of_every_phase() {
        let phases = preview(&migration());
        let text: String = phases
            .iter()
            .map(|p| format!("-- {}\n{}\n", p.phase, p.statements.join(";\n")))
            .collect();
        insta::assert_snapshot!(text);
    }
}
