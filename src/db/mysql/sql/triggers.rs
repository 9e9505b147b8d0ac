//! Dual-write triggers: forward (live → shadow, active while the gate says `f`) and
//! reverse (new → old, installed on the shadow before cutover, active while it says
//! `r`), and the gate tables they read.

use crate::schema::{Column, shadow_name};

use super::foreign_keys::ForeignKey;

use super::super::errors::DATA_ERRORS;
use super::{Gen, lit, quote};

impl<'a> Gen<'a> {
    pub fn create_gates(&self) -> Vec<String> {
        let n = &self.n;
        let mut v = Vec::new();
        for (name, d) in [(&n.gate, "f"), (&n.gate_r, "r")] {
            v.push(format!(
                "CREATE TABLE IF NOT EXISTS {} (d CHAR(1) NOT NULL PRIMARY KEY) ENGINE=InnoDB",
                n.q(name)
            ));
            v.push(format!(
                "INSERT INTO {q} (d) SELECT '{d}' FROM DUAL WHERE NOT EXISTS (SELECT 1 FROM {q} AS g)",
                q = n.q(name)
            ));
        }
        v
    }

    /// `(SELECT NEW.a AS a, …) AS turnout_src`: the trigger row under its own column
    /// names, so the plan's expressions read it unqualified exactly as in backfill.
    fn row_source(prefix: &str, cols: &[Column]) -> String {
        let items: Vec<String> = cols
            .iter()
            .map(|c| format!("{prefix}.{} AS {}", quote(&c.name), quote(&c.name)))
            .collect();
        format!("(SELECT {}) AS turnout_src", items.join(", "))
    }

    fn key_match(target: &[&str], prefix: &str, source: &[&str]) -> String {
        target
            .iter()
            .zip(source)
            .map(|(t, s)| format!("{} = {prefix}.{}", quote(t), quote(s)))
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    /// Byte for byte: under a case-insensitive collation 'a' → 'A' changes no key to `=`,
    /// but the row must be re-keyed on the other side (the upsert keeps the old spelling).
    fn key_changed(key: &[&str]) -> String {
        let same: Vec<String> = key
            .iter()
            .map(|k| {
                format!(
                    "CAST(OLD.{q} AS BINARY) <=> CAST(NEW.{q} AS BINARY)",
                    q = quote(k)
                )
            })
            .collect();
        format!("NOT ({})", same.join(" AND "))
    }

    /// `insert` (an INSERT … SELECT of one mapped row) that overwrites the `sets` columns
    /// of the row with the same key instead of failing. A clash on another unique index
    /// sets the key to NULL, an error, rather than rewriting that other row. Unlike a
    /// DELETE then INSERT, it takes no gap lock when the row is not there yet: with
    /// eight writers on MariaDB 10.11, DELETE-then-INSERT triggers made 886 of about
    /// 6,000 transactions end in deadlock, where the same writers without triggers had
    /// none.
    fn upsert(insert: String, target: &str, key: &[&str], sets: &[&str]) -> String {
        let same = key
            .iter()
            .map(|k| format!("{target}.{q} <=> VALUES({target}.{q})", q = quote(k)))
            .collect::<Vec<_>>()
            .join(" AND ");
        // Left to right, and the key last: `same` must read the key as it was.
        let mut assign: Vec<String> = sets
            .iter()
            .filter(|c| !key.contains(c))
            .map(|c| {
                format!(
                    "{target}.{q} = IF({same}, VALUES({target}.{q}), {target}.{q})",
                    q = quote(c)
                )
            })
            .collect();
        assign.push(format!(
            "{target}.{k} = IF({same}, {target}.{k}, NULL)",
            k = quote(key[0])
        ));
        format!("{insert} ON DUPLICATE KEY UPDATE {}", assign.join(", "))
    }

    #[allow(clippy::too_many_arguments)]
    fn trigger(
        &self,
        name: &str,
        event: &str,
        table: &str,
        gate: char,
        direction: &str,
        key_row: (&str, &[&str]),
        cleanup: &str,
        body: &[String],
    ) -> String {
        let n = &self.n;
        let mut s = format!(
            "CREATE TRIGGER {} AFTER {event} ON {} FOR EACH ROW\nBEGIN\n  DECLARE turnout_gate CHAR(1);\n",
            n.q(name),
            n.q(table)
        );
        if self.m.on_error == crate::plan::OnError::Record {
            let key: Vec<String> = key_row
                .1
                .iter()
                .map(|k| format!("{}.{}", key_row.0, quote(k)))
                .collect();
            let codes: Vec<String> = DATA_ERRORS.iter().map(u16::to_string).collect();
            // The upsert's unique-clash guard sets the target's key to NULL.
            let target_key = if direction == "forward" {
                self.m.new_key()[0]
            } else {
                self.m.old_key()[0]
            };
            s.push_str(&format!(
                "  DECLARE turnout_msg TEXT;\n  DECLARE EXIT HANDLER FOR {}\n  BEGIN\n    GET DIAGNOSTICS CONDITION 1 turnout_msg = MESSAGE_TEXT;\n    IF turnout_msg = {} THEN SET turnout_msg = 'the value clashes with another row on a unique index'; END IF;\n    {cleanup};\n    INSERT INTO {} (migration, direction, key_text, error, at) VALUES ({}, '{direction}', CONCAT_WS(', ', {}), turnout_msg, NOW(6));\n  END;\n",
                codes.join(", "),
                lit(&format!("Column '{target_key}' cannot be null")),
                n.failures(),
                lit(&self.m.name),
                key.join(", ")
            ));
        }
        // A gate that is gone (1146, and the catalog has no such table) leaves
        // turnout_gate NULL, so the trigger does nothing. The gate goes only after
        // cleanup or rollback has dropped every dual-write trigger that reads it, yet on
        // MariaDB 10.11 an application statement has still failed on it after that, as
        // if a trigger outlived its drop (a four-table plan's cleanup: once in CI, once
        // locally in about twenty runs). A 1146 on a gate that exists is raised again:
        // MariaDB can also report one for a table it did not open for a prepared
        // statement (MDEV-26048), and doing nothing then would lose the write in the
        // other table. The handler covers this one read.
        let schema = match &n.schema {
            Some(schema) => lit(schema),
            None => "DATABASE()".to_string(),
        };
        s.push_str(&format!(
            "  BEGIN\n    DECLARE CONTINUE HANDLER FOR 1146\n      BEGIN\n        IF (SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = {schema} AND TABLE_NAME = {}) > 0 THEN RESIGNAL; END IF;\n      END;\n    SELECT d INTO turnout_gate FROM {} LIMIT 1 LOCK IN SHARE MODE;\n  END;\n",
            lit(&n.gate),
            n.q(&n.gate)
        ));
        s.push_str(&format!("  IF turnout_gate = '{gate}' THEN\n"));
        for stmt in body {
            s.push_str(&format!("    {stmt};\n"));
        }
        s.push_str("  END IF;\nEND");
        s
    }

    /// Live → shadow, active while the gate says `f`.
    pub fn forward_triggers(&self) -> Vec<String> {
        self.forward_triggers_with(&[])
    }

    /// What InnoDB does to a child table of the same plan when a row of this table goes
    /// (`on_delete`) or its referenced columns change: done to the child's shadow too.
    /// InnoDB's cascades fire no triggers, so the child's own forward triggers never see
    /// them, and the child's shadow cannot reference this table's shadow before cutover
    /// (a child row written before its parent is copied would be refused) nor this table
    /// (the column types differ). Cutover gives the child's shadow the constraint itself,
    /// after which these statements find nothing left to do.
    fn plan_cascades(&self, children: &[ForeignKey], on_delete: bool) -> Vec<String> {
        let mut out = Vec::new();
        for fk in children {
            let child = self.n.q(&shadow_name(&fk.table));
            let pairs = || fk.columns.iter().zip(&fk.ref_columns);
            let matched = pairs()
                .map(|(c, r)| format!("{} = OLD.{}", quote(c), quote(r)))
                .collect::<Vec<_>>()
                .join(" AND ");
            let set = |row: Option<&str>| {
                pairs()
                    .map(|(c, r)| match row {
                        Some(row) => format!("{} = {row}.{}", quote(c), quote(r)),
                        None => format!("{} = NULL", quote(c)),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let rule = if on_delete {
                &fk.on_delete
            } else {
                &fk.on_update
            };
            let stmt = match (rule.as_str(), on_delete) {
                ("CASCADE", true) => format!("DELETE FROM {child} WHERE {matched}"),
                ("CASCADE", false) => {
                    format!("UPDATE {child} SET {} WHERE {matched}", set(Some("NEW")))
                }
                ("SET NULL", _) => format!("UPDATE {child} SET {} WHERE {matched}", set(None)),
                _ => continue,
            };
            if on_delete {
                out.push(stmt);
            } else {
                let refs: Vec<&str> = fk.ref_columns.iter().map(String::as_str).collect();
                out.push(format!(
                    "IF {} THEN {stmt}; END IF",
                    Self::key_changed(&refs)
                ));
            }
        }
        out
    }

    /// [`Gen::forward_triggers`] that also carry InnoDB's cascades into the shadows of
    /// `children`, the plan's tables that reference this one ([`Gen::plan_cascades`]).
    pub fn forward_triggers_with(&self, children: &[ForeignKey]) -> Vec<String> {
        let (m, n) = (self.m, &self.n);
        let shadow = n.q(&n.shadow);
        let (old_key, new_key) = (m.old_key(), m.new_key());
        let del = |row: &str| {
            format!(
                "DELETE FROM {shadow} WHERE {}",
                Self::key_match(&new_key, row, &old_key)
            )
        };
        let written = self.forward_written();
        let ins = self.insert_mapped(
            &shadow,
            &written,
            &Self::row_source("NEW", &m.before.columns),
        );
        let targets: Vec<&str> = written.iter().map(|mp| mp.target.as_str()).collect();
        let upsert = Self::upsert(ins.clone(), &shadow, &new_key, &targets);
        // A new live key has no shadow row: the delete trigger removed it with the live
        // row, and a batch copies only live rows. A plain INSERT keeps a unique clash's
        // own message (1062).
        let i = self.trigger(
            &n.forward[0],
            "INSERT",
            &n.table,
            'f',
            "forward",
            ("NEW", &old_key),
            &del("NEW"),
            &[ins],
        );
        // The row may not be copied yet: the upsert inserts it, and its batch keeps it.
        // A key change moves the shadow's row rather than deleting it: in the moment
        // before the swap when child tables reference the shadow (cutover.rs), a delete
        // would cascade into (or be refused by) children whose ON UPDATE says otherwise.
        let move_key = format!(
            "IF {} THEN UPDATE {shadow} SET {} WHERE {}; END IF",
            Self::key_changed(&old_key),
            new_key
                .iter()
                .zip(&old_key)
                .map(|(nk, o)| format!("{} = NEW.{}", quote(nk), quote(o)))
                .collect::<Vec<_>>()
                .join(", "),
            Self::key_match(&new_key, "OLD", &old_key)
        );
        let u = self.trigger(
            &n.forward[1],
            "UPDATE",
            &n.table,
            'f',
            "forward",
            ("NEW", &old_key),
            &del("NEW"),
            &[vec![move_key, upsert], self.plan_cascades(children, false)].concat(),
        );
        let d = self.trigger(
            &n.forward[2],
            "DELETE",
            &n.table,
            'f',
            "forward",
            ("OLD", &old_key),
            &del("OLD"),
            &[vec![del("OLD")], self.plan_cascades(children, true)].concat(),
        );
        vec![i, u, d]
    }

    /// New → old (installed on the shadow, which carries them through the swap), active
    /// while the gate says `r`. Upserts touch only the mapped columns, so the old
    /// table keeps the values of columns the reverse mapping cannot rebuild.
    pub fn reverse_triggers(&self) -> Vec<String> {
        let (m, n) = (self.m, &self.n);
        let old = n.q(&n.old);
        let (old_key, new_key) = (m.old_key(), m.new_key());
        let upsert = {
            let written = self.reverse_written();
            let base =
                self.insert_mapped(&old, &written, &Self::row_source("NEW", &m.after.columns));
            let targets: Vec<&str> = written.iter().map(|mp| mp.target.as_str()).collect();
            Self::upsert(base, &old, &old_key, &targets)
        };
        let del = |row: &str| {
            format!(
                "DELETE FROM {old} WHERE {}",
                Self::key_match(&old_key, row, &new_key)
            )
        };
        let move_key = format!(
            "IF {} THEN UPDATE {old} SET {} WHERE {}; END IF",
            Self::key_changed(&new_key),
            old_key
                .iter()
                .zip(&new_key)
                .map(|(o, nk)| format!("{} = NEW.{}", quote(o), quote(nk)))
                .collect::<Vec<_>>()
                .join(", "),
            Self::key_match(&old_key, "OLD", &new_key)
        );
        let i = self.trigger(
            &n.reverse[0],
            "INSERT",
            &n.shadow,
            'r',
            "reverse",
            ("NEW", &new_key),
            &del("NEW"),
            std::slice::from_ref(&upsert),
        );
        let u = self.trigger(
            &n.reverse[1],
            "UPDATE",
            &n.shadow,
            'r',
            "reverse",
            ("NEW", &new_key),
            &del("NEW"),
            &[move_key, upsert],
        );
        let d = self.trigger(
            &n.reverse[2],
            "DELETE",
            &n.shadow,
            'r',
            "reverse",
            ("OLD", &new_key),
            &del("OLD"),
            &[del("OLD")],
        );
        vec![i, u, d]
    }
}
