//! The cutover's look-out. Before each attempt the engine asks who holds or awaits a lock
//! on the tables the swap must lock; while a session certainly does, turnout does not ask
//! for its exclusive lock at all — a pending request would queue every application write
//! behind it until the blocker ended or the timeout fired. When nobody is seen, the request
//! is made with a wait capped at [`QUEUE_BOUND`], so a blocker the look-out missed costs the
//! application tens of milliseconds, not `cutover.lock_timeout`. `kill_blockers_after` ends
//! a certain blocker once it has held the cutover back that long; a possible one is only
//! named, never ended.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::db::Blocker;

/// However long `cutover.lock_timeout` is, an attempt's lock request waits — and holds
/// application writes queued behind it — at most this long.
pub const QUEUE_BOUND: Duration = Duration::from_millis(50);

/// A transaction younger than this is the application's ordinary traffic, which the lock
/// request may wait for within [`QUEUE_BOUND`].
pub const GRACE: Duration = Duration::from_millis(100);

/// Since when each blocker seen at the last look has held the cutover back.
#[derive(Debug, Default)]
pub struct Lookout {
    since: HashMap<String, Instant>,
}

impl Lookout {
    /// Records what the look-out saw now: new blockers start their clock, gone ones leave.
    pub fn saw(&mut self, blockers: &[Blocker], now: Instant) {
        self.since
            .retain(|s, _| blockers.iter().any(|b| &b.session == s));
        for b in blockers {
            self.since.entry(b.session.clone()).or_insert(now);
        }
    }

    /// The certain blockers that have held the cutover back for `after` or longer.
    pub fn due<'a>(
        &self,
        blockers: &'a [Blocker],
        after: Duration,
        now: Instant,
    ) -> Vec<&'a Blocker> {
        blockers
            .iter()
            .filter(|b| b.certain)
            .filter(|b| {
                self.since
                    .get(&b.session)
                    .is_some_and(|t| now.duration_since(*t) >= after)
            })
            .collect()
    }

    /// How long until the first certain blocker falls due (None: none will, or none is).
    pub fn next_due(
        &self,
        blockers: &[Blocker],
        after: Duration,
        now: Instant,
    ) -> Option<Duration> {
        blockers
            .iter()
            .filter(|b| b.certain)
            .filter_map(|b| self.since.get(&b.session))
            .map(|t| after.saturating_sub(now.duration_since(*t)))
            .min()
    }
}

/// The blockers in one line each, for the progress output, the log and `status`.
pub fn describe(blockers: &[Blocker]) -> String {
    blockers
        .iter()
        .map(Blocker::describe)
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocker(session: &str, certain: bool) -> Blocker {
        Blocker {
            session: session.into(),
            user: "app".into(),
            application: "billing".into(),
            state: "idle in transaction".into(),
            transaction_ms: 3_000,
            query: "SELECT *\n  FROM orders".into(),
            certain,
        }
    }

    #[test]
    fn a_blocker_falls_due_once_it_has_held_the_cutover_back_long_enough() {
        let t0 = Instant::now();
        let mut l = Lookout::default();
        let seen = [blocker("7", true), blocker("8", false)];
        l.saw(&seen, t0);
        let after = Duration::from_secs(2);
        assert!(l.due(&seen, after, t0 + Duration::from_secs(1)).is_empty());
        assert_eq!(
            l.next_due(&seen, after, t0 + Duration::from_secs(1)),
            Some(Duration::from_secs(1))
        );
        let due = l.due(&seen, after, t0 + Duration::from_secs(2));
        assert_eq!(
            due.iter().map(|b| b.session.as_str()).collect::<Vec<_>>(),
            ["7"],
            "a possible blocker is never ended"
        );
    }

    #[test]
    fn a_blocker_that_went_away_and_came_back_starts_its_clock_again() {
        let t0 = Instant::now();
        let mut l = Lookout::default();
        l.saw(&[blocker("7", true)], t0);
        l.saw(&[], t0 + Duration::from_secs(5));
        let later = t0 + Duration::from_secs(6);
        l.saw(&[blocker("7", true)], later);
        assert!(
            l.due(&[blocker("7", true)], Duration::from_secs(2), later)
                .is_empty()
        );
    }

    #[test]
    fn a_blocker_is_named_with_who_what_and_how_long() {
        assert_eq!(
            describe(&[blocker("7", true)]),
            "session 7 (user app, application \"billing\"), idle in transaction, transaction open 3s, query \"SELECT * FROM orders\""
        );
        assert!(describe(&[blocker("8", false)]).contains("may hold the table"));
    }
}
