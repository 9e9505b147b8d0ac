//! The engine: which phase comes next, what is persisted after each step, and how
//! rollback walks back. It knows nothing of SQL; every question about the database goes
//! through [`Backend`]. Each step moves the state row forward in the same transaction as
//! its effect where the database allows, so a crash at any instant leaves a state that
//! `resume` (or `rollback`) can carry on from.

pub mod blockers;
pub mod control;
pub mod diff;
pub mod dir;
pub mod instant;
pub mod replicas;
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
            control::hold(b, s, &mut st, Gate::Step, None).await?;
            if s.cancel.is_cancelled() {
                return Err(s.interrupted(st.phase));
            }
            if st.phase == Phase::Planned
                && st.instant.is_none()
                && st.migration.is_none()
                && !instant::choose(b, s, &mut st).await?
            {
                st = step(b, s, st).await?;
            } else if st.phase == Phase::Planned && st.instant.is_some() {
                // The instant path has no phase between planned and done to stop at.
                if opts.until.is_some_and(|u| u < Phase::Done) {
                    info!("the instant path goes from planned to done in one step; --until stops it before it starts");
                    return Ok(st);
                }
                b.keep_lock(&st.name).await?;
                st = instant::apply(b, s, st).await?;
            } else {
                st = step(b, s, st).await?;
            }
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
/// For a plan of several tables, its first ([`derive_all`] derives them all).
pub async fn derive<B: Backend>(b: &B, plan: &Plan) -> Result<Migration> {
    derive_table(b, plan, 0).await
}

/// Derives and preflights every table of the plan, then what only the tables together
/// can show (foreign keys between them); every refusal of every table at once.
pub async fn derive_all<B: Backend>(b: &B, plan: &Plan) -> Result<Vec<Migration>> {
    let count = plan.file.specs().len();
    let mut ms = Vec::new();
    let mut refusals: Vec<(String, Vec<String>)> = Vec::new();
    for n in 0..count {
        match derive_shape(b, plan, n).await {
            Ok(m) => ms.push(m),
            Err(Error::Refused { table, problems }) => refusals.push((table, problems)),
            Err(e) => return Err(e),
        }
    }
    // Each table against the others: a foreign key between two of them may be carried
    // only because both ends change together.
    for m in &ms {
        let problems = b.preflight_in_plan(m, &ms).await?;
        if !problems.is_empty() {
            refusals.push((shown(&m.schema, &m.table), problems));
        }
    }
    if count > 1 && !b.swaps_several_at_once() {
        refusals.push((
            plan.file.table_names(),
            vec![format!(
                "tables: a plan of several tables is not supported on {} yet; migrate them one plan at a time",
                b.dialect()
            )],
        ));
    }
    let replica_problems = replicas::refusals(b, &plan.file);
    if !replica_problems.is_empty() {
        refusals.push((plan.file.table_names(), replica_problems));
    }
    if refusals.is_empty() {
        let problems = b.preflight_together(&ms).await?;
        if !problems.is_empty() {
            refusals.push((plan.file.table_names(), problems));
        }
    }
    match refusals.len() {
        0 => Ok(ms),
        1 => {
            let (table, problems) = refusals.remove(0);
            Err(Error::Refused { table, problems })
        }
        _ => Err(Error::Refused {
            table: refusals
                .iter()
                .map(|(t, _)| t.clone())
                .collect::<Vec<_>>()
                .join(", "),
            problems: refusals
                .into_iter()
                .flat_map(|(t, ps)| ps.into_iter().map(move |p| format!("{t}: {p}")))
                .collect(),
        }),
    }
}

/// Derives and preflights the plan's `n`th table.
async fn derive_table<B: Backend>(b: &B, plan: &Plan, n: usize) -> Result<Migration> {
    let m = derive_shape(b, plan, n).await?;
    let problems = b.preflight(&m).await?;
    if !problems.is_empty() {
        return Err(Error::Refused {
            table: shown(&m.schema, &m.table),
            problems,
        });
    }
    Ok(m)
}

fn shown(schema: &Option<String>, table: &str) -> String {
    match schema {
        Some(s) => format!("{s}.{table}"),
        None => table.to_string(),
    }
}

/// The plan's `n`th table as the live table's shape and the plan's changes make it,
/// not yet judged by the database.
async fn derive_shape<B: Backend>(b: &B, plan: &Plan, n: usize) -> Result<Migration> {
    let specs = plan.file.specs();
    let Some(t) = specs.get(n) else {
        return Err(Error::State(format!(
            "plan {:?} has no table number {}",
            plan.file.name,
            n + 1
        )));
    };
    let schema = match &t.schema {
        Some(s) => Some(s.clone()),
        None => b.default_schema().await?,
    };
    let shown = shown(&schema, &t.table);
    let key = if plan.file.tables.is_empty() {
        "table".to_string()
    } else {
        format!("tables[{n}].table")
    };
    let refused = |problems: Vec<String>| Error::Refused {
        table: shown.clone(),
        problems,
    };
    let Some(shape) = b.describe(schema.as_deref(), &t.table).await? else {
        return Err(refused(vec![format!(
            "{key}: there is no table {:?}{}",
            t.table,
            in_schema(&schema)
        )]));
    };
    if shape.primary_key.is_empty() {
        return Err(refused(vec![format!(
            "{key}: {:?} has no primary key; turnout copies and compares rows by primary key",
            t.table
        )]));
    }
    let mut m = Migration::derive_table(plan, n, &shape).map_err(refused)?;
    m.schema = schema;
    Ok(m)
}

fn in_schema(schema: &Option<String>) -> String {
    schema
        .as_ref()
        .map(|s| format!(" in {s:?}"))
        .unwrap_or_default()
}

/// `turnout check` with a database: derive and preflight every table, change nothing.
pub async fn check<B: Backend>(b: &B, plan: &Plan) -> Result<Vec<Migration>> {
    if let Some(row) = b.load_state(&plan.file.name).await.ok().flatten() {
        let st = State::from_row(&row)?;
        if st.plan_hash != plan.hash && !matches!(st.phase, Phase::RolledBack | Phase::Done) {
            return Err(Error::PlanChanged {
                name: st.name.clone(),
                diff: crate::plan::diff(&st.plan, &plan.canonical()),
            });
        }
        if st.migration.is_some() && st.phase != Phase::RolledBack && st.phase != Phase::Done {
            return Ok(st.migrations());
        }
    }
    let ms = derive_all(b, plan).await?;
    if plan.file.strategy == crate::plan::Strategy::Instant
        && let crate::db::InstantVerdict::Copy(reasons) = instant::verdict(b, plan, &ms).await?
    {
        return Err(instant::refusal(&ms, plan, &reasons));
    }
    Ok(ms)
}

/// `turnout plan`: which path the plan takes and why, then the SQL of every phase of
/// that path, table after table for a plan of several.
pub async fn preview<B: Backend>(b: &B, plan: &Plan) -> Result<Vec<(Migration, Vec<PhaseSql>)>> {
    let ms = check(b, plan).await?;
    let verdict = instant::verdict(b, plan, &ms).await?;
    Ok(preview_of(b, &verdict, ms))
}

/// The path's account followed, on the copy path, by each table's phases.
pub fn preview_of<B: Backend>(
    b: &B,
    verdict: &crate::db::InstantVerdict,
    ms: Vec<Migration>,
) -> Vec<(Migration, Vec<PhaseSql>)> {
    let path = instant::preview(verdict);
    let copy = matches!(verdict, crate::db::InstantVerdict::Copy(_));
    ms.into_iter()
        .enumerate()
        .map(|(i, m)| {
            let mut sql = if i == 0 { path.clone() } else { Vec::new() };
            if copy {
                sql.extend(b.preview(&m));
            }
            (m, sql)
        })
        .collect()
}

async fn prepare<B: Backend>(b: &B, s: &Session<'_>, mut st: State) -> Result<State> {
    if st.migration.is_none() {
        let ms = derive_all(b, s.plan).await?;
        st.set_migrations(ms);
        // Saved before the DDL, so a crash inside a non-transactional prepare (MySQL)
        // resumes with the same derivation instead of tripping over its own shadow table.
        st.event("preflight passed");
        b.save_state(&st.to_row()).await?;
    }
    let ms = st.migrations();
    let last = ms.len().saturating_sub(1);
    // Table after table, each saved with its own effect; prepare is idempotent, so a
    // resume redoes only what is missing.
    for (i, m) in ms.iter().enumerate() {
        let done = format!("created {} in the new shape", m.shadow);
        let next = table_done(&st, i == last, Phase::Prepared, done);
        b.prepare(m, &next.to_row()).await?;
        fault::point("prepare.table");
        st = next;
    }
    Ok(st)
}

/// The state saved with one table's step: the phase moves on with the plan's last table;
/// before it only the event is recorded.
fn table_done(st: &State, last: bool, phase: Phase, what: String) -> State {
    if last {
        return st.entered(phase, what);
    }
    let mut next = st.clone();
    next.event(what);
    next
}

async fn dual_write<B: Backend>(b: &B, mut st: State) -> Result<State> {
    let ms = st.migrations();
    let last = ms.len().saturating_sub(1);
    for (i, m) in ms.iter().enumerate() {
        let done = format!("triggers copy every write on {} to {}", m.table, m.shadow);
        let next = table_done(&st, i == last, Phase::DualWriting, done);
        b.start_dual_write(m, &next.to_row()).await?;
        fault::point("dual-write.table");
        st = next;
    }
    Ok(st)
}

/// The state after a committed batch; the same function builds the checkpoint saved
/// inside the batch's transaction and the state the engine carries on with.
fn after_batch(st: &State, i: usize, done: &BatchDone, batch_size: u64) -> State {
    let mut next = st.clone();
    let p = next.backfill_of_mut(i);
    p.rows_copied += done.rows;
    p.batches += 1;
    p.batch_size = batch_size;
    if done.last.is_some() {
        p.cursor = done.last.clone();
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

/// Backfills the tables one after another, each resumable from its own cursor.
async fn backfill<B: Backend>(b: &B, s: &Session<'_>, mut st: State) -> Result<State> {
    let count = st.table_count();
    let mut next = None;
    for i in 0..count {
        if st.backfill_of(i).finished_at.is_some() && i + 1 < count {
            continue;
        }
        let (mut done, summary) = backfill_table(b, s, st, i).await?;
        done.backfill_of_mut(i).finished_at = Some(chrono::Utc::now());
        let shown = if count > 1 {
            format!("{}: {summary}", done.migration_of(i)?.table)
        } else {
            summary
        };
        st = if i + 1 == count {
            done.entered(Phase::Backfilled, shown)
        } else {
            done.event(shown);
            done
        };
        b.save_state(&st.to_row()).await?;
        next = Some(st.clone());
    }
    next.ok_or_else(|| {
        Error::State(format!(
            "migration {:?} has no table to backfill",
            s.plan.file.name
        ))
    })
}

/// Copies table `i` batch after batch from its cursor; returns the state after its last
/// batch and the backfill's summary.
async fn backfill_table<B: Backend>(
    b: &B,
    s: &Session<'_>,
    mut st: State,
    i: usize,
) -> Result<(State, String)> {
    let m = st.migration_of(i)?.clone();
    let cfg = &s.plan.file.backfill;
    if st.backfill_of(i).started_at.is_none() {
        let estimated = b.estimate_rows(&m).await?;
        let p = st.backfill_of_mut(i);
        p.started_at = Some(chrono::Utc::now());
        p.estimated_rows = estimated;
        let table = if st.table_count() > 1 {
            format!(" of {}", m.table)
        } else {
            String::new()
        };
        st.event(format!("backfill{table} started, about {estimated} rows"));
        b.save_state(&st.to_row()).await?;
    }
    let mut batch = match st.backfill_of(i).batch_size {
        0 => FIRST_AUTO_BATCH,
        n => n,
    };
    // The batch-size mode last applied: `turnout tune` can change it between batches.
    let mut mode = None;
    let started = Instant::now();
    let copied_before = st.backfill_of(i).rows_copied;
    let mut watch = replicas::Watch::of(s.plan);
    loop {
        if s.cancel.is_cancelled() {
            return Err(s.interrupted(st.phase));
        }
        let held = control::hold(b, s, &mut st, Gate::Batch, watch.as_mut()).await?;
        let force = InForce::new(cfg, &held);
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
            .copy_batch(&m, st.backfill_of(i).cursor.as_ref(), batch, &|d| {
                let next = after_batch(&st, i, d, batch);
                let row = next.to_row();
                if let Ok(mut slot) = committed.lock() {
                    *slot = Some(next);
                }
                row
            })
            .instrument(info_span!(
                "batch",
                n = st.backfill_of(i).batches + 1,
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
            None => after_batch(&st, i, &done, batch),
        };
        let p = st.backfill_of(i);
        s.observer
            .backfill_progress(p.rows_copied, p.estimated_rows.max(p.rows_copied));
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
    let p = st.backfill_of(i);
    let rate = (p.rows_copied - copied_before) as f64 / started.elapsed().as_secs_f64().max(0.001);
    let summary = backfill_summary(p.rows_copied, p.batches, rate);
    Ok((st, summary))
}

/// Compares the live table with its shadow; differences are rendered as row diffs.
async fn compare<B: Backend>(
    b: &B,
    s: &Session<'_>,
    st: &mut State,
    i: usize,
) -> Result<VerifyReport> {
    let cfg = &s.plan.file.verify;
    let req = VerifyRequest {
        chunk_rows: fault::knob("TURNOUT_VERIFY_CHUNK_ROWS", VERIFY_CHUNK_ROWS),
        workers: VERIFY_WORKERS,
        sample_rate: (cfg.mode == VerifyMode::Sample).then_some(cfg.sample_rate),
        max_diffs: cfg.max_diffs,
    };
    let total = st
        .backfill_of(i)
        .rows_copied
        .max(st.backfill_of(i).estimated_rows);
    let m = st.migration_of(i)?.clone();
    let progress = |rows| {
        fault::point("verify.chunk");
        s.observer.verify_progress(rows, total.max(rows));
    };
    let report = control::verify(b, s, st, &m, &req, &progress).await?;
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

/// Compares table `i`, and when the comparison itself fails on a row the triggers
/// recorded as unmappable, reports that as the verification's finding rather than a crash.
async fn compare_or_failures<B: Backend>(
    b: &B,
    s: &Session<'_>,
    st: &mut State,
    i: usize,
) -> Result<(VerifyReport, Vec<String>)> {
    let m = st.migration_of(i)?.clone();
    match compare(b, s, st, i).await {
        Ok(report) => Ok((report, b.trigger_failures(&m).await?)),
        Err(e @ (Error::Database { .. } | Error::Data { .. })) => {
            let failures = b.trigger_failures(&m).await?;
            if failures.is_empty() {
                return Err(e);
            }
            Ok((VerifyReport::default(), failures))
        }
        Err(e) => Err(e),
    }
}

/// Compares every table; the first that differs stops verification.
async fn verify_step<B: Backend>(b: &B, s: &Session<'_>, mut st: State) -> Result<State> {
    if s.plan.file.verify.mode == VerifyMode::Off {
        let next = st.entered(Phase::Verified, "verification skipped (verify.mode: off)");
        b.save_state(&next.to_row()).await?;
        return Ok(next);
    }
    let count = st.table_count();
    let mut next = None;
    for i in 0..count {
        let (report, failures) = compare_or_failures(b, s, &mut st, i).await?;
        *st.verify_of_mut(i) = state::VerifyProgress {
            rows_checked: report.rows,
            chunks: report.chunks,
            mismatches: report.diffs.len() as u64 + failures.len() as u64,
            passed: Some(report.diffs.is_empty() && failures.is_empty()),
            at: Some(chrono::Utc::now()),
        };
        let table = st.migration_of(i)?.table.clone();
        let of = if count > 1 {
            format!("{table}: ")
        } else {
            String::new()
        };
        if !failures.is_empty() || !report.diffs.is_empty() {
            let mut message = format!(
                "{of}verification found {} differing rows",
                report.diffs.len()
            );
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
                table,
                mismatches: st.verify_of(i).mismatches,
                details: failure_details(&failures),
            });
        }
        let sampled = if report.chunks_skipped > 0 {
            format!(", {} chunks sampled out", report.chunks_skipped)
        } else {
            String::new()
        };
        let said = format!(
            "{of}{} rows identical in {} chunks{sampled}",
            report.rows, report.chunks
        );
        st = if i + 1 == count {
            st.entered(Phase::Verified, said)
        } else {
            st.event(said);
            st
        };
        b.save_state(&st.to_row()).await?;
        next = Some(st.clone());
    }
    next.ok_or_else(|| {
        Error::State(format!(
            "migration {:?} has no table to verify",
            s.plan.file.name
        ))
    })
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
        let mut all = VerifyReport::default();
        for i in 0..st.table_count() {
            let (report, failures) = compare_or_failures(b, s, &mut st, i).await?;
            if !report.diffs.is_empty() || !failures.is_empty() {
                return Err(Error::VerifyFailed {
                    table: st.migration_of(i)?.table.clone(),
                    mismatches: (report.diffs.len() + failures.len()) as u64,
                    details: failure_details(&failures),
                });
            }
            all.rows += report.rows;
            all.chunks += report.chunks;
            all.chunks_skipped += report.chunks_skipped;
        }
        Ok(all)
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

/// Every write the triggers of any table could not map, each named with its table when
/// the plan has several.
async fn all_failures<B: Backend>(b: &B, ms: &[Migration]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for m in ms {
        let failures = b.trigger_failures(m).await?;
        if ms.len() > 1 {
            out.extend(failures.into_iter().map(|f| format!("{}: {f}", m.table)));
        } else {
            out.extend(failures);
        }
    }
    Ok(out)
}

/// The swap of every table at once.
async fn cutover<B: Backend>(b: &B, s: &Session<'_>, st: State) -> Result<State> {
    let ms = st.migrations();
    let m = st.migration()?.clone();
    let failures = all_failures(b, &ms).await?;
    if !failures.is_empty() {
        return Err(Error::State(format!(
            "{} writes since dual-write began could not be mapped ({}); cutover is refused. Fix the plan's expressions and run `turnout rollback`, then start again",
            failures.len(),
            failures.join("; ")
        )));
    }
    let swapped = if ms.len() > 1 {
        format!(
            "{} are now the new tables; {} are kept current for rollback",
            st.table_names(),
            ms.iter()
                .map(|m| m.old.clone())
                .collect::<Vec<_>>()
                .join(", ")
        )
    } else {
        format!(
            "{} is now the new table; {} is kept current for rollback",
            m.table, m.old
        )
    };
    let next_of = |st: &State| st.entered(Phase::CutOver, swapped.clone());
    attempts(b, s, st, &ms, Attempt::Swap, &next_of).await
}

/// What one attempt under the cutover's lock timeout runs: the swap, or the instant
/// path's statements on the plan's one table.
pub(crate) enum Attempt<'a> {
    Swap,
    Instant(&'a [String]),
}

impl Attempt<'_> {
    fn label(&self) -> &'static str {
        match self {
            Attempt::Swap => "cutover",
            Attempt::Instant(_) => "instant change",
        }
    }
}

/// Runs `what` with the cutover's attempts, retry delay and lock timeout, waiting out
/// (or ending, with `kill_blockers_after`) the sessions in its way first so its lock
/// request never queues the application behind them. `next_of` builds the state saved
/// with a successful attempt.
pub(crate) async fn attempts<B: Backend>(
    b: &B,
    s: &Session<'_>,
    mut st: State,
    ms: &[Migration],
    what: Attempt<'_>,
    next_of: &(dyn Fn(&State) -> State + Sync),
) -> Result<State> {
    let label = what.label();
    let cfg = &s.plan.file.cutover;
    // blockers.rs says why an attempt waits no longer than this, whatever the plan allows.
    let wait = if b.lock_requests_queue() {
        cfg.lock_timeout.min(blockers::QUEUE_BOUND)
    } else {
        cfg.lock_timeout
    };
    let mut lookout = blockers::Lookout::default();
    let mut in_the_way = Vec::new();
    for attempt in 1..=cfg.attempts {
        if s.cancel.is_cancelled() {
            return Err(s.interrupted(st.phase));
        }
        b.keep_lock(&st.name).await?;
        let seen = blockers_of(b, ms, blockers::GRACE).await?;
        lookout.saw(&seen, Instant::now());
        // A possible blocker holds the attempt back too (a lock request behind it could
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
                    "ended {}: it had held the {label} back for {} (cutover.kill_blockers_after)",
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
            note_blocked(b, s, &mut st, label, attempt, &who).await?;
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
        fault::point(&format!("{}.attempt", label.replace(' ', "-")));
        let mut next = next_of(&st);
        next.cutover_attempts = st.cutover_attempts + 1;
        next.waiting = None;
        let outcome = match &what {
            Attempt::Swap => b.cutover_all(ms, wait, &next.to_row()).await?,
            Attempt::Instant(statements) => match ms {
                [m] => b.apply_instant(m, statements, wait, &next.to_row()).await?,
                _ => {
                    return Err(Error::State(
                        "the instant path changes one table at a time".into(),
                    ));
                }
            },
        };
        match outcome {
            CutoverOutcome::Swapped => {
                if st.waiting.is_some() {
                    s.observer.waiting(None);
                }
                return Ok(next);
            }
            CutoverOutcome::LockTimeout => {
                // Who was in the way, whatever their age: the request waited `wait` for them.
                in_the_way = blockers_of(b, ms, wait).await?;
                st.cutover_attempts += 1;
                let mut what = format!(
                    "{label} attempt {attempt}: the lock was not granted within {}",
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
        table: st.table_names(),
        attempts: cfg.attempts,
        timeout: wait,
        blockers: match blockers::describe(&in_the_way) {
            w if w.is_empty() => String::new(),
            w => format!(" Held back by: {w}."),
        },
    })
}

/// Who holds any of the plan's tables, each session once.
async fn blockers_of<B: Backend>(
    b: &B,
    ms: &[Migration],
    grace: Duration,
) -> Result<Vec<crate::db::Blocker>> {
    let mut out: Vec<crate::db::Blocker> = Vec::new();
    for m in ms {
        for x in b.blockers(m, grace).await? {
            if !out.iter().any(|o| o.session == x.session) {
                out.push(x);
            }
        }
    }
    Ok(out)
}

/// Records that an attempt was not made because `who` holds the tables: in the state
/// (for `status`), the log, the events and the progress output.
async fn note_blocked<B: Backend>(
    b: &B,
    s: &Session<'_>,
    st: &mut State,
    label: &str,
    attempt: u32,
    who: &str,
) -> Result<()> {
    let detail = format!("{label} waits for a blocker to finish: {who}");
    warn!(attempt, "{detail}");
    s.observer.waiting(Some(&detail));
    st.cutover_attempts += 1;
    st.event(format!("{label} attempt {attempt} not made: {who}"));
    if st.waiting.as_ref().map(|w| &w.detail) != Some(&detail) {
        st.waiting = Some(control::Waiting {
            reason: "blocked".into(),
            since: st
                .waiting
                .as_ref()
                .filter(|w| w.reason == "blocked")
                .map_or_else(chrono::Utc::now, |w| w.since),
            detail,
            replica: None,
            lag_ms: None,
        });
    }
    b.save_state(&st.to_row()).await
}

async fn cleanup<B: Backend>(b: &B, s: &Session<'_>, mut st: State) -> Result<State> {
    let ms = st.migrations();
    // Cutover checked there were none; a forward failure now happened in the moment
    // between that check and the swap, and its row is missing from the new table.
    // Cleanup would make that final: the old table still has it, so roll back instead.
    let late: Vec<String> = all_failures(b, &ms)
        .await?
        .into_iter()
        .filter(|f| {
            f.starts_with("forward")
                || f.split_once(": ")
                    .is_some_and(|(_, rest)| rest.starts_with("forward"))
        })
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
    let last = ms.len().saturating_sub(1);
    // Each table's cleanup is idempotent and saved with its effect; the plan is done
    // with the last.
    for (i, m) in ms.iter().enumerate() {
        let what = if keep {
            format!("reverse triggers dropped; {} kept", m.old)
        } else {
            format!("reverse triggers and {} dropped", m.old)
        };
        let next = table_done(&st, i == last, Phase::Done, what);
        b.cleanup(m, keep, &next.to_row()).await?;
        fault::point("cleanup.table");
        st = next;
    }
    Ok(st)
}

/// `turnout rollback`: back to the table as it was, from any phase before `done`.
pub async fn rollback<B: Backend>(b: &B, s: &Session<'_>, accept_loss: bool) -> Result<State> {
    with_lock(b, s, async {
        let Some(row) = b.load_state(&s.plan.file.name).await? else {
            return Err(Error::State(format!("migration {:?} has not started; there is nothing to roll back", s.plan.file.name)));
        };
        let st = State::from_row(&row)?;
        if st.instant.is_some() && st.phase != Phase::RolledBack {
            return instant::rollback(b, s, st, accept_loss).await;
        }
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
        let ms = st.migrations();
        if ms.is_empty() {
            let next = st.entered(Phase::RolledBack, "rolled back before anything was created");
            b.save_state(&next.to_row()).await?;
            return Ok(next);
        };
        if from == Phase::CutOver && !accept_loss {
            let failures = all_failures(b, &ms).await?;
            let reverse_failures: Vec<_> = failures.iter().filter(|f| f.contains("reverse")).cloned().collect();
            let several = ms.len() > 1;
            let lossy: Vec<String> = ms
                .iter()
                .flat_map(|m| {
                    m.lossy.iter().map(move |c| {
                        if several { format!("{}.{c}", m.table) } else { c.clone() }
                    })
                })
                .collect();
            if !lossy.is_empty() || !reverse_failures.is_empty() {
                let mut why = Vec::new();
                if !lossy.is_empty() {
                    why.push(format!(
                        "column(s) {} have no reverse expression: rows written since cutover get their default (or NULL) there",
                        lossy.join(", ")
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
        let done = if ms.len() > 1 {
            rolling.entered(Phase::RolledBack, format!("rolled back from {from}: {} are as they were", rolling.table_names()))
        } else {
            rolling.entered(Phase::RolledBack, format!("rolled back from {from}: {} is as it was", ms[0].table))
        };
        b.rollback_all(&ms, &done.to_row()).await?;
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
        let failures = if live {
            all_failures(b, &state.migrations()).await?
        } else {
            Vec::new()
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
