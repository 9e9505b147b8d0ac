//! Who holds the cutover back. With the `metadata_lock_info` plugin MariaDB says which
//! sessions hold a metadata lock on which table, so a blocker of the tables the swap locks
//! (the live table, its shadow, its old name, and the tables its foreign keys join it to) is
//! known for certain. Without the plugin the server cannot say which tables a transaction
//! holds: every transaction open longer than the grace is named as a possible blocker, and
//! turnout still asks for the lock, with a wait bounded to tens of milliseconds.

use super::{Bound, Gen, lit};

/// Columns shared by both readings: id, user@host, command and state, age in ms, query.
const SESSION: &str = "CAST(p.ID AS CHAR), CAST(CONCAT(p.USER, '@', p.HOST) AS CHAR), \
     CAST(CONCAT_WS(', ', p.COMMAND, NULLIF(p.STATE, '')) AS CHAR), \
     CAST(GREATEST(COALESCE(TIMESTAMPDIFF(MICROSECOND, t.trx_started, NOW(6)) DIV 1000, 0), \
     IF(p.COMMAND = 'Sleep', 0, FLOOR(p.TIME_MS))) AS CHAR), \
     CAST(LEFT(COALESCE(p.INFO, t.trx_query, ''), 200) AS CHAR)";

impl Gen<'_> {
    /// Whether the server can say who holds which table's metadata lock.
    pub(in crate::db::mysql) fn lock_info_available() -> &'static str {
        "SELECT COUNT(*) FROM information_schema.PLUGINS WHERE PLUGIN_NAME = 'METADATA_LOCK_INFO' AND PLUGIN_STATUS = 'ACTIVE'"
    }

    /// Sessions holding or awaiting a metadata lock on one of the swap's tables, open
    /// longer than `grace_ms`. Names are literals, not binds: MariaDB 10.11 answers this
    /// query over information_schema with no rows when they come as prepared-statement
    /// parameters.
    pub(in crate::db::mysql) fn blockers_certain(&self, grace_ms: u64) -> Bound {
        let n = &self.n;
        let schema = match &n.schema {
            Some(s) => lit(s),
            None => "DATABASE()".to_string(),
        };
        let names = [&n.table, &n.shadow, &n.old]
            .iter()
            .map(|t| lit(t))
            .collect::<Vec<_>>()
            .join(", ");
        // The age is the lock's own (LOCK_TIME_MS): INNODB_TRX leaves out a transaction
        // that has only read, which holds the metadata lock all the same.
        Bound {
            sql: format!(
                "SELECT CAST(p.ID AS CHAR), CAST(CONCAT(p.USER, '@', p.HOST) AS CHAR), \
                 CAST(CONCAT_WS(', ', p.COMMAND, NULLIF(p.STATE, '')) AS CHAR), \
                 CAST(FLOOR(MAX(l.LOCK_TIME_MS)) AS CHAR), CAST(LEFT(COALESCE(p.INFO, ''), 200) AS CHAR) \
                 FROM information_schema.METADATA_LOCK_INFO l JOIN information_schema.PROCESSLIST p ON p.ID = l.THREAD_ID \
                 WHERE p.ID <> CONNECTION_ID() AND p.USER <> 'system user' \
                 AND l.TABLE_SCHEMA = {schema} AND (l.TABLE_NAME IN ({names}) \
                 OR l.TABLE_NAME IN (SELECT r.TABLE_NAME FROM information_schema.REFERENTIAL_CONSTRAINTS r \
                 WHERE r.CONSTRAINT_SCHEMA = {schema} AND r.REFERENCED_TABLE_NAME IN ({names})) \
                 OR l.TABLE_NAME IN (SELECT r.REFERENCED_TABLE_NAME FROM information_schema.REFERENTIAL_CONSTRAINTS r \
                 WHERE r.CONSTRAINT_SCHEMA = {schema} AND r.TABLE_NAME IN ({names}))) \
                 GROUP BY p.ID, p.USER, p.HOST, p.COMMAND, p.STATE, p.INFO \
                 HAVING MAX(l.LOCK_TIME_MS) > {grace_ms} ORDER BY p.ID"
            ),
            binds: vec![],
        }
    }

    /// Once the sentry holds `LOCK TABLES … READ` no writer can enter the table, but a
    /// reader still inside a transaction would make the RENAME wait (for up to the whole
    /// second of `lock_wait_timeout`, writers queued behind it): the sessions besides the
    /// sentry (this connection) and the swapper still holding the live table.
    pub(in crate::db::mysql) fn readers_besides(&self, swapper: u64) -> String {
        let n = &self.n;
        let schema = match &n.schema {
            Some(s) => lit(s),
            None => "DATABASE()".to_string(),
        };
        format!(
            "SELECT CAST(COUNT(*) AS CHAR) FROM information_schema.METADATA_LOCK_INFO \
             WHERE TABLE_SCHEMA = {schema} AND TABLE_NAME = {} AND THREAD_ID NOT IN (CONNECTION_ID(), {swapper})",
            lit(&n.table)
        )
    }

    /// Without the plugin: every InnoDB transaction open longer than `grace_ms`.
    pub(in crate::db::mysql) fn blockers_possible(&self, grace_ms: u64) -> Bound {
        Bound {
            sql: format!(
                "SELECT {SESSION} FROM information_schema.INNODB_TRX t \
                 JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id \
                 WHERE p.ID <> CONNECTION_ID() {} ORDER BY p.ID",
                self.older_than(grace_ms)
            ),
            binds: vec![],
        }
    }

    /// The age filter, as a condition on the session's transaction or statement.
    fn older_than(&self, grace_ms: u64) -> String {
        format!(
            "AND p.USER <> 'system user' AND GREATEST(COALESCE(TIMESTAMPDIFF(MICROSECOND, t.trx_started, NOW(6)) DIV 1000, 0), \
             IF(p.COMMAND = 'Sleep', 0, FLOOR(p.TIME_MS))) > {grace_ms}"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::Names;
    use super::super::tests::migration;
    use super::*;

    fn gen_for(m: &crate::schema::Migration) -> Gen<'_> {
        Gen {
            m,
            n: Names::new(m, Some("db"), Some("db")),
            mariadb: true,
        }
    }

    #[test]
    fn certain_blockers_are_read_from_the_metadata_locks_of_the_swaps_tables() {
        let m = migration();
        let b = gen_for(&m).blockers_certain(100);
        insta::assert_snapshot!(b.sql);
    }

    #[test]
    fn readers_left_behind_the_sentry_are_counted() {
        let m = migration();
        insta::assert_snapshot!(gen_for(&m).readers_besides(42));
    }

    #[test]
    fn possible_blockers_are_the_old_transactions() {
        let m = migration();
        insta::assert_snapshot!(gen_for(&m).blockers_possible(100).sql);
    }
}
