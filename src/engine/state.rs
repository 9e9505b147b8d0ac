//! What turnout remembers about a migration between runs: the phase, the derived
//! migration, the backfill cursor and counters, and an event history. Stored as JSON in
//! one `turnout_state` row per migration, so any machine can resume.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::db::{Cursor, StateRow};
use crate::error::{Error, Result};
use crate::schema::Migration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Planned,
    Prepared,
    DualWriting,
    Backfilled,
    Verified,
    CutOver,
    Done,
    /// A rollback started and has not finished; `rollback` (or `run`) carries it on.
    RollingBack,
    RolledBack,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Planned => "planned",
            Phase::Prepared => "prepared",
            Phase::DualWriting => "dual_writing",
            Phase::Backfilled => "backfilled",
            Phase::Verified => "verified",
            Phase::CutOver => "cut_over",
            Phase::Done => "done",
            Phase::RollingBack => "rolling_back",
            Phase::RolledBack => "rolled_back",
        }
    }

    pub fn parse(s: &str) -> Option<Phase> {
        Phase::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .or(match s {
                "prepare" => Some(Phase::Prepared),
                "dual-write" | "dual_write" => Some(Phase::DualWriting),
                "backfill" => Some(Phase::Backfilled),
                "verify" => Some(Phase::Verified),
                "cutover" => Some(Phase::CutOver),
                "cleanup" => Some(Phase::Done),
                _ => None,
            })
    }

    pub const ALL: [Phase; 9] = [
        Phase::Planned,
        Phase::Prepared,
        Phase::DualWriting,
        Phase::Backfilled,
        Phase::Verified,
        Phase::CutOver,
        Phase::Done,
        Phase::RollingBack,
        Phase::RolledBack,
    ];

    /// The step that leads out of this phase, as the user names it.
    pub fn next_step(self) -> Option<&'static str> {
        match self {
            Phase::Planned => Some("prepare"),
            Phase::Prepared => Some("dual-write"),
            Phase::DualWriting => Some("backfill"),
            Phase::Backfilled => Some("verify"),
            Phase::Verified => Some("cutover"),
            Phase::CutOver => Some("cleanup"),
            Phase::RollingBack => Some("rollback"),
            Phase::Done | Phase::RolledBack => None,
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BackfillProgress {
    pub cursor: Option<Cursor>,
    pub rows_copied: u64,
    pub batches: u64,
    /// Rows per batch the servo has settled on.
    pub batch_size: u64,
    pub estimated_rows: u64,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VerifyProgress {
    pub rows_checked: u64,
    pub chunks: u64,
    pub mismatches: u64,
    pub passed: Option<bool>,
    pub at: Option<DateTime<Utc>>,
}

/// A table after the first of a plan of several: its derivation and its progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableState {
    pub migration: Migration,
    #[serde(default)]
    pub backfill: BackfillProgress,
    #[serde(default)]
    pub verify: VerifyProgress,
}

/// The instant path of a migration: the statements chosen for it and whether the
/// transactional ones have committed (they commit with this record saying so).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstantRecord {
    pub steps: Vec<crate::db::InstantStep>,
    pub applied: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub at: DateTime<Utc>,
    pub phase: Phase,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub name: String,
    pub plan_hash: String,
    /// The canonical plan it was started with, to show what changed if a resume differs.
    pub plan: String,
    pub phase: Phase,
    /// Derived at prepare; `None` while planned. In a plan of several tables, the first.
    pub migration: Option<Migration>,
    /// The first table's backfill.
    pub backfill: BackfillProgress,
    /// The first table's verification.
    pub verify: VerifyProgress,
    /// The plan's further tables in plan order, each with its own progress; empty for a
    /// plan of one table, so its row reads as it always did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more: Vec<TableState>,
    pub cutover_attempts: u32,
    /// The phase a rollback started from.
    pub rollback_from: Option<Phase>,
    pub events: Vec<Event>,
    /// Why the running turnout waits (paused, throttled), for `status`; absent when it
    /// does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<super::control::Waiting>,
    /// Set when the migration takes the instant path: its statements and how far they
    /// went. Absent on the copy path, so its rows read as they always did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instant: Option<InstantRecord>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl State {
    pub fn new(name: &str, plan_hash: &str, plan: &str) -> State {
        let now = Utc::now();
        State {
            name: name.to_string(),
            plan_hash: plan_hash.to_string(),
            plan: plan.to_string(),
            phase: Phase::Planned,
            migration: None,
            backfill: BackfillProgress::default(),
            verify: VerifyProgress::default(),
            more: Vec::new(),
            cutover_attempts: 0,
            rollback_from: None,
            events: Vec::new(),
            waiting: None,
            instant: None,
            created_at: now,
            updated_at: now,
        }
    }

    pub fn event(&mut self, message: impl Into<String>) {
        let now = Utc::now();
        self.events.push(Event {
            at: now,
            phase: self.phase,
            message: message.into(),
        });
        self.updated_at = now;
    }

    /// The state moved on to `phase`, with an event saying so.
    pub fn entered(&self, phase: Phase, message: impl Into<String>) -> State {
        let mut next = self.clone();
        next.phase = phase;
        next.event(message);
        next
    }

    pub fn to_row(&self) -> StateRow {
        StateRow {
            name: self.name.clone(),
            plan_hash: self.plan_hash.clone(),
            phase: self.phase.as_str().to_string(),
            body: serde_json::to_string(self).unwrap_or_default(),
        }
    }

    pub fn from_row(row: &StateRow) -> Result<State> {
        serde_json::from_str(&row.body).map_err(|e| {
            Error::State(format!(
                "the state row of migration {:?} cannot be read: {e}",
                row.name
            ))
        })
    }

    /// Every table's derivation, in plan order; empty while planned.
    pub fn migrations(&self) -> Vec<Migration> {
        self.migration
            .iter()
            .cloned()
            .chain(self.more.iter().map(|t| t.migration.clone()))
            .collect()
    }

    /// Stores the derivations of every table, the first in `migration`.
    pub fn set_migrations(&mut self, ms: Vec<Migration>) {
        let mut ms = ms.into_iter();
        self.migration = ms.next();
        self.more = ms
            .map(|migration| TableState {
                migration,
                backfill: BackfillProgress::default(),
                verify: VerifyProgress::default(),
            })
            .collect();
    }

    /// Tables derived: 0 while planned.
    pub fn table_count(&self) -> usize {
        usize::from(self.migration.is_some()) + self.more.len()
    }

    /// Table `i`'s derivation.
    pub fn migration_of(&self, i: usize) -> Result<&Migration> {
        match i {
            0 => self.migration(),
            _ => self.more.get(i - 1).map(|t| &t.migration).ok_or_else(|| {
                Error::State(format!(
                    "migration {:?} has no table number {}",
                    self.name,
                    i + 1
                ))
            }),
        }
    }

    /// Table `i`'s backfill (the first table's for an index past the end).
    pub fn backfill_of(&self, i: usize) -> &BackfillProgress {
        match i.checked_sub(1).and_then(|j| self.more.get(j)) {
            Some(t) => &t.backfill,
            None => &self.backfill,
        }
    }

    pub fn backfill_of_mut(&mut self, i: usize) -> &mut BackfillProgress {
        match i.checked_sub(1) {
            Some(j) if j < self.more.len() => &mut self.more[j].backfill,
            _ => &mut self.backfill,
        }
    }

    /// Table `i`'s verification.
    pub fn verify_of(&self, i: usize) -> &VerifyProgress {
        match i.checked_sub(1).and_then(|j| self.more.get(j)) {
            Some(t) => &t.verify,
            None => &self.verify,
        }
    }

    pub fn verify_of_mut(&mut self, i: usize) -> &mut VerifyProgress {
        match i.checked_sub(1) {
            Some(j) if j < self.more.len() => &mut self.more[j].verify,
            _ => &mut self.verify,
        }
    }

    /// The tables' names as messages show them: `film, inventory`.
    pub fn table_names(&self) -> String {
        self.migrations()
            .iter()
            .map(|m| m.table.clone())
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn migration(&self) -> Result<&Migration> {
        self.migration.as_ref().ok_or_else(|| {
            Error::State(format!(
                "migration {:?} has no derived shape in phase {}",
                self.name, self.phase
            ))
        })
    }
}
