//! MySQL 8 / MariaDB 10.6+ (InnoDB): the backend answers the engine's questions with
//! triggers for dual-write, keyset batches for backfill, server-side chunk checksums for
//! verify and one atomic multi-table `RENAME TABLE` for cutover.
//!
//! DDL auto-commits here, so every step is written to be repeated: it looks at
//! information_schema and does only what is missing, and the state row is saved after.
//!
//! # The cutover swap, and why it has a gate
//! MariaDB refuses `RENAME TABLE` under `LOCK TABLES` (error 1192) and `ALTER TABLE …
//! RENAME` under a lock makes waiting sessions fail on a missing table between the two
//! renames, so triggers cannot be swapped "inside" a lock. Instead all six triggers exist
//! before the swap and each one first reads a one-row *gate* table by name: forward
//! triggers act only while it says `f`, reverse triggers only while it says `r`. The
//! gate is two tables holding `f` and `r`, and the single `RENAME TABLE` that swaps
//! `t`/`_t_new`/`_t_old` also swaps which of them carries the gate's name. Triggers
//! travel with their tables, so the instant the names move the direction of dual-write
//! moves with them: there is no moment with no trigger or two active ones, and a crash
//! leaves the catalog either wholly before or wholly after (RENAME is atomic DDL on
//! MySQL 8 and MariaDB 10.6+). A trigger that references a table that does not exist yet
//! (`_t_old` before the swap) is accepted by both servers as long as that statement does
//! not run. The gate is read with `LOCK IN SHARE MODE` so an application transaction
//! whose snapshot predates the gate still sees the current direction.
//!
//! The RENAME takes its metadata locks in name order, `_t_new` before `t`, so a second
//! session holds `LOCK TABLES t READ` until the RENAME queues for `t` (see
//! `MySql::sentry`): otherwise a writer holding `t` while it waits for `_t_new` is the
//! deadlock victim, and its statement fails with 1146.

use std::collections::BTreeMap;
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlPool, MySqlPoolOptions};
use sqlx::pool::PoolConnection;
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, Row};
use tokio::sync::Mutex;

use crate::db::{
    Backend, BatchDone, Chunks, Cursor, CutoverOutcome, PhaseSql, RowDiff, StateRow, VerifyReport,
    VerifyRequest, abandon_on_error, redact,
};
use crate::error::{Error, Result};
use crate::schema::{Column, Generated, Index, Mapped, Migration, Source, TableShape};

type Conn = PoolConnection<sqlx::MySql>;

/// Why a backfill batch did not commit: the copy itself (narrowed to a row when it is a
/// value that does not fit) or anything else.
enum BatchFail {
    /// The copy up to this last key failed.
    Copy(Vec<String>, sqlx::Error),
    Other(Error),
}

/// Strict, so a value that does not fit its column is an error rather than a warning
/// and a silently altered value; `NO_AUTO_VALUE_ON_ZERO` so a copied key 0 stays 0.
/// Triggers keep the sql_mode of the session that created them, so they are strict too.
/// No `PIPES_AS_CONCAT` (sqlx's default): the user's expressions are plain MySQL.
const SQL_MODE: &str = "STRICT_ALL_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION,NO_AUTO_VALUE_ON_ZERO";

/// Server errors that mean "this value does not fit", as opposed to locks or outages.
/// Triggers with `on_error: record` catch exactly these (never deadlocks or timeouts,
/// after which the application's transaction is already gone).
const DATA_ERRORS: &[u16] = &[
    1048, 1062, 1264, 1265, 1292, 1365, 1366, 1367, 1406, 1411, 1441, 1690, 3140, 3819, 4025,
];

/// ER_LOCK_WAIT_TIMEOUT: row lock or metadata lock not granted in time.
const LOCK_WAIT_TIMEOUT: &str = "1205";

pub struct MySql {
    pub pool: MySqlPool,
    options: Box<MySqlConnectOptions>,
    /// The connection holding `GET_LOCK`: a named lock belongs to a session, so it must
    /// not go back to the pool while the migration runs.
    lock_conn: Mutex<Option<MySqlConnection>>,
    /// The connection's database: home of `turnout_state` and `turnout_failures`.
    home: Option<String>,
    mariadb: bool,
}

/// Quotes an identifier with backticks, doubling any inside. Every name goes through here.
pub fn quote(ident: &str) -> String {
    format!("`{}`", ident.replace('`', "``"))
}

/// A string literal for generated SQL (the session never sets NO_BACKSLASH_ESCAPES).
fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

fn hash_hex(s: &str, n: usize) -> String {
    let d = Sha256::digest(s.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect::<String>()[..n].to_string()
}

/// A readable, deterministic stem for generated object names (≤ 64 chars with suffixes).
fn stem(migration: &str) -> String {
    let clean: String = migration
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(32)
        .collect();
    format!("{clean}_{}", hash_hex(migration, 8))
}

fn sql_err(context: impl Into<String>) -> impl FnOnce(sqlx::Error) -> Error {
    let context = context.into();
    move |e| Error::db(context, e)
}

/// The MySQL error number (`1205`), not the SQLSTATE that `code()` gives.
fn db_code(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(d) => d
            .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .map(|m| m.number().to_string()),
        _ => None,
    }
}

fn is_lock_timeout(e: &sqlx::Error) -> bool {
    db_code(e).as_deref() == Some(LOCK_WAIT_TIMEOUT)
}

fn is_data_error(e: &sqlx::Error) -> bool {
    db_code(e)
        .and_then(|c| c.parse::<u16>().ok())
        .is_some_and(|c| DATA_ERRORS.contains(&c))
}

/// The column a server data error names (`for column 'x'`, `` column `db`.`t`.`x` ``).
fn column_in_message(msg: &str) -> Option<String> {
    let lower = msg.to_lowercase();
    let at = lower.find("column ")? + "column ".len();
    let rest = &msg[at..];
    let mut parts = Vec::new();
    let mut chars = rest.chars().peekable();
    while let Some(&q) = chars.peek() {
        if q != '\'' && q != '`' {
            break;
        }
        chars.next();
        let mut part = String::new();
        loop {
            match chars.next() {
                Some(c) if c == q => {
                    if chars.peek() == Some(&q) {
                        chars.next();
                        part.push(q);
                    } else {
                        break;
                    }
                }
                Some(c) => part.push(c),
                None => break,
            }
        }
        parts.push(part);
        if chars.peek() == Some(&'.') {
            chars.next();
        } else {
            break;
        }
    }
    parts.pop()
}

/// How a column's values are compared, bound and shown; from its SQL type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int { unsigned: bool },
    Decimal,
    Float,
    Binary,
    Date,
    DateTime,
    Time,
    Json,
    Text,
}

fn kind(sql_type: &str) -> Kind {
    let t = sql_type.trim().to_ascii_lowercase();
    let base: String = t
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    let unsigned = t.contains("unsigned");
    match base.as_str() {
        "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" | "year" | "bit"
        | "serial" => Kind::Int {
            unsigned: unsigned || base == "bit" || base == "serial" || base == "year",
        },
        "bool" | "boolean" => Kind::Int { unsigned: false },
        "decimal" | "numeric" | "dec" | "fixed" => Kind::Decimal,
        "float" | "double" | "real" => Kind::Float,
        "binary" | "varbinary" | "blob" | "tinyblob" | "mediumblob" | "longblob" | "geometry"
        | "point" => Kind::Binary,
        "date" => Kind::Date,
        "datetime" | "timestamp" => Kind::DateTime,
        "time" => Kind::Time,
        "json" => Kind::Json,
        _ => Kind::Text,
    }
}

/// The `(n)` of `datetime(n)` / the `(p,s)` of `decimal(p,s)`, if written.
fn type_args(sql_type: &str) -> Option<String> {
    let open = sql_type.find('(')?;
    let close = sql_type[open..].find(')')? + open;
    Some(sql_type[open + 1..close].trim().to_string())
}

/// The value of `expr`, as a column of `sql_type` would hold it, in a form both sides of
/// verify can compare without writing anything: MySQL's CAST knows only a few target
/// types, so each type is mapped onto the nearest one that keeps equal values equal.
fn canon(expr: &str, sql_type: &str, mariadb: bool) -> String {
    match kind(sql_type) {
        Kind::Int { unsigned: true } => format!("CAST({expr} AS UNSIGNED)"),
        Kind::Int { unsigned: false } => format!("CAST({expr} AS SIGNED)"),
        Kind::Decimal => match type_args(sql_type) {
            Some(ps) => format!("CAST({expr} AS DECIMAL({ps}))"),
            None => format!("CAST({expr} AS DECIMAL)"),
        },
        Kind::Float => format!("CAST({expr} AS DOUBLE)"),
        Kind::Binary => format!("CAST({expr} AS BINARY)"),
        Kind::Date => format!("CAST({expr} AS DATE)"),
        Kind::DateTime => format!(
            "CAST({expr} AS DATETIME({}))",
            type_args(sql_type).unwrap_or_else(|| "0".into())
        ),
        Kind::Time => format!(
            "CAST({expr} AS TIME({}))",
            type_args(sql_type).unwrap_or_else(|| "0".into())
        ),
        Kind::Json if !mariadb => format!("CAST({expr} AS JSON)"),
        Kind::Json | Kind::Text => format!("CAST({expr} AS CHAR)"),
    }
}

/// Whether a column of `source` type already reads as `canon(…, target)` would render
/// it, so verify can hash the column as it is, without a CAST per value (the generated
/// checksum of 100,000 rows: 99 → 82 ms on the live side, 93 → 77 ms on the shadow side,
/// measured on MariaDB 10.11).
fn reads_as_canon(source: &str, target: &str) -> bool {
    let norm = |t: &str| t.to_ascii_lowercase().replace(' ', "");
    let plain_int = |t: &str| {
        let base: String = norm(t)
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        matches!(
            base.as_str(),
            "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint"
        )
    };
    if plain_int(source) && plain_int(target) {
        return true;
    }
    matches!(
        kind(target),
        Kind::Decimal | Kind::Date | Kind::DateTime | Kind::Time | Kind::Binary
    ) && norm(source) == norm(target)
}

/// A key value as text for the cursor and messages (binary keys as hex).
fn key_text(col: &str, sql_type: &str) -> String {
    match kind(sql_type) {
        Kind::Binary => format!("HEX({col})"),
        _ => format!("CAST({col} AS CHAR)"),
    }
}

/// A placeholder taking a key value back from its text, typed so the comparison stays
/// on the index (an int column compared with a string would compare as doubles).
fn key_param(sql_type: &str) -> &'static str {
    match kind(sql_type) {
        Kind::Int { unsigned: true } => "CAST(? AS UNSIGNED)",
        Kind::Int { unsigned: false } => "CAST(? AS SIGNED)",
        Kind::Decimal => "CAST(? AS DECIMAL(65,30))",
        Kind::Float => "CAST(? AS DOUBLE)",
        Kind::Binary => "UNHEX(?)",
        _ => "?",
    }
}

/// SQL with its `?` values (always text; `key_param` types them in the server).
#[derive(Debug, Clone, Default)]
struct Bound {
    sql: String,
    binds: Vec<String>,
}

/// `(k1, k2) OP (v1, v2)` expanded lexicographically: MariaDB does not use an index
/// range for row-value comparisons, but it does for this OR of ANDs.
/// `op` is `>` or `<`; `or_equal` adds the all-equal case (`>=`, `<=`).
fn key_cmp(cols: &[(String, String)], values: &[String], op: &str, or_equal: bool) -> Bound {
    let mut ors = Vec::new();
    let mut binds = Vec::new();
    for i in 0..cols.len() {
        let mut ands = Vec::new();
        for (j, (c, t)) in cols.iter().enumerate().take(i) {
            ands.push(format!("{c} = {}", key_param(t)));
            binds.push(values[j].clone());
        }
        ands.push(format!("{} {op} {}", cols[i].0, key_param(&cols[i].1)));
        binds.push(values[i].clone());
        ors.push(format!("({})", ands.join(" AND ")));
    }
    if or_equal {
        let ands: Vec<String> = cols
            .iter()
            .map(|(c, t)| format!("{c} = {}", key_param(t)))
            .collect();
        binds.extend(values.iter().cloned());
        ors.push(format!("({})", ands.join(" AND ")));
    }
    Bound {
        sql: format!("({})", ors.join(" OR ")),
        binds,
    }
}

fn cursor_values(c: &Cursor, n: usize) -> Result<Vec<String>> {
    let values: Vec<String> = match c {
        serde_json::Value::Array(a) => a
            .iter()
            .map(|v| match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect(),
        _ => Vec::new(),
    };
    if values.len() != n {
        return Err(Error::State(format!(
            "the saved backfill cursor {c} does not match a {n}-column primary key"
        )));
    }
    Ok(values)
}

fn parse_key_json(s: &str) -> Result<Vec<String>> {
    let v: serde_json::Value = serde_json::from_str(s)
        .map_err(|e| Error::State(format!("unreadable key {s:?} from the server: {e}")))?;
    let n = v.as_array().map_or(0, |a| a.len());
    cursor_values(&v, n)
}

/// Keys in the table's order as far as text allows: numbers as numbers.
fn key_order(a: &[String], b: &[String]) -> std::cmp::Ordering {
    let part = |x: &String, y: &String| match (x.parse::<f64>(), y.parse::<f64>()) {
        (Ok(p), Ok(q)) => p.total_cmp(&q),
        _ => x.cmp(y),
    };
    a.iter()
        .zip(b)
        .map(|(x, y)| part(x, y))
        .find(|o| o.is_ne())
        .unwrap_or(a.len().cmp(&b.len()))
}

fn show_key(values: &[String]) -> String {
    values.join(", ")
}

/// Every generated name of one migration, raw and quoted.
#[derive(Debug, Clone)]
pub struct Names {
    pub schema: Option<String>,
    pub home: Option<String>,
    pub table: String,
    pub shadow: String,
    pub old: String,
    /// The gate's name (read by every trigger) and the two parked names.
    pub gate: String,
    pub gate_f: String,
    pub gate_r: String,
    pub forward: [String; 3],
    pub reverse: [String; 3],
}

impl Names {
    pub fn new(m: &Migration, schema: Option<&str>, home: Option<&str>) -> Names {
        let s = stem(&m.name);
        Names {
            schema: schema.map(str::to_string),
            home: home.map(str::to_string),
            table: m.table.clone(),
            shadow: m.shadow.clone(),
            old: m.old.clone(),
            gate: format!("_turnout_{s}_g"),
            gate_f: format!("_turnout_{s}_gf"),
            gate_r: format!("_turnout_{s}_gr"),
            forward: [
                format!("turnout_{s}_fi"),
                format!("turnout_{s}_fu"),
                format!("turnout_{s}_fd"),
            ],
            reverse: [
                format!("turnout_{s}_ri"),
                format!("turnout_{s}_ru"),
                format!("turnout_{s}_rd"),
            ],
        }
    }

    /// `schema`.`name`, or `name` when the plan and connection name no database.
    pub fn q(&self, name: &str) -> String {
        match &self.schema {
            Some(s) => format!("{}.{}", quote(s), quote(name)),
            None => quote(name),
        }
    }

    fn failures(&self) -> String {
        match &self.home {
            Some(h) => format!("{}.turnout_failures", quote(h)),
            None => "turnout_failures".into(),
        }
    }

    fn triggers(&self) -> impl Iterator<Item = &String> {
        self.forward.iter().chain(self.reverse.iter())
    }
}

/// Pure SQL generation, shared by the phases and by `preview`.
pub struct Gen<'a> {
    pub m: &'a Migration,
    pub n: Names,
    pub mariadb: bool,
}

impl<'a> Gen<'a> {
    fn col_def(c: &Column, key_has_ai: bool) -> String {
        let mut s = format!("{} {}", quote(&c.name), c.sql_type);
        s.push_str(if c.nullable { " NULL" } else { " NOT NULL" });
        if let Some(d) = &c.default {
            s.push_str(&format!(" DEFAULT {d}"));
        }
        if key_has_ai && matches!(c.generated, Some(Generated::AutoIncrement)) {
            s.push_str(" AUTO_INCREMENT");
        }
        s
    }

    fn index_def(idx: &Index) -> String {
        format!(
            "{}KEY {} ({})",
            if idx.unique { "UNIQUE " } else { "" },
            quote(&idx.name),
            idx.columns
                .iter()
                .map(|c| quote(c))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }

    /// Secondary indexes built after the copy: inserting a million rows into a table
    /// that has only its primary key and then building each index from sorted input
    /// takes about 3.6 s where inserting into all of them takes 5.8 s (measured by
    /// hand on MariaDB 10.11, 1M rows, two indexes). Unique indexes stay from the start:
    /// the copy must meet a clash as an error, not find it when the index is built.
    pub fn deferred_indexes(&self) -> impl Iterator<Item = &Index> {
        self.m.after.indexes.iter().filter(|i| !i.unique)
    }

    /// The shadow table: the new columns, key and unique indexes.
    pub fn create_shadow(&self, table_options: &str) -> String {
        let a = &self.m.after;
        let mut defs: Vec<String> = a.columns.iter().map(|c| Self::col_def(c, true)).collect();
        defs.push(format!(
            "PRIMARY KEY ({})",
            a.primary_key
                .iter()
                .map(|c| quote(c))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        for idx in a.indexes.iter().filter(|i| i.unique) {
            defs.push(Self::index_def(idx));
        }
        format!(
            "CREATE TABLE IF NOT EXISTS {} (\n  {}\n) {table_options}",
            self.n.q(&self.n.shadow),
            defs.join(",\n  ")
        )
    }

    pub fn create_gates(&self) -> Vec<String> {
        let n = &self.n;
        let mut v = Vec::new();
        for (name, d) in [(&n.gate, "f"), (&n.gate_r, "r")] {
            v.push(format!(
                "CREATE TABLE IF NOT EXISTS {} (d CHAR(1) NOT NULL PRIMARY KEY) ENGINE=InnoDB",
                n.q(name)
            ));
            v.push(format!(
                "INSERT INTO {q} (d) SELECT '{d}' FROM DUAL WHERE NOT EXISTS (SELECT 1 FROM {q} AS g)",
                q = n.q(name)
            ));
        }
        v
    }

    /// A mapped value over the derived row `turnout_src`, no CAST: assignment to the
    /// target column converts it, and strict sql_mode makes a bad fit an error.
    fn value(mp: &Mapped) -> String {
        crate::db::render_source(mp, &|c| quote(c), &|v, _t| v.to_string())
    }

    /// `(SELECT NEW.a AS a, …) AS turnout_src`: the trigger row under its own column
    /// names, so the plan's expressions read it unqualified exactly as in backfill.
    fn row_source(prefix: &str, cols: &[Column]) -> String {
        let items: Vec<String> = cols
            .iter()
            .map(|c| format!("{prefix}.{} AS {}", quote(&c.name), quote(&c.name)))
            .collect();
        format!("(SELECT {}) AS turnout_src", items.join(", "))
    }

    fn key_match(target: &[&str], prefix: &str, source: &[&str]) -> String {
        target
            .iter()
            .zip(source)
            .map(|(t, s)| format!("{} = {prefix}.{}", quote(t), quote(s)))
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    fn key_changed(key: &[&str]) -> String {
        let same: Vec<String> = key
            .iter()
            .map(|k| format!("OLD.{q} <=> NEW.{q}", q = quote(k)))
            .collect();
        format!("NOT ({})", same.join(" AND "))
    }

    fn insert_mapped(&self, target: &str, maps: &[Mapped], src: &str) -> String {
        let cols: Vec<String> = maps.iter().map(|mp| quote(&mp.target)).collect();
        let vals: Vec<String> = maps.iter().map(Self::value).collect();
        format!(
            "INSERT INTO {target} ({}) SELECT {} FROM {src}",
            cols.join(", "),
            vals.join(", ")
        )
    }

    /// `insert` (an INSERT … SELECT of one mapped row) that overwrites the `sets` columns
    /// of the row with the same key instead of failing. A clash on another unique index
    /// sets the key to NULL, an error, rather than rewriting that other row. Unlike a
    /// DELETE then INSERT, it takes no gap lock when the row is not there yet: with
    /// eight writers on MariaDB 10.11, DELETE-then-INSERT triggers made 886 of about
    /// 6,000 transactions end in deadlock, where the same writers without triggers had
    /// none.
    fn upsert(insert: String, target: &str, key: &[&str], sets: &[&str]) -> String {
        let same = key
            .iter()
            .map(|k| format!("{target}.{q} <=> VALUES({target}.{q})", q = quote(k)))
            .collect::<Vec<_>>()
            .join(" AND ");
        // Left to right, and the key last: `same` must read the key as it was.
        let mut assign: Vec<String> = sets
            .iter()
            .filter(|c| !key.contains(c))
            .map(|c| {
                format!(
                    "{target}.{q} = IF({same}, VALUES({target}.{q}), {target}.{q})",
                    q = quote(c)
                )
            })
            .collect();
        assign.push(format!(
            "{target}.{k} = IF({same}, {target}.{k}, NULL)",
            k = quote(key[0])
        ));
        format!("{insert} ON DUPLICATE KEY UPDATE {}", assign.join(", "))
    }

    #[allow(clippy::too_many_arguments)]
    fn trigger(
        &self,
        name: &str,
        event: &str,
        table: &str,
        gate: char,
        direction: &str,
        key_row: (&str, &[&str]),
        cleanup: &str,
        body: &[String],
    ) -> String {
        let n = &self.n;
        let mut s = format!(
            "CREATE TRIGGER {} AFTER {event} ON {} FOR EACH ROW\nBEGIN\n  DECLARE turnout_gate CHAR(1);\n",
            n.q(name),
            n.q(table)
        );
        if self.m.on_error == crate::plan::OnError::Record {
            let key: Vec<String> = key_row
                .1
                .iter()
                .map(|k| format!("{}.{}", key_row.0, quote(k)))
                .collect();
            let codes: Vec<String> = DATA_ERRORS.iter().map(u16::to_string).collect();
            // The upsert's unique-clash guard sets the target's key to NULL.
            let target_key = if direction == "forward" {
                self.m.new_key()[0]
            } else {
                self.m.old_key()[0]
            };
            s.push_str(&format!(
                "  DECLARE turnout_msg TEXT;\n  DECLARE EXIT HANDLER FOR {}\n  BEGIN\n    GET DIAGNOSTICS CONDITION 1 turnout_msg = MESSAGE_TEXT;\n    IF turnout_msg = {} THEN SET turnout_msg = 'the value clashes with another row on a unique index'; END IF;\n    {cleanup};\n    INSERT INTO {} (migration, direction, key_text, error, at) VALUES ({}, '{direction}', CONCAT_WS(', ', {}), turnout_msg, NOW(6));\n  END;\n",
                codes.join(", "),
                lit(&format!("Column '{target_key}' cannot be null")),
                n.failures(),
                lit(&self.m.name),
                key.join(", ")
            ));
        }
        s.push_str(&format!(
            "  SELECT d INTO turnout_gate FROM {} LIMIT 1 LOCK IN SHARE MODE;\n",
            n.q(&n.gate)
        ));
        s.push_str(&format!("  IF turnout_gate = '{gate}' THEN\n"));
        for stmt in body {
            s.push_str(&format!("    {stmt};\n"));
        }
        s.push_str("  END IF;\nEND");
        s
    }

    /// Live → shadow, active while the gate says `f`.
    pub fn forward_triggers(&self) -> Vec<String> {
        let (m, n) = (self.m, &self.n);
        let shadow = n.q(&n.shadow);
        let (old_key, new_key) = (m.old_key(), m.new_key());
        let del = |row: &str| {
            format!(
                "DELETE FROM {shadow} WHERE {}",
                Self::key_match(&new_key, row, &old_key)
            )
        };
        let ins = self.insert_mapped(
            &shadow,
            &m.forward,
            &Self::row_source("NEW", &m.before.columns),
        );
        let targets: Vec<&str> = m.forward.iter().map(|mp| mp.target.as_str()).collect();
        let upsert = Self::upsert(ins.clone(), &shadow, &new_key, &targets);
        // A new live key has no shadow row: the delete trigger removed it with the live
        // row, and a batch copies only live rows. A plain INSERT keeps a unique clash's
        // own message (1062).
        let i = self.trigger(
            &n.forward[0],
            "INSERT",
            &n.table,
            'f',
            "forward",
            ("NEW", &old_key),
            &del("NEW"),
            &[ins],
        );
        // The row may not be copied yet: the upsert inserts it, and its batch keeps it.
        let u = self.trigger(
            &n.forward[1],
            "UPDATE",
            &n.table,
            'f',
            "forward",
            ("NEW", &old_key),
            &del("NEW"),
            &[
                format!(
                    "IF {} THEN {}; END IF",
                    Self::key_changed(&old_key),
                    del("OLD")
                ),
                upsert,
            ],
        );
        let d = self.trigger(
            &n.forward[2],
            "DELETE",
            &n.table,
            'f',
            "forward",
            ("OLD", &old_key),
            &del("OLD"),
            &[del("OLD")],
        );
        vec![i, u, d]
    }

    /// New → old (installed on the shadow, which carries them through the swap), active
    /// while the gate says `r`. Upserts touch only the mapped columns, so the old
    /// table keeps the values of columns the reverse mapping cannot rebuild.
    pub fn reverse_triggers(&self) -> Vec<String> {
        let (m, n) = (self.m, &self.n);
        let old = n.q(&n.old);
        let (old_key, new_key) = (m.old_key(), m.new_key());
        let upsert = {
            let base =
                self.insert_mapped(&old, &m.reverse, &Self::row_source("NEW", &m.after.columns));
            let targets: Vec<&str> = m.reverse.iter().map(|mp| mp.target.as_str()).collect();
            Self::upsert(base, &old, &old_key, &targets)
        };
        let del = |row: &str| {
            format!(
                "DELETE FROM {old} WHERE {}",
                Self::key_match(&old_key, row, &new_key)
            )
        };
        let move_key = format!(
            "IF {} THEN UPDATE {old} SET {} WHERE {}; END IF",
            Self::key_changed(&new_key),
            old_key
                .iter()
                .zip(&new_key)
                .map(|(o, nk)| format!("{} = NEW.{}", quote(o), quote(nk)))
                .collect::<Vec<_>>()
                .join(", "),
            Self::key_match(&old_key, "OLD", &new_key)
        );
        let i = self.trigger(
            &n.reverse[0],
            "INSERT",
            &n.shadow,
            'r',
            "reverse",
            ("NEW", &new_key),
            &del("NEW"),
            std::slice::from_ref(&upsert),
        );
        let u = self.trigger(
            &n.reverse[1],
            "UPDATE",
            &n.shadow,
            'r',
            "reverse",
            ("NEW", &new_key),
            &del("NEW"),
            &[move_key, upsert],
        );
        let d = self.trigger(
            &n.reverse[2],
            "DELETE",
            &n.shadow,
            'r',
            "reverse",
            ("OLD", &new_key),
            &del("OLD"),
            &[del("OLD")],
        );
        vec![i, u, d]
    }

    fn old_key_cols(&self) -> Vec<(String, String)> {
        self.m
            .key
            .iter()
            .map(|k| (quote(&k.old), self.key_type(&k.old)))
            .collect()
    }

    fn new_key_cols(&self) -> Vec<(String, String)> {
        self.m
            .key
            .iter()
            .map(|k| (quote(&k.new), self.key_type(&k.old)))
            .collect()
    }

    fn key_type(&self, old: &str) -> String {
        self.m
            .before
            .column(old)
            .map(|c| c.sql_type.clone())
            .unwrap_or_default()
    }

    fn key_json(&self, cols: &[(String, String)]) -> String {
        format!(
            "JSON_ARRAY({})",
            cols.iter()
                .map(|(c, t)| key_text(c, t))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }

    fn order_by(cols: &[(String, String)]) -> String {
        cols.iter()
            .map(|(c, _)| c.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn old_columns(&self) -> String {
        self.m
            .before
            .columns
            .iter()
            .map(|c| quote(&c.name))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Locks the next batch of live rows (shared, so a concurrent update or delete waits
    /// for this batch to commit and its trigger then rewrites or deletes the copy).
    fn batch_keys(&self, after: Option<&[String]>, limit: u64) -> Bound {
        self.keys_after(after, &format!("LIMIT {limit} LOCK IN SHARE MODE"))
    }

    /// Live keys after `after` (all when None) in key order, as key JSON, then `tail`.
    fn keys_after(&self, after: Option<&[String]>, tail: &str) -> Bound {
        let cols = self.old_key_cols();
        let cond = after.map(|a| key_cmp(&cols, a, ">", false));
        Bound {
            sql: format!(
                "SELECT {} FROM {}{} ORDER BY {} {tail}",
                self.key_json(&cols),
                self.n.q(&self.n.table),
                cond.as_ref()
                    .map(|c| format!(" WHERE {}", c.sql))
                    .unwrap_or_default(),
                Self::order_by(&cols)
            ),
            binds: cond.map(|c| c.binds).unwrap_or_default(),
        }
    }

    /// Copies live rows in `(after, last]` through the forward mapping. A key already in
    /// the shadow was written by a trigger and is newer: keep it. A clash on another
    /// unique index is not that, and setting the key to NULL turns it into an error
    /// instead of a silently skipped row (INSERT IGNORE would also swallow truncation).
    /// The key `limit` rows on, read with a locking read that takes the same next-key
    /// locks over the batch as reading every key, without shipping them.
    fn batch_last_key(&self, after: Option<&[String]>, limit: u64) -> Bound {
        self.keys_after(
            after,
            &format!(
                "LIMIT 1 OFFSET {} LOCK IN SHARE MODE",
                limit.saturating_sub(1)
            ),
        )
    }
    fn batch_insert(&self, after: Option<&[String]>, last: &[String]) -> Bound {
        let cols = self.old_key_cols();
        let mut conds = Vec::new();
        let mut binds = Vec::new();
        if let Some(a) = after {
            let b = key_cmp(&cols, a, ">", false);
            conds.push(b.sql);
            binds.extend(b.binds);
        }
        let b = key_cmp(&cols, last, "<", true);
        conds.push(b.sql);
        binds.extend(b.binds);
        let src = format!(
            "(SELECT {} FROM {} WHERE {}) AS turnout_src",
            self.old_columns(),
            self.n.q(&self.n.table),
            conds.join(" AND ")
        );
        // Qualified: the derived table has columns of the same names.
        let shadow = self.n.q(&self.n.shadow);
        let new_key = self.m.new_key();
        let same: Vec<String> = new_key
            .iter()
            .map(|k| format!("{shadow}.{q} <=> VALUES({shadow}.{q})", q = quote(k)))
            .collect();
        let k0 = format!("{shadow}.{}", quote(new_key[0]));
        let sql = format!(
            "{} ON DUPLICATE KEY UPDATE {k0} = IF({}, {k0}, NULL)",
            self.insert_mapped(&self.n.q(&self.n.shadow), &self.m.forward, &src),
            same.join(" AND ")
        );
        Bound { sql, binds }
    }

    /// The new table's type of a mapped column (text if the shape does not say).
    fn target_type(&self, mp: &Mapped) -> &'a str {
        self.m
            .after
            .column(&mp.target)
            .map(|c| c.sql_type.as_str())
            .unwrap_or("text")
    }

    /// The mapped live rows (`expected`) or the shadow rows of a key range, canonicalised
    /// per target type, as `turnout_m` with columns `_k` (key JSON) and `_c0…`.
    fn verify_rows(
        &self,
        shadow: bool,
        with_key: bool,
        range: &(Option<Vec<String>>, Option<Vec<String>>),
    ) -> Bound {
        let (m, n) = (self.m, &self.n);
        let cols = if shadow {
            self.new_key_cols()
        } else {
            self.old_key_cols()
        };
        let mut conds = Vec::new();
        let mut binds = Vec::new();
        if let Some(lo) = &range.0 {
            let b = key_cmp(&cols, lo, ">", false);
            conds.push(b.sql);
            binds.extend(b.binds);
        }
        if let Some(hi) = &range.1 {
            let b = key_cmp(&cols, hi, "<", true);
            conds.push(b.sql);
            binds.extend(b.binds);
        }
        let where_ = if conds.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conds.join(" AND "))
        };
        let mut items = Vec::new();
        if with_key {
            items.push(format!("{} AS _k", self.key_json(&cols)));
        }
        for (i, mp) in m.forward.iter().enumerate() {
            let t = self.target_type(mp);
            let (v, source_type) = if shadow {
                (quote(&mp.target), Some(t))
            } else {
                let source_type = match &mp.source {
                    Source::Column(c) => m.before.column(c).map(|c| c.sql_type.as_str()),
                    Source::Expr(_) => None,
                };
                (Self::value(mp), source_type)
            };
            let v = match source_type {
                Some(st) if reads_as_canon(st, t) => v,
                _ => canon(&v, t, self.mariadb),
            };
            items.push(format!("{v} AS _c{i}"));
        }
        let from = if shadow {
            format!("{}{where_}", n.q(&n.shadow))
        } else {
            format!(
                "(SELECT {} FROM {}{where_}) AS turnout_src",
                self.old_columns(),
                n.q(&n.table)
            )
        };
        Bound {
            sql: format!("(SELECT {} FROM {from}) AS turnout_m", items.join(", ")),
            binds,
        }
    }

    /// pt-table-checksum's chunk hash: row count and the XOR of each row's CRC32.
    fn checksum(&self, shadow: bool, range: &(Option<Vec<String>>, Option<Vec<String>>)) -> Bound {
        let rows = self.verify_rows(shadow, false, range);
        let k = self.m.forward.len();
        // Text in one byte form whatever its collation; numbers and dates already read
        // the same on both sides.
        let vals: Vec<String> = self
            .m
            .forward
            .iter()
            .enumerate()
            .map(|(i, mp)| match kind(self.target_type(mp)) {
                Kind::Text | Kind::Json => format!("CAST(_c{i} AS BINARY)"),
                _ => format!("_c{i}"),
            })
            .collect();
        let nulls: Vec<String> = (0..k).map(|i| format!("ISNULL(_c{i})")).collect();
        Bound {
            sql: format!(
                "SELECT CONCAT(COUNT(*), ':', COALESCE(BIT_XOR(CRC32(CONCAT_WS('#', {}, CONCAT({})))), 0)) FROM {}",
                vals.join(", "),
                nulls.join(", "),
                rows.sql
            ),
            binds: rows.binds,
        }
    }

    /// Row images (new column names) of a chunk, for the report of a differing chunk.
    fn images(&self, shadow: bool, range: &(Option<Vec<String>>, Option<Vec<String>>)) -> Bound {
        let rows = self.verify_rows(shadow, true, range);
        let m = self.m;
        let pairs: Vec<String> = m
            .forward
            .iter()
            .enumerate()
            .map(|(i, mp)| {
                let v = if kind(self.target_type(mp)) == Kind::Binary {
                    format!("HEX(_c{i})")
                } else {
                    format!("_c{i}")
                };
                format!("{}, {v}", lit(&mp.target))
            })
            .collect();
        Bound {
            sql: format!(
                "SELECT _k, JSON_OBJECT({}) FROM {}",
                pairs.join(", "),
                rows.sql
            ),
            binds: rows.binds,
        }
    }

    /// Builds the deferred indexes the shadow does not have yet, online: the triggers
    /// keep writing to it meanwhile.
    pub fn add_indexes(&self, existing: &[String]) -> Option<String> {
        let adds: Vec<String> = self
            .deferred_indexes()
            .filter(|i| !existing.contains(&i.name))
            .map(|i| {
                let def = Self::index_def(i);
                // MariaDB can say it itself; MySQL 8 relies on the check after a failure.
                match def.strip_prefix("KEY ") {
                    Some(rest) if self.mariadb => format!("ADD KEY IF NOT EXISTS {rest}"),
                    _ => format!("ADD {def}"),
                }
            })
            .collect();
        (!adds.is_empty()).then(|| {
            format!(
                "ALTER TABLE {} {}, ALGORITHM=INPLACE, LOCK=NONE",
                self.n.q(&self.n.shadow),
                adds.join(", ")
            )
        })
    }

    /// The one atomic statement of cutover: names and gate move together.
    pub fn swap(&self) -> String {
        let n = &self.n;
        format!(
            "RENAME TABLE {} TO {}, {} TO {}, {} TO {}, {} TO {}",
            n.q(&n.table),
            n.q(&n.old),
            n.q(&n.shadow),
            n.q(&n.table),
            n.q(&n.gate),
            n.q(&n.gate_f),
            n.q(&n.gate_r),
            n.q(&n.gate)
        )
    }

    /// The inverse of [`Gen::swap`], for rollback after cutover.
    pub fn swap_back(&self) -> String {
        let n = &self.n;
        format!(
            "RENAME TABLE {} TO {}, {} TO {}, {} TO {}, {} TO {}",
            n.q(&n.table),
            n.q(&n.shadow),
            n.q(&n.old),
            n.q(&n.table),
            n.q(&n.gate),
            n.q(&n.gate_r),
            n.q(&n.gate_f),
            n.q(&n.gate)
        )
    }

    fn drop_triggers(&self, names: &[String]) -> Vec<String> {
        names
            .iter()
            .map(|t| format!("DROP TRIGGER IF EXISTS {}", self.n.q(t)))
            .collect()
    }

    fn drop_gates(&self) -> String {
        let n = &self.n;
        format!(
            "DROP TABLE IF EXISTS {}, {}, {}",
            n.q(&n.gate),
            n.q(&n.gate_f),
            n.q(&n.gate_r)
        )
    }

    pub fn preview(&self, table_options: &str) -> Vec<PhaseSql> {
        let n = &self.n;
        let mut dual = self.create_gates();
        dual.extend(self.forward_triggers());
        let first = self.batch_keys(None, 1000);
        let rest = self.batch_keys(Some(&vec!["?".to_string(); self.m.key.len()]), 1000);
        let copy = self.batch_insert(
            Some(&vec!["?".to_string(); self.m.key.len()]),
            &vec!["?".into(); self.m.key.len()],
        );
        let mut cutover = vec![format!("ANALYZE TABLE {}", n.q(&n.shadow))];
        cutover.extend(self.reverse_triggers());
        cutover.push(format!(
            "ALTER TABLE {} AUTO_INCREMENT = <live AUTO_INCREMENT>",
            n.q(&n.shadow)
        ));
        cutover.push(format!(
            "/* a second session, until the RENAME waits for the table */ LOCK TABLES {} READ",
            n.q(&n.table)
        ));
        cutover.push(self.swap());
        cutover.push("/* the second session */ UNLOCK TABLES".into());
        let mut cleanup = self.drop_triggers(&n.reverse);
        cleanup.extend(self.drop_triggers(&n.forward));
        cleanup.push(format!("DROP TABLE IF EXISTS {}", n.q(&n.old)));
        cleanup.push(self.drop_gates());
        let range = (
            Some(vec!["?".to_string(); self.m.key.len()]),
            Some(vec!["?".to_string(); self.m.key.len()]),
        );
        vec![
            PhaseSql {
                phase: "prepare",
                statements: vec![self.create_shadow(table_options)],
            },
            PhaseSql {
                phase: "dual-write",
                statements: dual,
            },
            PhaseSql {
                phase: "backfill",
                statements: vec![
                    "START TRANSACTION".into(),
                    first.sql,
                    rest.sql,
                    copy.sql,
                    "REPLACE INTO turnout_state (…) VALUES (…)".into(),
                    "COMMIT".into(),
                ]
                .into_iter()
                .chain(self.add_indexes(&[]))
                .chain([format!("ANALYZE TABLE {}", n.q(&n.shadow))])
                .collect(),
            },
            PhaseSql {
                phase: "verify",
                statements: vec![
                    "START TRANSACTION WITH CONSISTENT SNAPSHOT".into(),
                    self.checksum(false, &range).sql,
                    self.checksum(true, &range).sql,
                    "COMMIT".into(),
                ],
            },
            PhaseSql {
                phase: "cutover",
                statements: cutover,
            },
            PhaseSql {
                phase: "cleanup",
                statements: cleanup,
            },
        ]
    }
}

/// What the catalog shows of one migration (used to reconcile after a crash).
#[derive(Debug, Default)]
struct Catalog {
    table: bool,
    shadow: bool,
    old: bool,
    /// The gate's current value (`f` before cutover, `r` after), if the gate exists.
    gate: Option<String>,
    triggers: Vec<(String, String)>,
}

impl Catalog {
    fn has_trigger(&self, name: &str) -> bool {
        self.triggers.iter().any(|(t, _)| t == name)
    }
}

impl MySql {
    pub async fn connect(url: &str) -> Result<MySql> {
        let options: MySqlConnectOptions = url
            .parse()
            .map_err(|e| Error::Unreachable(format!("{}: {e}", redact(url))))?;
        let options = options
            .pipes_as_concat(false)
            .timezone(Some("+00:00".to_string()));
        let pool = MySqlPoolOptions::new()
            .max_connections(5)
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::raw_sql(AssertSqlSafe(format!(
                        "SET SESSION sql_mode = '{SQL_MODE}', time_zone = '+00:00'"
                    )))
                    .execute(&mut *conn)
                    .await?;
                    Ok(())
                })
            })
            .connect_with(options.clone())
            .await
            .map_err(|e| Error::Unreachable(format!("{}: {e}", redact(url))))?;
        let row = sqlx::query("SELECT CAST(DATABASE() AS CHAR), CAST(VERSION() AS CHAR)")
            .fetch_one(&pool)
            .await
            .map_err(|e| Error::Unreachable(format!("{}: {e}", redact(url))))?;
        let home: Option<String> = row
            .try_get(0)
            .map_err(sql_err("reading the connection's database"))?;
        let version: Option<String> = row
            .try_get(1)
            .map_err(sql_err("reading the server version"))?;
        let mariadb = version
            .unwrap_or_default()
            .to_lowercase()
            .contains("mariadb");
        Ok(MySql {
            pool,
            options: Box::new(options),
            lock_conn: Mutex::new(None),
            home,
            mariadb,
        })
    }

    /// Whether the server is MariaDB (some catalog columns differ from MySQL's).
    pub fn is_mariadb(&self) -> bool {
        self.mariadb
    }

    fn home(&self) -> Result<&str> {
        self.home.as_deref().ok_or_else(|| {
            Error::Usage("the MySQL URL names no database (mysql://host/DATABASE): turnout keeps its state there".into())
        })
    }

    fn schema_of(&self, m: &Migration) -> Option<String> {
        m.schema.clone().or_else(|| self.home.clone())
    }

    fn sql<'a>(&self, m: &'a Migration) -> Gen<'a> {
        Gen {
            m,
            n: Names::new(m, self.schema_of(m).as_deref(), self.home.as_deref()),
            mariadb: self.mariadb,
        }
    }

    async fn conn(&self) -> Result<Conn> {
        self.pool
            .acquire()
            .await
            .map_err(sql_err("acquiring a connection"))
    }

    async fn exec(&self, conn: &mut MySqlConnection, sql: &str, context: &str) -> Result<()> {
        sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
            .execute(conn)
            .await
            .map_err(sql_err(context.to_string()))?;
        Ok(())
    }

    /// Runs `b` and returns every row as optional strings (queries cast what they select).
    async fn rows(
        conn: &mut MySqlConnection,
        b: &Bound,
    ) -> std::result::Result<Vec<Vec<Option<String>>>, sqlx::Error> {
        let mut q = sqlx::query(AssertSqlSafe(b.sql.clone()));
        for v in &b.binds {
            q = q.bind(v.clone());
        }
        let rows = q.fetch_all(conn).await?;
        rows.iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| r.try_get::<Option<String>, _>(i))
                    .collect::<std::result::Result<Vec<_>, _>>()
            })
            .collect()
    }

    /// DDL that needs a brief metadata lock on a busy table: a short lock_wait_timeout so
    /// application statements never queue long behind it, retried with backoff.
    async fn ddl_retry(&self, conn: &mut MySqlConnection, sql: &str, context: &str) -> Result<()> {
        self.exec(conn, "SET SESSION lock_wait_timeout = 2", context)
            .await?;
        let mut delay = Duration::from_millis(100);
        for attempt in 1.. {
            match sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
                .execute(&mut *conn)
                .await
            {
                Ok(_) => break,
                Err(e) if is_lock_timeout(&e) && attempt < 30 => {
                    tracing::warn!(attempt, "{context}: metadata lock not granted, retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(Error::db(context.to_string(), e)),
            }
        }
        self.exec(conn, "SET SESSION lock_wait_timeout = DEFAULT", context)
            .await
    }

    async fn catalog(&self, conn: &mut MySqlConnection, g: &Gen<'_>) -> Result<Catalog> {
        let n = &g.n;
        let schema = n.schema.clone().unwrap_or_default();
        let tables = Self::rows(conn, &Bound {
            sql: "SELECT CAST(TABLE_NAME AS CHAR) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ?".into(),
            binds: vec![schema.clone()],
        })
        .await
        .map_err(sql_err("reading the catalog"))?;
        let names: Vec<String> = tables
            .into_iter()
            .filter_map(|r| r.into_iter().next().flatten())
            .collect();
        let has = |t: &str| names.iter().any(|x| x == t);
        let mut c = Catalog {
            table: has(&n.table),
            shadow: has(&n.shadow),
            old: has(&n.old),
            ..Default::default()
        };
        if has(&n.gate) {
            let b = Bound {
                sql: format!("SELECT CAST(d AS CHAR) FROM {} LIMIT 1", n.q(&n.gate)),
                binds: vec![],
            };
            c.gate = Self::rows(conn, &b)
                .await
                .map_err(sql_err("reading the gate"))?
                .into_iter()
                .next()
                .and_then(|r| r.into_iter().next().flatten());
        }
        let trig = Self::rows(conn, &Bound {
            sql: "SELECT CAST(TRIGGER_NAME AS CHAR), CAST(EVENT_OBJECT_TABLE AS CHAR) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = ?".into(),
            binds: vec![schema],
        })
        .await
        .map_err(sql_err("reading triggers"))?;
        c.triggers = trig
            .into_iter()
            .filter_map(
                |r| match (r.first().cloned().flatten(), r.get(1).cloned().flatten()) {
                    (Some(a), Some(b)) if n.triggers().any(|t| *t == a) => Some((a, b)),
                    _ => None,
                },
            )
            .collect();
        Ok(c)
    }

    async fn index_names(
        conn: &mut MySqlConnection,
        schema: &str,
        table: &str,
    ) -> Result<Vec<String>> {
        let rows = Self::rows(conn, &Bound {
            sql: "SELECT DISTINCT CAST(INDEX_NAME AS CHAR), CAST(TABLE_NAME AS CHAR) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?".into(),
            binds: vec![schema.to_string(), table.to_string()],
        })
        .await
        .map_err(sql_err("reading the shadow's indexes"))?;
        Ok(rows
            .into_iter()
            .filter(|r| r.get(1).cloned().flatten().as_deref() == Some(table))
            .filter_map(|r| r.into_iter().next().flatten())
            .collect())
    }

    async fn save_on(
        conn: &mut MySqlConnection,
        row: &StateRow,
    ) -> std::result::Result<(), sqlx::Error> {
        sqlx::query(
            "REPLACE INTO turnout_state (name, plan_hash, phase, body, updated_at) VALUES (?, ?, ?, ?, NOW(6))",
        )
        .bind(&row.name)
        .bind(&row.plan_hash)
        .bind(&row.phase)
        .bind(&row.body)
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn table_options(
        &self,
        conn: &mut MySqlConnection,
        schema: &str,
        table: &str,
    ) -> Result<String> {
        let r = Self::rows(conn, &Bound {
            sql: "SELECT CAST(t.TABLE_COLLATION AS CHAR), CAST(c.CHARACTER_SET_NAME AS CHAR), CAST(t.TABLE_COMMENT AS CHAR), CAST(t.TABLE_NAME AS CHAR) \
                  FROM information_schema.TABLES t JOIN information_schema.COLLATIONS c ON c.COLLATION_NAME = t.TABLE_COLLATION \
                  WHERE t.TABLE_SCHEMA = ? AND t.TABLE_NAME = ?"
                .into(),
            binds: vec![schema.into(), table.into()],
        })
        .await
        .map_err(sql_err("reading table options"))?;
        let r = r
            .into_iter()
            .find(|r| r.get(3).cloned().flatten().as_deref() == Some(table));
        let mut s = "ENGINE=InnoDB".to_string();
        if let Some(r) = r {
            if let (Some(coll), Some(cs)) = (r[0].clone(), r[1].clone()) {
                s.push_str(&format!(" DEFAULT CHARSET={cs} COLLATE={coll}"));
            }
            if let Some(comment) = r[2].clone().filter(|c| !c.is_empty()) {
                s.push_str(&format!(" COMMENT={}", lit(&comment)));
            }
        }
        Ok(s)
    }

    /// The first row of a failed batch that does not map, with the column and message.
    async fn find_bad_row(
        &self,
        g: &Gen<'_>,
        keys: &[Vec<String>],
        first: &sqlx::Error,
    ) -> Result<Error> {
        let mut conn = self.conn().await?;
        let cols = g.old_key_cols();
        for key in keys {
            self.exec(
                &mut conn,
                "START TRANSACTION",
                "backfill: narrowing a failed batch",
            )
            .await?;
            let mut b = g.batch_insert(None, key);
            let ge = key_cmp(&cols, key, ">", true);
            // `(k) <= key AND (k) >= key`: exactly this row.
            b.sql = b
                .sql
                .replacen(" WHERE ", &format!(" WHERE {} AND ", ge.sql), 1);
            let mut binds = ge.binds;
            binds.extend(b.binds);
            b.binds = binds;
            let res = Self::rows(&mut conn, &b).await;
            self.exec(&mut conn, "ROLLBACK", "backfill: narrowing a failed batch")
                .await?;
            if let Err(e) = res {
                if is_data_error(&e) {
                    return Ok(self.data_error(g, key, &e));
                }
                return Err(Error::db("backfill: narrowing a failed batch", e));
            }
        }
        Ok(self.data_error(g, keys.first().map(Vec::as_slice).unwrap_or(&[]), first))
    }

    fn data_error(&self, g: &Gen<'_>, key: &[String], e: &sqlx::Error) -> Error {
        let message = match e {
            sqlx::Error::Database(d) => d.message().to_string(),
            other => other.to_string(),
        };
        let pk = g.m.new_key();
        let (column, message) = match column_in_message(&message) {
            // The unique-clash guard of `batch_insert` sets the key to NULL.
            Some(c) if pk.first() == Some(&c.as_str()) && db_code(e).as_deref() == Some("1048") => {
                (
                    "(unique index)".to_string(),
                    "the value clashes with another row on a unique index of the new table"
                        .to_string(),
                )
            }
            Some(c) => (c, message),
            None => ("?".to_string(), message),
        };
        Error::Data {
            table: g.n.table.clone(),
            key: show_key(key),
            column,
            message,
        }
    }
}

impl Backend for MySql {
    fn dialect(&self) -> &'static str {
        "mysql"
    }

    fn quote(&self, ident: &str) -> String {
        quote(ident)
    }

    async fn default_schema(&self) -> Result<Option<String>> {
        Ok(self.home.clone())
    }

    async fn ensure_state_table(&self) -> Result<()> {
        self.home()?;
        let mut conn = self.conn().await?;
        self.exec(
            &mut conn,
            "CREATE TABLE IF NOT EXISTS turnout_state (name VARCHAR(191) NOT NULL PRIMARY KEY, plan_hash VARCHAR(64) NOT NULL, \
             phase VARCHAR(32) NOT NULL, body LONGTEXT NOT NULL, updated_at TIMESTAMP(6) NOT NULL) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
            "creating turnout_state",
        )
        .await?;
        self.exec(
            &mut conn,
            "CREATE TABLE IF NOT EXISTS turnout_failures (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, migration VARCHAR(191) NOT NULL, \
             direction VARCHAR(16) NOT NULL, key_text TEXT, error TEXT, at TIMESTAMP(6) NOT NULL, KEY (migration)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
            "creating turnout_failures",
        )
        .await
    }

    async fn load_state(&self, name: &str) -> Result<Option<StateRow>> {
        let mut conn = self.conn().await?;
        let rows = Self::rows(&mut conn, &Bound {
            sql: "SELECT CAST(name AS CHAR), CAST(plan_hash AS CHAR), CAST(phase AS CHAR), CAST(body AS CHAR) FROM turnout_state WHERE name = ?".into(),
            binds: vec![name.into()],
        })
        .await
        .map_err(sql_err("loading the state"))?;
        Ok(rows.into_iter().map(state_row).find(|r| r.name == name))
    }

    async fn list_states(&self) -> Result<Vec<StateRow>> {
        let mut conn = self.conn().await?;
        let rows = Self::rows(&mut conn, &Bound {
            sql: "SELECT CAST(name AS CHAR), CAST(plan_hash AS CHAR), CAST(phase AS CHAR), CAST(body AS CHAR) FROM turnout_state ORDER BY name".into(),
            binds: vec![],
        })
        .await
        .map_err(sql_err("listing the states"))?;
        Ok(rows.into_iter().map(state_row).collect())
    }

    async fn save_state(&self, row: &StateRow) -> Result<()> {
        let mut conn = self.conn().await?;
        Self::save_on(&mut conn, row)
            .await
            .map_err(sql_err("saving the state"))
    }

    async fn lock(&self, migration: &str) -> Result<()> {
        let mut guard = self.lock_conn.lock().await;
        if guard.is_none() {
            let mut c = self
                .options
                .connect()
                .await
                .map_err(|e| Error::Unreachable(e.to_string()))?;
            sqlx::raw_sql("SET SESSION wait_timeout = 31536000")
                .execute(&mut c)
                .await
                .map_err(sql_err("lock session"))?;
            *guard = Some(c);
        }
        let conn = guard
            .as_mut()
            .ok_or_else(|| Error::State("lock connection vanished".into()))?;
        let name = lock_name(migration);
        // A short wait, not zero: a turnout killed a moment ago still holds the lock
        // until the server notices its connection is gone.
        let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, 2)")
            .bind(&name)
            .fetch_one(&mut *conn)
            .await
            .map_err(sql_err("taking the migration lock"))?;
        if got == Some(1) {
            return Ok(());
        }
        let holder: Option<i64> = sqlx::query_scalar("SELECT CAST(IS_USED_LOCK(?) AS SIGNED)")
            .bind(&name)
            .fetch_one(&mut *conn)
            .await
            .map_err(sql_err("finding the lock holder"))?;
        let mut who = match holder {
            Some(id) => format!("connection {id}"),
            None => "a connection that just released it; try again".into(),
        };
        if let Some(id) = holder {
            let r = Self::rows(conn, &Bound {
                sql: "SELECT CAST(USER AS CHAR), CAST(HOST AS CHAR), CAST(TIME AS CHAR) FROM information_schema.PROCESSLIST WHERE ID = ?".into(),
                binds: vec![id.to_string()],
            })
            .await
            .map_err(sql_err("finding the lock holder"))?;
            if let Some(r) = r.first() {
                let f = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
                who = format!(
                    "connection {id}, {}@{}, in its current state for {}s",
                    f(0),
                    f(1),
                    f(2)
                );
            }
        }
        Err(Error::LockHeld {
            name: migration.to_string(),
            holder: who,
        })
    }

    async fn keep_lock(&self, migration: &str) -> Result<()> {
        {
            let mut guard = self.lock_conn.lock().await;
            if let Some(c) = guard.as_mut() {
                let mine: std::result::Result<Option<i64>, _> =
                    sqlx::query_scalar("SELECT CAST(IS_USED_LOCK(?) = CONNECTION_ID() AS SIGNED)")
                        .bind(lock_name(migration))
                        .fetch_one(c)
                        .await;
                if let Ok(Some(1)) = mine {
                    return Ok(());
                }
            }
            // The session died (and its lock with it) or lost the lock: start afresh.
            *guard = None;
        }
        tracing::warn!("the migration lock's session was lost; taking the lock again");
        self.lock(migration).await
    }

    async fn unlock(&self, migration: &str) -> Result<()> {
        if let Some(mut c) = self.lock_conn.lock().await.take() {
            // Release explicitly (once per time taken) so the lock is free when this
            // returns; a closing session releases it too, but only once the server has
            // noticed the disconnect.
            for _ in 0..1000 {
                let released: Option<i64> = sqlx::query_scalar("SELECT RELEASE_LOCK(?)")
                    .bind(lock_name(migration))
                    .fetch_one(&mut c)
                    .await
                    .map_err(sql_err("releasing the migration lock"))?;
                if released != Some(1) {
                    break;
                }
            }
            c.close()
                .await
                .map_err(sql_err("closing the lock session"))?;
        }
        Ok(())
    }

    async fn describe(&self, schema: Option<&str>, table: &str) -> Result<Option<TableShape>> {
        let schema = match schema.map(str::to_string).or_else(|| self.home.clone()) {
            Some(s) => s,
            None => return Ok(None),
        };
        let mut conn = self.conn().await?;
        let t = Self::rows(&mut conn, &Bound {
            sql: "SELECT CAST(TABLE_NAME AS CHAR), CAST(TABLE_COLLATION AS CHAR) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?".into(),
            binds: vec![schema.clone(), table.into()],
        })
        .await
        .map_err(sql_err("describing the table"))?;
        let Some(trow) = t.into_iter().find(|r| r[0].as_deref() == Some(table)) else {
            return Ok(None);
        };
        let table_coll = trow[1].clone().unwrap_or_default();
        let cols = Self::rows(&mut conn, &Bound {
            sql: "SELECT CAST(COLUMN_NAME AS CHAR), CAST(COLUMN_TYPE AS CHAR), CAST(IS_NULLABLE AS CHAR), CAST(COLUMN_DEFAULT AS CHAR), \
                  CAST(EXTRA AS CHAR), CAST(CHARACTER_SET_NAME AS CHAR), CAST(COLLATION_NAME AS CHAR), CAST(TABLE_NAME AS CHAR) \
                  FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION"
                .into(),
            binds: vec![schema.clone(), table.into()],
        })
        .await
        .map_err(sql_err("describing the columns"))?;
        let mut columns = Vec::new();
        for r in cols.into_iter().filter(|r| r[7].as_deref() == Some(table)) {
            let name = r[0].clone().unwrap_or_default();
            let mut sql_type = r[1].clone().unwrap_or_default();
            let extra = r[4].clone().unwrap_or_default();
            let lower = extra.to_lowercase();
            if let (Some(cs), Some(coll)) = (&r[5], &r[6])
                && *coll != table_coll
            {
                sql_type.push_str(&format!(" CHARACTER SET {cs} COLLATE {coll}"));
            }
            if let Some(at) = lower.find("on update ") {
                sql_type.push_str(&format!(
                    " ON UPDATE {}",
                    extra[at + "on update ".len()..].trim()
                ));
            }
            let default = match r[3].clone() {
                None => None,
                Some(d) if self.mariadb => Some(d).filter(|d| d != "NULL"),
                // MySQL 8 shows literals bare and marks expressions DEFAULT_GENERATED.
                Some(d) if lower.contains("default_generated") => {
                    Some(if d.to_lowercase().starts_with("current_timestamp") {
                        d
                    } else {
                        format!("({d})")
                    })
                }
                Some(d) => Some(lit(&d)),
            };
            columns.push(Column {
                name,
                sql_type,
                nullable: r[2].as_deref() == Some("YES"),
                default,
                generated: lower
                    .contains("auto_increment")
                    .then_some(Generated::AutoIncrement),
            });
        }
        let stats = Self::rows(&mut conn, &Bound {
            sql: "SELECT CAST(INDEX_NAME AS CHAR), CAST(COLUMN_NAME AS CHAR), CAST(NON_UNIQUE AS CHAR), CAST(TABLE_NAME AS CHAR) \
                  FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY INDEX_NAME, SEQ_IN_INDEX"
                .into(),
            binds: vec![schema, table.into()],
        })
        .await
        .map_err(sql_err("describing the indexes"))?;
        let mut primary_key = Vec::new();
        let mut indexes: BTreeMap<String, Index> = BTreeMap::new();
        for r in stats.into_iter().filter(|r| r[3].as_deref() == Some(table)) {
            let (iname, col) = (
                r[0].clone().unwrap_or_default(),
                r[1].clone().unwrap_or_default(),
            );
            if iname == "PRIMARY" {
                primary_key.push(col);
            } else {
                indexes
                    .entry(iname.clone())
                    .or_insert_with(|| Index {
                        name: iname,
                        columns: vec![],
                        unique: r[2].as_deref() == Some("0"),
                    })
                    .columns
                    .push(col);
            }
        }
        Ok(Some(TableShape {
            columns,
            primary_key,
            indexes: indexes.into_values().collect(),
        }))
    }

    async fn preflight(&self, m: &Migration) -> Result<Vec<String>> {
        let g = self.sql(m);
        let n = &g.n;
        let mut problems = Vec::new();
        let Some(schema) = n.schema.clone() else {
            return Ok(vec![
                "the URL names no database and the plan no schema".into(),
            ]);
        };
        let mut conn = self.conn().await?;
        let t = &m.table;
        let tables = Self::rows(&mut conn, &Bound {
            sql: "SELECT CAST(TABLE_NAME AS CHAR), CAST(ENGINE AS CHAR), CAST(TABLE_TYPE AS CHAR) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ?".into(),
            binds: vec![schema.clone()],
        })
        .await
        .map_err(sql_err("preflight"))?;
        let find = |name: &str| tables.iter().find(|r| r[0].as_deref() == Some(name));
        match find(t) {
            None => problems.push(format!("table {schema}.{t} does not exist")),
            Some(r) if r[2].as_deref() != Some("BASE TABLE") => problems.push(format!("{t} is a view, not a table")),
            Some(r) if !r[1].as_deref().unwrap_or_default().eq_ignore_ascii_case("InnoDB") => problems.push(format!(
                "table {t} uses the {} engine; turnout needs InnoDB (transactions and row locks)",
                r[1].as_deref().unwrap_or("unknown")
            )),
            _ => {}
        }
        for name in [&n.shadow, &n.old, &n.gate, &n.gate_f, &n.gate_r] {
            if find(name).is_some() {
                problems.push(format!("a table named {name} already exists; turnout needs that name (drop or rename it)"));
            }
            if name.chars().count() > 64 {
                problems.push(format!(
                    "the name {name} is longer than MySQL's 64 characters; rename the table first"
                ));
            }
        }
        if m.key.is_empty() {
            problems.push(format!(
                "table {t} has no primary key; turnout pages through rows by it"
            ));
        }
        let fks = Self::rows(&mut conn, &Bound {
            sql: "SELECT CAST(CONSTRAINT_NAME AS CHAR), CAST(TABLE_NAME AS CHAR), CAST(REFERENCED_TABLE_NAME AS CHAR) FROM information_schema.REFERENTIAL_CONSTRAINTS \
                  WHERE (CONSTRAINT_SCHEMA = ? AND TABLE_NAME = ?) OR (UNIQUE_CONSTRAINT_SCHEMA = ? AND REFERENCED_TABLE_NAME = ?)"
                .into(),
            binds: vec![schema.clone(), t.clone(), schema.clone(), t.clone()],
        })
        .await
        .map_err(sql_err("preflight: foreign keys"))?;
        for r in fks
            .iter()
            .filter(|r| r[1].as_deref() == Some(t) || r[2].as_deref() == Some(t))
        {
            problems.push(format!(
                "foreign key {} links {} to {}: a renamed table would leave it pointing at the old one; drop it for the migration",
                r[0].as_deref().unwrap_or("?"),
                r[1].as_deref().unwrap_or("?"),
                r[2].as_deref().unwrap_or("?")
            ));
        }
        let trig = Self::rows(&mut conn, &Bound {
            sql: "SELECT CAST(TRIGGER_NAME AS CHAR), CAST(EVENT_OBJECT_TABLE AS CHAR) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = ?".into(),
            binds: vec![schema.clone()],
        })
        .await
        .map_err(sql_err("preflight: triggers"))?;
        for r in trig.iter().filter(|r| r[1].as_deref() == Some(t)) {
            problems.push(format!(
                "table {t} has a trigger {}; turnout's dual-write needs the table without triggers (they would stay on the old table at cutover)",
                r[0].as_deref().unwrap_or("?")
            ));
        }
        let gen_cols = Self::rows(&mut conn, &Bound {
            sql: "SELECT CAST(COLUMN_NAME AS CHAR), CAST(TABLE_NAME AS CHAR) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? \
                  AND (EXTRA LIKE '%GENERATED%' OR EXTRA LIKE '%VIRTUAL%' OR EXTRA LIKE '%PERSISTENT%' OR EXTRA LIKE '%STORED%') AND EXTRA NOT LIKE '%DEFAULT_GENERATED%'"
                .into(),
            binds: vec![schema.clone(), t.clone()],
        })
        .await
        .map_err(sql_err("preflight: generated columns"))?;
        for r in gen_cols.iter().filter(|r| r[1].as_deref() == Some(t)) {
            problems.push(format!(
                "column {} of {t} is a generated column; turnout does not copy those yet",
                r[0].as_deref().unwrap_or("?")
            ));
        }
        let idx = Self::rows(&mut conn, &Bound {
            sql: "SELECT CAST(INDEX_NAME AS CHAR), CAST(INDEX_TYPE AS CHAR), CAST(SUB_PART AS CHAR), CAST(TABLE_NAME AS CHAR) FROM information_schema.STATISTICS \
                  WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND (SUB_PART IS NOT NULL OR INDEX_TYPE IN ('FULLTEXT', 'SPATIAL'))"
                .into(),
            binds: vec![schema.clone(), t.clone()],
        })
        .await
        .map_err(sql_err("preflight: indexes"))?;
        for r in idx.iter().filter(|r| r[3].as_deref() == Some(t)) {
            problems.push(format!(
                "index {} of {t} is a prefix, FULLTEXT or SPATIAL index, which turnout cannot rebuild yet",
                r[0].as_deref().unwrap_or("?")
            ));
        }
        if !problems.is_empty() {
            return Ok(problems);
        }
        // Expressions compile and fit their columns: inserts of zero rows into temporary
        // tables of the new and old shapes (temporary tables touch no shared catalog).
        let tmp_new = format!("_turnout_pf_new_{}", hash_hex(&m.name, 8));
        let tmp_old = format!("_turnout_pf_old_{}", hash_hex(&m.name, 8));
        let mut tg = Gen {
            m,
            n: n.clone(),
            mariadb: self.mariadb,
        };
        tg.n.schema = None;
        tg.n.shadow = tmp_new.clone();
        let create_new = tg.create_shadow("ENGINE=InnoDB").replacen(
            "CREATE TABLE IF NOT EXISTS",
            "CREATE TEMPORARY TABLE",
            1,
        );
        if let Err(e) = sqlx::raw_sql(AssertSqlSafe(create_new))
            .execute(&mut *conn)
            .await
        {
            problems.push(format!("the new shape of {t} is not valid: {e}"));
            return Ok(problems);
        }
        let fwd_src = format!(
            "(SELECT {} FROM {} LIMIT 0) AS turnout_src",
            g.old_columns(),
            n.q(t)
        );
        let fwd = g.insert_mapped(&quote(&tmp_new), &m.forward, &fwd_src);
        if let Err(e) = sqlx::raw_sql(AssertSqlSafe(fwd)).execute(&mut *conn).await {
            problems.push(
                name_failing_column(
                    &mut conn,
                    &m.forward,
                    &fwd_src,
                    "forward expression (from/using)",
                    t,
                    e,
                )
                .await,
            );
        }
        let create_old = format!("CREATE TEMPORARY TABLE {} LIKE {}", quote(&tmp_old), n.q(t));
        if sqlx::raw_sql(AssertSqlSafe(create_old))
            .execute(&mut *conn)
            .await
            .is_ok()
        {
            let cols: Vec<String> = m.after.columns.iter().map(|c| quote(&c.name)).collect();
            let rev_src = format!(
                "(SELECT {} FROM {} LIMIT 0) AS turnout_src",
                cols.join(", "),
                quote(&tmp_new)
            );
            let rev = g.insert_mapped(&quote(&tmp_old), &m.reverse, &rev_src);
            if let Err(e) = sqlx::raw_sql(AssertSqlSafe(rev)).execute(&mut *conn).await {
                problems.push(
                    name_failing_column(
                        &mut conn,
                        &m.reverse,
                        &rev_src,
                        "reverse expression",
                        t,
                        e,
                    )
                    .await,
                );
            }
        }
        let drop = format!(
            "DROP TEMPORARY TABLE IF EXISTS {}, {}",
            quote(&tmp_new),
            quote(&tmp_old)
        );
        self.exec(&mut conn, &drop, "preflight: dropping temporary tables")
            .await?;
        Ok(problems)
    }

    fn preview(&self, m: &Migration) -> Vec<PhaseSql> {
        self.sql(m)
            .preview("ENGINE=InnoDB DEFAULT CHARSET=<as the live table>")
    }

    async fn prepare(&self, m: &Migration, save: &StateRow) -> Result<()> {
        let g = self.sql(m);
        let schema =
            g.n.schema.clone().ok_or_else(|| {
                Error::Usage("no database: name one in the URL or the plan".into())
            })?;
        let mut conn = self.conn().await?;
        let opts = self.table_options(&mut conn, &schema, &m.table).await?;
        self.exec(
            &mut conn,
            &g.create_shadow(&opts),
            "prepare: creating the shadow table",
        )
        .await?;
        Self::save_on(&mut conn, save)
            .await
            .map_err(sql_err("prepare: saving the state"))
    }

    async fn start_dual_write(&self, m: &Migration, save: &StateRow) -> Result<()> {
        let g = self.sql(m);
        let mut conn = self.conn().await?;
        let cat = self.catalog(&mut conn, &g).await?;
        if cat.old || cat.gate.as_deref() == Some("r") {
            return Err(Error::State(format!(
                "{} already exists: this migration is past cutover",
                g.n.old
            )));
        }
        for sql in g.create_gates() {
            self.exec(&mut conn, &sql, "dual-write: creating the gate")
                .await?;
        }
        for (name, sql) in g.n.forward.iter().zip(g.forward_triggers()) {
            if !cat.has_trigger(name) {
                self.ddl_retry(&mut conn, &sql, "dual-write: creating a trigger")
                    .await?;
            }
        }
        Self::save_on(&mut conn, save)
            .await
            .map_err(sql_err("dual-write: saving the state"))
    }

    async fn estimate_rows(&self, m: &Migration) -> Result<u64> {
        let g = self.sql(m);
        let mut conn = self.conn().await?;
        let r = Self::rows(&mut conn, &Bound {
            sql: "SELECT CAST(TABLE_ROWS AS CHAR), CAST(TABLE_NAME AS CHAR) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?".into(),
            binds: vec![g.n.schema.clone().unwrap_or_default(), m.table.clone()],
        })
        .await
        .map_err(sql_err("estimating rows"))?;
        Ok(r.into_iter()
            .find(|r| r[1].as_deref() == Some(m.table.as_str()))
            .and_then(|r| r[0].clone())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0))
    }

    async fn copy_batch(
        &self,
        m: &Migration,
        after: Option<&Cursor>,
        limit: u64,
        checkpoint: &(dyn Fn(&BatchDone) -> StateRow + Sync),
    ) -> Result<BatchDone> {
        let g = self.sql(m);
        let after = after.map(|c| cursor_values(c, m.key.len())).transpose()?;
        let mut conn = self.conn().await?;
        // REPEATABLE READ: the batch's locking read takes next-key locks, so no row can
        // appear in or leave the range until the copy commits, and INSERT … SELECT reads
        // the same (current, locked) rows.
        self.exec(
            &mut conn,
            "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
            "backfill",
        )
        .await?;
        self.exec(&mut conn, "START TRANSACTION", "backfill")
            .await?;
        let result: std::result::Result<BatchDone, BatchFail> = async {
            let parse = |rows: Vec<Vec<Option<String>>>| -> Result<Vec<Vec<String>>> {
                rows.into_iter()
                    .filter_map(|r| r.into_iter().next().flatten())
                    .map(|s| parse_key_json(&s))
                    .collect()
            };
            let last_key = Self::rows(&mut conn, &g.batch_last_key(after.as_deref(), limit.max(1)))
                .await
                .map_err(|e| BatchFail::Other(Error::db("backfill: reading the next batch", e)))?;
            let last_key = parse(last_key).map_err(BatchFail::Other)?;
            // A full batch: `limit` rows up to that key. The tail: read its keys.
            let (count, last) = match last_key.into_iter().next() {
                Some(last) => (limit.max(1), Some(last)),
                None => {
                    let keys = Self::rows(&mut conn, &g.batch_keys(after.as_deref(), limit.max(1)))
                        .await
                        .map_err(|e| {
                            BatchFail::Other(Error::db("backfill: reading the next batch", e))
                        })?;
                    let keys = parse(keys).map_err(BatchFail::Other)?;
                    (keys.len() as u64, keys.last().cloned())
                }
            };
            let done = match last {
                None => BatchDone {
                    rows: 0,
                    last: after.as_ref().map(|a| serde_json::json!(a)),
                    rest: std::time::Duration::ZERO,
                },
                Some(last) => {
                    if let Err(e) =
                        Self::rows(&mut conn, &g.batch_insert(after.as_deref(), &last)).await
                    {
                        return Err(BatchFail::Copy(last, e));
                    }
                    BatchDone {
                        rows: count,
                        last: Some(serde_json::json!(last)),
                        rest: std::time::Duration::ZERO,
                    }
                }
            };
            Self::save_on(&mut conn, &checkpoint(&done))
                .await
                .map_err(|e| BatchFail::Other(Error::db("backfill: saving the checkpoint", e)))?;
            Ok(done)
        }
        .await;
        match result {
            Ok(done) => {
                self.exec(&mut conn, "COMMIT", "backfill: committing the batch")
                    .await?;
                Ok(done)
            }
            Err(fail) => {
                // Nothing of the batch may stay: not its rows, not its checkpoint.
                let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
                match fail {
                    BatchFail::Copy(_last, e) if is_data_error(&e) => {
                        // Only now are the batch's keys needed, to find the row.
                        let keys =
                            Self::rows(&mut conn, &g.batch_keys(after.as_deref(), limit.max(1)))
                                .await
                                .map_err(sql_err("backfill: reading the failed batch"))?
                                .into_iter()
                                .filter_map(|r| r.into_iter().next().flatten())
                                .map(|s| parse_key_json(&s))
                                .collect::<Result<Vec<_>>>()?;
                        Err(self.find_bad_row(&g, &keys, &e).await?)
                    }
                    BatchFail::Copy(_, e) => Err(Error::db("backfill: copying the batch", e)),
                    BatchFail::Other(e) => Err(e),
                }
            }
        }
    }

    async fn finish_backfill(&self, m: &Migration) -> Result<()> {
        let g = self.sql(m);
        let mut conn = self.conn().await?;
        // Idempotent: after a crash the indexes already built are skipped.
        let schema = g.n.schema.clone().unwrap_or_default();
        let existing = Self::index_names(&mut conn, &schema, &g.n.shadow).await?;
        if let Some(sql) = g.add_indexes(&existing) {
            crate::fault::point("mysql.backfill.before_indexes");
            let built = self
                .ddl_retry(&mut conn, &sql, "backfill: building the indexes")
                .await;
            // A turnout killed during the build leaves the server finishing it: once it
            // has, this one's ALTER fails on the names, and the indexes are there.
            if let Err(e) = built {
                let now = Self::index_names(&mut conn, &schema, &g.n.shadow).await?;
                if g.add_indexes(&now).is_some() {
                    return Err(e);
                }
            }
            crate::fault::point("mysql.backfill.after_indexes");
        }
        self.exec(
            &mut conn,
            &format!("ANALYZE TABLE {}", g.n.q(&g.n.shadow)),
            "analyzing the shadow",
        )
        .await
    }

    async fn verify(
        &self,
        m: &Migration,
        req: &VerifyRequest,
        progress: &(dyn Fn(u64) + Sync),
        stop: &(dyn Fn() -> bool + Sync),
    ) -> Result<VerifyReport> {
        let g = self.sql(m);
        let shared = Mutex::new(Chunks::new(req.max_diffs));
        let workers = req.workers.clamp(1, 4);
        let runs = (0..workers).map(|_| {
            abandon_on_error(
                &shared,
                self.verify_worker(&g, &shared, req, progress, stop),
            )
        });
        let results = futures_util::future::join_all(runs).await;
        for r in results {
            r?;
        }
        Ok(shared.into_inner().into_report())
    }

    async fn cutover(
        &self,
        m: &Migration,
        lock_timeout: Duration,
        save: &StateRow,
    ) -> Result<CutoverOutcome> {
        let g = self.sql(m);
        let n = &g.n;
        let mut conn = self.conn().await?;
        let cat = self.catalog(&mut conn, &g).await?;
        if cat.old && cat.table && cat.gate.as_deref() == Some("r") {
            // Swapped already (a crash after the RENAME): only the state is missing.
            Self::save_on(&mut conn, save)
                .await
                .map_err(sql_err("cutover: saving the state"))?;
            return Ok(CutoverOutcome::Swapped);
        }
        if !(cat.table && cat.shadow && cat.gate.as_deref() == Some("f")) {
            return Err(Error::State(format!(
                "cutover needs {}, {} and the forward gate; the catalog shows table={} shadow={} gate={:?}",
                n.table, n.shadow, cat.table, cat.shadow, cat.gate
            )));
        }
        for name in n.forward.iter() {
            if !cat.has_trigger(name) {
                return Err(Error::State(format!(
                    "the dual-write trigger {name} is missing; run rollback and start again"
                )));
            }
        }
        self.exec(
            &mut conn,
            &format!("ANALYZE TABLE {}", n.q(&n.shadow)),
            "cutover: analyzing the shadow",
        )
        .await?;
        let secs = lock_timeout.as_secs().max(1);
        self.exec(
            &mut conn,
            &format!("SET SESSION lock_wait_timeout = {secs}, innodb_lock_wait_timeout = {secs}"),
            "cutover",
        )
        .await?;
        let outcome = async {
            // Reverse triggers, inert until the gate turns: each CREATE TRIGGER needs a
            // brief metadata lock on the shadow, bounded like the swap.
            for (name, sql) in n.reverse.iter().zip(g.reverse_triggers()) {
                if !cat.has_trigger(name) {
                    match sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut *conn).await {
                        Err(e) if is_lock_timeout(&e) => return Ok(CutoverOutcome::LockTimeout),
                        r => {
                            r.map_err(sql_err("cutover: creating a reverse trigger"))?;
                        }
                    }
                }
            }
            // New ids continue above every id the live table ever handed out, not only
            // above the ones still present (InnoDB keeps the larger of this and max+1).
            if m.before.columns.iter().any(|c| matches!(c.generated, Some(Generated::AutoIncrement))) {
                if !self.mariadb {
                    let _ = sqlx::raw_sql("SET SESSION information_schema_stats_expiry = 0").execute(&mut *conn).await;
                }
                let r = Self::rows(&mut conn, &Bound {
                    sql: "SELECT CAST(AUTO_INCREMENT AS CHAR), CAST(TABLE_NAME AS CHAR) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?".into(),
                    binds: vec![n.schema.clone().unwrap_or_default(), n.table.clone()],
                })
                .await
                .map_err(sql_err("cutover: reading AUTO_INCREMENT"))?;
                let next = r.into_iter().find(|r| r[1].as_deref() == Some(n.table.as_str())).and_then(|r| r[0].clone());
                if let Some(next) = next.and_then(|s| s.parse::<u64>().ok()) {
                    let sql = format!("ALTER TABLE {} AUTO_INCREMENT = {next}", n.q(&n.shadow));
                    match sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut *conn).await {
                        Err(e) if is_lock_timeout(&e) => return Ok(CutoverOutcome::LockTimeout),
                        r => {
                            r.map_err(sql_err("cutover: carrying AUTO_INCREMENT over"))?;
                        }
                    }
                }
            }
            crate::fault::point("mysql.cutover.before_swap");
            let Some(mut sentry) = self.sentry(&g, secs).await? else {
                return Ok(CutoverOutcome::LockTimeout);
            };
            let swapper: u64 = sqlx::query_scalar("SELECT CONNECTION_ID()")
                .fetch_one(&mut *conn)
                .await
                .map_err(sql_err("cutover: naming the swapping session"))?;
            let swap = g.swap();
            let over = std::sync::atomic::AtomicBool::new(false);
            let (swapped, _) = tokio::join!(
                async {
                    let r = sqlx::raw_sql(AssertSqlSafe(swap)).execute(&mut *conn).await;
                    over.store(true, std::sync::atomic::Ordering::SeqCst);
                    r
                },
                Self::release_sentry(&mut sentry, swapper, &over),
            );
            let _ = sentry.close().await;
            match swapped {
                Err(e) if is_lock_timeout(&e) => return Ok(CutoverOutcome::LockTimeout),
                r => {
                    r.map_err(sql_err("cutover: swapping the tables"))?;
                }
            }
            crate::fault::point("mysql.cutover.after_swap");
            crate::fault::point("cutover.inside");
            Ok(CutoverOutcome::Swapped)
        }
        .await;
        let _ = sqlx::raw_sql(
            "SET SESSION lock_wait_timeout = DEFAULT, innodb_lock_wait_timeout = DEFAULT",
        )
        .execute(&mut *conn)
        .await;
        if let Ok(CutoverOutcome::Swapped) = outcome {
            Self::save_on(&mut conn, save)
                .await
                .map_err(sql_err("cutover: saving the state"))?;
        }
        outcome
    }

    async fn cleanup(&self, m: &Migration, keep_old: bool, save: &StateRow) -> Result<()> {
        let g = self.sql(m);
        let n = &g.n;
        let mut conn = self.conn().await?;
        // Reverse triggers first: after that nothing writes the old table.
        for sql in g
            .drop_triggers(&n.reverse)
            .into_iter()
            .chain(g.drop_triggers(&n.forward))
        {
            self.ddl_retry(&mut conn, &sql, "cleanup: dropping a trigger")
                .await?;
        }
        crate::fault::point("cleanup.inside");
        if !keep_old {
            self.ddl_retry(
                &mut conn,
                &format!("DROP TABLE IF EXISTS {}", n.q(&n.old)),
                "cleanup: dropping the old table",
            )
            .await?;
        }
        self.ddl_retry(&mut conn, &g.drop_gates(), "cleanup: dropping the gate")
            .await?;
        Self::save_on(&mut conn, save)
            .await
            .map_err(sql_err("cleanup: saving the state"))
    }

    async fn rollback(&self, m: &Migration, save: &StateRow) -> Result<()> {
        let g = self.sql(m);
        let n = &g.n;
        let mut conn = self.conn().await?;
        let cat = self.catalog(&mut conn, &g).await?;
        if cat.old {
            if cat.gate.as_deref() != Some("r") {
                return Err(Error::State(format!(
                    "{} exists but the migration's gate is gone: cleanup has started, so the old table may be behind; rollback is refused",
                    n.old
                )));
            }
            for name in n.reverse.iter() {
                if !cat.has_trigger(name) {
                    return Err(Error::State(format!(
                        "the reverse trigger {name} is gone (cleanup has started): {} may miss recent writes; rollback is refused",
                        n.old
                    )));
                }
            }
            // The mirror image of cutover: the old table takes the name back and the gate
            // turns to forward in the same atomic statement, so no write falls between.
            self.ddl_retry(
                &mut conn,
                &g.swap_back(),
                "rollback: swapping the tables back",
            )
            .await?;
            crate::fault::point("mysql.rollback.after_swap_back");
        }
        // Forward triggers first, so application writes stop touching the shadow before
        // it is dropped (a trigger writing a missing table would fail the write).
        for sql in g.drop_triggers(&n.forward) {
            self.ddl_retry(&mut conn, &sql, "rollback: dropping a trigger")
                .await?;
        }
        for sql in g.drop_triggers(&n.reverse) {
            self.ddl_retry(&mut conn, &sql, "rollback: dropping a trigger")
                .await?;
        }
        crate::fault::point("rollback.inside");
        self.ddl_retry(
            &mut conn,
            &format!("DROP TABLE IF EXISTS {}", n.q(&n.shadow)),
            "rollback: dropping the shadow",
        )
        .await?;
        self.ddl_retry(&mut conn, &g.drop_gates(), "rollback: dropping the gate")
            .await?;
        Self::save_on(&mut conn, save)
            .await
            .map_err(sql_err("rollback: saving the state"))
    }

    async fn trigger_failures(&self, m: &Migration) -> Result<Vec<String>> {
        let mut conn = self.conn().await?;
        let r = Self::rows(&mut conn, &Bound {
            sql: "SELECT CONCAT(direction, ' ', COALESCE(key_text, '?'), ': ', COALESCE(error, '?')) FROM turnout_failures WHERE migration = ? ORDER BY id".into(),
            binds: vec![m.name.clone()],
        })
        .await
        .map_err(sql_err("reading trigger failures"))?;
        Ok(r.into_iter()
            .filter_map(|r| r.into_iter().next().flatten())
            .collect())
    }

    async fn throttle_value(&self, sql: &str) -> Result<f64> {
        let mut conn = self.conn().await?;
        let row = sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
            .fetch_optional(&mut *conn)
            .await
            .map_err(sql_err("running the throttle query"))?;
        let Some(row) = row else { return Ok(0.0) };
        let v = row
            .try_get::<Option<f64>, _>(0)
            .ok()
            .flatten()
            .or_else(|| {
                row.try_get::<Option<i64>, _>(0)
                    .ok()
                    .flatten()
                    .map(|v| v as f64)
            })
            .or_else(|| {
                row.try_get::<Option<u64>, _>(0)
                    .ok()
                    .flatten()
                    .map(|v| v as f64)
            })
            .or_else(|| {
                row.try_get::<Option<String>, _>(0)
                    .ok()
                    .flatten()
                    .and_then(|s| s.trim().parse().ok())
            });
        Ok(v.unwrap_or(0.0))
    }
}

impl MySql {
    /// A session holding `LOCK TABLES <table> READ` while the swap queues behind it, so
    /// that the swap takes `<table>` before any writer does. Without it the RENAME locks
    /// `_<table>_new` first (its name sorts first), a writer that already holds
    /// `<table>` and waits for `_<table>_new` (its trigger writes there) is chosen as
    /// the deadlock victim, and MariaDB's retry of its statement fails with 1146: 3-8
    /// statements per swap with eight writers, none with the sentry (measured on
    /// MariaDB 10.11). None: the lock was not granted within `secs`.
    async fn sentry(&self, g: &Gen<'_>, secs: u64) -> Result<Option<MySqlConnection>> {
        let mut sentry = self.conn().await?.detach();
        self.exec(
            &mut sentry,
            &format!("SET SESSION lock_wait_timeout = {secs}"),
            "cutover",
        )
        .await?;
        match sqlx::raw_sql(AssertSqlSafe(format!(
            "LOCK TABLES {} READ",
            g.n.q(&g.n.table)
        )))
        .execute(&mut sentry)
        .await
        {
            Ok(_) => Ok(Some(sentry)),
            Err(e) if is_lock_timeout(&e) => {
                let _ = sentry.close().await;
                Ok(None)
            }
            Err(e) => Err(Error::db("cutover: locking the table for the swap", e)),
        }
    }

    /// Unlocks once the swap waits for the table (or after a second regardless: the
    /// swap is then waiting for something else, and goes on without the sentry's help;
    /// or at once when the swap has already ended, in error).
    async fn release_sentry(
        sentry: &mut MySqlConnection,
        swapper: u64,
        over: &std::sync::atomic::AtomicBool,
    ) {
        for _ in 0..500 {
            if over.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
            let state: Option<String> = sqlx::query_scalar(
                "SELECT CAST(STATE AS CHAR) FROM information_schema.PROCESSLIST WHERE ID = ?",
            )
            .bind(swapper)
            .fetch_optional(&mut *sentry)
            .await
            .ok()
            .flatten()
            .flatten();
            if state.is_some_and(|s| s.contains("metadata lock")) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let _ = sqlx::raw_sql("UNLOCK TABLES").execute(&mut *sentry).await;
    }

    /// Compares chunks until none is left: each worker claims the next key range and
    /// hashes it on both sides in a snapshot of its own. One snapshot per chunk is
    /// enough: the triggers keep the two tables equal at every commit, so any snapshot
    /// must show a chunk equal on both sides, and the ranges cover every key once.
    async fn verify_worker(
        &self,
        g: &Gen<'_>,
        shared: &Mutex<Chunks>,
        req: &VerifyRequest,
        progress: &(dyn Fn(u64) + Sync),
        stop: &(dyn Fn() -> bool + Sync),
    ) -> Result<()> {
        let mut conn = self.conn().await?;
        loop {
            if stop() {
                return Ok(());
            }
            let (n, range) = {
                let mut chunks = shared.lock().await;
                let Some(lo) = chunks.next_start() else {
                    return Ok(());
                };
                let hi = self.chunk_end(g, &mut conn, lo.as_deref(), req).await?;
                chunks.claim(lo, hi)
            };
            let sampled = match req.sample_rate {
                Some(rate) => rand::random::<f64>() < rate,
                None => true,
            };
            if !sampled {
                shared.lock().await.skipped();
                continue;
            }
            self.exec(
                &mut conn,
                "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
                "verify",
            )
            .await?;
            self.exec(
                &mut conn,
                "START TRANSACTION WITH CONSISTENT SNAPSHOT",
                "verify: opening the snapshot",
            )
            .await?;
            let compared = self.compare_chunk(g, &mut conn, &range).await;
            let _ = sqlx::raw_sql("COMMIT").execute(&mut *conn).await;
            let (rows, diffs) = compared?;
            let rows_done = shared.lock().await.compared(n, rows, diffs);
            progress(rows_done);
        }
    }

    /// The chunk's upper key; None: the rest of the table (which also catches shadow rows
    /// beyond the last live key; the first chunk, those before it).
    async fn chunk_end(
        &self,
        g: &Gen<'_>,
        conn: &mut MySqlConnection,
        lo: Option<&[String]>,
        req: &VerifyRequest,
    ) -> Result<Option<Vec<String>>> {
        let b = g.keys_after(lo, &format!("LIMIT 1 OFFSET {}", req.chunk_rows.max(1) - 1));
        let hi = Self::rows(conn, &b)
            .await
            .map_err(sql_err("verify: finding the chunk"))?;
        match hi
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next().flatten())
        {
            Some(s) => Ok(Some(parse_key_json(&s)?)),
            None => Ok(None),
        }
    }

    /// Rows of the chunk and, when its hashes differ, the differing rows.
    async fn compare_chunk(
        &self,
        g: &Gen<'_>,
        conn: &mut MySqlConnection,
        range: &(Option<Vec<String>>, Option<Vec<String>>),
    ) -> Result<(u64, Vec<RowDiff>)> {
        let live = self
            .one(conn, &g.checksum(false, range), "verify: hashing live rows")
            .await;
        let live = match live {
            Err(Error::Database { source, .. }) if is_data_error(&source) => {
                return Err(self.data_error(g, range.1.as_deref().unwrap_or(&[]), &source));
            }
            other => other?,
        };
        let shadow = self
            .one(
                conn,
                &g.checksum(true, range),
                "verify: hashing shadow rows",
            )
            .await?;
        let rows: u64 = live
            .split(':')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let diffs = if live == shadow {
            Vec::new()
        } else {
            self.chunk_diffs(g, conn, range).await?
        };
        Ok((rows, diffs))
    }

    async fn one(&self, conn: &mut MySqlConnection, b: &Bound, context: &str) -> Result<String> {
        let r = Self::rows(conn, b)
            .await
            .map_err(sql_err(context.to_string()))?;
        Ok(r.into_iter()
            .next()
            .and_then(|r| r.into_iter().next().flatten())
            .unwrap_or_default())
    }

    async fn chunk_diffs(
        &self,
        g: &Gen<'_>,
        conn: &mut MySqlConnection,
        range: &(Option<Vec<String>>, Option<Vec<String>>),
    ) -> Result<Vec<RowDiff>> {
        let read =
            |rows: Vec<Vec<Option<String>>>| -> Result<BTreeMap<Vec<String>, Option<String>>> {
                rows.into_iter()
                    .map(|r| {
                        let k = parse_key_json(
                            r.first().cloned().flatten().as_deref().unwrap_or("[]"),
                        )?;
                        Ok((k, r.get(1).cloned().flatten()))
                    })
                    .collect()
            };
        let live = read(
            Self::rows(conn, &g.images(false, range))
                .await
                .map_err(sql_err("verify: reading live rows"))?,
        )?;
        let shadow = read(
            Self::rows(conn, &g.images(true, range))
                .await
                .map_err(sql_err("verify: reading shadow rows"))?,
        )?;
        let mut keys: Vec<&Vec<String>> = live.keys().chain(shadow.keys()).collect();
        keys.sort_by(|a, b| key_order(a, b));
        keys.dedup();
        let mut diffs = Vec::new();
        for k in keys {
            let (a, b) = (
                live.get(k).cloned().flatten(),
                shadow.get(k).cloned().flatten(),
            );
            let same = match (&a, &b) {
                (Some(x), Some(y)) => {
                    serde_json::from_str::<serde_json::Value>(x).ok()
                        == serde_json::from_str::<serde_json::Value>(y).ok()
                        && x.len() == y.len()
                        || x == y
                }
                _ => false,
            };
            if !same {
                diffs.push(RowDiff {
                    key: show_key(k),
                    expected: a,
                    shadow: b,
                });
            }
        }
        Ok(diffs)
    }
}

fn state_row(r: Vec<Option<String>>) -> StateRow {
    let f = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
    StateRow {
        name: f(0),
        plan_hash: f(1),
        phase: f(2),
        body: f(3),
    }
}

/// GET_LOCK names are limited to 64 characters.
fn lock_name(migration: &str) -> String {
    let name = format!("turnout:{migration}");
    if name.chars().count() <= 64 {
        name
    } else {
        format!(
            "turnout:{}:{}",
            migration.chars().take(30).collect::<String>(),
            hash_hex(migration, 16)
        )
    }
}

/// Finds which mapping made a probe fail, compiling each expression on its own, so the
/// refusal names the column.
async fn name_failing_column(
    conn: &mut sqlx::MySqlConnection,
    maps: &[Mapped],
    src: &str,
    what: &str,
    table: &str,
    whole: sqlx::Error,
) -> String {
    for mp in maps {
        let probe = format!("SELECT {} FROM {src}", Gen::value(mp));
        if let Err(e) = sqlx::raw_sql(AssertSqlSafe(probe))
            .execute(&mut *conn)
            .await
        {
            return format!(
                "column {:?}: the {what} does not work on {table}: {e}",
                mp.target
            );
        }
    }
    format!("the {what}s do not work on {table}: {whole}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{KeyColumn, Source};

    fn col(name: &str, t: &str) -> Column {
        Column {
            name: name.into(),
            sql_type: t.into(),
            nullable: false,
            default: None,
            generated: None,
        }
    }

    fn migration() -> Migration {
        let before = TableShape {
            columns: vec![col("id", "bigint(20)"), col("na`me", "varchar(10)")],
            primary_key: vec!["id".into()],
            indexes: vec![],
        };
        let mut after = before.clone();
        after.columns[1].name = "label".into();
        Migration {
            name: "m1".into(),
            schema: Some("db".into()),
            table: "t".into(),
            shadow: "_t_new".into(),
            old: "_t_old".into(),
            before,
            after,
            forward: vec![
                Mapped {
                    target: "id".into(),
                    source: Source::Column("id".into()),
                    cast: None,
                },
                Mapped {
                    target: "label".into(),
                    source: Source::Expr("upper(`na``me`)".into()),
                    cast: Some("varchar(10)".into()),
                },
            ],
            reverse: vec![
                Mapped {
                    target: "id".into(),
                    source: Source::Column("id".into()),
                    cast: None,
                },
                Mapped {
                    target: "na`me".into(),
                    source: Source::Column("label".into()),
                    cast: None,
                },
            ],
            lossy: vec![],
            key: vec![KeyColumn {
                old: "id".into(),
                new: "id".into(),
            }],
            on_error: crate::plan::OnError::Reject,
        }
    }

    #[test]
    fn quote_doubles_backticks() {
        assert_eq!(quote("a`b"), "`a``b`");
        assert_eq!(quote("select"), "`select`");
    }

    #[test]
    fn composite_keys_expand_to_index_friendly_ors() {
        let cols = vec![
            ("`a`".to_string(), "int".to_string()),
            ("`b`".to_string(), "varchar(3)".to_string()),
        ];
        let b = key_cmp(&cols, &["1".into(), "x".into()], ">", false);
        assert_eq!(
            b.sql,
            "((`a` > CAST(? AS SIGNED)) OR (`a` = CAST(? AS SIGNED) AND `b` > ?))"
        );
        assert_eq!(b.binds, ["1", "1", "x"]);
        let b = key_cmp(&cols, &["1".into(), "x".into()], "<", true);
        assert!(
            b.sql.ends_with("OR (`a` = CAST(? AS SIGNED) AND `b` = ?))"),
            "{}",
            b.sql
        );
    }

    #[test]
    fn server_messages_name_the_column() {
        assert_eq!(
            column_in_message("Data too long for column 'code' at row 1").as_deref(),
            Some("code")
        );
        assert_eq!(
            column_in_message(
                "Incorrect integer value: 'x' for column `db`.`t`.`we``ird` at row 1"
            )
            .as_deref(),
            Some("we`ird")
        );
        assert_eq!(column_in_message("Duplicate entry"), None);
    }

    #[test]
    fn generated_sql_is_stable() {
        let m = migration();
        let g = Gen {
            m: &m,
            n: Names::new(&m, Some("db"), Some("db")),
            mariadb: true,
        };
        let shadow = g.create_shadow("ENGINE=InnoDB");
        assert!(
            shadow.starts_with("CREATE TABLE IF NOT EXISTS `db`.`_t_new`"),
            "{shadow}"
        );
        let fwd = g.forward_triggers();
        assert!(
            fwd[0].contains(
                "FROM (SELECT NEW.`id` AS `id`, NEW.`na``me` AS `na``me`) AS turnout_src"
            ),
            "{}",
            fwd[0]
        );
        assert!(fwd[0].contains("IF turnout_gate = 'f' THEN"));
        assert!(
            fwd[1].contains("IF NOT (OLD.`id` <=> NEW.`id`) THEN DELETE FROM `db`.`_t_new` WHERE `id` = OLD.`id`; END IF"),
            "{}",
            fwd[1]
        );
        // The update trigger upserts; only a key change deletes.
        assert!(
            fwd[1].contains("ON DUPLICATE KEY UPDATE `db`.`_t_new`.`label` = IF(`db`.`_t_new`.`id` <=> VALUES(`db`.`_t_new`.`id`), VALUES(`db`.`_t_new`.`label`), `db`.`_t_new`.`label`), `db`.`_t_new`.`id` = IF(`db`.`_t_new`.`id` <=> VALUES(`db`.`_t_new`.`id`), `db`.`_t_new`.`id`, NULL)"),
            "{}",
            fwd[1]
        );
        assert_eq!(fwd[1].matches("DELETE").count(), 1, "{}", fwd[1]);
        assert!(!fwd[0].contains("DELETE"), "{}", fwd[0]);
        let rev = g.reverse_triggers();
        assert!(
            rev[0].contains(
                "ON DUPLICATE KEY UPDATE `db`.`_t_old`.`na``me` = IF(`db`.`_t_old`.`id` <=> VALUES(`db`.`_t_old`.`id`), VALUES(`db`.`_t_old`.`na``me`), `db`.`_t_old`.`na``me`), `db`.`_t_old`.`id` = IF("
            ),
            "{}",
            rev[0]
        );
        assert!(rev[0].contains("AFTER INSERT ON `db`.`_t_new`"));
        let swap = g.swap();
        assert!(
            swap.starts_with("RENAME TABLE `db`.`t` TO `db`.`_t_old`, `db`.`_t_new` TO `db`.`t`, "),
            "{swap}"
        );
        let copy = g.batch_insert(Some(&["5".into()]), &["9".into()]);
        assert!(
            copy.sql
                .contains("ON DUPLICATE KEY UPDATE `db`.`_t_new`.`id` = IF(`db`.`_t_new`.`id` <=> VALUES(`db`.`_t_new`.`id`), `db`.`_t_new`.`id`, NULL)"),
            "{}",
            copy.sql
        );
        assert_eq!(copy.binds, ["5", "9", "9"]);
        assert_eq!(g.preview("ENGINE=InnoDB").len(), 6);
    }

    #[test]
    fn non_unique_indexes_wait_for_the_end_of_the_copy() {
        let mut m = migration();
        let idx = |name: &str, unique| Index {
            name: name.into(),
            columns: vec!["label".into()],
            unique,
        };
        m.after.indexes = vec![idx("by label", false), idx("one label", true)];
        for mariadb in [true, false] {
            let g = Gen {
                m: &m,
                n: Names::new(&m, Some("db"), Some("db")),
                mariadb,
            };
            let shadow = g.create_shadow("ENGINE=InnoDB");
            assert!(
                shadow.contains("UNIQUE KEY `one label` (`label`)"),
                "{shadow}"
            );
            assert!(!shadow.contains("by label"), "{shadow}");
            let add = g.add_indexes(&[]).unwrap_or_default();
            let key = if mariadb {
                "ADD KEY IF NOT EXISTS `by label` (`label`)"
            } else {
                "ADD KEY `by label` (`label`)"
            };
            assert_eq!(
                add,
                format!("ALTER TABLE `db`.`_t_new` {key}, ALGORITHM=INPLACE, LOCK=NONE")
            );
            assert_eq!(g.add_indexes(&["by label".into()]), None);
        }
    }

    #[test]
    fn canonical_forms_follow_the_target_type() {
        assert_eq!(
            canon("x", "decimal(12,2)", true),
            "CAST(x AS DECIMAL(12,2))"
        );
        assert_eq!(canon("x", "datetime(6)", true), "CAST(x AS DATETIME(6))");
        assert_eq!(canon("x", "int(10) unsigned", true), "CAST(x AS UNSIGNED)");
        assert_eq!(canon("x", "json", false), "CAST(x AS JSON)");
        assert_eq!(canon("x", "longblob", true), "CAST(x AS BINARY)");
    }

    #[test]
    fn lock_names_fit_in_64_chars() {
        assert!(lock_name(&"x".repeat(200)).chars().count() <= 64);
        assert_eq!(lock_name("m"), "turnout:m");
    }
}
