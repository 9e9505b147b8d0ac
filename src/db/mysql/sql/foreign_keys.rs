//! Foreign-key SQL: a constraint clause rebuilt from the catalog, and the one-statement
//! `DROP FOREIGN KEY a, ADD CONSTRAINT b …` that moves a constraint to another name or
//! another parent without a moment in which the child has none.
//!
//! Foreign-key names are unique per database and a constraint cannot be renamed, so
//! while two tables carry the same constraint one of them holds it under a temporary
//! name: the original name behind a short prefix, so the original is always readable
//! from the catalog, even after a crash between two steps.

use super::quote;

/// On the shadow until the swap (and on the new table until it takes the name back).
pub const SHADOW_PREFIX: &str = "_tn_";
/// On the old table after the swap, while the new table holds the original name.
pub const OLD_PREFIX: &str = "_to_";
/// On a child table between the two steps that point it at another parent.
pub const CHILD_PREFIX: &str = "_tc_";

/// The longest original name that still fits MySQL's 64 characters behind a prefix.
pub const MAX_NAME: usize = 64 - SHADOW_PREFIX.len();

/// One foreign key as the catalog shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignKey {
    pub name: String,
    /// The child table.
    pub table: String,
    pub columns: Vec<String>,
    pub ref_table: String,
    pub ref_columns: Vec<String>,
    pub on_update: String,
    pub on_delete: String,
}

impl ForeignKey {
    /// The name without any of turnout's prefixes.
    pub fn original(&self) -> &str {
        original(&self.name)
    }
}

pub fn original(name: &str) -> &str {
    [SHADOW_PREFIX, OLD_PREFIX, CHILD_PREFIX]
        .iter()
        .find_map(|p| name.strip_prefix(p))
        .unwrap_or(name)
}

fn list(cols: &[String]) -> String {
    cols.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", ")
}

/// ` ON DELETE …` / ` ON UPDATE …` as the catalog spells the rule, or nothing for
/// RESTRICT: the catalog shows an omitted rule as RESTRICT, but MariaDB records a
/// written `RESTRICT` as NO ACTION (seen on 10.11), so writing it would change the catalog.
fn rule(on: &str, r: &str) -> String {
    match r {
        "CASCADE" | "SET NULL" | "NO ACTION" | "SET DEFAULT" => format!(" ON {on} {r}"),
        _ => String::new(),
    }
}

/// `CONSTRAINT name FOREIGN KEY (…) REFERENCES parent (…) ON DELETE … ON UPDATE …`,
/// `parent` already quoted (and qualified).
pub fn constraint(fk: &ForeignKey, name: &str, parent: &str) -> String {
    format!(
        "CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {parent} ({}){}{}",
        quote(name),
        list(&fk.columns),
        list(&fk.ref_columns),
        rule("DELETE", &fk.on_delete),
        rule("UPDATE", &fk.on_update)
    )
}

/// Replaces constraint `drop` of `table` (quoted) by `fk` under `name` referencing
/// `parent`, in one atomic statement. With `foreign_key_checks = 0` in the session this
/// is INPLACE: the child is not copied and its rows are not re-checked (every caller
/// points the constraint at a parent that holds the same keys).
pub fn replace(table: &str, drop: &str, fk: &ForeignKey, name: &str, parent: &str) -> String {
    format!(
        "ALTER TABLE {table} DROP FOREIGN KEY {}, ADD {}, ALGORITHM=INPLACE",
        quote(drop),
        constraint(fk, name, parent)
    )
}

/// Adds `fk` to `table` (quoted) under `name`, referencing `parent`: with
/// `foreign_key_checks = 0` INPLACE and without checking a row (the caller adds it
/// between tables that hold the same keys).
pub fn add(table: &str, fk: &ForeignKey, name: &str, parent: &str) -> String {
    format!(
        "ALTER TABLE {table} ADD {}, ALGORITHM=INPLACE",
        constraint(fk, name, parent)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fk() -> ForeignKey {
        ForeignKey {
            name: "notes_item".into(),
            table: "notes".into(),
            columns: vec!["item`id".into()],
            ref_table: "items".into(),
            ref_columns: vec!["id".into()],
            on_update: "CASCADE".into(),
            on_delete: "SET NULL".into(),
        }
    }

    #[test]
    fn a_constraint_moves_in_one_statement_under_a_readable_temporary_name() {
        let sql = replace(
            "`db`.`notes`",
            "notes_item",
            &fk(),
            "_tc_notes_item",
            "`db`.`_items_new`",
        );
        assert_eq!(
            sql,
            "ALTER TABLE `db`.`notes` DROP FOREIGN KEY `notes_item`, ADD CONSTRAINT `_tc_notes_item` FOREIGN KEY (`item``id`) REFERENCES `db`.`_items_new` (`id`) ON DELETE SET NULL ON UPDATE CASCADE, ALGORITHM=INPLACE"
        );
        let mut restrict = fk();
        restrict.on_update = "RESTRICT".into();
        assert!(
            constraint(&restrict, "n", "`p`").ends_with("REFERENCES `p` (`id`) ON DELETE SET NULL"),
            "{}",
            constraint(&restrict, "n", "`p`")
        );
        assert_eq!(original("_tc_notes_item"), "notes_item");
        assert_eq!(original("_tn_x"), "x");
        assert_eq!(original("_to_x"), "x");
        assert_eq!(original("plain"), "plain");
    }
}
