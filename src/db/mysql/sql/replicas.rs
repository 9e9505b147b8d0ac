//! The heartbeat by which turnout measures its replicas' lag (`crate::db::replicas` says
//! why a heartbeat): a row per migration in `turnout_heartbeat`, in the database of
//! `turnout_state`, holding the primary's clock in microseconds since the epoch.

use super::quote;

const TABLE: &str = "turnout_heartbeat";

fn table(home: &str) -> String {
    format!("{}.{}", quote(home), quote(TABLE))
}

/// Made once, on the primary; the replica gets it through the binary log.
pub(in crate::db::mysql) fn heartbeat_table(home: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} (name VARCHAR(191) NOT NULL PRIMARY KEY, beat BIGINT NOT NULL) ENGINE=InnoDB",
        table(home)
    )
}

/// The primary's clock, read first and written as a value: under statement-based
/// logging a replica would otherwise evaluate `NOW(6)` itself.
pub(in crate::db::mysql) const CLOCK: &str =
    "SELECT CAST(UNIX_TIMESTAMP(NOW(6)) * 1000000 AS SIGNED)";

/// `?`: the migration, the beat.
pub(in crate::db::mysql) fn beat(home: &str) -> String {
    format!(
        "INSERT INTO {} (name, beat) VALUES (?, ?) ON DUPLICATE KEY UPDATE beat = VALUES(beat)",
        table(home)
    )
}

/// On the replica. `?`: the migration.
pub(in crate::db::mysql) fn replayed(home: &str) -> String {
    format!("SELECT beat FROM {} WHERE name = ?", table(home))
}

/// No row: the server replicates from nobody, so nothing would ever hold the backfill
/// back for it.
pub(in crate::db::mysql) const REPLICA_STATUS: &str = "SHOW REPLICA STATUS";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heartbeat_is_written_on_the_primary_and_read_on_the_replica() {
        insta::assert_snapshot!(
            [
                heartbeat_table("my`home"),
                CLOCK.to_string(),
                beat("my`home"),
                replayed("my`home"),
                REPLICA_STATUS.to_string()
            ]
            .join("\n")
        );
    }
}
