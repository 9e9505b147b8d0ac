//! The engine: which phase comes next, what is persisted after each step, and how
//! rollback walks back. It knows nothing of SQL; every question about the database goes
//! through [`Backend`]. Each step moves the state row forward in the same transaction as
//! its effect where the database allows, so a crash at any instant leaves a state that
//! `resume` (or `rollback`) can carry on from.

pub mod blockers;
pub mod control;
pub mod diff;
pub mod dir;
pub mod state;

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::db::{
    Backend, BatchDone, CutoverOutcome, PhaseSql, RowDiff, StateRow, VerifyReport, VerifyRequest,
};
use crate::error::{Error, Result};
use crate::fault;
use crate::plan::{BatchSize, Plan, VerifyMode};
use crate::schema::Migration;
use control::{Gate, InForce};
pub use diff::render_diff;
pub use state::{Phase, State};

/// What the engine tells whoever watches it (progress bars, the demo, nobody in tests).
pub trait Observer: Sync {
    fn phase_started(&self, _phase: &str) {}
    fn phase_finished(&self, _phase: &str, _took: Duration, _summary: &str) {}
    fn backfill_progress(&self, _rows_done: u64, _rows_estimated: u64) {}
    fn verify_progress(&self, _rows_done: u64, _rows_estimated: u64) {}
    fn diff(&self, _diff: &RowDiff, _rendered: &str) {}
    /// The migration waits (`Some`: why, in words) or carries on after waiting (`None`).
    fn waiting(&self, _why: Option<&str>) {}
}

/// An observer that ignores everything.
pub struct Quiet;
impl Observer for Quiet {}

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stop once the migration has reached this phase.
    pub until: Option<Phase>,
    /// Run exactly one step.
    pub single_step: bool,
}

/// Everything a run needs besides the database.
pub struct Session<'a> {
    pub plan: &'a Plan,
    pub cancel: CancellationToken,
    pub observer: &'a dyn Observer,
}

impl Session<'_> {
    fn interrupted(&self, phase: Phase) -> Error {
        Error::Interrupted {
            phase: phase.to_string(),
            plan: self.plan.path.clone(),
        }
    }
}

const FIRST_AUTO_BATCH: u64 = 1_000;
const MIN_AUTO_BATCH: u64 = 50;
const MAX_AUTO_BATCH: u64 = 50_000;
const VERIFY_CHUNK_ROWS: u64 = 10_000;
/// Chunks compared at once where the backend can: two keep a second core busy without
/// taking over a small server.
const VERIFY_WORKERS: usize = 2;

/// Runs the migration from wherever its state stands, up to `opts.until` or `done`.
pub async fn run<B: Backend>(b: &B, s: &Session<'_>, opts: &RunOptions) -> Result<State> {
    with_lock(b, s, async {
        let mut st = load_or_start(b, s.plan).await?;
        // Why a killed turnout was waiting is not this run's reason: it says its own.
        st.waiting = None;
        if st.phase == Phase::RolledBack {
            // A rolled-back migration can be run again from the start, with the same name.
            let mut fresh = State::new(&st.name, &s.plan.hash, &s.plan.canonical());
            fresh.events = st.events.clone();
            fresh.event("started again after a rollback");
            b.save_state(&fresh.to_row()).await?;
            control::forget(b, &fresh.name).await?;
            st = fresh;
        }
        loop {
            if st.phase == Phase::Done || opts.until.is_some_and(|u| reached(st.phase, u)) {
                return Ok(st);
            }
            // A paused migration takes no step, whichever phase it is in.
            control::hold(b, s, &mut st, Gate::Step).await?;
            if s.cancel.is_cancelled() {
                return Err(s.interrupted(st.phase));
            }
            st = step(b, s, st).await?;
            if opts.single_step {
                return Ok(st);
            }
        }
    })
    .await
}

/// True once `phase` is `target` or beyond it on the forward path.
fn reached(phase: Phase, target: Phase) -> bool {
    phase >= target && phase <= Phase::Done
}

async fn with_lock<B: Backend, T>(
    b: &B,
    s: &Session<'_>,
    body: impl Future<Output = Result<T>>,
) -> Result<T> {
    b.ensure_state_table().await?;
    b.lock(&s.plan.file.name).await?;
    let result = body.await;
    if let Err(e) = b.unlock(&s.plan.file.name).await {
        warn!("could not release the migration lock: {e}");
    }
    result.map_err(|e| e.with_plan_path(&s.plan.path))
}

/// The saved state of this plan's migration, or a new one. A saved state started with
/// another plan is refused with what changed.
async fn load_or_start<B: Backend>(b: &B, plan: &Plan) -> Result<State> {
    match b.load_state(&plan.file.name).await? {
        Some(row) => {
            let st = State::from_row(&row)?;
            if st.plan_hash != plan.hash && st.phase == Phase::Done {
                return Err(Error::Usage(format!(
                    "migration {:?} already finished with another plan; give this plan a new `name` to run it as a new migration",
                    st.name
                )));
            }
            if st.plan_hash != plan.hash && st.phase != Phase::RolledBack {
                return Err(Error::PlanChanged {
                    name: st.name.clone(),
                    diff: crate::plan::diff(&st.plan, &plan.canonical()),
                });
            }
            Ok(st)
        }
        None => Ok(State::new(&plan.file.name, &plan.hash, &plan.canonical())),
    }
}

/// Runs the one step that leads out of the current phase.
async fn step<B: Backend>(b: &B, s: &Session<'_>, st: State) -> Result<State> {
    let name = st.phase.next_step().unwrap_or("nothing");
    b.keep_lock(&st.name).await?;
    let started = Instant::now();
    s.observer.phase_started(name);
    fault::point(&format!("phase.{name}.before"));
    let span = info_span!("phase", name, migration = %st.name);
    let next = match st.phase {
        Phase::Planned => prepare(b, s, st).instrument(span).await?,
        Phase::Prepared => dual_write(b, st).instrument(span).await?,
        Phase::DualWriting => backfill(b, s, st).instrument(span).await?,
        Phase::Backfilled => verify_step(b, s, st).instrument(span).await?,
        Phase::Verified => cutover(b, s, st).instrument(span).await?,
        Phase::CutOver => cleanup(b, s, st).instrument(span).await?,
        Phase::RollingBack => {
            return Err(Error::State(format!(
                "a rollback of migration {:?} was interrupted; run `turnout rollback {}` to finish it",
                st.name, s.plan.path
            )));
        }
        Phase::Done | Phase::RolledBack => return Ok(st),
    };
    fault::point(&format!("phase.{name}.after"));
    let summary = next
        .events
        .last()
        .map(|e| e.message.clone())
        .unwrap_or_default();
    s.observer.phase_finished(name, started.elapsed(), &summary);
    info!(phase = %next.phase, "{summary}");
    Ok(next)
}

/// Reads the live table, derives the migration and preflights it: every refusal at once.
pub async fn derive<B: Backend>(b: &B, plan: &Plan) -> Result<Migration> {
    let p = &plan.file;
    let schema = match &p.schema {
        Some(s) => Some(s.clone()),
        None => b.default_schema().await?,
    };
    let shown = match &schema {
        Some(s) => format!("{s}.{}", p.table),
        None => p.table.clone(),
    };
    let refused = |problems: Vec<String>| Error::Refused {
        table: shown.clone(),
        problems,
    };
    let Some(shape) = b.describe(schema.as_deref(), &p.table).await? else {
        return Err(refused(vec![format!(
            "table: there is no table {:?}{}",
            p.table,
            in_schema(&schema)
        )]));
    };
    if shape.primary_key.is_empty() {
        return Err(refused(vec![format!(
            "table: {:?} has no primary key; turnout copies and compares rows by primary key",
            p.table
        )]));
    }
    let mut m = Migration::derive(plan, &shape).map_err(refused)?;
    m.schema = schema;
    let problems = b.preflight(&m).await?;
    if !problems.is_empty() {
        return Err(refused(problems));
    }
    Ok(m)
}

fn in_schema(schema: &Option<String>) -> String {
    schema
        .as_ref()
        .map(|s| format!(" in {s:?}"))
        .unwrap_or_default()
}

/// `turnout check` with a database: derive and preflight, change nothing.
pub async fn check<B: Backend>(b: &B, plan: &Plan) -> Result<Migration> {
    if let Some(row) = b.load_state(&plan.file.name).await.ok().flatten() {
        let st = State::from_row(&row)?;
        if st.plan_hash != plan.hash && !matches!(st.phase, Phase::RolledBack | Phase::Done) {
            return Err(Error::PlanChanged {
                name: st.name.clone(),
                diff: crate::plan::diff(&st.plan, &plan.canonical()),
            });
        }
        if let Some(m) = st
            .migration
            .filter(|_| st.phase != Phase::RolledBack && st.phase != Phase::Done)
        {
            return Ok(m);
        }
    }
    derive(b, plan).await
}

/// `turnout plan`: the SQL of every phase.
pub async fn preview<B: Backend>(b: &B, plan: &Plan) -> Result<Vec<PhaseSql>> {
    let m = check(b, plan).await?;
    Ok(b.preview(&m))
}

async fn prepare<B: Backend>(b: &B, s: &Session<'_>, mut st: State) -> Result<State> {
    if st.migration.is_none() {
        let m = derive(b, s.plan).await?;
        st.migration = Some(m);
        // Saved before the DDL, so a crash inside a non-transactional prepare (MySQL)
        // resumes with the same derivation instead of tripping over its own shadow table.
        st.event("preflight passed");
        b.save_state(&st.to_row()).await?;
    }
    let m = st.migration()?.clone();
    let next = st.entered(
        Phase::Prepared,
        format!("created {} in the new shape", m.shadow),
    );
    b.prepare(&m, &next.to_row()).await?;
    Ok(next)
}

async fn dual_write<B: Backend>(b: &B, st: State) -> Result<State> {
    let m = st.migration()?.clone();
    let next = st.entered(
        Phase::DualWriting,
        format!("triggers copy every write on {} to {}", m.table, m.shadow),
    );
    b.start_dual_write(&m, &next.to_row()).await?;
    Ok(next)
}

/// The state after a committed batch; the same function builds the checkpoint saved
/// inside the batch's transaction and the state the engine carries on with.
fn after_batch(st: &State, done: &BatchDone, batch_size: u64) -> State {
    let mut next = st.clone();
    next.backfill.rows_copied += done.rows;
    next.backfill.batches += 1;
    next.backfill.batch_size = batch_size;
    if done.last.is_some() {
        next.backfill.cursor = done.last.clone();
    }
    next.updated_at = chrono::Utc::now();
    next
}

/// The next batch size: steer toward the plan's target batch time, at most doubling or
/// halving at once so one slow batch does not swing it.
fn tune(batch: u64, took: Duration, target: Duration) -> u64 {
    let took = took.as_secs_f64().max(0.001);
    let ideal = batch as f64 * target.as_secs_f64() / took;
    let next = ideal.clamp(batch as f64 / 2.0, batch as f64 * 2.0) as u64;
    next.clamp(MIN_AUTO_BATCH, MAX_AUTO_BATCH)
}

async fn backfill<B: Backend>(b: &B, s: &Session<'_>, mut st: State) -> Result<State> {
    let m = st.migration()?.clone();
    let cfg = &s.plan.file.backfill;
    if st.backfill.started_at.is_none() {
        st.backfill.started_at = Some(chrono::Utc::now());
        st.backfill.estimated_rows = b.estimate_rows(&m).await?;
        st.event(format!(
            "backfill started, about {} rows",
            st.backfill.estimated_rows
        ));
        b.save_state(&st.to_row()).await?;
    }
    let mut batch = match st.backfill.batch_size {
        0 => FIRST_AUTO_BATCH,
        n => n,
    };
    // The batch-size mode last applied: `turnout tune` can change it between batches.
    let mut mode = None;
    let started = Instant::now();
    let copied_before = st.backfill.rows_copied;
    loop {
        if s.cancel.is_cancelled() {
            return Err(s.interrupted(st.phase));
        }
        let force = InForce::new(cfg, &control::hold(b, s, &mut st, Gate::Batch).await?);
        if s.cancel.is_cancelled() {
            return Err(s.interrupted(st.phase));
        }
        if mode != Some(force.batch_size) {
            if let BatchSize::Rows(n) = force.batch_size {
                batch = n;
            }
            if mode.is_some() {
                info!(batch, "batch size tuned");
            }
            mode = Some(force.batch_size);
        }
        b.keep_lock(&st.name).await?;
        fault::point("backfill.batch.before");
        let t0 = Instant::now();
        // The state saved inside the batch's transaction is the one we carry on with.
        let committed = std::sync::Mutex::new(None);
        let done = b
            .copy_batch(&m, st.backfill.cursor.as_ref(), batch, &|d| {
                let next = after_batch(&st, d, batch);
                let row = next.to_row();
                if let Ok(mut slot) = committed.lock() {
                    *slot = Some(next);
                }
                row
            })
            .instrument(info_span!(
                "batch",
                n = st.backfill.batches + 1,
                size = batch
            ))
            .await?;
        fault::point("backfill.batch.after");
        tracing::debug!(
            rows = done.rows,
            size = batch,
            took_ms = t0.elapsed().as_millis() as u64,
            "batch committed"
        );
        st = match committed.into_inner().ok().flatten() {
            Some(next) => next,
            None => after_batch(&st, &done, batch),
        };
        s.observer.backfill_progress(
            st.backfill.rows_copied,
            st.backfill.estimated_rows.max(st.backfill.rows_copied),
        );
        if done.rows < batch {
            break;
        }
        if force.batch_size == BatchSize::Auto {
            batch = tune(batch, t0.elapsed(), force.target_batch_time());
        }
        let rest = force.pause().max(done.rest);
        if !rest.is_zero() {
            tokio::time::sleep(rest).await;
        }
    }
    b.finish_backfill(&m).await?;
    let rate = (st.backfill.rows_copied - copied_before) as f64
        / started.elapsed().as_secs_f64().max(0.001);
    let mut next = st.entered(
        Phase::Backfilled,
        backfill_summary(st.backfill.rows_copied, st.backfill.batches, rate),
    );
    next.backfill.finished_at = Some(chrono::Utc::now());
    b.save_state(&next.to_row()).await?;
    Ok(next)
}

/// Compares the live table with its shadow; differences are rendered as row diffs.
async fn compare<B: Backend>(b: &B, s: &Session<'_>, st: &mut State) -> Result<VerifyReport> {
    let cfg = &s.plan.file.verify;
    let req = VerifyRequest {
        chunk_rows: fault::knob("TURNOUT_VERIFY_CHUNK_ROWS", VERIFY_CHUNK_ROWS),
        workers: VERIFY_WORKERS,
        sample_rate: (cfg.mode == VerifyMode::Sample).then_some(cfg.sample_rate),
        max_diffs: cfg.max_diffs,
    };
    let total = st.backfill.rows_copied.max(st.backfill.estimated_rows);
    let progress = |rows| {
        fault::point("verify.chunk");
        s.observer.verify_progress(rows, total.max(rows));
    };
    let report = control::verify(b, s, st, &req, &progress).await?;
    for d in &report.diffs {
        s.observer.diff(d, &render_diff(d));
    }
    Ok(report)
}

/// The backfill's line in the phase summary and the event history, its figures printed
/// as the progress bars print theirs.
fn backfill_summary(rows: u64, batches: u64, rate: f64) -> String {
    format!(
        "copied {} rows in {} batches ({})",
        crate::progress::thousands(rows),
        crate::progress::thousands(batches),
        crate::progress::rows_per_sec(rate)
    )
}

/// The failures the triggers recorded, as the tail of a verification message.
fn failure_details(failures: &[String]) -> String {
    if failures.is_empty() {
        return String::new();
    }
    format!(
        ".\n{} application writes could not be mapped (dual_write.on_error: record): {}\nRoll back, fix the plan's expressions (or the rows), and start again",
        failures.len(),
        failures
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("; ")
    )
}

/// Compares, and when the comparison itself fails on a row the triggers recorded as
/// unmappable, reports that as the verification's finding rather than a crash.
async fn compare_or_failures<B: Backend>(
    b: &B,
    s: &Session<'_>,
    st: &mut State,
) -> Result<(VerifyReport, Vec<String>)> {
    match compare(b, s, st).await {
        Ok(report) => Ok((report, b.trigger_failures(st.migration()?).await?)),
        Err(e @ (Error::Database { .. } | Error::Data { .. })) => {
            let failures = b.trigger_failures(st.migration()?).await?;
            if failures.is_empty() {
                return Err(e);
            }
            Ok((VerifyReport::default(), failures))
        }
        Err(e) => Err(e),
    }
}

async fn verify_step<B: Backend>(b: &B, s: &Session<'_>, mut st: State) -> Result<State> {
    if s.plan.file.verify.mode == VerifyMode::Off {
        let next = st.entered(Phase::Verified, "verification skipped (verify.mode: off)");
        b.save_state(&next.to_row()).await?;
        return Ok(next);
    }
    let (report, failures) = compare_or_failures(b, s, &mut st).await?;
    st.verify = state::VerifyProgress {
        rows_checked: report.rows,
        chunks: report.chunks,
        mismatches: report.diffs.len() as u64 + failures.len() as u64,
        passed: Some(report.diffs.is_empty() && failures.is_empty()),
        at: Some(chrono::Utc::now()),
    };
    if !failures.is_empty() || !report.diffs.is_empty() {
        let mut message = format!("verification found {} differing rows", report.diffs.len());
        if !failures.is_empty() {
            message.push_str(&format!(
                " and {} writes the triggers could not map: {}",
                failures.len(),
                failures.join("; ")
            ));
        }
        st.event(message);
        b.save_state(&st.to_row()).await?;
        return Err(Error::VerifyFailed {
            table: st.migration()?.table.clone(),
            mismatches: st.verify.mismatches,
            details: failure_details(&failures),
        });
    }
    let sampled = if report.chunks_skipped > 0 {
        format!(", {} chunks sampled out", report.chunks_skipped)
    } else {
        String::new()
    };
    let next = st.entered(
        Phase::Verified,
        format!(
            "{} rows identical in {} chunks{sampled}",
            report.rows, report.chunks
        ),
    );
    b.save_state(&next.to_row()).await?;
    Ok(next)
}

/// `turnout verify`: the comparison alone, any time between backfill and cutover.
pub async fn verify_only<B: Backend>(b: &B, s: &Session<'_>) -> Result<VerifyReport> {
    with_lock(b, s, async {
        let mut st = load_or_start(b, s.plan).await?;
        st.waiting = None;
        if !matches!(st.phase, Phase::Backfilled | Phase::Verified) {
            return Err(Error::State(format!(
                "migration {:?} is {}; verify compares the live table with its shadow between backfill and cutover",
                st.name, st.phase
            )));
        }
        let (report, failures) = compare_or_failures(b, s, &mut st).await?;
        if !report.diffs.is_empty() || !failures.is_empty() {
            return Err(Error::VerifyFailed {
                table: st.migration()?.table.clone(),
                mismatches: (report.diffs.len() + failures.len()) as u64,
                details: failure_details(&failures),
            });
        }
        Ok(report)
    })
    .await
}

/// Backoff before cutover attempt `n` (1-based): doubling from `retry_delay`, capped at
/// 8×, with ±25 % jitter so two waiting turnouts do not collide again.
fn cutover_backoff(retry_delay: Duration, n: u32) -> Duration {
    let factor = 1u32 << n.saturating_sub(1).min(3);
    let base = retry_delay.as_secs_f64() * f64::from(factor);
    let jitter = 0.75 + rand::random::<f64>() * 0.5;
    Duration::from_secs_f64(base * jitter)
}

async fn cutover<B: Backend>(b: &B, s: &Session<'_>, mut st: State) -> Result<State> {
    let m = st.migration()?.clone();
    let failures = b.trigger_failures(&m).await?;
    if !failures.is_empty() {
        return Err(Error::State(format!(
            "{} writes since dual-write began could not be mapped ({}); cutover is refused. Fix the plan's expressions and run `turnout rollback`, then start again",
            failures.len(),
            failures.join("; ")
        )));
    }
    let cfg = &s.plan.file.cutover;
    // blockers.rs says why an attempt waits no longer than this, whatever the plan allows.
    let wait = cfg.lock_timeout.min(blockers::QUEUE_BOUND);
    let mut lookout = blockers::Lookout::default();
    let mut in_the_way = Vec::new();
    for attempt in 1..=cfg.attempts {
        if s.cancel.is_cancelled() {
            return Err(s.interrupted(st.phase));
        }
        b.keep_lock(&st.name).await?;
        let seen = b.blockers(&m, blockers::GRACE).await?;
        lookout.saw(&seen, Instant::now());
        // A possible blocker holds the cutover back too (a lock request behind it could
        // hold every write for a second on MariaDB), but only a certain one is ended.
        let mut holding = seen.clone();
        if let Some(after) = cfg.kill_blockers_after {
            let due: Vec<_> = lookout
                .due(&seen, after, Instant::now())
                .into_iter()
                .cloned()
                .collect();
            for x in &due {
                b.end_session(&x.session).await?;
                let why = format!(
                    "ended {}: it had held the cutover back for {} (cutover.kill_blockers_after)",
                    x.describe(),
                    humantime::format_duration(after)
                );
                warn!("{why}");
                st.event(why);
            }
            if !due.is_empty() {
                b.save_state(&st.to_row()).await?;
                holding.retain(|x| !due.contains(x));
            }
        }
        if !holding.is_empty() {
            let who = blockers::describe(&holding);
            note_blocked(b, s, &mut st, attempt, &who).await?;
            in_the_way = holding;
            if attempt < cfg.attempts {
                let mut rest = cutover_backoff(cfg.retry_delay, attempt);
                if let Some(after) = cfg.kill_blockers_after
                    && let Some(due) = lookout.next_due(&in_the_way, after, Instant::now())
                {
                    rest = rest.min(due.max(Duration::from_millis(10)));
                }
                tokio::time::sleep(rest).await;
            }
            continue;
        }
        fault::point("cutover.attempt");
        let mut next = st.entered(
            Phase::CutOver,
            format!(
                "{} is now the new table; {} is kept current for rollback",
                m.table, m.old
            ),
        );
        next.cutover_attempts = st.cutover_attempts + 1;
        next.waiting = None;
        match b.cutover(&m, wait, &next.to_row()).await? {
            CutoverOutcome::Swapped => {
                if st.waiting.is_some() {
                    s.observer.waiting(None);
                }
                return Ok(next);
            }
            CutoverOutcome::LockTimeout => {
                // Who was in the way, whatever their age: the request waited `wait` for them.
                in_the_way = b.blockers(&m, wait).await?;
                st.cutover_attempts += 1;
                let mut what = format!(
                    "cutover attempt {attempt}: the lock was not granted within {}",
                    humantime::format_duration(wait)
                );
                if !in_the_way.is_empty() {
                    what.push_str(&format!(
                        "; in the way: {}",
                        blockers::describe(&in_the_way)
                    ));
                }
                warn!(attempt, "{what}");
                st.event(what);
                b.save_state(&st.to_row()).await?;
                if attempt < cfg.attempts {
                    tokio::time::sleep(cutover_backoff(cfg.retry_delay, attempt)).await;
                }
            }
        }
    }
    Err(Error::LockTimeout {
        table: m.table.clone(),
        attempts: cfg.attempts,
        timeout: wait,
        blockers: match blockers::describe(&in_the_way) {
            w if w.is_empty() => String::new(),
            w => format!(" Held back by: {w}."),
        },
    })
}

/// Records that an attempt was not made because `who` holds the tables: in the state
/// (for `status`), the log, the events and the progress output.
async fn note_blocked<B: Backend>(
    b: &B,
    s: &Session<'_>,
    st: &mut State,
    attempt: u32,
    who: &str,
) -> Result<()> {
    let detail = format!("cutover waits for a blocker to finish: {who}");
    warn!(attempt, "{detail}");
    s.observer.waiting(Some(&detail));
    st.cutover_attempts += 1;
    st.event(format!("cutover attempt {attempt} not made: {who}"));
    if st.waiting.as_ref().map(|w| &w.detail) != Some(&detail) {
        st.waiting = Some(control::Waiting {
            reason: "blocked".into(),
            since: st
                .waiting
                .as_ref()
                .filter(|w| w.reason == "blocked")
                .map_or_else(chrono::Utc::now, |w| w.since),
            detail,
        });
    }
    b.save_state(&st.to_row()).await
}

async fn cleanup<B: Backend>(b: &B, s: &Session<'_>, st: State) -> Result<State> {
    let m = st.migration()?.clone();
    // Cutover checked there were none; a forward failure now happened in the moment
    // between that check and the swap, and its row is missing from the new table.
    // Cleanup would make that final: the old table still has it, so roll back instead.
    let late: Vec<String> = b
        .trigger_failures(&m)
        .await?
        .into_iter()
        .filter(|f| f.starts_with("forward"))
        .collect();
    if !late.is_empty() {
        return Err(Error::State(format!(
            "{} writes made just before cutover could not be mapped ({}); the new table lacks them, the old one has them. Cleanup is refused: run `turnout rollback {}`",
            late.len(),
            late.join("; "),
            s.plan.path
        )));
    }
    let keep = s.plan.file.cleanup.keep_old_table;
    let what = if keep {
        format!("reverse triggers dropped; {} kept", m.old)
    } else {
        format!("reverse triggers and {} dropped", m.old)
    };
    let next = st.entered(Phase::Done, what);
    b.cleanup(&m, keep, &next.to_row()).await?;
    Ok(next)
}

/// `turnout rollback`: back to the table as it was, from any phase before `done`.
pub async fn rollback<B: Backend>(b: &B, s: &Session<'_>, accept_loss: bool) -> Result<State> {
    with_lock(b, s, async {
        let Some(row) = b.load_state(&s.plan.file.name).await? else {
            return Err(Error::State(format!("migration {:?} has not started; there is nothing to roll back", s.plan.file.name)));
        };
        let st = State::from_row(&row)?;
        let from = match st.phase {
            Phase::Done => {
                return Err(Error::State(format!(
                    "migration {:?} is done: cleanup dropped the reverse triggers{} — there is nothing left to roll back to. Write a new plan that changes the table back",
                    st.name,
                    if s.plan.file.cleanup.keep_old_table { "" } else { " and the old table" }
                )));
            }
            Phase::RolledBack => return Ok(st),
            Phase::RollingBack => st.rollback_from.unwrap_or(Phase::CutOver),
            p => p,
        };
        let Some(m) = st.migration.clone() else {
            let next = st.entered(Phase::RolledBack, "rolled back before anything was created");
            b.save_state(&next.to_row()).await?;
            return Ok(next);
        };
        if from == Phase::CutOver && !accept_loss {
            let failures = b.trigger_failures(&m).await?;
            let reverse_failures: Vec<_> = failures.iter().filter(|f| f.contains("reverse")).cloned().collect();
            if !m.lossy.is_empty() || !reverse_failures.is_empty() {
                let mut why = Vec::new();
                if !m.lossy.is_empty() {
                    why.push(format!(
                        "column(s) {} have no reverse expression: rows written since cutover get their default (or NULL) there",
                        m.lossy.join(", ")
                    ));
                }
                if !reverse_failures.is_empty() {
                    why.push(format!("{} writes could not be copied back: {}", reverse_failures.len(), reverse_failures.join("; ")));
                }
                return Err(Error::Usage(format!(
                    "rollback after cutover cannot restore everything: {}. Run `turnout rollback {} --accept-loss` to roll back anyway",
                    why.join("; "),
                    s.plan.path
                )));
            }
        }
        let mut rolling = st.entered(Phase::RollingBack, format!("rollback started from {from}"));
        rolling.rollback_from = Some(from);
        b.save_state(&rolling.to_row()).await?;
        b.keep_lock(&rolling.name).await?;
        fault::point("rollback.before");
        let done = rolling.entered(Phase::RolledBack, format!("rolled back from {from}: {} is as it was", m.table));
        b.rollback(&m, &done.to_row()).await?;
        fault::point("rollback.after");
        control::forget(b, &done.name).await?;
        Ok(done)
    })
    .await
}

/// One migration as `turnout status` shows it.
pub struct StatusEntry {
    pub state: State,
    /// Writes the triggers could not map (`on_error: record`), as recorded.
    pub failures: Vec<String>,
    /// What the operators asked (`pause`, `tune`).
    pub control: control::Control,
}

/// `turnout status`: every migration's state, or one.
pub async fn status<B: Backend>(b: &B, name: Option<&str>) -> Result<Vec<StatusEntry>> {
    b.ensure_state_table().await?;
    let mut rows: Vec<StateRow> = match name {
        Some(n) => b.load_state(n).await?.into_iter().collect(),
        None => b.list_states().await?,
    };
    if let Some(n) = name {
        rows.extend(b.load_state(&control::row_name(n)).await?);
    }
    let (controls, rows): (Vec<_>, Vec<_>) = rows.into_iter().partition(control::is_control);
    let mut out = Vec::new();
    for row in &rows {
        let state = State::from_row(row)?;
        let own = control::row_name(&state.name);
        let control = match controls.iter().find(|c| c.name == own) {
            Some(c) => control::parse(c)?,
            None => control::Control::default(),
        };
        let live = matches!(
            state.phase,
            Phase::DualWriting | Phase::Backfilled | Phase::Verified | Phase::CutOver
        );
        let failures = match (&state.migration, live) {
            (Some(m), true) => b.trigger_failures(m).await?,
            _ => Vec::new(),
        };
        out.push(StatusEntry {
            state,
            failures,
            control,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_batch_servo_moves_toward_the_target_but_never_jumps() {
        let target = Duration::from_millis(200);
        assert_eq!(tune(1000, Duration::from_millis(100), target), 2000);
        assert_eq!(tune(1000, Duration::from_millis(2000), target), 500);
        assert_eq!(tune(1000, Duration::from_millis(250), target), 800);
        assert_eq!(tune(60, Duration::from_secs(10), target), MIN_AUTO_BATCH);
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let d = Duration::from_millis(100);
        let first = cutover_backoff(d, 1);
        assert!(first >= Duration::from_millis(75) && first <= Duration::from_millis(125));
        let late = cutover_backoff(d, 30);
        assert!(late >= Duration::from_millis(600) && late <= Duration::from_millis(1000));
    }

    #[test]
    fn the_backfill_summary_prints_rates_as_the_bars_do() {
        assert_eq!(
            backfill_summary(1_048_576, 1_024, 138_201.507_8),
            "copied 1,048,576 rows in 1,024 batches (138,201 rows/s)"
        );
    }

    #[test]
    fn reached_counts_only_the_forward_path() {
        assert!(reached(Phase::Verified, Phase::Backfilled));
        assert!(!reached(Phase::Prepared, Phase::Backfilled));
        assert!(!reached(Phase::RolledBack, Phase::Backfilled));
    }
}
