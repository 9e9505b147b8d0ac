//! A directory of plans against the stored history: which plans are done, which one is
//! in progress, which come next, and what stops a run before it touches anything (a done
//! plan whose file changed since, a new plan sorted before one that already ran). The
//! survey and the schedule are pure functions of the plans and the saved states; the
//! runner takes each scheduled plan to `done` through [`super::run`], one after the
//! other, so an interrupted directory run carries on where it stopped.

use std::collections::HashMap;

use tokio_util::sync::CancellationToken;

use super::state::{Phase, State};
use super::{Observer, RunOptions, Session, check, run};
use crate::db::StateRow;
use crate::db::{Backend, PhaseSql};
use crate::error::{Error, Result};
use crate::plan::dir::{DirPlan, PlanDir};
use crate::schema::Migration;

/// Why a plan of the directory stops a run.
#[derive(Debug, Clone, PartialEq)]
pub enum Problem {
    /// Done, but its file now says something else (`diff`: - ran with, + the file).
    Edited { diff: String },
    /// Started with another plan and not finished: resuming it with this file is refused.
    Changed { diff: String },
    /// Not run yet, but sorted before `later`, which has run.
    Gap { later: String },
    /// A rollback of it was interrupted; it must be finished first.
    RollingBack,
}

/// One plan of the directory with its saved state.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its place in [`PlanDir::plans`].
    pub index: usize,
    pub state: Option<State>,
    pub problem: Option<Problem>,
}

impl Entry {
    /// Done: the next `run DIR` will not touch it.
    pub fn done(&self) -> bool {
        self.state.as_ref().is_some_and(|s| s.phase == Phase::Done)
    }

    /// Has run or is running: a state that a rollback has not undone.
    fn ran(&self) -> bool {
        self.state
            .as_ref()
            .is_some_and(|s| s.phase != Phase::RolledBack)
    }
}

/// What the user allows a directory run to do that it refuses by default.
#[derive(Debug, Clone, Copy, Default)]
pub struct Allow {
    /// Run a plan that sorts before one already run (a gap).
    pub out_of_order: bool,
    /// Take a done plan whose file changed since as done, and skip it.
    pub edited: bool,
}

/// Each plan of the directory with its state (matched by migration name) and what, if
/// anything, is wrong with it. Pure: the states are what `turnout_state` holds.
pub fn survey(dir: &PlanDir, states: &[State]) -> Vec<Entry> {
    let by_name: HashMap<&str, &State> = states.iter().map(|s| (s.name.as_str(), s)).collect();
    let mut entries: Vec<Entry> = dir
        .plans
        .iter()
        .enumerate()
        .map(|(index, p)| {
            let state = by_name.get(p.plan.file.name.as_str()).map(|s| (*s).clone());
            let problem = state.as_ref().and_then(|st| {
                let diff = || crate::plan::diff(&st.plan, &p.plan.canonical());
                match st.phase {
                    Phase::RollingBack => Some(Problem::RollingBack),
                    Phase::RolledBack => None,
                    _ if st.plan_hash == p.plan.hash => None,
                    Phase::Done => Some(Problem::Edited { diff: diff() }),
                    _ => Some(Problem::Changed { diff: diff() }),
                }
            });
            Entry {
                index,
                state,
                problem,
            }
        })
        .collect();
    let last_ran = entries.iter().rposition(Entry::ran);
    if let Some(last) = last_ran {
        let later = dir.plans[last].file.clone();
        for e in entries.iter_mut().take(last) {
            if !e.ran() && e.problem.is_none() {
                e.problem = Some(Problem::Gap {
                    later: later.clone(),
                });
            }
        }
    }
    entries
}

/// What the problem says, in the user's words, with what to do about it.
pub fn explain(dir: &PlanDir, e: &Entry) -> Option<String> {
    let p = &dir.plans[e.index];
    let name = &p.plan.file.name;
    Some(match e.problem.as_ref()? {
        Problem::Edited { diff } => format!(
            "{}: migration {name:?} is done, but the file changed since it ran (- ran with, + this file):\n{}Restore the file (a done migration cannot run again; write a new plan for a new change), or pass --allow-edited to skip it as done",
            p.file, diff
        ),
        Problem::Changed { diff } => format!(
            "{}: migration {name:?} was started with a different plan and is {}; resuming it with this file is refused (- started with, + this file):\n{}Restore the file to carry on, or roll it back with the original plan first",
            p.file,
            e.state.as_ref().map_or(Phase::Planned, |s| s.phase),
            diff
        ),
        Problem::Gap { later } => format!(
            "{}: migration {name:?} has not run, but its file sorts before {later}, which has; running it now would apply the plans out of order. Rename it to sort after {later}, or pass --allow-out-of-order to run it anyway",
            p.file
        ),
        Problem::RollingBack => format!(
            "{}: a rollback of migration {name:?} was interrupted; finish it with `turnout rollback {}` first",
            p.file, p.plan.path
        ),
    })
}

/// The plans a run takes to `done`, in order: every plan not done yet. Refused with
/// every reason at once when a plan's problem is not allowed.
pub fn schedule(dir: &PlanDir, entries: &[Entry], allow: Allow) -> Result<Vec<usize>> {
    let refused: Vec<String> = entries
        .iter()
        .filter(|e| match &e.problem {
            None => false,
            Some(Problem::Edited { .. }) => !allow.edited,
            Some(Problem::Gap { .. }) => !allow.out_of_order,
            Some(Problem::Changed { .. } | Problem::RollingBack) => true,
        })
        .filter_map(|e| explain(dir, e))
        .collect();
    if !refused.is_empty() {
        return Err(Error::History {
            dir: dir.path.clone(),
            problems: refused,
        });
    }
    Ok(entries
        .iter()
        .filter(|e| !e.done())
        .map(|e| e.index)
        .collect())
}

/// The saved states of the directory's migrations, among every saved state.
fn states(dir: &PlanDir, rows: &[StateRow]) -> Result<Vec<State>> {
    let names: std::collections::HashSet<&str> = dir
        .plans
        .iter()
        .map(|p| p.plan.file.name.as_str())
        .collect();
    rows.iter()
        .filter(|r| names.contains(r.name.as_str()))
        .map(State::from_row)
        .collect()
}

/// Every plan of the directory with its saved state, changing nothing: without a state
/// table nothing has run yet (`check`, `plan` and `status` do not create it).
pub async fn history<B: Backend>(b: &B, dir: &PlanDir) -> Result<Vec<Entry>> {
    let saved = match b.list_states().await {
        Ok(rows) => states(dir, &rows)?,
        Err(_) => Vec::new(),
    };
    Ok(survey(dir, &saved))
}

/// A plan that `check DIR` found can run.
#[derive(Debug, Clone)]
pub struct Checked {
    pub index: usize,
    pub migration: Migration,
    /// The earlier pending plan of the same table whose result it was checked against
    /// (the live table does not have that shape yet, so its expressions are compiled
    /// only when it runs).
    pub after: Option<usize>,
}

/// `turnout check DIR` with a database, changing nothing: the history is consistent,
/// the first pending plan of each table is preflighted against the live table, and each
/// later one is derived from the shape the plans before it leave.
pub async fn check_dir<B: Backend>(
    b: &B,
    dir: &PlanDir,
    allow: Allow,
) -> Result<(Vec<Entry>, Vec<Checked>)> {
    let entries = history(b, dir).await?;
    let order = schedule(dir, &entries, allow)?;
    let mut out: Vec<Checked> = Vec::new();
    let mut last_of_table: HashMap<(Option<String>, String), usize> = HashMap::new();
    for index in order {
        let p = &dir.plans[index];
        if !p.plan.file.tables.is_empty() {
            return Err(Error::Usage(format!(
                "{}: a plan of several tables (`tables`) runs on its own, not in a directory of plans",
                p.file
            )));
        }
        let key = (p.plan.file.schema.clone(), p.plan.file.table.clone());
        let checked = match last_of_table.get(&key) {
            None => {
                let migration = check(b, &p.plan)
                    .await
                    .map_err(|e| in_file(e, p, None))?
                    .into_iter()
                    .next()
                    .ok_or_else(|| Error::State(format!("{}: no table to check", p.file)))?;
                Checked {
                    index,
                    migration,
                    after: None,
                }
            }
            Some(&k) => {
                let prev = &out[k];
                let by = &dir.plans[prev.index];
                let mut migration =
                    Migration::derive(&p.plan, &prev.migration.after).map_err(|problems| {
                        in_file(
                            Error::Refused {
                                table: p.plan.file.table.clone(),
                                problems,
                            },
                            p,
                            Some(by),
                        )
                    })?;
                migration.schema = prev.migration.schema.clone();
                Checked {
                    index,
                    migration,
                    after: Some(prev.index),
                }
            }
        };
        last_of_table.insert(key, out.len());
        out.push(checked);
    }
    Ok((entries, out))
}

/// Names the plan file (and the plan whose result it was checked against) in a refusal.
fn in_file(e: Error, p: &DirPlan, after: Option<&DirPlan>) -> Error {
    match e {
        Error::Refused { table, problems } => Error::Refused {
            table: match after {
                None => format!("{table} (plan {})", p.file),
                Some(a) => format!("{table} (plan {}, as {} leaves it)", p.file, a.file),
            },
            problems,
        },
        other => other,
    }
}

/// `turnout plan DIR`: the SQL of every phase of every plan still to run.
pub async fn preview_dir<B: Backend>(
    b: &B,
    dir: &PlanDir,
    allow: Allow,
) -> Result<Vec<(Checked, Vec<PhaseSql>)>> {
    let (_, checked) = check_dir(b, dir, allow).await?;
    let mut out = Vec::new();
    for c in checked {
        let plan = &dir.plans[c.index].plan;
        let verdict = super::instant::verdict(b, plan, std::slice::from_ref(&c.migration)).await?;
        let sql = super::preview_of(b, &verdict, vec![c.migration.clone()])
            .into_iter()
            .flat_map(|(_, sql)| sql)
            .collect();
        out.push((c, sql));
    }
    Ok(out)
}

/// What the runner tells whoever watches it, between plans.
pub trait DirObserver: Sync {
    fn plan_starting(&self, _p: &DirPlan, _saved: Option<&State>) {}
    fn plan_finished(&self, _p: &DirPlan, _st: &State) {}
}

/// Everything a directory run needs besides the database.
pub struct DirSession<'a> {
    pub dir: &'a PlanDir,
    pub cancel: CancellationToken,
    pub observer: &'a dyn Observer,
    pub announce: &'a dyn DirObserver,
}

/// `turnout run DIR`: takes every plan not done yet to `done`, one after the other in
/// file order; the last one stops at `until` when given. The schedule is made from the
/// states saved now (refused as [`schedule`] refuses); a failure stops the run with the
/// plans before it done and this one where its checkpoint says, and `run DIR` again
/// carries on from there.
pub async fn run_dir<B: Backend>(
    b: &B,
    s: &DirSession<'_>,
    allow: Allow,
    until: Option<Phase>,
) -> Result<Vec<State>> {
    b.ensure_state_table().await?;
    let entries = survey(s.dir, &states(s.dir, &b.list_states().await?)?);
    let order = schedule(s.dir, &entries, allow)?;
    let mut finished = Vec::new();
    for (n, &index) in order.iter().enumerate() {
        let p = &s.dir.plans[index];
        s.announce.plan_starting(p, entries[index].state.as_ref());
        let session = Session {
            plan: &p.plan,
            cancel: s.cancel.clone(),
            observer: s.observer,
        };
        let opts = RunOptions {
            until: if n + 1 == order.len() { until } else { None },
            single_step: false,
        };
        // A resume hint names the directory, so the whole run carries on.
        let st = run(b, &session, &opts)
            .await
            .map_err(|e| e.with_plan_path(&s.dir.path))?;
        s.announce.plan_finished(p, &st);
        let stopped_early = st.phase != Phase::Done;
        finished.push(st);
        if stopped_early {
            break;
        }
    }
    Ok(finished)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::parse;

    fn dir(names: &[&str]) -> PlanDir {
        PlanDir {
            path: "plans/dir".into(),
            plans: names
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let file = format!("{:04}-{n}.yaml", i + 1);
                    let text = format!(
                        "version: 1\nname: {n}\ntable: t\nchanges:\n  - add_column: {{name: c_{n}, type: integer}}\n"
                    );
                    DirPlan {
                        plan: parse(&text, &file).expect("plan"),
                        file,
                    }
                })
                .collect(),
        }
    }

    fn state(d: &PlanDir, i: usize, phase: Phase) -> State {
        let p = &d.plans[i].plan;
        let mut st = State::new(&p.file.name, &p.hash, &p.canonical());
        st.phase = phase;
        st
    }

    fn problems(entries: &[Entry]) -> Vec<Option<&Problem>> {
        entries.iter().map(|e| e.problem.as_ref()).collect()
    }

    #[test]
    fn done_plans_are_skipped_and_the_rest_run_in_file_order() {
        let d = dir(&["a", "b", "c", "d"]);
        let saved = [state(&d, 0, Phase::Done), state(&d, 1, Phase::Backfilled)];
        let entries = survey(&d, &saved);
        assert_eq!(problems(&entries), [None, None, None, None]);
        assert_eq!(
            schedule(&d, &entries, Allow::default()).expect("runs"),
            [1, 2, 3]
        );
    }

    #[test]
    fn everything_done_schedules_nothing() {
        let d = dir(&["a", "b"]);
        let saved = [state(&d, 0, Phase::Done), state(&d, 1, Phase::Done)];
        let entries = survey(&d, &saved);
        assert!(
            schedule(&d, &entries, Allow::default())
                .expect("runs")
                .is_empty()
        );
    }

    #[test]
    fn an_edited_done_plan_is_refused_with_the_diff_unless_allowed() {
        let d = dir(&["a", "b"]);
        let mut edited = state(&d, 0, Phase::Done);
        edited.plan_hash = "other".into();
        edited.plan = edited.plan.replace("c_a", "c_old");
        let entries = survey(&d, &[edited]);
        let Some(Problem::Edited { diff }) = &entries[0].problem else {
            panic!("not seen as edited: {:?}", entries[0].problem);
        };
        assert!(diff.contains("- ") && diff.contains("c_old") && diff.contains("c_a"));
        let err = schedule(&d, &entries, Allow::default()).expect_err("refused");
        assert_eq!(err.exit_code(), 2);
        let text = err.to_string();
        assert!(
            text.contains("0001-a.yaml") && text.contains("--allow-edited"),
            "{text}"
        );
        let allow = Allow {
            edited: true,
            ..Allow::default()
        };
        assert_eq!(schedule(&d, &entries, allow).expect("allowed"), [1]);
    }

    #[test]
    fn a_new_plan_sorted_before_one_that_ran_is_a_gap() {
        let d = dir(&["a", "new", "c", "d"]);
        let saved = [state(&d, 0, Phase::Done), state(&d, 2, Phase::Done)];
        let entries = survey(&d, &saved);
        assert_eq!(
            entries[1].problem,
            Some(Problem::Gap {
                later: "0003-c.yaml".into()
            })
        );
        assert_eq!(entries[3].problem, None, "a plan after the last run is new");
        let text = schedule(&d, &entries, Allow::default())
            .expect_err("refused")
            .to_string();
        assert!(
            text.contains("0002-new.yaml") && text.contains("--allow-out-of-order"),
            "{text}"
        );
        let allow = Allow {
            out_of_order: true,
            ..Allow::default()
        };
        assert_eq!(schedule(&d, &entries, allow).expect("allowed"), [1, 3]);
    }

    #[test]
    fn a_rolled_back_plan_runs_again_but_only_in_order() {
        let d = dir(&["a", "b", "c"]);
        let last = [state(&d, 0, Phase::Done), state(&d, 2, Phase::RolledBack)];
        let entries = survey(&d, &last);
        assert_eq!(problems(&entries), [None, None, None]);
        assert_eq!(
            schedule(&d, &entries, Allow::default()).expect("runs"),
            [1, 2]
        );
        let middle = [state(&d, 1, Phase::RolledBack), state(&d, 2, Phase::Done)];
        let entries = survey(&d, &middle);
        assert!(matches!(entries[1].problem, Some(Problem::Gap { .. })));
        assert!(matches!(entries[0].problem, Some(Problem::Gap { .. })));
    }

    #[test]
    fn an_unfinished_plan_started_with_another_plan_is_always_refused() {
        let d = dir(&["a", "b"]);
        let mut changed = state(&d, 0, Phase::DualWriting);
        changed.plan_hash = "other".into();
        let mut rolling = state(&d, 1, Phase::RollingBack);
        rolling.plan_hash = d.plans[1].plan.hash.clone();
        let entries = survey(&d, &[changed, rolling]);
        assert!(matches!(entries[0].problem, Some(Problem::Changed { .. })));
        assert_eq!(entries[1].problem, Some(Problem::RollingBack));
        let all = Allow {
            out_of_order: true,
            edited: true,
        };
        let text = schedule(&d, &entries, all)
            .expect_err("refused")
            .to_string();
        assert!(
            text.contains("0001-a.yaml") && text.contains("turnout rollback 0002-b.yaml"),
            "{text}"
        );
    }
}
