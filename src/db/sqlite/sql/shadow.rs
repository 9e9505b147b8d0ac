//! The shadow table's DDL: the new shape's columns, its primary key, and its indexes
//! under the names SQLite lets them have next to the live table's, its `UNIQUE`
//! constraints, foreign keys and table options ([`Furniture`]).

use super::furniture::{Furniture, foreign_key_clause, table_options};
use super::{list, quote};
use crate::schema::{Column, Index, Migration};

fn column_def(c: &Column, single_integer_key: bool) -> String {
    let mut def = format!("{} {}", quote(&c.name), c.sql_type);
    if single_integer_key {
        return def;
    }
    if !c.nullable {
        def.push_str(" NOT NULL");
    }
    if let Some(d) = &c.default {
        def.push_str(&format!(" DEFAULT ({d})"));
    }
    def
}

/// Carried-over indexes alternate between `x` and `x_new`, since SQLite cannot rename
/// an index and the live table's index keeps `x` until cleanup.
pub(in crate::db::sqlite) fn shadow_index_name(index: &Index, carried: bool) -> String {
    if !carried {
        return index.name.clone();
    }
    match index.name.strip_suffix("_new") {
        Some(base) if !base.is_empty() => base.to_string(),
        _ => format!("{}_new", index.name),
    }
}

/// SQLite names a `UNIQUE` constraint's index itself (`sqlite_autoindex_<table>_<n>`),
/// and no other index may take such a name: it is carried as a constraint.
fn is_constraint_index(index: &Index) -> bool {
    index.name.starts_with("sqlite_autoindex_")
}

pub(in crate::db::sqlite) fn create_shadow(m: &Migration, f: &Furniture) -> Vec<String> {
    let single_integer_key = !f.without_rowid
        && m.after.primary_key.len() == 1
        && m.after
            .column(&m.after.primary_key[0])
            .is_some_and(|c| c.sql_type.eq_ignore_ascii_case("integer"));
    let mut cols: Vec<String> = m
        .after
        .columns
        .iter()
        .map(|c| column_def(c, single_integer_key && c.name == m.after.primary_key[0]))
        .collect();
    cols.push(format!("PRIMARY KEY ({})", list(&m.new_key())));
    for idx in m.after.indexes.iter().filter(|i| is_constraint_index(i)) {
        let ucols: Vec<&str> = idx.columns.iter().map(String::as_str).collect();
        cols.push(format!("UNIQUE ({})", list(&ucols)));
    }
    cols.extend(
        f.foreign_keys
            .iter()
            .filter_map(|fk| foreign_key_clause(m, fk)),
    );
    let mut out = vec![format!(
        "CREATE TABLE IF NOT EXISTS {} ({}){}",
        quote(&m.shadow),
        cols.join(", "),
        table_options(f)
    )];
    for idx in m.after.indexes.iter().filter(|i| !is_constraint_index(i)) {
        let carried = m.before.indexes.iter().any(|b| b.name == idx.name);
        let cols: Vec<&str> = idx.columns.iter().map(String::as_str).collect();
        out.push(format!(
            "CREATE {}INDEX IF NOT EXISTS {} ON {} ({})",
            if idx.unique { "UNIQUE " } else { "" },
            quote(&shadow_index_name(idx, carried)),
            quote(&m.shadow),
            list(&cols)
        ));
    }
    out
}
