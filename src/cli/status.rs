//! `turnout status`: where each migration stands, as text for a person or JSON.

use std::time::Duration;

use crate::engine::control::{Control, InForce};
use crate::engine::{Phase, State};

fn rate_and_eta(st: &State) -> (Option<f64>, Option<Duration>) {
    let b = &st.backfill;
    let (Some(start), end) = (b.started_at, b.finished_at.unwrap_or(st.updated_at)) else {
        return (None, None);
    };
    let secs = (end - start).num_milliseconds() as f64 / 1000.0;
    if secs <= 0.0 || b.rows_copied == 0 {
        return (None, None);
    }
    let rate = b.rows_copied as f64 / secs;
    let left = b.estimated_rows.saturating_sub(b.rows_copied) as f64;
    let eta = (st.phase == Phase::DualWriting).then(|| Duration::from_secs_f64(left / rate));
    (Some(rate), eta)
}

/// Pause and tuning lines: who paused and when, why the running turnout waits, and the
/// backfill settings in force.
fn control_text(st: &State, c: &Control) -> String {
    let mut out = String::new();
    if let Some(p) = &c.paused {
        out.push_str(&format!(
            "\n  PAUSED since {} by {} (a running turnout stops after the batch in hand; `turnout unpause` carries on)",
            p.at.to_rfc3339(),
            p.by
        ));
    }
    if let Some(w) = &st.waiting {
        out.push_str(&format!(
            "\n  waiting since {}: {}",
            w.since.to_rfc3339(),
            w.detail
        ));
    }
    let live = matches!(
        st.phase,
        Phase::Planned | Phase::Prepared | Phase::DualWriting
    );
    if let Some(f) = InForce::of_state(st, c).filter(|_| live) {
        out.push_str(&format!(
            "\n  in force: {}",
            super::control::in_force_text(&f)
        ));
    }
    out
}

pub(super) fn status_text(st: &State, failures: &[String], c: &Control) -> String {
    let (rate, eta) = rate_and_eta(st);
    let mut out = format!("{}: {}", st.name, st.phase);
    if let Some(m) = st.migration.as_ref().filter(|_| st.more.is_empty()) {
        out.push_str(&format!(" (table {:?})", m.table));
    } else if !st.more.is_empty() {
        out.push_str(&format!(" (tables {}, swapped together)", st.table_names()));
    }
    match &st.instant {
        Some(r) => out.push_str(&format!(
            "\n  path: instant ({} statements{}, nothing copied)",
            r.steps.len(),
            if r.applied || st.phase == Phase::Done {
                ", applied"
            } else {
                ""
            }
        )),
        None if st.migration.is_some() => out.push_str("\n  path: copy"),
        None => {}
    }
    if st.backfill.started_at.is_some() && st.more.is_empty() {
        out.push_str(&format!(
            "\n  backfill: {} of ~{} rows in {} batches",
            st.backfill.rows_copied, st.backfill.estimated_rows, st.backfill.batches
        ));
        if let Some(r) = rate {
            out.push_str(&format!(", {}", crate::progress::rows_per_sec(r)));
        }
        if let Some(e) = eta {
            out.push_str(&format!(
                ", ETA {}",
                humantime::format_duration(Duration::from_secs(e.as_secs()))
            ));
        }
    }
    out.push_str(&control_text(st, c));
    if !st.more.is_empty() {
        out.push_str(&tables_text(st));
    }
    if let Some(passed) = st.verify.passed.filter(|_| st.more.is_empty()) {
        out.push_str(&format!(
            "\n  verify: {} ({} rows, {} mismatches)",
            if passed { "passed" } else { "FAILED" },
            st.verify.rows_checked,
            st.verify.mismatches
        ));
    }
    if !failures.is_empty() {
        out.push_str(&format!(
            "\n  {} application writes the triggers could not map (cutover is refused until the plan is fixed): {}",
            failures.len(),
            failures.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
        ));
    }
    out.push_str(&format!(
        "\n  last checkpoint: {}",
        st.updated_at.to_rfc3339()
    ));
    if let Some(e) = st.events.last() {
        out.push_str(&format!(
            "\n  last event: {} — {}",
            e.at.to_rfc3339(),
            e.message
        ));
    }
    out
}

/// A plan of several tables: each table's backfill and verification on a line of its own.
fn tables_text(st: &State) -> String {
    let mut out = String::new();
    for (i, m) in st.migrations().iter().enumerate() {
        let b = st.backfill_of(i);
        out.push_str(&format!("\n  table {:?}:", m.table));
        if b.started_at.is_none() {
            out.push_str(" backfill not started");
        } else {
            out.push_str(&format!(
                " backfill {} of ~{} rows in {} batches{}",
                b.rows_copied,
                b.estimated_rows,
                b.batches,
                if b.finished_at.is_some() {
                    ", done"
                } else {
                    ""
                }
            ));
        }
        let v = st.verify_of(i);
        if let Some(passed) = v.passed {
            out.push_str(&format!(
                "; verify {} ({} rows, {} mismatches)",
                if passed { "passed" } else { "FAILED" },
                v.rows_checked,
                v.mismatches
            ));
        }
    }
    out
}

/// Each table's progress, in plan order (one entry for a plan of one table).
fn tables_json(st: &State) -> Vec<serde_json::Value> {
    st.migrations()
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let b = st.backfill_of(i);
            serde_json::json!({
                "table": m.table,
                "schema": m.schema,
                "backfill": {
                    "rows_copied": b.rows_copied,
                    "rows_estimated": b.estimated_rows,
                    "batches": b.batches,
                    "batch_size": b.batch_size,
                    "started_at": b.started_at,
                    "finished_at": b.finished_at,
                },
                "verify": st.verify_of(i),
            })
        })
        .collect()
}

pub(super) fn status_json(st: &State, failures: &[String], c: &Control) -> serde_json::Value {
    let (rate, eta) = rate_and_eta(st);
    serde_json::json!({
        "name": st.name,
        "phase": st.phase,
        "table": st.migration.as_ref().map(|m| m.table.clone()),
        "tables": tables_json(st),
        "plan_hash": st.plan_hash,
        "path": match (&st.instant, &st.migration) {
            (Some(_), _) => Some("instant"),
            (None, Some(_)) => Some("copy"),
            (None, None) => None,
        },
        "instant": st.instant,
        "backfill": {
            "rows_copied": st.backfill.rows_copied,
            "rows_estimated": st.backfill.estimated_rows,
            "batches": st.backfill.batches,
            "batch_size": st.backfill.batch_size,
            "rows_per_second": rate,
            "eta_seconds": eta.map(|e| e.as_secs()),
        },
        "verify": st.verify,
        "cutover_attempts": st.cutover_attempts,
        "paused": c.paused,
        "waiting": st.waiting,
        "in_force": InForce::of_state(st, c),
        "trigger_failures": failures,
        "last_checkpoint": st.updated_at,
        "events": st.events,
    })
}
