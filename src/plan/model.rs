//! The plan file as the user writes it: serde structs mirroring the YAML of
//! `docs/plan.md`, with the defaults of the product contract. Unknown keys are errors.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("oneOf" = [
    {"required": ["table", "changes"], "not": {"required": ["tables"]}},
    {"required": ["tables"], "not": {"anyOf": [{"required": ["table"]}, {"required": ["changes"]}]}}
]))]
pub struct PlanFile {
    /// Plan format version; only 1 exists.
    pub version: u32,
    /// Migration id; the state row is keyed by it.
    pub name: String,
    /// Schema (PostgreSQL) or database (MySQL) of the table; default: the connection's.
    /// With `tables`, the schema of every entry that names none.
    #[serde(default)]
    pub schema: Option<String>,
    /// The live table's name exactly as the catalog stores it (single-table form; with
    /// `tables`, leave it out).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub table: String,
    /// Changes applied in order to the live table's current shape (single-table form).
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        with = "serde_yaml::with::singleton_map_recursive"
    )]
    #[schemars(with = "Vec<Change>")]
    pub changes: Vec<Change>,
    #[serde(default)]
    pub backfill: Backfill,
    #[serde(default)]
    pub dual_write: DualWrite,
    #[serde(default)]
    pub verify: Verify,
    #[serde(default)]
    pub cutover: Cutover,
    #[serde(default)]
    pub cleanup: Cleanup,
    /// New definitions for views over the table that use a column the plan drops or
    /// renames (PostgreSQL); every other dependent view is carried as it is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub views: Vec<ViewDefinition>,
    /// Several tables migrated together and swapped in one cutover, instead of `table`
    /// and `changes` at the top.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<TableSpec>,
    /// `auto` takes the database's instant path when every change allows it, else copies;
    /// `copy` always copies; `instant` refuses a plan the database cannot make instantly.
    /// Absent from the canonical plan when `auto`, so older plans keep their hash.
    #[serde(default, skip_serializing_if = "Strategy::is_auto")]
    pub strategy: Strategy,
}

/// How the plan's changes are made: `strategy` in the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The instant path when the database can make every change without rewriting the
    /// table or blocking writes beyond a brief lock; the copy path otherwise.
    #[default]
    Auto,
    /// Always the copy path (shadow table, dual-write, backfill, verify, cutover).
    Copy,
    /// Only the instant path: a plan the database cannot make instantly is refused.
    Instant,
}

impl Strategy {
    pub fn is_auto(&self) -> bool {
        *self == Strategy::Auto
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Auto => "auto",
            Strategy::Copy => "copy",
            Strategy::Instant => "instant",
        }
    }
}

/// One table of a plan: its name, its changes and the new views over it. A single-table
/// plan is a list of one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    /// The live table's name exactly as the catalog stores it.
    pub table: String,
    /// Schema (PostgreSQL) or database (MySQL) of the table; default: the plan's, else
    /// the connection's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// Changes applied in order to the live table's current shape.
    #[serde(with = "serde_yaml::with::singleton_map_recursive")]
    #[schemars(with = "Vec<Change>")]
    pub changes: Vec<Change>,
    /// New definitions for views over this table (PostgreSQL), as at the top of a
    /// single-table plan.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub views: Vec<ViewDefinition>,
}

impl PlanFile {
    /// The plan's tables in order: the single-table form is a list of one. Each entry's
    /// schema defaults to the plan's.
    pub fn specs(&self) -> Vec<TableSpec> {
        if self.tables.is_empty() {
            return vec![TableSpec {
                table: self.table.clone(),
                schema: self.schema.clone(),
                changes: self.changes.clone(),
                views: self.views.clone(),
            }];
        }
        self.tables
            .iter()
            .map(|t| TableSpec {
                schema: t.schema.clone().or_else(|| self.schema.clone()),
                ..t.clone()
            })
            .collect()
    }

    /// The tables as the user reads them in messages: `film, inventory`.
    pub fn table_names(&self) -> String {
        self.specs()
            .iter()
            .map(|t| t.table.clone())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A dependent view's query over the table's new shape, applied at cutover.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ViewDefinition {
    /// The view's name; it lives in the table's schema unless `schema` says otherwise.
    pub name: String,
    /// The view's schema; default: the table's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// The SELECT the view runs after cutover, naming the table and its new columns.
    pub definition: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Change {
    AddColumn(AddColumn),
    DropColumn(DropColumn),
    AlterColumn(AlterColumn),
    RenameColumn(RenameColumn),
    AddIndex(AddIndex),
    DropIndex(DropIndex),
}

impl Change {
    pub fn kind(&self) -> &'static str {
        match self {
            Change::AddColumn(_) => "add_column",
            Change::DropColumn(_) => "drop_column",
            Change::AlterColumn(_) => "alter_column",
            Change::RenameColumn(_) => "rename_column",
            Change::AddIndex(_) => "add_index",
            Change::DropIndex(_) => "drop_index",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AddColumn {
    pub name: String,
    /// The database's own type syntax, e.g. `numeric(12,2)`.
    #[serde(rename = "type")]
    pub sql_type: String,
    #[serde(default = "yes")]
    pub nullable: bool,
    /// DEFAULT clause of the new column (SQL).
    #[serde(default)]
    pub default: Option<String>,
    /// SQL over the old row's columns that fills the column (backfill and dual-write).
    #[serde(default)]
    pub from: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DropColumn {
    pub name: String,
    /// SQL over the new row that keeps the old table whole after cutover.
    #[serde(default)]
    pub reverse: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlterColumn {
    pub name: String,
    #[serde(default, rename = "type")]
    pub sql_type: Option<String>,
    /// Forward SQL over the old row (default: the column itself).
    #[serde(default)]
    pub using: Option<String>,
    /// Reverse SQL over the new row.
    #[serde(default)]
    pub reverse: Option<String>,
    #[serde(default)]
    pub nullable: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RenameColumn {
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AddIndex {
    pub name: String,
    pub columns: Vec<String>,
    #[serde(default)]
    pub unique: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DropIndex {
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum BatchSize {
    /// Tuned toward `target_batch_time`.
    #[schemars(with = "String")]
    Auto,
    Rows(u64),
}

impl<'de> Deserialize<'de> for BatchSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Rows(u64),
            Word(String),
        }
        match Either::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected a positive whole number of rows, or `auto`")
        })? {
            Either::Rows(n) => Ok(BatchSize::Rows(n)),
            Either::Word(w) if w == "auto" => Ok(BatchSize::Auto),
            Either::Word(w) => Err(serde::de::Error::custom(format!(
                "expected a positive whole number of rows, or `auto`; found {w:?}"
            ))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Backfill {
    #[serde(default = "auto")]
    pub batch_size: BatchSize,
    #[serde(default = "ms200", with = "human")]
    #[schemars(with = "String")]
    pub target_batch_time: Duration,
    #[serde(default, with = "human")]
    #[schemars(with = "String")]
    pub pause: Duration,
    #[serde(default)]
    pub throttle: Option<Throttle>,
}

impl Default for Backfill {
    fn default() -> Self {
        Backfill {
            batch_size: BatchSize::Auto,
            target_batch_time: ms200(),
            pause: Duration::ZERO,
            throttle: None,
        }
    }
}

/// What holds the backfill (and verify) back: a query's value above `max`, or a replica
/// whose replay lags more than `max_lag`. Either pair, or both.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Throttle {
    /// SQL returning one number; backfill waits while it is above `max`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// URLs of the primary's replicas (same scheme as the primary's): backfill and
    /// verify wait while any replays more than `max_lag` behind. Absent from the
    /// canonical plan when empty, so older plans keep their hash.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "human_opt")]
    #[schemars(with = "Option<String>")]
    pub max_lag: Option<Duration>,
}

/// What a dual-write trigger does when the plan's expression fails for a row the
/// application writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Keep the application's write, leave the shadow row out, and record the failure
    /// in `turnout_failures` for verify and status to report (verify then fails).
    #[default]
    Record,
    /// Fail the application's statement with the expression's error.
    Reject,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DualWrite {
    #[serde(default)]
    pub on_error: OnError,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum VerifyMode {
    Full,
    Sample,
    Off,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Verify {
    #[serde(default = "full")]
    pub mode: VerifyMode,
    #[serde(default = "five_percent")]
    pub sample_rate: f64,
    #[serde(default = "twenty")]
    pub max_diffs: u64,
}

impl Default for Verify {
    fn default() -> Self {
        Verify {
            mode: VerifyMode::Full,
            sample_rate: five_percent(),
            max_diffs: twenty(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Cutover {
    #[serde(default = "two_s", with = "human")]
    #[schemars(with = "String")]
    pub lock_timeout: Duration,
    #[serde(default = "ten")]
    pub attempts: u32,
    #[serde(default = "ms500", with = "human")]
    #[schemars(with = "String")]
    pub retry_delay: Duration,
    /// Off unless set: once a session has held the cutover back this long, turnout ends it
    /// and proceeds. Absent from the canonical plan when unset, so older plans keep their hash.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "human_opt")]
    #[schemars(with = "Option<String>")]
    pub kill_blockers_after: Option<Duration>,
}

impl Default for Cutover {
    fn default() -> Self {
        Cutover {
            lock_timeout: two_s(),
            attempts: ten(),
            retry_delay: ms500(),
            kill_blockers_after: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Cleanup {
    #[serde(default)]
    pub keep_old_table: bool,
}

fn yes() -> bool {
    true
}
fn auto() -> BatchSize {
    BatchSize::Auto
}
fn ms200() -> Duration {
    Duration::from_millis(200)
}
fn ms500() -> Duration {
    Duration::from_millis(500)
}
fn two_s() -> Duration {
    Duration::from_secs(2)
}
fn ten() -> u32 {
    10
}
fn twenty() -> u64 {
    20
}
fn five_percent() -> f64 {
    0.05
}
fn full() -> VerifyMode {
    VerifyMode::Full
}

/// Durations as humantime strings (`200ms`, `2s`, `1m`).
mod human {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)
            .map_err(|_| serde::de::Error::custom("expected a duration such as 200ms, 2s or 1m"))?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "expected a duration such as 200ms, 2s or 1m; {text:?}: {e}"
            ))
        })
    }
}

mod human_opt {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::human::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::human::deserialize(d).map(Some)
    }
}
