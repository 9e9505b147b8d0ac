//! `backfill.throttle.replicas` / `max_lag`: before each batch and each verify chunk, is
//! any replica further behind the primary than `max_lag`? The backend writes a heartbeat
//! on the primary and reads what each replica has replayed of it ([`Replicas`] says why a
//! heartbeat and not the replicas' own lag figures); here is only the timing. A replica
//! that cannot be asked stops the migration: throttling that silently stops watching a
//! replica would let the backfill flood it, so it fails closed.

use std::time::{Duration, Instant};

use crate::db::{Backend, Replicas};
use crate::error::{Error, Result};
use crate::plan::{Plan, PlanFile};

/// How often a replica is asked again while the heartbeat just written has not reached it.
const REPLAY_POLL: Duration = Duration::from_millis(10);
/// The shortest time between two heartbeats.
const MIN_BEAT_EVERY: Duration = Duration::from_millis(10);

/// The heartbeats a watch keeps, oldest first: enough for minutes at a tenth of max_lag.
const MAX_BEATS: usize = 4096;

/// The oldest heartbeat written by this watch that a replica whose copy is `copy` has not
/// replayed; `None` when it has them all. A replica has replayed everything written up to
/// its copy and none of the heartbeats after it, so it is behind by at least the age of
/// that one: a lower bound read from the primary's clock alone, whatever delays turnout
/// itself had between writing and asking.
fn missing(beats: &std::collections::VecDeque<i64>, copy: Option<i64>) -> Option<i64> {
    beats.iter().copied().find(|&b| copy.is_none_or(|c| b > c))
}

/// The replica furthest behind, when one is behind more than `max_lag`.
#[derive(Debug, Clone, PartialEq)]
pub struct Lagging {
    /// `host:port`, as messages show a replica (its URL may hold a password).
    pub replica: String,
    /// `None` while no heartbeat of this migration has reached it at all.
    pub lag: Option<Duration>,
    pub max_lag: Duration,
}

impl Lagging {
    pub fn detail(&self) -> String {
        let max = humantime::format_duration(self.max_lag);
        match self.lag {
            Some(lag) => format!(
                "replica lag: replica {} replays at least {} behind the primary, above backfill.throttle.max_lag {max}; waiting for it to catch up",
                self.replica,
                shown(lag)
            ),
            None => format!(
                "replica lag: replica {} has not replayed turnout's heartbeat yet (written more than {max} ago); waiting for it to catch up",
                self.replica
            ),
        }
    }
}

/// A lag to the millisecond, as people read it (`1s 250ms`).
fn shown(d: Duration) -> String {
    humantime::format_duration(Duration::from_millis(d.as_millis() as u64)).to_string()
}

/// The plan's replicas and a session on each, opened on first use and kept while the
/// backfill (or verify) runs.
pub struct Watch<R> {
    urls: Vec<String>,
    max_lag: Duration,
    sessions: Vec<Option<R>>,
    /// The last heartbeat written (the primary's clock) and when.
    last: Option<(i64, Instant)>,
    /// Every heartbeat this watch wrote, oldest first (at most [`MAX_BEATS`]).
    beats: std::collections::VecDeque<i64>,
}

impl<R> Watch<R> {
    /// None when the plan names no replicas.
    pub fn of(plan: &Plan) -> Option<Watch<R>> {
        let t = plan.file.backfill.throttle.as_ref()?;
        let max_lag = t.max_lag?;
        if t.replicas.is_empty() {
            return None;
        }
        Some(Watch {
            urls: t.replicas.clone(),
            max_lag,
            sessions: t.replicas.iter().map(|_| None).collect(),
            last: None,
            beats: std::collections::VecDeque::new(),
        })
    }

    /// The replica furthest behind among those behind more than `max_lag`, if any.
    /// Fails with the replica named when one cannot be reached or is not a replica.
    pub async fn lagging<B>(&mut self, b: &B, plan: &Plan, what: &str) -> Result<Option<Lagging>>
    where
        B: Backend + Replicas<Replica = R>,
    {
        let due = self
            .last
            .is_none_or(|(_, at)| at.elapsed() >= self.beat_every());
        if due {
            let beat = b.beat(&plan.file.name).await?;
            self.last = Some((beat, Instant::now()));
            if self.beats.len() == MAX_BEATS {
                self.beats.pop_front();
            }
            self.beats.push_back(beat);
        }
        let mut worst: Option<Lagging> = None;
        for i in 0..self.urls.len() {
            let lag = loop {
                // The primary's clock now, taken before the replica is asked, so what it
                // has not replayed by its answer is at least this old.
                let now = self.primary_now();
                let copy = self.replayed(b, plan, what, i).await?;
                let Some(missing) = missing(&self.beats, copy) else {
                    break None;
                };
                let lag = Duration::from_micros(now.saturating_sub(missing).max(0) as u64);
                if lag > self.max_lag {
                    break Some(copy.map(|_| lag));
                }
                // The first heartbeat of this watch may simply not have arrived yet; a
                // replica that has not replayed it max_lag after it was written is behind.
                if self.beats.len() > 1 {
                    break None;
                }
                tokio::time::sleep(REPLAY_POLL).await;
            };
            let Some(lag) = lag else { continue };
            let worse = match worst.as_ref().map(|w| w.lag) {
                None => true,
                Some(None) => false,
                Some(Some(a)) => lag.is_none_or(|b| b > a),
            };
            if worse {
                worst = Some(Lagging {
                    replica: host_port(&self.urls[i]),
                    lag,
                    max_lag: self.max_lag,
                });
            }
        }
        Ok(worst)
    }

    /// The primary's clock now: the last heartbeat plus the time since it was written.
    fn primary_now(&self) -> i64 {
        self.last.map_or(0, |(beat, at)| {
            beat.saturating_add(at.elapsed().as_micros().min(i64::MAX as u128) as i64)
        })
    }

    /// A new heartbeat is written at most this often: a tenth of `max_lag` is all the
    /// resolution the bound needs, and spares the primary a write per batch.
    fn beat_every(&self) -> Duration {
        (self.max_lag / 10).max(MIN_BEAT_EVERY)
    }

    /// Replica `i`'s copy of the heartbeat, connecting (once again, after a broken
    /// session) as needed.
    async fn replayed<B>(&mut self, b: &B, plan: &Plan, what: &str, i: usize) -> Result<Option<i64>>
    where
        B: Backend + Replicas<Replica = R>,
    {
        for retry in [false, true] {
            let session = match self.sessions[i].take() {
                Some(s) => s,
                None => b
                    .connect_replica(&self.urls[i])
                    .await
                    .map_err(|why| stopped(plan, &self.urls[i], i, what, &why))?,
            };
            let mut session = session;
            match b.replayed_beat(&mut session, &plan.file.name).await {
                Ok(copy) => {
                    self.sessions[i] = Some(session);
                    return Ok(copy);
                }
                Err(why) if retry => return Err(stopped(plan, &self.urls[i], i, what, &why)),
                Err(why) => tracing::warn!(
                    replica = %host_port(&self.urls[i]),
                    "the replica's session failed ({why}); connecting again"
                ),
            }
        }
        Err(stopped(plan, &self.urls[i], i, what, "it did not answer"))
    }
}

/// The error that stops the migration when replica `i` cannot be watched.
fn stopped(plan: &Plan, url: &str, i: usize, what: &str, why: &str) -> Error {
    Error::Unreachable(format!(
        "replica {} (backfill.throttle.replicas[{i}]): {why}.\nThe {what} waits for its replicas and never runs unwatched, so it stopped at its last checkpoint; make the replica reachable and replicating, then run `turnout resume {}`",
        host_port(url),
        plan.path
    ))
}

/// `host:port` of a replica's URL, the port defaulted by its scheme; never its password.
pub fn host_port(url: &str) -> String {
    let Ok(u) = url::Url::parse(url) else {
        return crate::db::redact(url);
    };
    let port = u.port().unwrap_or(match u.scheme() {
        "mysql" | "mariadb" => 3306,
        _ => 5432,
    });
    format!("{}:{port}", u.host_str().unwrap_or("localhost"))
}

/// What the database a plan runs on says against its replica keys (`turnout check`):
/// SQLite has none; a replica must speak the primary's protocol.
pub fn refusals<B: Backend>(b: &B, plan: &PlanFile) -> Vec<String> {
    let Some(t) = &plan.backfill.throttle else {
        return Vec::new();
    };
    if t.replicas.is_empty() {
        return Vec::new();
    }
    if !b.has_replicas() {
        return vec![
            "backfill.throttle.replicas: SQLite has no replicas to wait for (one file, one writer); remove replicas and max_lag".into(),
        ];
    }
    let family = |scheme: &str| match scheme {
        "postgres" | "postgresql" => "postgres",
        _ => "mysql",
    };
    t.replicas
        .iter()
        .enumerate()
        .filter_map(|(i, url)| {
            let scheme = url::Url::parse(url).ok()?.scheme().to_string();
            (family(&scheme) != b.dialect()).then(|| {
                format!(
                    "backfill.throttle.replicas[{i}]: {} is a {scheme}:// URL, which cannot be a replica of this {} database",
                    host_port(url),
                    b.dialect()
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_is_shown_by_host_and_port_never_its_password() {
        assert_eq!(
            host_port("postgres://u:s3cret@db2.example:5433/app"),
            "db2.example:5433"
        );
        assert_eq!(host_port("mysql://root:pw@10.0.0.7/app"), "10.0.0.7:3306");
        assert_eq!(host_port("postgres://replica/app"), "replica:5432");
    }

    #[test]
    fn a_replica_is_behind_by_at_least_the_age_of_the_first_heartbeat_it_lacks() {
        let beats: std::collections::VecDeque<i64> = [100, 200, 300].into();
        assert_eq!(missing(&beats, Some(300)), None, "it has them all");
        assert_eq!(missing(&beats, Some(200)), Some(300));
        assert_eq!(missing(&beats, Some(150)), Some(200), "between two beats");
        assert_eq!(missing(&beats, Some(7)), Some(100), "older than this watch");
        assert_eq!(missing(&beats, None), Some(100), "no heartbeat at all");
    }

    #[test]
    fn the_wait_names_the_replica_and_its_lag() {
        let l = Lagging {
            replica: "127.0.0.1:5433".into(),
            lag: Some(Duration::from_micros(2_345_678)),
            max_lag: Duration::from_millis(500),
        };
        assert_eq!(
            l.detail(),
            "replica lag: replica 127.0.0.1:5433 replays at least 2s 345ms behind the primary, above backfill.throttle.max_lag 500ms; waiting for it to catch up"
        );
    }
}
