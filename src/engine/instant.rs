//! The instant path (`strategy: auto | instant`): when the database can make every change
//! of a one-table plan without rewriting the table and without blocking writes beyond a
//! brief lock, the changes are made in place instead of through a shadow copy. The
//! backend says whether and with what statements ([`Backend::instant_path`]); this file
//! decides, runs them under the cutover's lock timeout and attempts, records them in the
//! state, and rolls them back by their reverse statements.
//!
//! The state stays `planned` until the transactional statements commit together with a
//! record saying so; online index builds (outside any transaction) follow, each safe to
//! repeat; the migration is then `done`. A rollback from `done` runs the reverse
//! statements, refusing those that lose data unless the user accepts the loss.

use std::time::Instant;

use tracing::info;

use super::state::InstantRecord;
use super::{Attempt, Phase, Session, State, attempts};
use crate::db::{Backend, InstantStep, InstantVerdict, PhaseSql};
use crate::error::{Error, Result};
use crate::fault;
use crate::plan::{Plan, Strategy};
use crate::schema::Migration;

/// Which path the plan takes on this database, asked of the backend.
pub async fn verdict<B: Backend>(b: &B, plan: &Plan, ms: &[Migration]) -> Result<InstantVerdict> {
    if plan.file.strategy == Strategy::Copy {
        return Ok(InstantVerdict::Copy(vec!["strategy: copy".into()]));
    }
    let specs = plan.file.specs();
    match (ms, specs.as_slice()) {
        ([m], [spec]) => b.instant_path(m, &spec.changes).await,
        _ => Ok(InstantVerdict::Copy(vec![format!(
            "tables: a plan of {} tables is copied and swapped in one cutover; the instant path changes one table",
            ms.len()
        )])),
    }
}

/// The refusal of `strategy: instant` for a plan the database cannot make instantly.
pub fn refusal(ms: &[Migration], plan: &Plan, reasons: &[String]) -> Error {
    Error::Refused {
        table: if ms.is_empty() {
            plan.file.table_names()
        } else {
            ms.iter().map(shown).collect::<Vec<_>>().join(", ")
        },
        problems: reasons
            .iter()
            .map(|r| {
                format!(
                    "{r} (strategy: instant takes no copy path; use `strategy: auto` to copy it)"
                )
            })
            .collect(),
    }
}

fn shown(m: &Migration) -> String {
    match &m.schema {
        Some(s) => format!("{s}.{}", m.table),
        None => m.table.clone(),
    }
}

/// `turnout plan`'s account of the path: a first line saying which and why, then for
/// the instant path its statements and their reverse; the copy path's phases follow it.
pub fn preview(verdict: &InstantVerdict) -> Vec<PhaseSql> {
    match verdict {
        InstantVerdict::Copy(reasons) => vec![PhaseSql {
            phase: format!("path: copy, because {}", reasons.join("; ")),
            statements: Vec::new(),
        }],
        InstantVerdict::Instant(steps) => {
            let (online, inside): (Vec<&InstantStep>, Vec<&InstantStep>) =
                steps.iter().partition(|x| x.online_index.is_some());
            let mut out = vec![PhaseSql {
                phase: "path: instant, because the database makes every change in place (no copy, no rewrite)".into(),
                statements: Vec::new(),
            }];
            if !inside.is_empty() {
                out.push(PhaseSql {
                    phase: "instant (bounded by cutover.lock_timeout, retried per cutover.attempts; one transaction where DDL is transactional)".into(),
                    statements: inside.iter().map(|x| x.forward.clone()).collect(),
                });
            }
            if !online.is_empty() {
                out.push(PhaseSql {
                    phase: "instant (online index builds, outside a transaction)".into(),
                    statements: online.iter().map(|x| x.forward.clone()).collect(),
                });
            }
            out.push(PhaseSql {
                phase: "rollback (reverse statements)".into(),
                statements: steps.iter().rev().map(|x| x.reverse.clone()).collect(),
            });
            for x in steps.iter().filter(|x| x.loses.is_some()) {
                out.push(PhaseSql {
                    phase: format!(
                        "rollback of {} needs --accept-loss: {}",
                        x.change,
                        x.loses.as_deref().unwrap_or_default()
                    ),
                    statements: Vec::new(),
                });
            }
            out
        }
    }
}

/// At the start of a migration: asks which path the plan takes and records an instant
/// one in `st`. False: the copy path (with its reason among the events).
pub(super) async fn choose<B: Backend>(b: &B, s: &Session<'_>, st: &mut State) -> Result<bool> {
    if s.plan.file.strategy == Strategy::Copy {
        return Ok(false);
    }
    let ms = super::derive_all(b, s.plan).await?;
    match verdict(b, s.plan, &ms).await? {
        InstantVerdict::Instant(steps) => {
            let what = steps
                .iter()
                .map(|x| x.change.clone())
                .collect::<Vec<_>>()
                .join(", ");
            st.set_migrations(ms);
            st.instant = Some(InstantRecord {
                steps,
                applied: false,
            });
            st.event(format!(
                "instant path: the database makes every change in place ({what})"
            ));
            b.save_state(&st.to_row()).await?;
            Ok(true)
        }
        InstantVerdict::Copy(reasons) if s.plan.file.strategy == Strategy::Instant => {
            Err(refusal(&ms, s.plan, &reasons))
        }
        InstantVerdict::Copy(reasons) => {
            // Saved with prepare's first state row.
            st.event(format!("copy path, because {}", reasons.join("; ")));
            Ok(false)
        }
    }
}

/// Makes the recorded instant changes: the transactional ones in one attempt-bounded
/// transaction, then the online index builds; `done` after the last.
pub(super) async fn apply<B: Backend>(b: &B, s: &Session<'_>, mut st: State) -> Result<State> {
    let started = Instant::now();
    s.observer.phase_started("instant");
    fault::point("phase.instant.before");
    let m = st.migration()?.clone();
    let Some(record) = st.instant.clone() else {
        return Err(Error::State(format!(
            "migration {:?} has no instant path recorded",
            st.name
        )));
    };
    let inside: Vec<String> = record
        .steps
        .iter()
        .filter(|x| x.online_index.is_none())
        .map(|x| x.forward.clone())
        .collect();
    if !record.applied {
        let said = format!(
            "{} statements committed in one transaction on {}",
            inside.len(),
            m.table
        );
        let next_of = |st: &State| {
            let mut next = st.clone();
            if let Some(r) = next.instant.as_mut() {
                r.applied = true;
            }
            next.event(said.clone());
            next
        };
        st = if inside.is_empty() {
            let next = next_of(&st);
            b.save_state(&next.to_row()).await?;
            next
        } else {
            attempts(
                b,
                s,
                st,
                std::slice::from_ref(&m),
                Attempt::Instant(&inside),
                &next_of,
            )
            .await?
        };
        fault::point("instant.applied");
    }
    for step in record.steps.iter().filter(|x| x.online_index.is_some()) {
        if s.cancel.is_cancelled() {
            return Err(s.interrupted(st.phase));
        }
        b.keep_lock(&st.name).await?;
        fault::point("instant.index.before");
        b.online_index(&m, step, false).await?;
        st.event(format!("{}: index built online", step.change));
        b.save_state(&st.to_row()).await?;
    }
    let done = st.entered(
        Phase::Done,
        format!(
            "instant: {} changed in place in {} ms, nothing copied",
            m.table,
            started.elapsed().as_millis()
        ),
    );
    b.save_state(&done.to_row()).await?;
    fault::point("phase.instant.after");
    let summary = done
        .events
        .last()
        .map(|e| e.message.clone())
        .unwrap_or_default();
    s.observer
        .phase_finished("instant", started.elapsed(), &summary);
    info!(phase = %done.phase, "{summary}");
    Ok(done)
}

/// `turnout rollback` of an instant migration: the reverse statements, last change
/// first. Refused without `accept_loss` when one of them cannot give back what the
/// forward change took (a dropped column's values, text longer than a narrowed limit).
pub(super) async fn rollback<B: Backend>(
    b: &B,
    s: &Session<'_>,
    st: State,
    accept_loss: bool,
) -> Result<State> {
    let Some(record) = st.instant.clone() else {
        return Err(Error::State(format!(
            "migration {:?} has no instant path recorded",
            st.name
        )));
    };
    let m = st.migration()?.clone();
    let lost: Vec<String> = record
        .steps
        .iter()
        .filter_map(|x| x.loses.as_ref().map(|l| format!("{}: {l}", x.change)))
        .collect();
    let reached = st.phase == Phase::Done || record.applied || st.phase == Phase::RollingBack;
    if reached && !lost.is_empty() && !accept_loss {
        return Err(Error::Usage(format!(
            "rollback of the instant migration {:?} cannot restore everything: {}. Run `turnout rollback {} --accept-loss` to roll back anyway",
            st.name,
            lost.join("; "),
            s.plan.path
        )));
    }
    let from = match st.phase {
        Phase::RollingBack => st.rollback_from.unwrap_or(Phase::Done),
        p => p,
    };
    let mut rolling = st.entered(Phase::RollingBack, format!("rollback started from {from}"));
    rolling.rollback_from = Some(from);
    b.save_state(&rolling.to_row()).await?;
    fault::point("rollback.before");
    // Online indexes came last, so they go first; dropping one that is not there is fine.
    for step in record
        .steps
        .iter()
        .rev()
        .filter(|x| x.online_index.is_some())
    {
        b.keep_lock(&rolling.name).await?;
        b.online_index(&m, step, true).await?;
    }
    let reverse: Vec<String> = record
        .steps
        .iter()
        .rev()
        .filter(|x| x.online_index.is_none())
        .map(|x| x.reverse.clone())
        .collect();
    let said = format!(
        "rolled back from {from}: {} is as it was (reverse statements of the instant path)",
        m.table
    );
    let next_of = |st: &State| {
        let mut next = st.entered(Phase::RolledBack, said.clone());
        if let Some(r) = next.instant.as_mut() {
            r.applied = false;
        }
        next
    };
    let done = if record.applied && !reverse.is_empty() {
        attempts(
            b,
            s,
            rolling,
            std::slice::from_ref(&m),
            Attempt::Instant(&reverse),
            &next_of,
        )
        .await?
    } else {
        let next = next_of(&rolling);
        b.save_state(&next.to_row()).await?;
        next
    };
    fault::point("rollback.after");
    super::control::forget(b, &done.name).await?;
    Ok(done)
}
