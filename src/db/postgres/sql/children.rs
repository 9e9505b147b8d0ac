//! Foreign keys of other tables that reference the migrated one. PostgreSQL binds a
//! reference to the table's OID, not its name, so a rename would leave every child
//! pointing at the old table. Inside the cutover transaction each one is dropped and added
//! again under its own name, with its match type, actions and deferrability, referencing
//! the new table `NOT VALID` (catalog only: no scan of the child while the locks are held);
//! `VALIDATE CONSTRAINT` runs after the commit, taking SHARE UPDATE EXCLUSIVE, which blocks
//! no reads or writes. A rollback after cutover does the same towards the old table.
//!
//! What an application sees at every moment: before cutover the references point at the
//! live (old) table, which holds every row, so `ON DELETE` / `ON UPDATE` actions fire from
//! it and the forward trigger mirrors the parent's change into the shadow; the children are
//! never written by turnout. The re-pointing commits with the rename, so no statement ever
//! sees the new table without its children's references, nor a child referencing a table
//! that no longer has the name. `NOT VALID` constraints are enforced for every write after
//! the commit; only the check of rows that already existed is deferred to `VALIDATE`, and
//! those rows referenced keys the new table holds (verify compared them). Once cut over the
//! old table has no reference left, so the reverse trigger's deletes never cascade twice.

use super::keys::KeyType;
use super::{Gen, list, quote};

/// One foreign key of a child table referencing the migrated table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::db::postgres) struct ChildFk {
    pub(in crate::db::postgres) schema: String,
    pub(in crate::db::postgres) table: String,
    pub(in crate::db::postgres) name: String,
    pub(in crate::db::postgres) columns: Vec<String>,
    /// The referenced columns, as the table that will be referenced names them.
    pub(in crate::db::postgres) referenced: Vec<String>,
    /// `pg_constraint.confmatchtype`, `confupdtype`, `confdeltype`.
    pub(in crate::db::postgres) match_type: String,
    pub(in crate::db::postgres) on_update: String,
    pub(in crate::db::postgres) on_delete: String,
    pub(in crate::db::postgres) deferrable: bool,
    pub(in crate::db::postgres) deferred: bool,
}

fn action(code: &str) -> &'static str {
    match code {
        "r" => "RESTRICT",
        "c" => "CASCADE",
        "n" => "SET NULL",
        "d" => "SET DEFAULT",
        _ => "NO ACTION",
    }
}

impl ChildFk {
    fn child(&self) -> String {
        super::qualified(&self.schema, &self.table)
    }

    /// The statements that make this reference point at `parent` (a qualified name).
    pub(in crate::db::postgres) fn repoint(&self, parent: &str) -> Vec<String> {
        vec![self.drop(), self.add(parent)]
    }

    pub(in crate::db::postgres) fn drop(&self) -> String {
        format!(
            "ALTER TABLE {} DROP CONSTRAINT {}",
            self.child(),
            quote(&self.name)
        )
    }

    pub(in crate::db::postgres) fn add(&self, parent: &str) -> String {
        format!(
            "ALTER TABLE {} ADD CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {parent} ({}){} ON UPDATE {} ON DELETE {}{} NOT VALID",
            self.child(),
            quote(&self.name),
            list(&self.columns),
            list(&self.referenced),
            if self.match_type == "f" {
                " MATCH FULL"
            } else {
                ""
            },
            action(&self.on_update),
            action(&self.on_delete),
            match (self.deferrable, self.deferred) {
                (true, true) => " DEFERRABLE INITIALLY DEFERRED",
                (true, false) => " DEFERRABLE INITIALLY IMMEDIATE",
                _ => "",
            }
        )
    }

    /// Checks the rows that existed at the re-pointing; blocks no writes.
    pub(in crate::db::postgres) fn validate(&self) -> String {
        format!(
            "ALTER TABLE {} VALIDATE CONSTRAINT {}",
            self.child(),
            quote(&self.name)
        )
    }
}

impl<'a> Gen<'a> {
    /// The new table's name for an old column the plan copies unchanged (or widens, for a
    /// key): what a child's reference to that column must name after cutover.
    pub(in crate::db::postgres) fn new_name_of(&self, old: &str) -> Option<String> {
        self.m.forward.iter().find_map(|mp| match &mp.source {
            crate::schema::Source::Column(c)
                if c == old && (mp.cast.is_none() || self.widened(old, &mp.target)) =>
            {
                Some(mp.target.clone())
            }
            _ => None,
        })
    }

    /// The column only widens (`integer` → `bigint`, a longer `varchar`): every value a
    /// reference compares is unchanged, so the reference can be carried across the cast.
    /// PostgreSQL compares the two types of a btree family directly.
    fn widened(&self, old: &str, new: &str) -> bool {
        let ty = |c: Option<&crate::schema::Column>| c.and_then(|c| KeyType::parse(&c.sql_type));
        match (ty(self.m.before.column(old)), ty(self.m.after.column(new))) {
            (Some(from), Some(to)) => from.fits_in(to),
            _ => false,
        }
    }

    /// The old table's name for a new column (the way back at rollback).
    pub(in crate::db::postgres) fn old_name_of(&self, new: &str) -> Option<String> {
        self.m.reverse.iter().find_map(|mp| match &mp.source {
            crate::schema::Source::Column(c)
                if c == new && (mp.cast.is_none() || self.widened(&mp.target, new)) =>
            {
                Some(mp.target.clone())
            }
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_is_recreated_with_its_actions_not_valid() {
        let fk = ChildFk {
            schema: "app".into(),
            table: "order lines".into(),
            name: "lines_order_fk".into(),
            columns: vec!["order_id".into()],
            referenced: vec!["id".into()],
            match_type: "s".into(),
            on_update: "c".into(),
            on_delete: "n".into(),
            deferrable: true,
            deferred: true,
        };
        assert_eq!(
            fk.repoint("\"app\".\"orders\""),
            vec![
                "ALTER TABLE \"app\".\"order lines\" DROP CONSTRAINT \"lines_order_fk\"".to_string(),
                "ALTER TABLE \"app\".\"order lines\" ADD CONSTRAINT \"lines_order_fk\" FOREIGN KEY (\"order_id\") REFERENCES \"app\".\"orders\" (\"id\") ON UPDATE CASCADE ON DELETE SET NULL DEFERRABLE INITIALLY DEFERRED NOT VALID".to_string(),
            ]
        );
        assert_eq!(
            fk.validate(),
            "ALTER TABLE \"app\".\"order lines\" VALIDATE CONSTRAINT \"lines_order_fk\""
        );
    }
}
