//! The instant path's statements on PostgreSQL, and why a change cannot take it. What
//! PostgreSQL changes in its catalog alone: adding a column (a non-volatile default is
//! stored once, not written to every row), dropping one (it is only hidden), renaming
//! one, lifting or widening a varchar limit (binary-coercible: no rewrite, no scan),
//! dropping NOT NULL. An index is built with `CREATE INDEX CONCURRENTLY`, which takes no
//! lock that blocks writes. Everything else rewrites or scans the table under an
//! exclusive lock, so the copy path does it.

use std::collections::HashSet;

use super::{list, qualified, quote};
use crate::db::InstantStep;
use crate::plan::Change;
use crate::schema::{Column, Migration};

/// An added column's type and default, as the server is asked whether the default is
/// volatile (a volatile default is written to every row: a rewrite).
pub(in crate::db::postgres) type AddedDefault = (String, String);

/// The defaults of the plan's added columns, to be asked of the server.
pub(in crate::db::postgres) fn defaults(changes: &[Change]) -> Vec<AddedDefault> {
    changes
        .iter()
        .filter_map(|c| match c {
            Change::AddColumn(a) => a.default.clone().map(|d| (a.sql_type.clone(), d)),
            _ => None,
        })
        .collect()
}

/// Statements that tell whether a default is volatile: a one-row scratch table gets
/// the column; a new relfilenode means PostgreSQL rewrote it to fill the column. Run in
/// a transaction that is rolled back; the last one reads the relfilenode, and is run
/// once before the ADD COLUMN too.
pub(in crate::db::postgres) fn volatility_probe(d: &AddedDefault) -> [String; 4] {
    [
        "CREATE TEMP TABLE turnout_default_probe (i integer) ON COMMIT DROP".into(),
        "INSERT INTO turnout_default_probe VALUES (1)".into(),
        format!(
            "ALTER TABLE turnout_default_probe ADD COLUMN probe {} DEFAULT {}",
            d.0, d.1
        ),
        "SELECT pg_relation_filenode('turnout_default_probe')::text".into(),
    ]
}

/// A varchar's limit: `Some(Some(n))` for `character varying(n)`, `Some(None)` for an
/// unlimited varchar or text, `None` for any other type.
fn varchar_limit(t: &str) -> Option<Option<u32>> {
    let t = t.trim().to_ascii_lowercase();
    let t = t.replace("character varying", "varchar");
    if t == "text" || t == "varchar" {
        return Some(None);
    }
    let n = t.strip_prefix("varchar")?.trim().strip_prefix('(')?;
    let n = n.strip_suffix(')')?.trim().parse().ok()?;
    Some(Some(n))
}

fn same_type(a: &str, b: &str) -> bool {
    let norm = |t: &str| {
        t.to_ascii_lowercase()
            .replace("character varying", "varchar")
            .replace(' ', "")
    };
    norm(a) == norm(b)
}

/// The instant statements of `changes` on table `m.table` in `schema`, or why not, one
/// reason per change. `volatile` holds the defaults the server rewrites the table for.
pub(in crate::db::postgres) fn plan(
    m: &Migration,
    schema: &str,
    changes: &[Change],
    volatile: &HashSet<AddedDefault>,
) -> Result<Vec<InstantStep>, Vec<String>> {
    let t = qualified(schema, &m.table);
    let mut cols: Vec<Column> = m.before.columns.clone();
    let mut steps = Vec::new();
    let mut why = Vec::new();
    if !m.views.is_empty() {
        why.push("views: new view definitions are applied by the copy path's cutover".into());
    }
    for (i, change) in changes.iter().enumerate() {
        let at = format!("changes[{i}].{}", change.kind());
        let mut not = |reason: String| why.push(format!("{at}: {reason}"));
        match change {
            Change::AddColumn(a) => {
                if a.from.is_some() {
                    not("`from` fills the column from every existing row, which copies".into());
                    continue;
                }
                if !a.nullable && a.default.is_none() {
                    not("a NOT NULL column without a default needs a value in every row".into());
                    continue;
                }
                if let Some(d) = &a.default
                    && volatile.contains(&(a.sql_type.clone(), d.clone()))
                {
                    not(format!(
                        "the default {d} is volatile: PostgreSQL writes it into every row (a rewrite)"
                    ));
                    continue;
                }
                let mut forward = format!(
                    "ALTER TABLE {t} ADD COLUMN {} {}",
                    quote(&a.name),
                    a.sql_type
                );
                if let Some(d) = &a.default {
                    forward.push_str(&format!(" DEFAULT {d}"));
                }
                if !a.nullable {
                    forward.push_str(" NOT NULL");
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
            Change::DropColumn(d) => {
                if d.reverse.is_some() {
                    not("a `reverse` keeps the column restorable only on the copy path, whose old table stays current".into());
                    continue;
                }
                let Some(pos) = cols.iter().position(|c| c.name == d.name) else {
                    not(format!("there is no column {:?}", d.name));
                    continue;
                };
                if let Some(ix) = m
                    .before
                    .indexes
                    .iter()
                    .find(|ix| ix.columns.contains(&d.name))
                {
                    not(format!(
                        "column {:?} is in index {:?}, which dropping it would drop too",
                        d.name, ix.name
                    ));
                    continue;
                }
                let old = cols.remove(pos);
                if old.generated.is_some() {
                    not(format!(
                        "column {:?} is generated by the database (identity, serial or computed); its reverse could not restore it",
                        d.name
                    ));
                    continue;
                }
                // The column comes back empty: NOT NULL only where its default fills it.
                let mut reverse = format!(
                    "ALTER TABLE {t} ADD COLUMN {} {}",
                    quote(&old.name),
                    old.sql_type
                );
                if let Some(def) = &old.default {
                    reverse.push_str(&format!(" DEFAULT {def}"));
                    if !old.nullable {
                        reverse.push_str(" NOT NULL");
                    }
                }
                steps.push(InstantStep {
                    change: at.clone(),
                    forward: format!("ALTER TABLE {t} DROP COLUMN {}", quote(&d.name)),
                    reverse,
                    loses: Some(format!(
                        "the values of column {:?} are gone; it comes back {}",
                        d.name,
                        match &old.default {
                            Some(def) => format!("filled with its default {def}"),
                            None => "NULL in every row".into(),
                        }
                    )),
                    online_index: None,
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
            Change::AlterColumn(a) => {
                if a.using.is_some() {
                    not("`using` computes every row's new value, which rewrites".into());
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
                let col = quote(&a.name);
                let mut made = Vec::new();
                let mut failed = false;
                if let Some(new) = a.sql_type.as_deref().filter(|n| !same_type(n, &c.sql_type)) {
                    match (varchar_limit(&c.sql_type), varchar_limit(new)) {
                        (Some(Some(old_n)), Some(new_n)) if new_n.is_none_or(|n| n >= old_n) => {
                            let old_type = c.sql_type.clone();
                            made.push(InstantStep {
                                change: at.clone(),
                                forward: format!("ALTER TABLE {t} ALTER COLUMN {col} TYPE {new}"),
                                reverse: format!(
                                    "ALTER TABLE {t} ALTER COLUMN {col} TYPE {old_type} USING left({col}, {old_n})"
                                ),
                                loses: Some(format!(
                                    "values of {:?} longer than {old_n} characters are cut to {old_n}, and narrowing rewrites the table under an exclusive lock",
                                    a.name
                                )),
                                online_index: None,
                            });
                            c.sql_type = new.to_string();
                        }
                        (Some(None), Some(None)) => {
                            let old_type = c.sql_type.clone();
                            made.push(InstantStep {
                                change: at.clone(),
                                forward: format!("ALTER TABLE {t} ALTER COLUMN {col} TYPE {new}"),
                                reverse: format!(
                                    "ALTER TABLE {t} ALTER COLUMN {col} TYPE {old_type}"
                                ),
                                loses: None,
                                online_index: None,
                            });
                            c.sql_type = new.to_string();
                        }
                        _ => {
                            not(format!(
                                "type {} → {new} rewrites the table (only widening or lifting a varchar limit is made in place)",
                                c.sql_type
                            ));
                            failed = true;
                        }
                    }
                }
                match a.nullable {
                    Some(true) if !c.nullable => {
                        made.push(InstantStep {
                            change: at.clone(),
                            forward: format!("ALTER TABLE {t} ALTER COLUMN {col} DROP NOT NULL"),
                            reverse: format!("ALTER TABLE {t} ALTER COLUMN {col} SET NOT NULL"),
                            loses: None,
                            online_index: None,
                        });
                        c.nullable = true;
                    }
                    Some(false) if c.nullable => {
                        not("adding NOT NULL scans every row under an exclusive lock".into());
                        failed = true;
                    }
                    _ => {}
                }
                if !failed {
                    steps.extend(made);
                }
            }
            Change::AddIndex(a) => {
                // Built after the transactional changes, so it names the final columns.
                let Some(ix) = m.after.indexes.iter().find(|ix| ix.name == a.name) else {
                    not(format!(
                        "index {:?} is not in the table's final shape",
                        a.name
                    ));
                    continue;
                };
                steps.push(InstantStep {
                    change: at.clone(),
                    forward: format!(
                        "CREATE {}INDEX CONCURRENTLY {} ON {t} ({})",
                        if ix.unique { "UNIQUE " } else { "" },
                        quote(&ix.name),
                        list(&ix.columns)
                    ),
                    reverse: format!(
                        "DROP INDEX CONCURRENTLY IF EXISTS {}",
                        qualified(schema, &ix.name)
                    ),
                    loses: None,
                    online_index: Some(ix.name.clone()),
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
    if why.is_empty() { Ok(steps) } else { Err(why) }
}

/// Whether the index `name` in `schema` exists and is valid: Some(false) for one a
/// concurrent build cut short left behind.
pub(in crate::db::postgres) fn index_validity() -> &'static str {
    "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
     JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2"
}

/// Drops an index a concurrent build left invalid, so it can be built again.
pub(in crate::db::postgres) fn drop_invalid(schema: &str, name: &str) -> String {
    format!(
        "DROP INDEX CONCURRENTLY IF EXISTS {}",
        qualified(schema, name)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{AddColumn, AddIndex, AlterColumn, DropColumn, RenameColumn};
    use crate::schema::Index;
    use crate::schema::fixtures::col;

    fn orders() -> Migration {
        let mut m = super::super::tests::migration();
        m.before.columns = vec![
            col("id", "bigint", false),
            col("status", "character varying(16)", false),
            col("note", "text", true),
            col("qty", "integer", true),
        ];
        m.before.indexes = vec![];
        m.after.indexes = vec![Index {
            name: "orders_status_idx".into(),
            columns: vec!["state".into()],
            unique: false,
            ..Default::default()
        }];
        m
    }

    fn add(name: &str, t: &str, default: Option<&str>) -> Change {
        Change::AddColumn(AddColumn {
            name: name.into(),
            sql_type: t.into(),
            nullable: true,
            default: default.map(String::from),
            from: None,
        })
    }

    fn alter(name: &str, t: Option<&str>, nullable: Option<bool>) -> Change {
        Change::AlterColumn(AlterColumn {
            name: name.into(),
            sql_type: t.map(String::from),
            using: None,
            reverse: None,
            nullable,
        })
    }

    fn render(steps: &[InstantStep]) -> String {
        steps
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
            .collect()
    }

    #[test]
    fn every_instant_change_of_postgres_and_its_reverse() {
        let changes = vec![
            add("amount", "numeric(12,2)", None),
            add("flag", "boolean", Some("false")),
            alter("status", Some("varchar(64)"), Some(true)),
            alter("note", Some("varchar"), None),
            Change::RenameColumn(RenameColumn {
                from: "status".into(),
                to: "state".into(),
            }),
            Change::DropColumn(DropColumn {
                name: "qty".into(),
                reverse: None,
            }),
            Change::AddIndex(AddIndex {
                name: "orders_status_idx".into(),
                columns: vec!["state".into()],
                unique: false,
            }),
        ];
        let steps = plan(&orders(), "sales", &changes, &HashSet::new()).expect("instant");
        assert_eq!(steps.iter().filter(|s| s.online_index.is_some()).count(), 1);
        insta::assert_snapshot!(render(&steps));
    }

    #[test]
    fn what_rewrites_or_scans_takes_the_copy_path_with_each_reason() {
        let changes = vec![
            alter("qty", Some("bigint"), None),
            alter("note", None, Some(false)),
            Change::AlterColumn(AlterColumn {
                name: "status".into(),
                sql_type: Some("varchar(64)".into()),
                using: Some("upper(status)".into()),
                reverse: None,
                nullable: None,
            }),
            add("created", "timestamptz", Some("clock_timestamp()")),
            Change::AddColumn(AddColumn {
                name: "cents".into(),
                sql_type: "integer".into(),
                nullable: false,
                default: None,
                from: None,
            }),
            alter("id", Some("numeric"), None),
            alter("status", Some("varchar(8)"), None),
        ];
        let volatile: HashSet<AddedDefault> =
            [("timestamptz".to_string(), "clock_timestamp()".to_string())].into();
        let why = plan(&orders(), "sales", &changes, &volatile).expect_err("copy");
        insta::assert_snapshot!(why.join("\n"));
    }

    #[test]
    fn varchar_limits_are_read_in_both_spellings() {
        assert_eq!(varchar_limit("character varying(16)"), Some(Some(16)));
        assert_eq!(varchar_limit("VARCHAR( 64 )"), Some(Some(64)));
        assert_eq!(varchar_limit("text"), Some(None));
        assert_eq!(varchar_limit("character varying"), Some(None));
        assert_eq!(varchar_limit("char(4)"), None);
        assert_eq!(varchar_limit("integer"), None);
    }
}
