//! Cutover, cleanup and rollback SQL: the name swap in one transaction (tables, primary
//! keys, indexes, identities, sequences) that turns dual-write around, the drops after it,
//! and the way back before or after cutover. The table's own triggers are created on the
//! new table in the cutover transaction (never earlier, so they never fire on the backfill
//! or the forward trigger's copies: those carry values the live table's triggers already
//! produced) and disabled on the old table, which from then on only receives the reverse
//! trigger's copies of rows the new table's triggers shaped; rollback enables them again
//! in its transaction, and the new table's go with it. Every application write therefore
//! meets exactly one set of the triggers, at every moment. The catalog facts these statements depend on
//! are read by the backend inside the same transaction.

use super::{ChildFk, Gen, qualified, quote};

/// Facts read from the catalog inside the cutover transaction.
#[derive(Debug, Clone)]
pub(in crate::db::postgres) struct CutoverFacts {
    /// The live table's primary key constraint name, which the new table takes over.
    pub(in crate::db::postgres) pk_name: Option<String>,
    /// Identity columns of the new table: (column, always, first value to hand out).
    pub(in crate::db::postgres) identities: Vec<(String, bool, String)>,
    /// Serial sequences owned by the live table: (schema, sequence, new column).
    pub(in crate::db::postgres) sequences: Vec<(String, String, String)>,
    /// Sequences whose type the widened key outgrows: (schema, sequence, new type).
    pub(in crate::db::postgres) retyped: Vec<(String, String, String)>,
    /// Other tables' references to the live table, naming the new table's columns.
    pub(in crate::db::postgres) children: Vec<ChildFk>,
    /// The live table's own foreign keys, for the new table: (key, qualified parent).
    pub(in crate::db::postgres) parents: Vec<(ChildFk, String)>,
    /// The live table's own triggers: (name, `pg_get_triggerdef`), naming the table by name.
    pub(in crate::db::postgres) triggers: Vec<(String, String)>,
    /// The live table's privileges granted to others, for the new table.
    pub(in crate::db::postgres) grants: Vec<Grant>,
    /// The old table's DEFERRABLE INITIALLY IMMEDIATE unique constraints, by the names the
    /// cutover gives them, which the reverse trigger defers (see `Gen::deferring`).
    pub(in crate::db::postgres) deferrable_immediate: Vec<String>,
}

/// One privilege on the live table (or on one of its columns) held by a role other than
/// the owner; the new table is turnout's own, so the owner's rights need no copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::db::postgres) struct Grant {
    /// None: PUBLIC.
    pub(in crate::db::postgres) grantee: Option<String>,
    /// `SELECT`, `INSERT`, … as `aclexplode` names it.
    pub(in crate::db::postgres) privilege: String,
    /// The new table's column, for a column privilege.
    pub(in crate::db::postgres) column: Option<String>,
    pub(in crate::db::postgres) grantable: bool,
}

impl Grant {
    pub(in crate::db::postgres) fn sql(&self, table: &str) -> String {
        format!(
            "GRANT {}{} ON TABLE {table} TO {}{}",
            self.privilege,
            self.column
                .as_deref()
                .map(|c| format!(" ({})", quote(c)))
                .unwrap_or_default(),
            self.grantee
                .as_deref()
                .map_or_else(|| "PUBLIC".to_string(), quote),
            if self.grantable {
                " WITH GRANT OPTION"
            } else {
                ""
            }
        )
    }
}

/// Facts read from the catalog inside a rollback after cutover.
#[derive(Debug, Clone)]
pub(in crate::db::postgres) struct RollbackFacts {
    /// The new table's primary key name (the original one), given back to the old table.
    pub(in crate::db::postgres) pk_name: Option<String>,
    /// Sequences owned by the new table: (schema, sequence, old column or None).
    pub(in crate::db::postgres) sequences: Vec<(String, String, Option<String>)>,
    /// Identity sequences of the old table to move above its rows: (sequence oid, column).
    pub(in crate::db::postgres) identities: Vec<(i64, String)>,
    /// Sequences given back to a narrower old key: (schema, sequence, old type).
    pub(in crate::db::postgres) retyped: Vec<(String, String, String)>,
    /// Other tables' references to the new table, naming the old table's columns.
    pub(in crate::db::postgres) children: Vec<ChildFk>,
    /// The old table's triggers that cutover disabled, enabled again.
    pub(in crate::db::postgres) triggers: Vec<String>,
}

impl<'a> Gen<'a> {
    // --- cutover, cleanup, rollback ------------------------------------------------------

    /// Held while the cutover reads what only a lock conflicting with this one can change
    /// (triggers, constraints, comments, storage options, publications, rules, row
    /// security): application reads and writes go on meanwhile, so those reads cost the
    /// application no stall.
    pub(in crate::db::postgres) fn hold_both(&self) -> String {
        format!(
            "LOCK TABLE {}, {} IN SHARE UPDATE EXCLUSIVE MODE",
            self.live(),
            self.shadow()
        )
    }

    pub(in crate::db::postgres) fn lock_both(&self) -> String {
        format!(
            "LOCK TABLE {}, {} IN ACCESS EXCLUSIVE MODE",
            self.live(),
            self.shadow()
        )
    }

    pub(in crate::db::postgres) fn cutover(&self, f: &CutoverFacts) -> Vec<String> {
        let mut out = vec![self.lock_both()];
        out.extend(self.drop_dual_write(&self.forward()));
        out.push(format!(
            "ALTER TABLE {} RENAME TO {}",
            self.live(),
            quote(&self.m.old)
        ));
        out.push(format!(
            "ALTER TABLE {} RENAME TO {}",
            self.shadow(),
            quote(&self.m.table)
        ));
        if let Some(pk) = &f.pk_name {
            out.push(format!(
                "ALTER TABLE {} RENAME CONSTRAINT {} TO {}",
                self.old(),
                quote(pk),
                quote(&self.n.old_pk())
            ));
            out.push(format!(
                "ALTER TABLE {} RENAME CONSTRAINT {} TO {}",
                self.live(),
                quote(&self.n.new_pk()),
                quote(pk)
            ));
        }
        for (i, idx) in self.m.before.indexes.iter().enumerate() {
            out.push(format!(
                "ALTER INDEX {} RENAME TO {}",
                self.rel(&idx.name),
                quote(&self.n.old_index(i))
            ));
        }
        for (i, idx) in self.m.after.indexes.iter().enumerate() {
            out.push(format!(
                "ALTER INDEX {} RENAME TO {}",
                self.rel(&self.n.new_index(i)),
                quote(&idx.name)
            ));
        }
        for (col, always, start) in &f.identities {
            out.push(format!(
                "ALTER TABLE {} ALTER COLUMN {} ADD GENERATED {} AS IDENTITY (START WITH {start})",
                self.live(),
                quote(col),
                if *always { "ALWAYS" } else { "BY DEFAULT" }
            ));
        }
        for (schema, seq, col) in &f.sequences {
            out.push(format!(
                "ALTER SEQUENCE {} OWNED BY {}.{}",
                qualified(schema, seq),
                self.live(),
                quote(col)
            ));
        }
        for (schema, seq, t) in &f.retyped {
            out.push(format!("ALTER SEQUENCE {} AS {t}", qualified(schema, seq)));
        }
        for fk in &f.children {
            out.extend(fk.repoint(&self.live()));
        }
        for (fk, parent) in &f.parents {
            out.push(fk.add(parent));
        }
        // The definitions name the table by name, which is the new table's now. The old
        // table's copies stop firing: it only receives the reverse trigger's rows, which
        // the new table's triggers already shaped (a BEFORE trigger must not restamp them).
        for (name, def) in &f.triggers {
            out.push(def.clone());
            out.push(format!(
                "ALTER TABLE {} DISABLE TRIGGER {}",
                self.old(),
                quote(name)
            ));
        }
        // The application's roles keep their rights on the table they now reach; the old
        // table keeps its own grants untouched, which is all a rollback needs.
        out.extend(f.grants.iter().map(|g| g.sql(&self.live())));
        out.extend(self.dual_write(&self.deferring(self.reverse(), &f.deferrable_immediate)));
        out
    }

    pub(in crate::db::postgres) fn cleanup(&self, keep_old: bool) -> Vec<String> {
        let mut out = self.drop_dual_write(&self.reverse());
        out.extend(self.drop_dual_write(&self.forward()));
        if !keep_old {
            out.push(format!("DROP TABLE IF EXISTS {}", self.old()));
        }
        out
    }

    /// Rollback before cutover: the live table was the source of truth all along.
    pub(in crate::db::postgres) fn rollback_unprepared(&self) -> Vec<String> {
        let mut out = self.drop_dual_write(&self.forward());
        out.extend(self.drop_dual_write(&self.reverse()));
        out.push(format!("DROP TABLE IF EXISTS {}", self.shadow()));
        out
    }

    /// Rollback after cutover: drop the new table (its names free again) and give the old
    /// table back its name, its index and key names and its sequences.
    pub(in crate::db::postgres) fn rollback_swapped(&self, f: &RollbackFacts) -> Vec<String> {
        let mut out = vec![format!(
            "LOCK TABLE {}, {} IN ACCESS EXCLUSIVE MODE",
            self.live(),
            self.old()
        )];
        out.extend(self.drop_dual_write(&self.reverse()));
        out.extend(self.drop_dual_write(&self.forward()));
        for (schema, seq, col) in &f.sequences {
            out.push(match col {
                Some(c) => format!(
                    "ALTER SEQUENCE {} OWNED BY {}.{}",
                    qualified(schema, seq),
                    self.old(),
                    quote(c)
                ),
                None => format!("ALTER SEQUENCE {} OWNED BY NONE", qualified(schema, seq)),
            });
        }
        for (schema, seq, t) in &f.retyped {
            out.push(format!("ALTER SEQUENCE {} AS {t}", qualified(schema, seq)));
        }
        for name in &f.triggers {
            out.push(format!(
                "ALTER TABLE {} ENABLE TRIGGER {}",
                self.old(),
                quote(name)
            ));
        }
        // The references leave the new table before it is dropped.
        out.extend(f.children.iter().map(ChildFk::drop));
        out.push(format!("DROP TABLE {}", self.live()));
        out.push(format!(
            "ALTER TABLE {} RENAME TO {}",
            self.old(),
            quote(&self.m.table)
        ));
        out.extend(f.children.iter().map(|fk| fk.add(&self.live())));
        for (i, idx) in self.m.before.indexes.iter().enumerate() {
            out.push(format!(
                "ALTER INDEX IF EXISTS {} RENAME TO {}",
                self.rel(&self.n.old_index(i)),
                quote(&idx.name)
            ));
        }
        if let Some(pk) = &f.pk_name
            && pk != &self.n.old_pk()
        {
            out.push(format!(
                "ALTER TABLE {} RENAME CONSTRAINT {} TO {}",
                self.live(),
                quote(&self.n.old_pk()),
                quote(pk)
            ));
        }
        for (oid, col) in &f.identities {
            // Ids handed out by the new table since cutover were copied back: move the old
            // identity above them.
            out.push(format!(
                "SELECT setval({oid}::oid::regclass, greatest((SELECT max({}) FROM {}), (SELECT coalesce(pg_sequence_last_value({oid}::oid::regclass), 1))))",
                quote(col),
                self.live()
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::migration;
    use super::*;

    #[test]
    fn cutover_renames_indexes_and_keys_then_reverses_dual_write() {
        let m = migration();
        let g = Gen::new(&m, "public");
        let facts = CutoverFacts {
            pk_name: Some("orders_pkey".into()),
            identities: vec![],
            sequences: vec![("sales".into(), "orders_id_seq".into(), "id".into())],
            retyped: vec![("sales".into(), "orders_id_seq".into(), "bigint".into())],
            children: vec![],
            parents: vec![],
            triggers: vec![],
            deferrable_immediate: vec![],
            grants: vec![
                Grant {
                    grantee: Some("app \"ro\"".into()),
                    privilege: "SELECT".into(),
                    column: None,
                    grantable: false,
                },
                Grant {
                    grantee: None,
                    privilege: "UPDATE".into(),
                    column: Some("note".into()),
                    grantable: true,
                },
            ],
        };
        assert_eq!(
            g.hold_both(),
            "LOCK TABLE \"sales\".\"orders\", \"sales\".\"_orders_new\" IN SHARE UPDATE EXCLUSIVE MODE"
        );
        let stmts = g.cutover(&facts);
        assert!(stmts.contains(
            &"GRANT SELECT ON TABLE \"sales\".\"orders\" TO \"app \"\"ro\"\"\"".to_string()
        ));
        assert!(stmts.contains(
            &"GRANT UPDATE (\"note\") ON TABLE \"sales\".\"orders\" TO PUBLIC WITH GRANT OPTION"
                .to_string()
        ));
        let n = &g.n.base;
        assert_eq!(
            stmts[0],
            "LOCK TABLE \"sales\".\"orders\", \"sales\".\"_orders_new\" IN ACCESS EXCLUSIVE MODE"
        );
        assert!(stmts.contains(&format!(
            "ALTER INDEX \"sales\".\"orders_note\" RENAME TO \"{n}_o0\""
        )));
        assert!(stmts.contains(&format!(
            "ALTER INDEX \"sales\".\"{n}_n0\" RENAME TO \"orders_note\""
        )));
        assert!(stmts.contains(&format!(
            "ALTER TABLE \"sales\".\"orders\" RENAME CONSTRAINT \"{n}_npk\" TO \"orders_pkey\""
        )));
        assert!(
            stmts.contains(
                &"ALTER SEQUENCE \"sales\".\"orders_id_seq\" OWNED BY \"sales\".\"orders\".\"id\""
                    .to_string()
            )
        );
        assert!(
            stmts.contains(&"ALTER SEQUENCE \"sales\".\"orders_id_seq\" AS bigint".to_string())
        );
        assert!(stmts.iter().any(|s| s.contains(
            "INSERT INTO \"sales\".\"_orders_old\" (\"id\", \"amount_cents\", \"note\")"
        )));
    }
}
