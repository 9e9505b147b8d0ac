//! The shapes of tables and the migration between them, as plain data. A [`Migration`]
//! is derived once, at prepare, from the live table's shape and the plan, then stored
//! with the state: every later phase (and every resume) works from the same derivation
//! even though the live table's name ends up on another table after cutover.

use serde::{Deserialize, Serialize};

use crate::plan::{Change, OnError, Plan};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    /// The type as the database writes it in a CREATE TABLE (`numeric(12,2)`, `varchar(64)`).
    pub sql_type: String,
    pub nullable: bool,
    /// The DEFAULT expression as SQL.
    pub default: Option<String>,
    /// Filled by the database (identity, serial, AUTO_INCREMENT, SQLite's rowid alias).
    pub generated: Option<Generated>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Generated {
    /// PostgreSQL `GENERATED … AS IDENTITY` (`always` tells ALWAYS from BY DEFAULT).
    Identity { always: bool },
    /// A default drawn from a sequence (PostgreSQL serial), named as the catalog has it.
    Sequence { sequence: String },
    /// MySQL AUTO_INCREMENT, SQLite INTEGER PRIMARY KEY.
    AutoIncrement,
    /// A column computed from the others (MySQL/MariaDB `GENERATED ALWAYS AS (expression)
    /// VIRTUAL` or, with `stored`, `STORED`/`PERSISTENT`): the database refuses a value for
    /// it, so it is declared again on the new table and never copied.
    Computed { expression: String, stored: bool },
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Index {
    pub name: String,
    pub columns: Vec<String>,
    pub unique: bool,
    /// An index kind other than the database's ordinary one, as its DDL spells it
    /// (MySQL/MariaDB: `FULLTEXT`, `SPATIAL`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Per column, in `columns` order, the length of a prefix index part (MySQL/MariaDB
    /// `KEY (note(20))`); empty when no part is a prefix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefix: Vec<Option<u32>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableShape {
    pub columns: Vec<Column>,
    /// Primary key columns, in key order.
    pub primary_key: Vec<String>,
    /// Secondary indexes (the primary key's own index excluded).
    pub indexes: Vec<Index>,
}

impl TableShape {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// Where a value of a target column comes from, over the source row's columns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Source {
    /// The source row's column of that name.
    Column(String),
    /// A SQL expression from the plan, read over the source row's columns.
    Expr(String),
}

/// One target column filled from the source row, cast to `cast` when set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mapped {
    pub target: String,
    pub source: Source,
    pub cast: Option<String>,
}

/// A primary-key column in the old table and in the new one (a rename keeps its values).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyColumn {
    pub old: String,
    pub new: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Migration {
    pub name: String,
    /// Schema (PostgreSQL) or database (MySQL) holding the table; `None`: the connection's.
    pub schema: Option<String>,
    pub table: String,
    /// `_<table>_new`: the shadow table, which becomes `<table>` at cutover.
    pub shadow: String,
    /// `_<table>_old`: the live table's name after cutover.
    pub old: String,
    pub before: TableShape,
    pub after: TableShape,
    /// How each column of the new table is filled from an old row.
    pub forward: Vec<Mapped>,
    /// How each column of the old table is filled from a new row (after cutover).
    pub reverse: Vec<Mapped>,
    /// Old columns a rollback after cutover cannot restore (dropped with no `reverse`).
    pub lossy: Vec<String>,
    pub key: Vec<KeyColumn>,
    pub on_error: OnError,
    /// The plan's new definitions for dependent views (PostgreSQL).
    #[serde(default)]
    pub views: Vec<crate::plan::ViewDefinition>,
    /// The table's place in the plan's `tables` (0 for a plan of one table): where a
    /// database names its objects after the migration, the tables after the first add
    /// their own name, and the first keeps the names a plan of one table always had.
    #[serde(default)]
    pub nth: usize,
    /// The plan's other tables, swapped with this one at the same cutover (empty for a
    /// plan of one table).
    #[serde(default)]
    pub together: Vec<String>,
}

impl Migration {
    /// The live table's columns the new shape no longer has under their name (dropped or
    /// renamed): what a trigger, view or constraint written against them would miss.
    pub fn columns_gone(&self) -> Vec<&str> {
        self.before
            .columns
            .iter()
            .map(|c| c.name.as_str())
            .filter(|c| self.after.column(c).is_none())
            .collect()
    }

    /// Applies the plan's changes to the live table's shape. Problems are refusals for
    /// preflight, worded with the table and column.
    pub fn derive(plan: &Plan, before: &TableShape) -> Result<Migration, Vec<String>> {
        Migration::derive_table(plan, 0, before)
    }

    /// [`Migration::derive`] for the plan's `n`th table (in the order of
    /// [`crate::plan::PlanFile::specs`]).
    pub fn derive_table(
        plan: &Plan,
        n: usize,
        before: &TableShape,
    ) -> Result<Migration, Vec<String>> {
        let specs = plan.file.specs();
        let Some(t) = specs.get(n) else {
            return Err(vec![format!("the plan has no table number {}", n + 1)]);
        };
        let entry = if plan.file.tables.is_empty() {
            String::new()
        } else {
            format!("tables[{n}].")
        };
        let p = &plan.file;
        let mut problems = Vec::new();
        let mut after = before.clone();
        // Each new column's origin: Some(old column) while it still carries an old column's values.
        let mut origin: Vec<Option<String>> = before
            .columns
            .iter()
            .map(|c| Some(c.name.clone()))
            .collect();
        let mut forward_expr: std::collections::HashMap<String, (Source, Option<String>)> =
            Default::default();
        let mut reverse_expr: std::collections::HashMap<String, Option<Source>> =
            Default::default();
        let mut lossy = Vec::new();
        let table = &t.table;

        for (i, change) in t.changes.iter().enumerate() {
            let at = format!("{entry}changes[{i}].{}", change.kind());
            match change {
                Change::AddColumn(c) => {
                    if after.column(&c.name).is_some() {
                        problems.push(format!(
                            "{at}: table {table:?} already has a column {:?}",
                            c.name
                        ));
                        continue;
                    }
                    after.columns.push(Column {
                        name: c.name.clone(),
                        sql_type: c.sql_type.clone(),
                        nullable: c.nullable,
                        default: c.default.clone(),
                        generated: None,
                    });
                    origin.push(None);
                    if let Some(from) = &c.from {
                        forward_expr.insert(
                            c.name.clone(),
                            (Source::Expr(from.clone()), Some(c.sql_type.clone())),
                        );
                    }
                }
                Change::DropColumn(c) => {
                    let Some(pos) = after.columns.iter().position(|col| col.name == c.name) else {
                        problems.push(format!("{at}: table {table:?} has no column {:?}", c.name));
                        continue;
                    };
                    if after.primary_key.contains(&c.name) {
                        problems.push(format!("{at}: column {:?} is part of the primary key of {table:?}; it cannot be dropped online", c.name));
                        continue;
                    }
                    let old = &before.columns[pos];
                    match &c.reverse {
                        Some(r) => {
                            reverse_expr.insert(c.name.clone(), Some(Source::Expr(r.clone())));
                        }
                        None => {
                            if !old.nullable && old.default.is_none() && old.generated.is_none() {
                                problems.push(format!(
                                    "{at}: column {:?} of {table:?} is NOT NULL without a default; give `reverse` so rows written after cutover can be copied back to the old table",
                                    c.name
                                ));
                            }
                            reverse_expr.insert(c.name.clone(), None);
                            // The old table computes a generated column again itself.
                            if !matches!(old.generated, Some(Generated::Computed { .. })) {
                                lossy.push(c.name.clone());
                            }
                        }
                    }
                    for idx in &mut after.indexes {
                        if let Some(at) = idx.columns.iter().position(|col| col == &c.name) {
                            idx.columns.remove(at);
                            if at < idx.prefix.len() {
                                idx.prefix.remove(at);
                            }
                        }
                    }
                    after.indexes.retain(|idx| !idx.columns.is_empty());
                    after.columns.remove(pos);
                    origin.remove(pos);
                }
                Change::AlterColumn(c) => {
                    let Some(pos) = after.columns.iter().position(|col| col.name == c.name) else {
                        problems.push(format!("{at}: table {table:?} has no column {:?}", c.name));
                        continue;
                    };
                    let in_key = after.primary_key.contains(&c.name);
                    if in_key && (c.using.is_some() || c.reverse.is_some()) {
                        problems.push(format!("{at}: column {:?} is part of the primary key of {table:?}; its values cannot be transformed online (a key can only be widened: give `type` without `using`/`reverse`)", c.name));
                        continue;
                    }
                    let col = &mut after.columns[pos];
                    if let Some(t) = &c.sql_type {
                        col.sql_type = t.clone();
                        // A widened key keeps drawing from its sequence / AUTO_INCREMENT.
                        if !in_key {
                            col.generated = None;
                        }
                    }
                    if let Some(n) = c.nullable {
                        col.nullable = n;
                    }
                    let cast = Some(col.sql_type.clone())
                        .filter(|_| c.sql_type.is_some() || c.using.is_some());
                    let source = c
                        .using
                        .clone()
                        .map_or(Source::Column(c.name.clone()), Source::Expr);
                    if cast.is_some() || c.using.is_some() {
                        forward_expr.insert(c.name.clone(), (source, cast));
                    }
                    match &c.reverse {
                        Some(r) => {
                            reverse_expr.insert(c.name.clone(), Some(Source::Expr(r.clone())));
                        }
                        None if c.using.is_some() => {
                            // The forward expression has no known inverse: the old value is lost.
                            reverse_expr.insert(c.name.clone(), None);
                            lossy.push(c.name.clone());
                        }
                        None => {}
                    }
                }
                Change::RenameColumn(c) => {
                    if after.column(&c.to).is_some() {
                        problems.push(format!(
                            "{at}: table {table:?} already has a column {:?}",
                            c.to
                        ));
                        continue;
                    }
                    let Some(col) = after.columns.iter_mut().find(|col| col.name == c.from) else {
                        problems.push(format!("{at}: table {table:?} has no column {:?}", c.from));
                        continue;
                    };
                    col.name = c.to.clone();
                    for name in after
                        .primary_key
                        .iter_mut()
                        .chain(after.indexes.iter_mut().flat_map(|i| i.columns.iter_mut()))
                    {
                        if name == &c.from {
                            *name = c.to.clone();
                        }
                    }
                }
                Change::AddIndex(c) => {
                    if after.indexes.iter().any(|idx| idx.name == c.name) {
                        problems.push(format!(
                            "{at}: table {table:?} already has an index {:?}",
                            c.name
                        ));
                        continue;
                    }
                    for col in &c.columns {
                        if after.column(col).is_none() {
                            problems.push(format!("{at}: index {:?} names column {col:?}, which the new {table:?} does not have", c.name));
                        }
                    }
                    after.indexes.push(Index {
                        name: c.name.clone(),
                        columns: c.columns.clone(),
                        unique: c.unique,
                        ..Default::default()
                    });
                }
                Change::DropIndex(c) => {
                    let before_len = after.indexes.len();
                    after.indexes.retain(|idx| idx.name != c.name);
                    if after.indexes.len() == before_len {
                        problems.push(format!("{at}: table {table:?} has no index {:?}", c.name));
                    }
                }
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }

        let forward = after
            .columns
            .iter()
            .zip(&origin)
            .filter_map(|(col, from)| {
                // A column the plan computes; else one carried over from an old column.
                let old_name = from.as_ref();
                let key = old_name.unwrap_or(&col.name);
                if let Some((source, cast)) = forward_expr
                    .get(key)
                    .or_else(|| forward_expr.get(&col.name))
                {
                    return Some(Mapped {
                        target: col.name.clone(),
                        source: source.clone(),
                        cast: cast.clone(),
                    });
                }
                old_name.map(|old| Mapped {
                    target: col.name.clone(),
                    source: Source::Column(old.clone()),
                    cast: None,
                })
            })
            .collect();

        let reverse = before
            .columns
            .iter()
            .filter_map(|col| {
                if let Some(explicit) = reverse_expr.get(&col.name) {
                    // A plan's reverse expression is cast back to the old column's type.
                    return explicit.clone().map(|s| Mapped {
                        target: col.name.clone(),
                        source: s,
                        cast: Some(col.sql_type.clone()),
                    });
                }
                let pos = origin
                    .iter()
                    .position(|o| o.as_deref() == Some(col.name.as_str()))?;
                let new_col = &after.columns[pos];
                let cast = Some(col.sql_type.clone()).filter(|_| new_col.sql_type != col.sql_type);
                Some(Mapped {
                    target: col.name.clone(),
                    source: Source::Column(new_col.name.clone()),
                    cast,
                })
            })
            .collect();

        let key = before
            .primary_key
            .iter()
            .zip(&after.primary_key)
            .map(|(old, new)| KeyColumn {
                old: old.clone(),
                new: new.clone(),
            })
            .collect();

        Ok(Migration {
            name: p.name.clone(),
            schema: t.schema.clone(),
            table: t.table.clone(),
            shadow: shadow_name(&t.table),
            old: old_name(&t.table),
            before: before.clone(),
            after,
            forward,
            reverse,
            lossy,
            key,
            on_error: p.dual_write.on_error,
            views: t.views.clone(),
            nth: n,
            together: specs
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != n)
                .map(|(_, t)| t.table.clone())
                .collect(),
        })
    }

    pub fn old_key(&self) -> Vec<&str> {
        self.key.iter().map(|k| k.old.as_str()).collect()
    }

    pub fn new_key(&self) -> Vec<&str> {
        self.key.iter().map(|k| k.new.as_str()).collect()
    }

    /// Primary-key columns whose type the plan changes. Each database decides in its
    /// preflight which of these it can carry (a widening whose values all fit) and refuses
    /// the rest; the values themselves never change.
    pub fn key_type_changes(&self) -> Vec<KeyTypeChange> {
        self.key
            .iter()
            .filter_map(|k| {
                let from = self.before.column(&k.old)?;
                let to = self.after.column(&k.new)?;
                (from.sql_type != to.sql_type).then(|| KeyTypeChange {
                    column: k.new.clone(),
                    from: from.sql_type.clone(),
                    to: to.sql_type.clone(),
                })
            })
            .collect()
    }
}

/// A primary-key column's type before and after the plan (named as in the new table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTypeChange {
    pub column: String,
    pub from: String,
    pub to: String,
}

pub fn shadow_name(table: &str) -> String {
    format!("_{table}_new")
}

pub fn old_name(table: &str) -> String {
    format!("_{table}_old")
}

/// Shapes the unit tests of every module start from.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::{Column, Index, TableShape};

    pub fn col(name: &str, sql_type: &str, nullable: bool) -> Column {
        Column {
            name: name.into(),
            sql_type: sql_type.into(),
            nullable,
            default: None,
            generated: None,
        }
    }

    /// `orders (id, amount_cents, note)` keyed by id, with an index on note, in a
    /// dialect's types: `[id, amount_cents, note]`.
    pub fn orders(types: [&str; 3], cents_nullable: bool) -> TableShape {
        TableShape {
            columns: vec![
                col("id", types[0], false),
                col("amount_cents", types[1], cents_nullable),
                col("note", types[2], true),
            ],
            primary_key: vec!["id".into()],
            indexes: vec![Index {
                name: "orders_note".into(),
                columns: vec!["note".into()],
                unique: false,
                ..Default::default()
            }],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn orders() -> TableShape {
        super::fixtures::orders(["bigint", "integer", "text"], true)
    }

    fn plan(changes: &str) -> Plan {
        crate::plan::parse(
            &format!("version: 1\nname: m\ntable: orders\nchanges:\n{changes}"),
            "p.yaml",
        )
        .expect("plan parses")
    }

    #[test]
    fn add_drop_rename_map_both_ways() {
        let p = plan(
            "  - add_column: {name: amount, type: 'numeric(12,2)', from: amount_cents / 100.0}\n  - drop_column: {name: amount_cents, reverse: 'CAST(amount * 100 AS integer)'}\n  - rename_column: {from: note, to: comment}\n",
        );
        let m = Migration::derive(&p, &orders()).expect("derives");
        let names: Vec<_> = m.after.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["id", "comment", "amount"]);
        assert_eq!(
            m.forward[1],
            Mapped {
                target: "comment".into(),
                source: Source::Column("note".into()),
                cast: None
            }
        );
        assert_eq!(
            m.forward[2].source,
            Source::Expr("amount_cents / 100.0".into())
        );
        assert_eq!(
            m.reverse[1].source,
            Source::Expr("CAST(amount * 100 AS integer)".into())
        );
        assert_eq!(m.reverse[2].source, Source::Column("comment".into()));
        assert_eq!(m.after.indexes[0].columns, ["comment"]);
        assert!(m.lossy.is_empty());
    }

    #[test]
    fn dropping_without_reverse_is_lossy_and_primary_keys_are_refused() {
        let m = Migration::derive(&plan("  - drop_column: {name: note}\n"), &orders())
            .expect("derives");
        assert_eq!(m.lossy, ["note"]);
        let refused = Migration::derive(&plan("  - drop_column: {name: id}\n"), &orders())
            .expect_err("refused");
        assert!(refused[0].contains("primary key"), "{refused:?}");
    }

    #[test]
    fn a_key_can_change_type_but_not_values() {
        let m = Migration::derive(
            &plan("  - alter_column: {name: id, type: numeric(30)}\n"),
            &orders(),
        )
        .expect("a key type change derives; the database judges the widening");
        assert_eq!(
            m.key_type_changes(),
            [KeyTypeChange {
                column: "id".into(),
                from: "bigint".into(),
                to: "numeric(30)".into()
            }]
        );
        let refused = Migration::derive(
            &plan("  - alter_column: {name: id, type: numeric(30), using: id * 2}\n"),
            &orders(),
        )
        .expect_err("a transformed key is refused");
        assert!(refused[0].contains("only be widened"), "{refused:?}");
        let untouched = Migration::derive(&plan("  - drop_column: {name: note}\n"), &orders())
            .expect("derives");
        assert!(untouched.key_type_changes().is_empty());
    }
}
