//! How far behind its primary a replica replays, asked of each database in its own SQL
//! (`src/db/<database>/replicas.rs`), for `backfill.throttle.replicas` / `max_lag`.
//!
//! The lag is measured by a heartbeat, as pt-heartbeat measures it, rather than read from
//! what the replica says of itself. While the backfill runs (at most every tenth of
//! `max_lag`, and while it waits) turnout writes the primary's clock into a row of its own,
//! `turnout_heartbeat` (one row per migration, next to `turnout_state`), and before each
//! batch reads that row on each replica. The replica's copy is the newest heartbeat it has
//! replayed, so of the heartbeats turnout wrote it lacks every one after its copy: it is
//! behind by at least the age of the first it lacks, by the primary's clock. Above
//! `max_lag`, the backfill waits. Every figure comes from the primary's clock ("now" is
//! the newest heartbeat plus the time since on turnout's monotonic clock, taken before the
//! replica is asked), so the clocks of different machines never meet in one subtraction,
//! and a turnout slow to ask (a busy machine) never mistakes its own delay for lag.
//!
//! What the replicas say of themselves misleads exactly when it matters:
//! PostgreSQL's `now() - pg_last_xact_replay_timestamp()` grows just the same while a
//! quiet primary commits nothing (a false lag) as while replay is paused with
//! `pg_wal_replay_pause()`, and cannot tell the two apart; `pg_stat_replication`'s
//! `replay_lag` is read on the primary, and goes NULL when nothing moves. MariaDB's
//! `Seconds_Behind_Master` is NULL while the SQL thread is stopped (`STOP SLAVE
//! SQL_THREAD`), has whole-second resolution, and reads 0 when the IO thread has fallen
//! behind. A heartbeat row is replayed like any application write: if it arrived, the
//! application's writes before it did too.
//!
//! The bound is below the true lag by at most the time between two heartbeats (a tenth of
//! `max_lag`, or one check): a replica that lags is seen within that of passing `max_lag`.
//! The first heartbeat of a run is given `max_lag` to arrive, so a replica that was already
//! behind before the run holds the first batch back too. On a healthy replica a batch costs
//! one read of one row per replica, and a heartbeat write every tenth of `max_lag`.

use crate::error::Result;

/// What a replica answers or why it cannot: the database's own words, which the engine
/// puts after the replica's name (host:port, never its password) and what to do next.
pub type ReplicaResult<T> = std::result::Result<T, String>;

#[allow(async_fn_in_trait)]
pub trait Replicas {
    /// A session on one replica, kept by the engine for as long as it watches.
    type Replica: Send;

    /// Whether this database has replicas turnout can watch (SQLite has none).
    fn has_replicas(&self) -> bool {
        true
    }

    /// Writes the migration's heartbeat on this database (the primary), creating its
    /// table the first time, and returns it: the primary's clock, in microseconds.
    async fn beat(&self, migration: &str) -> Result<i64>;

    /// Connects to the replica at `url` and makes sure it is one (it replays a primary).
    async fn connect_replica(&self, url: &str) -> ReplicaResult<Self::Replica>;

    /// The newest heartbeat of `migration` the replica has replayed; `None` while none
    /// has reached it (not even the heartbeat table).
    async fn replayed_beat(
        &self,
        replica: &mut Self::Replica,
        migration: &str,
    ) -> ReplicaResult<Option<i64>>;
}

/// SQLite is one file with one writer: nothing replicates it, and plan checks refuse
/// `backfill.throttle.replicas` there before anything asks.
impl Replicas for super::sqlite::Sqlite {
    type Replica = ();

    fn has_replicas(&self) -> bool {
        false
    }

    async fn beat(&self, _migration: &str) -> Result<i64> {
        Err(no_replicas())
    }

    async fn connect_replica(&self, _url: &str) -> ReplicaResult<()> {
        Err("SQLite has no replicas".into())
    }

    async fn replayed_beat(
        &self,
        _replica: &mut (),
        _migration: &str,
    ) -> ReplicaResult<Option<i64>> {
        Err("SQLite has no replicas".into())
    }
}

fn no_replicas() -> crate::error::Error {
    crate::error::Error::Usage(
        "backfill.throttle.replicas: SQLite has no replicas (one file, one writer); remove the key"
            .into(),
    )
}
