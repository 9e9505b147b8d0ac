//! Who holds the cutover back: the sessions holding or waiting for a lock on a table the
//! cutover locks (the live table, its shadow, its old name, and the tables its foreign keys
//! join it to, whose locks the re-pointing takes), whose transaction is older than the grace
//! ordinary traffic gets. Asked before each attempt, so turnout does not queue a lock
//! request behind them (every application write would queue behind that request).

use super::{Gen, literal};

impl Gen<'_> {
    /// `$1`: the grace in seconds. Columns: pid, user, application, state, transaction age
    /// in ms, query start — the oldest first.
    pub(in crate::db::postgres) fn blockers(&self) -> String {
        let ours = [self.live(), self.shadow(), self.old()]
            .iter()
            .map(|r| format!("to_regclass({})", literal(r)))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "WITH ours AS (SELECT r FROM unnest(ARRAY[{ours}]) AS r WHERE r IS NOT NULL), \
             tables AS (SELECT r FROM ours \
             UNION SELECT c.conrelid FROM pg_constraint c WHERE c.contype = 'f' AND c.confrelid IN (SELECT r FROM ours) \
             UNION SELECT c.confrelid FROM pg_constraint c WHERE c.contype = 'f' AND c.conrelid IN (SELECT r FROM ours)) \
             SELECT a.pid::text, coalesce(a.usename::text, ''), coalesce(a.application_name, ''), \
             concat_ws(', ', coalesce(a.state, a.backend_type), CASE WHEN bool_or(NOT l.granted) THEN 'waiting for a lock' END), \
             (extract(epoch FROM clock_timestamp() - coalesce(a.xact_start, a.query_start, a.backend_start)) * 1000)::bigint, \
             left(coalesce(a.query, ''), 200) \
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'relation' \
             AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             AND l.relation IN (SELECT r FROM tables) AND l.pid <> pg_backend_pid() \
             AND coalesce(a.xact_start, a.query_start, a.backend_start) < clock_timestamp() - make_interval(secs => $1) \
             GROUP BY a.pid, a.usename, a.application_name, a.state, a.backend_type, a.xact_start, a.query_start, a.backend_start, a.query \
             ORDER BY 5 DESC"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::migration;
    use super::*;

    #[test]
    fn blockers_are_read_for_the_table_its_names_and_its_foreign_key_neighbours() {
        let m = migration();
        insta::assert_snapshot!(Gen::new(&m, "public").blockers());
    }
}
