//! The shadow table's DDL: the new shape's columns, its primary key, and its indexes
//! under the names SQLite lets them have next to the live table's, its `UNIQUE`
//! constraints, foreign keys and table options, and what only the table's text says:
//! CHECKs, collations, generated columns (declared, so SQLite recomputes them) and
//! AUTOINCREMENT ([`Furniture`]).

use super::furniture::{Furniture, foreign_key_clause, origin, table_options};
use super::table_text::index_on;
use super::{list, quote};
use crate::schema::{Column, Index, Migration};

/// A column of the new shape, with the collation and CHECKs of the live column it
/// comes from.
fn column_def(m: &Migration, f: &Furniture, c: &Column, single_integer_key: bool) -> String {
    let mut def = format!("{} {}", quote(&c.name), c.sql_type);
    let from = origin(m, &c.name);
    if !single_integer_key {
        if !c.nullable {
            def.push_str(" NOT NULL");
        }
        if let Some(d) = &c.default {
            def.push_str(&format!(" DEFAULT ({d})"));
        }
    }
    if let Some(collate) = from.and_then(|o| f.text.collation(o)) {
        def.push(' ');
        def.push_str(collate);
    }
    for check in f.text.checks.iter().filter(|k| {
        k.column
            .as_deref()
            .is_some_and(|col| from.is_some_and(|o| o.eq_ignore_ascii_case(col)))
    }) {
        def.push(' ');
        def.push_str(&check.clause);
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
    // (the live column it comes from, its definition)
    let mut defs: Vec<(Option<&str>, String)> = m
        .after
        .columns
        .iter()
        .map(|c| {
            let key = single_integer_key && c.name == m.after.primary_key[0];
            (origin(m, &c.name), column_def(m, f, c, key))
        })
        .collect();
    // A generated column keeps its place: after the last column declared before it.
    for g in &f.text.generated {
        let at = defs
            .iter()
            .rposition(|(o, _)| {
                o.is_some_and(|o| g.preceding.iter().any(|p| p.eq_ignore_ascii_case(o)))
            })
            .map_or(0, |p| p + 1);
        defs.insert(at, (Some(g.name.as_str()), g.definition.clone()));
    }
    let mut cols: Vec<String> = defs.into_iter().map(|(_, d)| d).collect();
    let autoincrement = if single_integer_key && f.text.autoincrement {
        " AUTOINCREMENT"
    } else {
        ""
    };
    cols.push(format!(
        "PRIMARY KEY ({}{autoincrement})",
        list(&m.new_key())
    ));
    for idx in m.after.indexes.iter().filter(|i| is_constraint_index(i)) {
        let ucols: Vec<&str> = idx.columns.iter().map(String::as_str).collect();
        cols.push(format!("UNIQUE ({})", list(&ucols)));
    }
    // The text's clauses are the pragma's keys in the same order; preflight refuses a
    // deferrable key when the two do not line up.
    let deferrals = (f.text.deferrals.len() == f.foreign_keys.len()).then_some(&f.text.deferrals);
    cols.extend(f.foreign_keys.iter().enumerate().filter_map(|(i, fk)| {
        let clause = foreign_key_clause(m, fk)?;
        match deferrals.and_then(|d| d[i].as_deref()) {
            Some(deferral) => Some(format!("{clause} {deferral}")),
            None => Some(clause),
        }
    }));
    // Table CHECKs, and those of a dropped column (which preflight let through only when
    // they do not name it), as table constraints.
    let carried = |col: &str| {
        m.after
            .columns
            .iter()
            .any(|c| origin(m, &c.name).is_some_and(|o| o.eq_ignore_ascii_case(col)))
    };
    let generated = |col: &str| {
        f.text
            .generated
            .iter()
            .any(|g| g.name.eq_ignore_ascii_case(col))
    };
    cols.extend(
        f.text
            .checks
            .iter()
            .filter(|k| {
                k.column
                    .as_deref()
                    .is_none_or(|col| !carried(col) && !generated(col))
            })
            .map(|k| k.clause.clone()),
    );
    let mut out = vec![format!(
        "CREATE TABLE IF NOT EXISTS {} ({}){}",
        quote(&m.shadow),
        cols.join(", "),
        table_options(f)
    )];
    for idx in m.after.indexes.iter().filter(|i| !is_constraint_index(i)) {
        let carried = m.before.indexes.iter().any(|b| b.name == idx.name);
        let name = shadow_index_name(idx, carried);
        if let Some((_, text)) = f.index_text.iter().find(|(n, _)| *n == idx.name)
            && let Some(stmt) = index_on(text, &name, &m.shadow)
        {
            out.push(stmt);
            continue;
        }
        let cols: Vec<&str> = idx.columns.iter().map(String::as_str).collect();
        out.push(format!(
            "CREATE {}INDEX IF NOT EXISTS {} ON {} ({})",
            if idx.unique { "UNIQUE " } else { "" },
            quote(&name),
            quote(&m.shadow),
            list(&cols)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::sqlite::sql::table_text::read_table;

    /// The shadow repeats what only the table's text says: the CHECKs where they were
    /// declared, the collation, AUTOINCREMENT, the generated column in its place, and an
    /// odd index from its own text under the shadow's index name.
    #[test]
    fn the_shadow_carries_what_the_table_text_declares() {
        let before = crate::schema::fixtures::orders(["INTEGER", "INTEGER", "TEXT"], false);
        let plan = crate::plan::parse(
            "version: 1\nname: m\ntable: orders\nchanges:\n  - alter_column: {name: amount_cents, type: BIGINT}\n  - add_column: {name: extra, type: TEXT}\n",
            "p.yaml",
        )
        .expect("plan");
        let m = Migration::derive(&plan, &before).expect("derive");
        let f = Furniture {
            text: read_table(
                "CREATE TABLE orders (id INTEGER PRIMARY KEY AUTOINCREMENT, \
                 amount_cents INTEGER NOT NULL CONSTRAINT positive CHECK (amount_cents >= 0), \
                 twice INT AS (amount_cents * 2) VIRTUAL, \
                 note TEXT COLLATE NOCASE CHECK (length(note) < 100) \
                 REFERENCES notes (body) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED, CHECK (id > 0))",
            ),
            index_text: vec![(
                "orders_note".into(),
                "CREATE INDEX orders_note ON orders (lower(note) DESC) WHERE note IS NOT NULL"
                    .into(),
            )],
            foreign_keys: vec![crate::db::sqlite::sql::furniture::ForeignKey {
                columns: vec!["note".into()],
                parent: "notes".into(),
                parent_columns: vec!["body".into()],
                on_update: "NO ACTION".into(),
                on_delete: "CASCADE".into(),
            }],
            ..Furniture::default()
        };
        insta::assert_snapshot!(create_shadow(&m, &f).join(";\n"));
    }
}
