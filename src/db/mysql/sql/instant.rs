//! The instant path's statements on MySQL/MariaDB. What the server makes in place is
//! asked of the server itself (`ALGORITHM=INSTANT`, or `ALGORITHM=INPLACE, LOCK=NONE`
//! for index builds, run on an empty `CREATE TABLE … LIKE` copy: it refuses what it
//! cannot), so this file only writes the statements and refuses what no server makes in
//! place (`from`, `using`, key columns). DDL auto-commits here, so the plan's changes
//! are one `ALTER TABLE` (atomic on MariaDB 10.6+ and MySQL 8): all made or none.

use super::quote;
use crate::db::InstantStep;
use crate::plan::Change;
use crate::schema::{Column, Migration};

/// `schema`.`name`, or `name` in the connection's database.
pub(in crate::db::mysql) fn rel(schema: Option<&str>, name: &str) -> String {
    match schema {
        Some(s) => format!("{}.{}", quote(s), quote(name)),
        None => quote(name),
    }
}

/// The empty copy the server is asked on: `_<table>_try`, within MySQL's 64 characters.
pub(in crate::db::mysql) fn probe_name(table: &str) -> String {
    let short: String = table.chars().take(56).collect();
    format!("_{short}_try")
}

/// One clause of the plan's ALTER TABLE, with the clause that undoes it.
#[derive(Debug, Clone, PartialEq)]
pub(in crate::db::mysql) struct Clause {
    pub change: String,
    pub forward: String,
    pub reverse: String,
    pub loses: Option<String>,
    pub index: bool,
}

fn definition(c: &Column) -> String {
    let mut d = format!(
        "{} {}",
        c.sql_type,
        if c.nullable { "NULL" } else { "NOT NULL" }
    );
    if let Some(def) = &c.default {
        d.push_str(&format!(" DEFAULT {def}"));
    }
    d
}

/// The plan's clauses, or why no server makes them in place, one reason per change.
pub(in crate::db::mysql) fn clauses(
    m: &Migration,
    changes: &[Change],
) -> Result<Vec<Clause>, Vec<String>> {
    let mut cols: Vec<Column> = m.before.columns.clone();
    let mut out = Vec::new();
    let mut why = Vec::new();
    let mut touched: Vec<String> = Vec::new();
    for (i, change) in changes.iter().enumerate() {
        let at = format!("changes[{i}].{}", change.kind());
        let mut not = |reason: String| why.push(format!("{at}: {reason}"));
        // One ALTER TABLE names every column as it was before it: a column changed twice
        // (renamed, then altered) cannot be said in one statement.
        let names: Vec<String> = match change {
            Change::AddColumn(a) => vec![a.name.clone()],
            Change::DropColumn(d) => vec![d.name.clone()],
            Change::AlterColumn(a) => vec![a.name.clone()],
            Change::RenameColumn(r) => vec![r.from.clone(), r.to.clone()],
            Change::AddIndex(a) => a.columns.clone(),
            Change::DropIndex(d) => vec![d.name.clone()],
        };
        if let Some(twice) = names.iter().find(|n| touched.contains(n)) {
            not(format!(
                "column {twice:?} is changed by an earlier change too; one ALTER TABLE cannot say both"
            ));
            continue;
        }
        touched.extend(names);
        match change {
            Change::AddColumn(a) => {
                if a.from.is_some() {
                    not("`from` fills the column from every existing row, which copies".into());
                    continue;
                }
                let c = Column {
                    name: a.name.clone(),
                    sql_type: a.sql_type.clone(),
                    nullable: a.nullable,
                    default: a.default.clone(),
                    generated: None,
                };
                out.push(Clause {
                    change: at.clone(),
                    forward: format!("ADD COLUMN {} {}", quote(&c.name), definition(&c)),
                    reverse: format!("DROP COLUMN {}", quote(&c.name)),
                    loses: None,
                    index: false,
                });
                cols.push(c);
            }
            Change::DropColumn(d) => {
                if d.reverse.is_some() {
                    not("a `reverse` keeps the column restorable only on the copy path, whose old table stays current".into());
                    continue;
                }
                let Some(pos) = cols.iter().position(|c| c.name == d.name) else {
                    not(format!("there is no column {:?}", d.name));
                    continue;
                };
                let mut old = cols.remove(pos);
                if old.generated.is_some() {
                    not(format!(
                        "column {:?} is filled by the database; its reverse could not restore it",
                        d.name
                    ));
                    continue;
                }
                // It comes back empty: NOT NULL only where its default fills it.
                old.nullable = old.nullable || old.default.is_none();
                out.push(Clause {
                    change: at.clone(),
                    forward: format!("DROP COLUMN {}", quote(&d.name)),
                    reverse: format!("ADD COLUMN {} {}", quote(&old.name), definition(&old)),
                    loses: Some(format!(
                        "the values of column {:?} are gone; it comes back {}",
                        d.name,
                        match &old.default {
                            Some(def) => format!("filled with its default {def}"),
                            None => "NULL in every row".into(),
                        }
                    )),
                    index: false,
                });
            }
            Change::RenameColumn(r) => {
                let Some(c) = cols.iter_mut().find(|c| c.name == r.from) else {
                    not(format!("there is no column {:?}", r.from));
                    continue;
                };
                c.name = r.to.clone();
                out.push(Clause {
                    change: at.clone(),
                    forward: format!("RENAME COLUMN {} TO {}", quote(&r.from), quote(&r.to)),
                    reverse: format!("RENAME COLUMN {} TO {}", quote(&r.to), quote(&r.from)),
                    loses: None,
                    index: false,
                });
            }
            Change::AlterColumn(a) => {
                if a.using.is_some() {
                    not("`using` computes every row's new value, which copies".into());
                    continue;
                }
                if a.reverse.is_some() {
                    not("a `reverse` expression is applied only by the copy path's reverse triggers".into());
                    continue;
                }
                if m.before.primary_key.contains(&a.name) {
                    not(format!(
                        "column {:?} is in the primary key; key changes take the copy path",
                        a.name
                    ));
                    continue;
                }
                let Some(c) = cols.iter_mut().find(|c| c.name == a.name) else {
                    not(format!("there is no column {:?}", a.name));
                    continue;
                };
                if c.generated.is_some() {
                    not(format!("column {:?} is filled by the database", a.name));
                    continue;
                }
                let old = c.clone();
                if let Some(t) = &a.sql_type {
                    c.sql_type = t.clone();
                }
                if let Some(n) = a.nullable {
                    c.nullable = n;
                }
                let retyped = !old.sql_type.eq_ignore_ascii_case(&c.sql_type);
                out.push(Clause {
                    change: at.clone(),
                    forward: format!("MODIFY COLUMN {} {}", quote(&c.name), definition(c)),
                    reverse: format!("MODIFY COLUMN {} {}", quote(&old.name), definition(&old)),
                    loses: retyped.then(|| {
                        format!(
                            "changing {:?} back to {} copies the table and fails on values written since that no longer fit",
                            a.name, old.sql_type
                        )
                    }),
                    index: false,
                });
            }
            Change::AddIndex(a) => {
                let Some(ix) = m.after.indexes.iter().find(|ix| ix.name == a.name) else {
                    not(format!(
                        "index {:?} is not in the table's final shape",
                        a.name
                    ));
                    continue;
                };
                let columns: Vec<String> = ix.columns.iter().map(|c| quote(c)).collect();
                out.push(Clause {
                    change: at.clone(),
                    forward: format!(
                        "ADD {}INDEX {} ({})",
                        if ix.unique { "UNIQUE " } else { "" },
                        quote(&ix.name),
                        columns.join(", ")
                    ),
                    reverse: format!("DROP INDEX {}", quote(&ix.name)),
                    loses: None,
                    index: true,
                });
            }
            Change::DropIndex(_) => {
                not(
                    "an index is dropped by the copy path (its reverse would rebuild the index)"
                        .into(),
                );
            }
        }
    }
    let indexes = out.iter().filter(|c| c.index).count();
    if indexes > 0 && indexes < out.len() {
        why.push("changes: index builds (ALGORITHM=INPLACE) and instant changes (ALGORITHM=INSTANT) cannot share one ALTER TABLE; write them as two plans".into());
    }
    if why.is_empty() { Ok(out) } else { Err(why) }
}

/// The algorithm clause the server must accept for `clauses` to be made in place.
pub(in crate::db::mysql) fn algorithm(clauses: &[Clause]) -> &'static str {
    if clauses.iter().any(|c| c.index) {
        "ALGORITHM=INPLACE, LOCK=NONE"
    } else {
        "ALGORITHM=INSTANT"
    }
}

/// One ALTER TABLE on `table` with `clauses` in order, then the algorithm it must use.
pub(in crate::db::mysql) fn alter(table: &str, clauses: &[String], algorithm: &str) -> String {
    format!("ALTER TABLE {table} {}, {algorithm}", clauses.join(", "))
}

/// The instant path as the engine records it: the whole ALTER TABLE as one step (it is
/// atomic), its reverse the clauses' reverses in reverse order.
pub(in crate::db::mysql) fn step(table: &str, clauses: &[Clause]) -> InstantStep {
    let forward: Vec<String> = clauses.iter().map(|c| c.forward.clone()).collect();
    let reverse: Vec<String> = clauses.iter().rev().map(|c| c.reverse.clone()).collect();
    let lost: Vec<String> = clauses
        .iter()
        .filter_map(|c| c.loses.as_ref().map(|l| format!("{}: {l}", c.change)))
        .collect();
    InstantStep {
        change: clauses
            .iter()
            .map(|c| c.change.clone())
            .collect::<Vec<_>>()
            .join(", "),
        forward: alter(table, &forward, algorithm(clauses)),
        reverse: format!("ALTER TABLE {table} {}", reverse.join(", ")),
        loses: (!lost.is_empty()).then(|| lost.join("; ")),
        online_index: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::fixtures::col;

    fn orders(changes: &str) -> (Migration, Vec<Change>) {
        let plan = crate::plan::parse(
            &format!("version: 1\nname: o\ntable: orders\nchanges:\n{changes}"),
            "p",
        )
        .expect("plan");
        let shape = crate::schema::TableShape {
            columns: vec![
                col("id", "bigint(20)", false),
                col("status", "varchar(16)", false),
                col("note", "text", true),
                col("legacy", "int(11)", true),
            ],
            primary_key: vec!["id".into()],
            indexes: vec![],
        };
        let m = Migration::derive(&plan, &shape).unwrap_or_else(|e| panic!("{e:?}"));
        (m, plan.file.changes)
    }

    #[test]
    fn the_plan_is_one_alter_table_asked_to_be_instant_with_its_reverse() {
        let (m, changes) = orders(
            "  - alter_column: {name: status, type: varchar(64)}\n  - add_column: {name: amount, type: \"decimal(12,2)\"}\n  - rename_column: {from: note, to: comment}\n  - drop_column: {name: legacy}\n",
        );
        let cl = clauses(&m, &changes).expect("clauses");
        let s = step("`db`.`orders`", &cl);
        insta::assert_snapshot!(format!(
            "{};\n-- reverse\n{};\n-- loses: {}",
            s.forward,
            s.reverse,
            s.loses.unwrap_or_default()
        ));
    }

    #[test]
    fn an_index_build_is_asked_to_be_online_and_alone() {
        let (m, changes) = orders("  - add_index: {name: orders_status_idx, columns: [status]}\n");
        let cl = clauses(&m, &changes).expect("clauses");
        assert_eq!(
            step("`orders`", &cl).forward,
            "ALTER TABLE `orders` ADD INDEX `orders_status_idx` (`status`), ALGORITHM=INPLACE, LOCK=NONE"
        );
        let (m, changes) = orders(
            "  - add_index: {name: orders_status_idx, columns: [status]}\n  - add_column: {name: amount, type: int}\n",
        );
        let why = clauses(&m, &changes).expect_err("mixed");
        assert!(why[0].contains("two plans"), "{why:?}");
    }

    #[test]
    fn a_column_changed_twice_or_filled_from_rows_copies() {
        let (m, changes) = orders(
            "  - rename_column: {from: note, to: comment}\n  - alter_column: {name: comment, type: mediumtext}\n  - add_column: {name: cents, type: int, from: legacy * 100}\n",
        );
        let why = clauses(&m, &changes).expect_err("copy");
        insta::assert_snapshot!(why.join("\n"));
    }
}
