//! Cutover, cleanup and rollback SQL: the one atomic `RENAME TABLE` that swaps the
//! names and the gate, its inverse, and the drops of triggers and gate tables.

use super::Gen;

impl<'a> Gen<'a> {
    /// The one atomic statement of cutover: names and gate move together.
    pub fn swap(&self) -> String {
        format!("RENAME TABLE {}", self.swap_pairs())
    }

    /// The one atomic statement of a plan's cutover: every table's names and gate.
    pub fn swap_all(gs: &[Gen<'_>]) -> String {
        let pairs: Vec<String> = gs.iter().map(Gen::swap_pairs).collect();
        format!("RENAME TABLE {}", pairs.join(", "))
    }

    /// The inverse of [`Gen::swap_all`].
    pub fn swap_back_all(gs: &[&Gen<'_>]) -> String {
        let pairs: Vec<String> = gs.iter().map(|g| g.swap_back_pairs()).collect();
        format!("RENAME TABLE {}", pairs.join(", "))
    }

    fn swap_pairs(&self) -> String {
        let n = &self.n;
        format!(
            "{} TO {}, {} TO {}, {} TO {}, {} TO {}",
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

    /// The session setting that bounds the sentry's `LOCK TABLES` wait by `wait`, and the
    /// one that lifts it: MariaDB's `max_statement_time` takes a fraction of a second (the
    /// wait then ends in error 1969); MySQL has no such bound for DDL, so there the
    /// session's whole-second `lock_wait_timeout` is the bound. Never for the RENAME:
    /// MariaDB 10.11 interrupted mid-RENAME leaves the renamed tables' trigger files empty.
    pub fn statement_bound(&self, wait: std::time::Duration) -> Option<(String, String)> {
        self.mariadb.then(|| {
            (
                format!(
                    "SET SESSION max_statement_time = {:.3}",
                    wait.as_secs_f64().max(0.001)
                ),
                "SET SESSION max_statement_time = DEFAULT".to_string(),
            )
        })
    }

    /// The inverse of [`Gen::swap`], for rollback after cutover.
    pub fn swap_back(&self) -> String {
        format!("RENAME TABLE {}", self.swap_back_pairs())
    }

    fn swap_back_pairs(&self) -> String {
        let n = &self.n;
        format!(
            "{} TO {}, {} TO {}, {} TO {}, {} TO {}",
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

#[cfg(test)]
mod tests {
    use super::super::tests::migration;
    use super::super::{Gen, Names};

    #[test]
    fn the_sentry_waits_a_fraction_of_a_second_on_mariadb_and_whole_seconds_on_mysql() {
        let m = migration();
        let wait = std::time::Duration::from_millis(50);
        for mariadb in [true, false] {
            let g = Gen {
                m: &m,
                n: Names::new(&m, Some("db"), Some("db")),
                mariadb,
            };
            let bound = g.statement_bound(wait).map(|(set, _)| set);
            assert_eq!(
                bound.as_deref(),
                mariadb.then_some("SET SESSION max_statement_time = 0.050"),
                "mariadb={mariadb}"
            );
        }
    }
}
