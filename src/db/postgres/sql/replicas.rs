//! The heartbeat by which turnout measures its replicas' lag (`crate::db::replicas` says
//! why a heartbeat): a row per migration in `turnout_heartbeat`, next to `turnout_state`,
//! holding the primary's clock in microseconds since the epoch.

use super::qualified;

const TABLE: &str = "turnout_heartbeat";

/// Made once, on the primary; the standby gets it through the WAL like any table.
pub(in crate::db::postgres) fn heartbeat_table(home: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} (name text PRIMARY KEY, beat bigint NOT NULL)",
        qualified(home, TABLE)
    )
}

/// `$1`: the migration. Returns the beat written: `clock_timestamp()`, the time of the
/// write itself rather than of the transaction's start.
pub(in crate::db::postgres) fn beat(home: &str) -> String {
    format!(
        "INSERT INTO {} (name, beat) VALUES ($1, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint) \
         ON CONFLICT (name) DO UPDATE SET beat = EXCLUDED.beat RETURNING beat",
        qualified(home, TABLE)
    )
}

/// On the standby. `$1`: the migration.
pub(in crate::db::postgres) fn replayed(home: &str) -> String {
    format!(
        "SELECT beat FROM {} WHERE name = $1",
        qualified(home, TABLE)
    )
}

/// A standby replays WAL; a primary (or a promoted standby) answers false and is refused
/// as a replica, since nothing would ever hold the backfill back for it.
pub(in crate::db::postgres) const IN_RECOVERY: &str = "SELECT pg_is_in_recovery()";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heartbeat_is_written_on_the_primary_and_read_on_the_standby() {
        insta::assert_snapshot!(
            [
                heartbeat_table("my \"home\""),
                beat("my \"home\""),
                replayed("my \"home\""),
                IN_RECOVERY.to_string()
            ]
            .join("\n")
        );
    }
}
