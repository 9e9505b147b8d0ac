//! Cutover, cleanup and rollback SQL: the one atomic `RENAME TABLE` that swaps the
//! names and the gate, its inverse, and the drops of triggers and gate tables.

use super::Gen;

impl<'a> Gen<'a> {
    /// The one atomic statement of cutover: names and gate move together.
    pub fn swap(&self) -> String {
        let n = &self.n;
        format!(
            "RENAME TABLE {} TO {}, {} TO {}, {} TO {}, {} TO {}",
            n.q(&n.table),
            n.q(&n.old),
            n.q(&n.shadow),
            n.q(&n.table),
            n.q(&n.gate),
            n.q(&n.gate_f),
            n.q(&n.gate_r),
            n.q(&n.gate)
        )
    }

    /// The inverse of [`Gen::swap`], for rollback after cutover.
    pub fn swap_back(&self) -> String {
        let n = &self.n;
        format!(
            "RENAME TABLE {} TO {}, {} TO {}, {} TO {}, {} TO {}",
            n.q(&n.table),
            n.q(&n.shadow),
            n.q(&n.old),
            n.q(&n.table),
            n.q(&n.gate),
            n.q(&n.gate_r),
            n.q(&n.gate_f),
            n.q(&n.gate)
        )
    }

    pub(in crate::db::mysql) fn drop_triggers(&self, names: &[String]) -> Vec<String> {
        names
            .iter()
            .map(|t| format!("DROP TRIGGER IF EXISTS {}", self.n.q(t)))
            .collect()
    }

    pub(in crate::db::mysql) fn drop_gates(&self) -> String {
        let n = &self.n;
        format!(
            "DROP TABLE IF EXISTS {}, {}, {}, {}, {}",
            n.q(&n.gate),
            n.q(&n.gate_f),
            n.q(&n.gate_r),
            n.q(&n.own_saved),
            n.q(&n.own_flag)
        )
    }
}
