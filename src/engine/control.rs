//! Live control of a running migration: `pause`, `unpause` and `tune`, written from any
//! terminal or machine into a control record of their own (a second `turnout_state` row
//! under a reserved name, so the checkpoint the running turnout saves after every batch
//! never overwrites them), and read by the running turnout before every batch, every
//! verify attempt and every step. Also the one place that decides why the migration
//! waits (paused, throttled by the plan's throttle query, or held back by a replica's
//! lag) and records it in the state for `status`. No SQL here: only the [`Backend`]'s
//! state rows and its answers about replicas.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::replicas::Watch;
use super::state::State;
use super::{Phase, Session};
use crate::db::{Backend, Replicas, StateRow, VerifyReport, VerifyRequest};
use crate::error::{Error, Result};
use crate::plan::{Backfill, BatchSize, Plan};
use crate::schema::Migration;

/// The suffix of a control record's name; plan validation refuses migration names that
/// end with it, so a control record can never be taken for a migration.
pub const SUFFIX: &str = "#control";
/// The `phase` column of a control record, by which listings leave it out.
const PHASE: &str = "control";
/// How often a paused turnout looks again: one row read each time.
const POLL: Duration = Duration::from_millis(250);
/// How often a throttled turnout runs the throttle query again.
const THROTTLE_POLL: Duration = Duration::from_millis(500);

/// Who did something and when: `user@host pid N`, as the operator's process saw itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stamp {
    pub at: DateTime<Utc>,
    pub by: String,
}

impl Stamp {
    pub fn now() -> Stamp {
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_else(|_| uid());
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "localhost".into());
        Stamp {
            at: Utc::now(),
            by: format!("{user}@{host} pid {}", std::process::id()),
        }
    }
}

/// `uid N` where no user name is in the environment (a service, a container).
fn uid() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|rest| rest.split_whitespace().next().map(|u| format!("uid {u}")))
        })
        .unwrap_or_else(|| "unknown".into())
}

/// What the operators asked of a migration, as its control record holds it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Control {
    /// Set by `turnout pause`, cleared by `turnout unpause`.
    #[serde(default)]
    pub paused: Option<Stamp>,
    /// Set by `turnout tune`; each `None` leaves the plan's value in force.
    #[serde(default)]
    pub batch_size: Option<BatchSize>,
    #[serde(default)]
    pub pause_ms: Option<u64>,
    #[serde(default)]
    pub target_batch_time_ms: Option<u64>,
    #[serde(default)]
    pub tuned: Option<Stamp>,
}

/// A `turnout tune` request; `reset` first drops every earlier tuning.
#[derive(Debug, Clone, Default)]
pub struct Tuning {
    pub batch_size: Option<BatchSize>,
    pub pause: Option<Duration>,
    pub target_batch_time: Option<Duration>,
    pub reset: bool,
}

/// The backfill settings in force: the plan's, overridden by `turnout tune`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InForce {
    pub batch_size: BatchSize,
    pub pause_ms: u64,
    pub target_batch_time_ms: u64,
    /// Who tuned them, when they are not the plan's.
    pub tuned: Option<Stamp>,
}

impl InForce {
    pub fn new(plan: &Backfill, c: &Control) -> InForce {
        InForce {
            batch_size: c.batch_size.unwrap_or(plan.batch_size),
            pause_ms: c.pause_ms.unwrap_or(plan.pause.as_millis() as u64),
            target_batch_time_ms: c
                .target_batch_time_ms
                .unwrap_or(plan.target_batch_time.as_millis() as u64),
            tuned: c.tuned.clone(),
        }
    }

    /// From the canonical plan a state was started with (for `status`, which may have
    /// no plan file at hand).
    pub fn of_state(st: &State, c: &Control) -> Option<InForce> {
        let file: crate::plan::PlanFile = serde_json::from_str(&st.plan).ok()?;
        Some(InForce::new(&file.backfill, c))
    }

    pub fn pause(&self) -> Duration {
        Duration::from_millis(self.pause_ms)
    }

    pub fn target_batch_time(&self) -> Duration {
        Duration::from_millis(self.target_batch_time_ms)
    }
}

/// Why the running turnout is waiting, as it recorded in the state for `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Waiting {
    /// `paused`, `throttled` or `replica lag`.
    pub reason: String,
    pub since: DateTime<Utc>,
    /// In words, for a person.
    pub detail: String,
    /// With `replica lag`: the replica furthest behind, as `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
    /// With `replica lag`: how far behind it is, in milliseconds; absent while none of
    /// turnout's heartbeats has reached it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_ms: Option<u64>,
}

/// A reason to wait, before it is recorded.
struct Why {
    reason: &'static str,
    detail: String,
    replica: Option<String>,
    lag_ms: Option<u64>,
}

impl Why {
    fn new(reason: &'static str, detail: String) -> Why {
        Why {
            reason,
            detail,
            replica: None,
            lag_ms: None,
        }
    }
}

/// What a wait is for: the throttle query holds back only the backfill's batches, the
/// replicas' lag the batches and verify's chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Batch,
    Verify,
    Step,
}

/// The name of `migration`'s control record.
pub fn row_name(migration: &str) -> String {
    format!("{migration}{SUFFIX}")
}

/// True for a control record, which listings of migrations leave out.
pub fn is_control(row: &StateRow) -> bool {
    row.phase == PHASE
}

/// The migration's control record; the default when nobody has written one.
pub async fn read<B: Backend>(b: &B, migration: &str) -> Result<Control> {
    match b.load_state(&row_name(migration)).await? {
        Some(row) => parse(&row),
        None => Ok(Control::default()),
    }
}

pub fn parse(row: &StateRow) -> Result<Control> {
    serde_json::from_str(&row.body).map_err(|e| {
        Error::State(format!(
            "the control record {:?} cannot be read: {e}",
            row.name
        ))
    })
}

async fn write<B: Backend>(b: &B, migration: &str, c: &Control) -> Result<()> {
    let body = serde_json::to_string(c)
        .map_err(|e| Error::State(format!("cannot write the control record: {e}")))?;
    b.save_state(&StateRow {
        name: row_name(migration),
        plan_hash: String::new(),
        phase: PHASE.to_string(),
        body,
    })
    .await
}

/// The migration's state, for a control command: it must have started and not ended.
async fn controllable<B: Backend>(b: &B, plan: &Plan, what: &str) -> Result<State> {
    b.ensure_state_table().await?;
    let name = &plan.file.name;
    let Some(row) = b.load_state(name).await? else {
        return Err(Error::State(format!(
            "migration {name:?} has not started; there is nothing to {what} (run `turnout run {}` first)",
            plan.path
        )));
    };
    let st = State::from_row(&row)?;
    if matches!(st.phase, Phase::Done | Phase::RolledBack) {
        return Err(Error::State(format!(
            "migration {name:?} is {}; there is nothing to {what}",
            st.phase
        )));
    }
    Ok(st)
}

/// Drops every pause and tuning of a migration that rolled back, so running it again
/// starts from its plan's settings.
pub async fn forget<B: Backend>(b: &B, migration: &str) -> Result<()> {
    if read(b, migration).await? != Control::default() {
        write(b, migration, &Control::default()).await?;
    }
    Ok(())
}

/// `turnout pause`: the running turnout stops after the batch (or verify chunk) in hand.
/// Returns the pause in force (an earlier one is kept, with its time and author).
pub async fn pause<B: Backend>(b: &B, plan: &Plan) -> Result<Stamp> {
    controllable(b, plan, "pause").await?;
    let mut c = read(b, &plan.file.name).await?;
    if let Some(p) = &c.paused {
        return Ok(p.clone());
    }
    let stamp = Stamp::now();
    c.paused = Some(stamp.clone());
    write(b, &plan.file.name, &c).await?;
    Ok(stamp)
}

/// `turnout unpause`: returns the pause it lifted, `None` when there was none.
pub async fn unpause<B: Backend>(b: &B, plan: &Plan) -> Result<Option<Stamp>> {
    b.ensure_state_table().await?;
    let mut c = read(b, &plan.file.name).await?;
    let Some(was) = c.paused.take() else {
        return Ok(None);
    };
    write(b, &plan.file.name, &c).await?;
    Ok(Some(was))
}

/// `turnout tune`: the new settings, in force from the next batch.
pub async fn tune<B: Backend>(b: &B, plan: &Plan, t: &Tuning) -> Result<InForce> {
    controllable(b, plan, "tune").await?;
    let mut c = read(b, &plan.file.name).await?;
    if t.reset {
        c.batch_size = None;
        c.pause_ms = None;
        c.target_batch_time_ms = None;
    }
    if let Some(n) = t.batch_size {
        c.batch_size = Some(n);
    }
    if let Some(p) = t.pause {
        c.pause_ms = Some(p.as_millis() as u64);
    }
    if let Some(p) = t.target_batch_time {
        c.target_batch_time_ms = Some(p.as_millis() as u64);
    }
    let tuned = c.batch_size.is_some() || c.pause_ms.is_some() || c.target_batch_time_ms.is_some();
    c.tuned = tuned.then(Stamp::now);
    write(b, &plan.file.name, &c).await?;
    Ok(InForce::new(&plan.file.backfill, &c))
}

/// Why the migration must wait right now, if it must.
async fn why_wait<B: Backend>(
    b: &B,
    s: &Session<'_>,
    c: &Control,
    gate: Gate,
    watch: Option<&mut Watch<<B as Replicas>::Replica>>,
) -> Result<Option<Why>> {
    if let Some(p) = &c.paused {
        return Ok(Some(Why::new(
            "paused",
            format!(
                "paused by {} at {}; waiting for `turnout unpause {}`",
                p.by,
                p.at.to_rfc3339(),
                s.plan.path
            ),
        )));
    }
    if gate == Gate::Batch
        && let Some(t) = &s.plan.file.backfill.throttle
        && let (Some(query), Some(max)) = (&t.query, t.max)
    {
        let value = b.throttle_value(query).await?;
        if value > max {
            return Ok(Some(Why::new(
                "throttled",
                format!("throttled: backfill.throttle.query reads {value}, above its max {max}"),
            )));
        }
    }
    if gate != Gate::Step
        && let Some(watch) = watch
    {
        let what = if gate == Gate::Batch {
            "backfill"
        } else {
            "verify"
        };
        if let Some(l) = watch.lagging(b, s.plan, what).await? {
            return Ok(Some(Why {
                reason: "replica lag",
                detail: l.detail(),
                replica: Some(l.replica.clone()),
                lag_ms: l.lag.map(|d| d.as_millis() as u64),
            }));
        }
    }
    Ok(None)
}

/// Waits while the migration is paused (or, before a batch, throttled; before a batch or
/// a verify, held back by a replica's lag), saving in the state why it waits so `status`
/// can show it, and holding no transaction meanwhile. Returns the control in force once
/// it may go on (or once cancelled: the caller checks). A replica that cannot be watched
/// ends the wait with its error, recorded in the state's events.
pub async fn hold<B: Backend>(
    b: &B,
    s: &Session<'_>,
    st: &mut State,
    gate: Gate,
    mut watch: Option<&mut Watch<<B as Replicas>::Replica>>,
) -> Result<Control> {
    loop {
        let c = read(b, &st.name).await?;
        let why = match why_wait(b, s, &c, gate, watch.as_deref_mut()).await {
            Ok(why) => why,
            Err(e) => {
                // The state says the run stopped, and why, rather than that it waits; the
                // error itself is what the operator reads, even if this save fails too.
                st.waiting = None;
                st.event(format!("stopped: {e}"));
                if let Err(save) = b.save_state(&st.to_row()).await {
                    warn!("could not record why the run stopped: {save}");
                }
                return Err(e);
            }
        };
        let Some(why) = why else {
            if let Some(w) = st.waiting.take() {
                let waited = (Utc::now() - w.since).num_milliseconds().max(0) as u64;
                let waited = humantime::format_duration(Duration::from_millis(waited));
                if w.reason == "paused" {
                    st.event(format!("unpaused after {waited}"));
                }
                info!(reason = %w.reason, "carrying on after waiting {waited}");
                s.observer.waiting(None);
                b.save_state(&st.to_row()).await?;
            }
            return Ok(c);
        };
        let reason = why.reason;
        let was = st.waiting.clone();
        let was = was.as_ref();
        if was.map(|w| w.reason.as_str()) != Some(reason) {
            if reason == "paused" {
                st.event(why.detail.clone());
            }
            info!(%reason, replica = why.replica.as_deref(), lag_ms = why.lag_ms, "{}", why.detail);
        } else if was.map(|w| &w.detail) != Some(&why.detail) {
            // The same wait with a new figure (a replica's lag): `status` shows the latest.
            tracing::debug!(%reason, "{}", why.detail);
        }
        if was.map(|w| &w.detail) != Some(&why.detail) {
            s.observer.waiting(Some(&why.detail));
            let since = match was {
                Some(w) if w.reason == reason => w.since,
                _ => Utc::now(),
            };
            st.waiting = Some(Waiting {
                reason: reason.to_string(),
                since,
                detail: why.detail,
                replica: why.replica,
                lag_ms: why.lag_ms,
            });
            b.save_state(&st.to_row()).await?;
        }
        if s.cancel.is_cancelled() {
            return Ok(c);
        }
        b.keep_lock(&st.name).await?;
        tokio::time::sleep(if reason == "paused" {
            POLL
        } else {
            THROTTLE_POLL
        })
        .await;
    }
}

/// Runs `work` while watching the control record and the replicas: `paused` is set once
/// an operator pauses, `lagging` once a replica falls behind (or cannot be asked), and
/// `work` (verify) is expected to stop at its next chunk when it sees either.
async fn watching<B: Backend, T>(
    b: &B,
    s: &Session<'_>,
    paused: &AtomicBool,
    lagging: &AtomicBool,
    mut replicas: Option<&mut Watch<<B as Replicas>::Replica>>,
    work: impl Future<Output = T>,
) -> T {
    let migration = &s.plan.file.name;
    let watch = async {
        loop {
            tokio::time::sleep(POLL).await;
            match read(b, migration).await {
                Ok(c) if c.paused.is_some() => {
                    paused.store(true, Ordering::Relaxed);
                    break;
                }
                Ok(_) => {}
                Err(e) => warn!("could not read the control record: {e}"),
            }
            if let Some(r) = replicas.as_deref_mut() {
                match r.lagging(b, s.plan, "verify").await {
                    Ok(None) => {}
                    Ok(Some(l)) => {
                        info!(replica = %l.replica, "{}; verify stops at its next chunk", l.detail());
                        lagging.store(true, Ordering::Relaxed);
                        break;
                    }
                    // Said again, and recorded, by the wait that follows.
                    Err(_) => {
                        lagging.store(true, Ordering::Relaxed);
                        break;
                    }
                }
            }
        }
    };
    tokio::pin!(work);
    tokio::select! {
        r = &mut work => r,
        () = watch => work.await,
    }
}

/// Verify's comparison, stopped at its next chunk when an operator pauses or a replica
/// falls behind: it reads one snapshot, and holding that open through a wait would hold
/// the table and the database's cleanup back, so it is let go, and taken again from the
/// first chunk once the wait is over.
pub(super) async fn verify<B: Backend>(
    b: &B,
    s: &Session<'_>,
    st: &mut State,
    m: &Migration,
    req: &VerifyRequest,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<VerifyReport> {
    let mut replicas = Watch::of(s.plan);
    loop {
        hold(b, s, st, Gate::Verify, replicas.as_mut()).await?;
        if s.cancel.is_cancelled() {
            return Err(s.interrupted(st.phase));
        }
        let (paused, lagging) = (AtomicBool::new(false), AtomicBool::new(false));
        let stop = || {
            s.cancel.is_cancelled()
                || paused.load(Ordering::Relaxed)
                || lagging.load(Ordering::Relaxed)
        };
        let compare = b.verify(m, req, progress, &stop);
        let report = watching(b, s, &paused, &lagging, replicas.as_mut(), compare).await?;
        if s.cancel.is_cancelled() {
            return Err(s.interrupted(st.phase));
        }
        if paused.load(Ordering::Relaxed) {
            info!(
                rows = report.rows,
                "verify paused; it compares again from the first chunk once unpaused"
            );
        } else if lagging.load(Ordering::Relaxed) {
            info!(
                rows = report.rows,
                "verify stopped for replica lag; it compares again from the first chunk once the replicas catch up"
            );
        } else {
            return Ok(report);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuning_overrides_only_what_it_names() {
        let plan = Backfill {
            batch_size: BatchSize::Rows(100),
            pause: Duration::from_millis(50),
            ..Backfill::default()
        };
        let none = InForce::new(&plan, &Control::default());
        assert_eq!(none.batch_size, BatchSize::Rows(100));
        assert_eq!(none.pause(), Duration::from_millis(50));
        assert_eq!(none.target_batch_time(), plan.target_batch_time);
        let c = Control {
            batch_size: Some(BatchSize::Auto),
            target_batch_time_ms: Some(900),
            ..Control::default()
        };
        let tuned = InForce::new(&plan, &c);
        assert_eq!(tuned.batch_size, BatchSize::Auto);
        assert_eq!(tuned.pause(), Duration::from_millis(50));
        assert_eq!(tuned.target_batch_time(), Duration::from_millis(900));
    }

    #[test]
    fn a_control_record_is_told_apart_from_a_migration() {
        let row = |name: &str, phase: &str| StateRow {
            name: name.into(),
            plan_hash: String::new(),
            phase: phase.into(),
            body: "{}".into(),
        };
        assert_eq!(row_name("m"), "m#control");
        assert!(is_control(&row(&row_name("m"), PHASE)));
        assert!(!is_control(&row("m", "dual_writing")));
        assert_eq!(
            parse(&row("m#control", PHASE)).ok(),
            Some(Control::default())
        );
    }

    #[test]
    fn a_stamp_names_the_process() {
        let s = Stamp::now();
        assert!(s.by.contains('@'), "{}", s.by);
        assert!(
            s.by.ends_with(&format!("pid {}", std::process::id())),
            "{}",
            s.by
        );
    }
}
