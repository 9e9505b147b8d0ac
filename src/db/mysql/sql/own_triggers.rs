//! The SQL that carries the table's own triggers (MariaDB): the saved definitions, the
//! name flag, and each trigger's gated copies. `own_triggers.rs` beside `sql/` says why
//! the copies are shaped and ordered as they are.

use super::{Gen, lit, quote};

/// One of the table's own triggers, as `information_schema.TRIGGERS` showed it before
/// turnout touched it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnTrigger {
    /// Its place among the table's triggers: by timing, event and `ACTION_ORDER`, so
    /// creating them in this order gives each (timing, event) group its original order.
    pub ord: i64,
    pub name: String,
    pub timing: String,
    pub event: String,
    pub body: String,
    pub sql_mode: String,
    /// `user@host` as the catalog writes it.
    pub definer: String,
}

/// Which copy of a trigger, and so when its body runs. The gate says which table is
/// live (`f`: the old one, `r`: the new one); the name flag says which of two copies
/// on the live table holds the trigger's work while its name moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copy {
    /// On the old table from dual-write to the swap: runs while the old table is live.
    Live,
    /// On the shadow under a temporary name, from cutover: runs once the shadow is the
    /// live table, until the copy under the original name takes over (flag `t`).
    Temporary,
    /// On the new table under the original name, after the swap (flag `o`).
    Renamed,
    /// On the old table under a temporary name, for a rollback after cutover: runs
    /// once the old table is live again, until the original name is back (flag ≠ `b`).
    Back,
    /// On the old table under the original name again, during a rollback (flag `b`).
    Returned,
}

impl Copy {
    fn condition(self) -> &'static str {
        match self {
            Copy::Live => "turnout_gate = 'f'",
            Copy::Temporary => "turnout_gate = 'r' AND turnout_names = 't'",
            Copy::Renamed => "turnout_gate = 'r' AND turnout_names = 'o'",
            Copy::Back => "turnout_gate = 'f' AND turnout_names <> 'b'",
            Copy::Returned => "turnout_gate = 'f' AND turnout_names = 'b'",
        }
    }
}

/// `user@host` → `` `user`@`host` `` (a user name may hold `@`; the host cannot).
fn definer(d: &str) -> String {
    match d.rsplit_once('@') {
        Some((u, h)) => format!("{}@{}", quote(u), quote(h)),
        None => quote(d),
    }
}

impl<'a> Gen<'a> {
    /// The temporary name of the copy of the `ord`-th trigger on the shadow (`n`) or,
    /// in a rollback, on the old table (`o`); short, since an original name may
    /// already take MySQL's 64 characters.
    pub fn own_trigger_temp_name(&self, side: char, ord: i64) -> String {
        format!("{}_{side}{ord}", self.n.own_prefix)
    }

    /// The table that keeps the original definitions and the name flag's table.
    pub fn own_trigger_tables(&self) -> Vec<String> {
        let n = &self.n;
        vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {} (ord INT NOT NULL PRIMARY KEY, name VARCHAR(64) NOT NULL, timing VARCHAR(6) NOT NULL, event VARCHAR(6) NOT NULL, body LONGTEXT NOT NULL, sql_mode TEXT NOT NULL, definer TEXT NOT NULL) ENGINE=InnoDB",
                n.q(&n.own_saved)
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {} (v CHAR(1) NOT NULL PRIMARY KEY) ENGINE=InnoDB",
                n.q(&n.own_flag)
            ),
            format!(
                "INSERT INTO {q} (v) SELECT 't' FROM DUAL WHERE NOT EXISTS (SELECT 1 FROM {q} AS f)",
                q = n.q(&n.own_flag)
            ),
        ]
    }

    /// Saves the definitions once: a resumed dual-write, which finds some triggers
    /// already gated, keeps the first (original) ones.
    pub fn save_own_triggers(&self, triggers: &[OwnTrigger]) -> Option<String> {
        let rows: Vec<String> = triggers
            .iter()
            .map(|t| {
                format!(
                    "({}, {}, {}, {}, {}, {}, {})",
                    t.ord,
                    lit(&t.name),
                    lit(&t.timing),
                    lit(&t.event),
                    lit(&t.body),
                    lit(&t.sql_mode),
                    lit(&t.definer)
                )
            })
            .collect();
        (!rows.is_empty()).then(|| {
            format!(
                "INSERT IGNORE INTO {} (ord, name, timing, event, body, sql_mode, definer) VALUES {}",
                self.n.q(&self.n.own_saved),
                rows.join(", ")
            )
        })
    }

    pub fn read_own_triggers(&self) -> String {
        format!(
            "SELECT CAST(ord AS CHAR), name, timing, event, body, sql_mode, definer FROM {} ORDER BY ord",
            self.n.q(&self.n.own_saved)
        )
    }

    /// Turns the name flag; each copy reads it under a shared lock, so the copy that
    /// runs changes between two transactions, never inside one.
    pub fn set_own_flag(&self, v: char) -> String {
        format!("UPDATE {} SET v = '{v}'", self.n.q(&self.n.own_flag))
    }

    /// The trigger exactly as it was: the same definer, timing, event and body.
    pub fn original_trigger(&self, t: &OwnTrigger, table: &str) -> String {
        format!(
            "CREATE OR REPLACE DEFINER={} TRIGGER {} {} {} ON {} FOR EACH ROW {}",
            definer(&t.definer),
            self.n.q(&t.name),
            t.timing,
            t.event,
            self.n.q(table),
            t.body
        )
    }

    /// A copy of `t` named `name` on `table`, its body run only when `copy` says so.
    /// Both reads lock in share mode, like the dual-write triggers' read of the gate: a
    /// transaction that wrote through a copy holds the gate and the flag as they were
    /// until it ends, so the swap and the flag's turn wait for it.
    pub fn gated_trigger(&self, t: &OwnTrigger, name: &str, table: &str, copy: Copy) -> String {
        let n = &self.n;
        let body = t.body.trim().trim_end_matches(';');
        let names = if copy == Copy::Live {
            String::new()
        } else {
            format!(
                "  SELECT v INTO turnout_names FROM {} LIMIT 1 LOCK IN SHARE MODE;\n",
                n.q(&n.own_flag)
            )
        };
        format!(
            "CREATE OR REPLACE DEFINER={} TRIGGER {} {} {} ON {} FOR EACH ROW\nBEGIN\n  DECLARE turnout_gate CHAR(1);\n  DECLARE turnout_names CHAR(1);\n  SELECT d INTO turnout_gate FROM {} LIMIT 1 LOCK IN SHARE MODE;\n{names}  IF {} THEN\n{body};\n  END IF;\nEND",
            definer(&t.definer),
            n.q(name),
            t.timing,
            t.event,
            n.q(table),
            n.q(&n.gate),
            copy.condition(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::Names;
    use super::super::tests::migration;
    use super::*;

    #[test]
    fn the_copies_of_the_tables_own_triggers() {
        let m = migration();
        let g = Gen {
            m: &m,
            n: Names::new(&m, Some("db"), Some("db")),
            mariadb: true,
        };
        let stamp = OwnTrigger {
            ord: 0,
            name: "t stamp".into(),
            timing: "BEFORE".into(),
            event: "UPDATE".into(),
            body: "SET NEW.touched = OLD.touched + 1".into(),
            sql_mode: "STRICT_TRANS_TABLES".into(),
            definer: "app@%".into(),
        };
        let audit = OwnTrigger {
            ord: 1,
            name: "t_audit".into(),
            timing: "AFTER".into(),
            event: "INSERT".into(),
            body: "BEGIN\n  INSERT INTO audit (what) VALUES ('it''s new');\nEND".into(),
            sql_mode: "".into(),
            definer: "root@localhost".into(),
        };
        let temp = g.own_trigger_temp_name('n', 1);
        let mut all = g.own_trigger_tables();
        all.extend(g.save_own_triggers(&[stamp.clone(), audit.clone()]));
        all.push(g.read_own_triggers());
        all.push(g.gated_trigger(&stamp, &stamp.name, "t", Copy::Live));
        all.push(g.gated_trigger(&audit, &temp, &g.n.shadow, Copy::Temporary));
        all.push(g.gated_trigger(&audit, &audit.name, "t", Copy::Renamed));
        all.push(g.gated_trigger(
            &audit,
            &g.own_trigger_temp_name('o', 1),
            &g.n.old,
            Copy::Back,
        ));
        all.push(g.gated_trigger(&audit, &audit.name, "t", Copy::Returned));
        all.push(g.set_own_flag('o'));
        all.push(g.original_trigger(&stamp, "t"));
        assert_eq!(g.save_own_triggers(&[]), None);
        insta::assert_snapshot!(all.join("\n\n"));
    }
}
