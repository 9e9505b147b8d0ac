//! The instant path's statements on SQLite, and why a change cannot take it. SQLite's
//! `ALTER TABLE` adds a column by editing the schema text alone (only with a constant
//! default, and NOT NULL only with a default), renames a column everywhere the schema
//! names it, and drops a column nothing else refers to (no key, index, constraint,
//! foreign key, trigger or view); `CREATE INDEX` builds in the table's own file. Any
//! other change (SQLite alters no column type) takes the copy path.

use std::collections::HashMap;

use super::{list, quote};
use crate::db::InstantStep;
use crate::plan::Change;
use crate::schema::{Column, Migration};

/// Per column the plan drops, what in the schema refers to it (read from the catalog).
pub(in crate::db::sqlite) type Uses = HashMap<String, Vec<String>>;

/// The columns the plan drops, whose uses the catalog is asked for.
pub(in crate::db::sqlite) fn dropped(changes: &[Change]) -> Vec<String> {
    changes
        .iter()
        .filter_map(|c| match c {
            Change::DropColumn(d) => Some(d.name.clone()),
            _ => None,
        })
        .collect()
}

/// Every index of `table` with its columns (one row per column) and its SQL (NULL for
/// the automatic index of a UNIQUE or PRIMARY KEY constraint).
pub(in crate::db::sqlite) fn index_columns() -> &'static str {
    "SELECT il.name, ii.name, (SELECT sql FROM sqlite_master WHERE type = 'index' AND name = il.name) \
     FROM pragma_index_list(?1) il JOIN pragma_index_info(il.name) ii"
}

/// The schema text of the table itself and of every trigger and view.
pub(in crate::db::sqlite) fn schema_texts() -> &'static str {
    "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL \
     AND ((type = 'table' AND name = ?1) OR type IN ('trigger', 'view'))"
}

/// The foreign keys of every table, to find those from or to `table`.
pub(in crate::db::sqlite) fn foreign_keys() -> &'static str {
    "SELECT m.name, f.\"table\", f.\"from\", f.\"to\" FROM sqlite_master m \
     JOIN pragma_foreign_key_list(m.name) f WHERE m.type = 'table'"
}

/// How many times `text` names `column` as a whole word (quoted or bare), ignoring case:
/// a generous count, so a doubt sends the column to the copy path rather than to an
/// `ALTER TABLE` that would fail.
pub(in crate::db::sqlite) fn mentions(text: &str, column: &str) -> usize {
    let (text, column) = (text.to_lowercase(), column.to_lowercase());
    let word = |c: char| c.is_alphanumeric() || c == '_';
    text.match_indices(&column)
        .filter(|(i, _)| {
            let before = text[..*i].chars().next_back();
            let after = text[i + column.len()..].chars().next();
            !before.is_some_and(word) && !after.is_some_and(word)
        })
        .count()
}

/// A default SQLite's ADD COLUMN accepts: a literal (number, string, blob, NULL, TRUE or
/// FALSE), not an expression nor CURRENT_TIME and its kin.
fn is_constant(d: &str) -> bool {
    let d = d.trim();
    let lower = d.to_ascii_lowercase();
    if matches!(lower.as_str(), "null" | "true" | "false") {
        return true;
    }
    let number = d.trim_start_matches(['+', '-']);
    if !number.is_empty() && number.parse::<f64>().is_ok() && !number.contains(char::is_alphabetic)
    {
        return true;
    }
    let quoted = |s: &str| {
        s.len() >= 2
            && s.starts_with('\'')
            && s.ends_with('\'')
            && !s[1..s.len() - 1].replace("''", "").contains('\'')
    };
    quoted(d) || (lower.starts_with('x') && quoted(&d[1..]))
}

/// The instant statements of `changes` on `m.table`, or why not, one reason per change.
pub(in crate::db::sqlite) fn plan(
    m: &Migration,
    changes: &[Change],
    uses: &Uses,
) -> Result<Vec<InstantStep>, Vec<String>> {
    let t = quote(&m.table);
    let mut cols: Vec<Column> = m.before.columns.clone();
    let mut steps = Vec::new();
    let mut why = Vec::new();
    for (i, change) in changes.iter().enumerate() {
        let at = format!("changes[{i}].{}", change.kind());
        let mut not = |reason: String| why.push(format!("{at}: {reason}"));
        match change {
            Change::AddColumn(a) => {
                if a.from.is_some() {
                    not("`from` fills the column from every existing row, which copies".into());
                    continue;
                }
                if let Some(d) = a.default.as_deref().filter(|d| !is_constant(d)) {
                    not(format!(
                        "SQLite adds a column in place only with a constant default; {d} is not one"
                    ));
                    continue;
                }
                if !a.nullable
                    && a.default
                        .as_deref()
                        .is_none_or(|d| d.eq_ignore_ascii_case("null"))
                {
                    not("SQLite adds a NOT NULL column in place only with a default".into());
                    continue;
                }
                let mut forward = format!(
                    "ALTER TABLE {t} ADD COLUMN {} {}",
                    quote(&a.name),
                    a.sql_type
                );
                if !a.nullable {
                    forward.push_str(" NOT NULL");
                }
                if let Some(d) = &a.default {
                    forward.push_str(&format!(" DEFAULT {d}"));
                }
                steps.push(InstantStep {
                    change: at.clone(),
                    forward,
                    reverse: format!("ALTER TABLE {t} DROP COLUMN {}", quote(&a.name)),
                    loses: None,
                    online_index: None,
                });
                cols.push(Column {
                    name: a.name.clone(),
                    sql_type: a.sql_type.clone(),
                    nullable: a.nullable,
                    default: a.default.clone(),
                    generated: None,
                });
            }
            Change::RenameColumn(r) => {
                let Some(c) = cols.iter_mut().find(|c| c.name == r.from) else {
                    not(format!("there is no column {:?}", r.from));
                    continue;
                };
                c.name = r.to.clone();
                steps.push(InstantStep {
                    change: at.clone(),
                    forward: format!(
                        "ALTER TABLE {t} RENAME COLUMN {} TO {}",
                        quote(&r.from),
                        quote(&r.to)
                    ),
                    reverse: format!(
                        "ALTER TABLE {t} RENAME COLUMN {} TO {}",
                        quote(&r.to),
                        quote(&r.from)
                    ),
                    loses: None,
                    online_index: None,
                });
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
                if let Some(found) = uses.get(&d.name).filter(|u| !u.is_empty()) {
                    not(format!(
                        "SQLite drops only a column nothing refers to; {:?} is {}",
                        d.name,
                        found.join(", ")
                    ));
                    continue;
                }
                if m.before.primary_key.contains(&d.name) {
                    not(format!("column {:?} is in the primary key", d.name));
                    continue;
                }
                let old = cols.remove(pos);
                // SQLite adds back NOT NULL only with a default, and only a constant one.
                let default = old.default.clone().filter(|d| is_constant(d));
                let mut reverse = format!(
                    "ALTER TABLE {t} ADD COLUMN {} {}",
                    quote(&old.name),
                    old.sql_type
                );
                if let Some(def) = &default {
                    if !old.nullable {
                        reverse.push_str(" NOT NULL");
                    }
                    reverse.push_str(&format!(" DEFAULT {def}"));
                }
                steps.push(InstantStep {
                    change: at.clone(),
                    forward: format!("ALTER TABLE {t} DROP COLUMN {}", quote(&d.name)),
                    reverse,
                    loses: Some(format!(
                        "the values of column {:?} are gone; it comes back {}",
                        d.name,
                        match &default {
                            Some(def) => format!("filled with its default {def}"),
                            None => "NULL in every row".into(),
                        }
                    )),
                    online_index: None,
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
                let columns: Vec<&str> = ix.columns.iter().map(String::as_str).collect();
                steps.push(InstantStep {
                    change: at.clone(),
                    forward: format!(
                        "CREATE {}INDEX {} ON {t} ({})",
                        if ix.unique { "UNIQUE " } else { "" },
                        quote(&ix.name),
                        list(&columns)
                    ),
                    reverse: format!("DROP INDEX IF EXISTS {}", quote(&ix.name)),
                    loses: None,
                    online_index: None,
                });
            }
            Change::AlterColumn(_) => {
                not(
                    "SQLite cannot change a column in place; the copy path rebuilds the table"
                        .into(),
                );
            }
            Change::DropIndex(_) => {
                not(
                    "an index is dropped by the copy path (its reverse would rebuild the index)"
                        .into(),
                );
            }
        }
    }
    if why.is_empty() { Ok(steps) } else { Err(why) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{AddColumn, AddIndex, AlterColumn, DropColumn, RenameColumn};
    use crate::schema::Index;
    use crate::schema::fixtures::col;

    fn orders() -> Migration {
        let mut m = crate::schema::Migration::derive(
            &crate::plan::parse(
                "version: 1\nname: o\ntable: orders\nchanges: [{add_column: {name: extra, type: TEXT}}]\n",
                "p",
            )
            .expect("plan"),
            &crate::schema::TableShape {
                columns: vec![
                    col("id", "INTEGER", false),
                    col("note", "TEXT", true),
                    col("qty", "INTEGER", true),
                ],
                primary_key: vec!["id".into()],
                indexes: vec![],
            },
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        m.after.indexes = vec![Index {
            name: "orders_comment_idx".into(),
            columns: vec!["comment".into()],
            unique: false,
            ..Default::default()
        }];
        m
    }

    fn add(name: &str, nullable: bool, default: Option<&str>) -> Change {
        Change::AddColumn(AddColumn {
            name: name.into(),
            sql_type: "TEXT".into(),
            nullable,
            default: default.map(String::from),
            from: None,
        })
    }

    #[test]
    fn every_instant_change_of_sqlite_and_its_reverse() {
        let changes = vec![
            add("amount", true, None),
            add("state", false, Some("'new'")),
            Change::RenameColumn(RenameColumn {
                from: "note".into(),
                to: "comment".into(),
            }),
            Change::DropColumn(DropColumn {
                name: "qty".into(),
                reverse: None,
            }),
            Change::AddIndex(AddIndex {
                name: "orders_comment_idx".into(),
                columns: vec!["comment".into()],
                unique: false,
            }),
        ];
        let steps = plan(&orders(), &changes, &Uses::new()).expect("instant");
        let text: String = steps
            .iter()
            .map(|s| {
                format!(
                    "-- {}\n{};\n-- reverse\n{};\n-- loses: {}\n",
                    s.change,
                    s.forward,
                    s.reverse,
                    s.loses.as_deref().unwrap_or("nothing")
                )
            })
            .collect();
        insta::assert_snapshot!(text);
    }

    #[test]
    fn what_sqlite_cannot_do_in_place_takes_the_copy_path_with_each_reason() {
        let changes = vec![
            add("at", true, Some("CURRENT_TIMESTAMP")),
            add("must", false, None),
            Change::DropColumn(DropColumn {
                name: "qty".into(),
                reverse: None,
            }),
            Change::AlterColumn(AlterColumn {
                name: "qty".into(),
                sql_type: Some("REAL".into()),
                using: None,
                reverse: None,
                nullable: None,
            }),
        ];
        let uses: Uses = [(
            "qty".to_string(),
            vec!["in index \"orders_qty\"".to_string()],
        )]
        .into();
        let why = plan(&orders(), &changes, &uses).expect_err("copy");
        insta::assert_snapshot!(why.join("\n"));
    }

    #[test]
    fn constants_and_mentions_are_read_generously() {
        for d in ["0", "-1.5", "'a''b'", "NULL", "x'00ff'", "TRUE"] {
            assert!(is_constant(d), "{d}");
        }
        for d in [
            "CURRENT_TIMESTAMP",
            "(1 + 1)",
            "random()",
            "'a'||'b'",
            "inf",
        ] {
            assert!(!is_constant(d), "{d}");
        }
        assert_eq!(mentions("CHECK (qty > 0), \"qty\" INTEGER", "qty"), 2);
        assert_eq!(mentions("qty_total INTEGER", "qty"), 0);
    }
}
