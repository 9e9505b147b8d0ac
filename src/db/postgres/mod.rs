//! PostgreSQL answers the engine's questions. What this dialect gives us and how we use it:
//! DDL is transactional, so every step's DDL commits together with its state row; triggers
//! are plpgsql functions that can catch errors (`on_error: record`); the migration lock is a
//! session advisory lock held on a dedicated connection; verification reads one
//! REPEATABLE READ snapshot and compares chunk hashes computed inside the server.
//!
//! Naming: every object turnout creates is named from the migration (`turnout_<name>_<hash>`
//! plus a suffix), so a crashed step can be finished or undone by looking at the catalog.
//! Index names are schema-wide in PostgreSQL, so the shadow's indexes (and its primary key)
//! carry temporary names until cutover, when the old table's are renamed out of the way
//! (`…_o<i>`, `…_opk`) and the new ones take the final names; rollback renames them back.
//!
//! Sequences: a serial column's sequence is shared by the shadow (same `nextval` default)
//! and its ownership moves to the new table at cutover, back at rollback. An identity
//! column is a plain column on the shadow while rows are copied (identity sequences
//! cannot be shared) and becomes an identity again at cutover, starting above every id
//! the old sequence handed out or the table holds.
//!
//! Refused by preflight, because `TableShape` cannot carry them faithfully: expression,
//! partial, non-btree, descending or non-default-opclass indexes; CHECK, FOREIGN KEY and
//! EXCLUDE constraints; user triggers; views depending on the table; stored generated
//! columns; non-default collations; partitioned tables.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, PgPool, Row};
use tokio::sync::Mutex;

use crate::db::{
    Backend, BatchDone, Chunks, Cursor, CutoverOutcome, PhaseSql, RowDiff, StateRow, VerifyReport,
    VerifyRequest, abandon_on_error, render_source,
};
use crate::error::{Error, Result};
use crate::plan::OnError;
use crate::schema::{Column, Generated, Index, Mapped, Migration, TableShape};

/// First half of the two-int advisory lock key: "turn" in ASCII, so turnout's locks are
/// recognisable in `pg_locks` and do not collide with an application's one-int locks.
const LOCK_CLASS: i32 = 0x7475_726e;

/// DDL that needs a brief lock on the live table (triggers, drops) waits at most this
/// long per attempt, so it never queues the application behind a long transaction.
const DDL_LOCK_TIMEOUT: Duration = Duration::from_secs(2);
const DDL_ATTEMPTS: u32 = 10;

/// A batch that deadlocks with the application is retried this many times.
const BATCH_ATTEMPTS: u32 = 5;

pub struct Postgres {
    pub pool: PgPool,
    /// Boxed: the options are large and `Database` holds this backend inline.
    options: Box<PgConnectOptions>,
    /// The connection's default schema: where `turnout_state` and `turnout_failures` live.
    home: String,
    /// The session that holds the advisory locks, for as long as this backend lives.
    lock_conn: Mutex<Option<PgConnection>>,
}

// ---------------------------------------------------------------------------------------
// Pure SQL generation: no I/O below this line until `impl Backend`.
// ---------------------------------------------------------------------------------------

/// The one quoting function of this dialect: double quotes, inner quotes doubled.
pub fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// A string literal that reads the same whatever `standard_conforming_strings` says.
fn literal(s: &str) -> String {
    format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", quote(schema), quote(name))
}

fn list<S: AsRef<str>>(names: &[S]) -> String {
    names
        .iter()
        .map(|n| quote(n.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The cast used where the value is compared (verify): the exact target type.
fn full_cast(value: &str, t: &str) -> String {
    format!("CAST({value} AS {t})")
}

/// The cast used where the value is stored: the target type without its modifier, so the
/// column's own assignment check rejects a value that does not fit (an explicit cast to
/// `varchar(3)` would silently truncate it).
fn loose_cast(value: &str, t: &str) -> String {
    format!("CAST({value} AS {})", loose_type(t))
}

/// `varchar(32)` → `varchar`, `numeric(12,2)[]` → `numeric[]`; `char(n)` → `bpchar` and
/// `bit(n)` → `varbit`, whose bare names would mean length 1. Quoted names are kept.
fn loose_type(t: &str) -> String {
    let mut out = String::new();
    let mut chars = t.chars().peekable();
    let mut in_quotes = false;
    while let Some(c) = chars.next() {
        if c == '"' {
            in_quotes = !in_quotes;
            out.push(c);
            continue;
        }
        if c == '(' && !in_quotes {
            let rest: String = chars.clone().collect();
            if let Some(end) = rest.find(')')
                && rest[..end]
                    .chars()
                    .all(|ch| ch.is_ascii_digit() || ch == ',' || ch == ' ' || ch == '-')
            {
                for _ in 0..=end {
                    chars.next();
                }
                continue;
            }
        }
        out.push(c);
    }
    let out = out.split_whitespace().collect::<Vec<_>>().join(" ");
    let (base, arrays) = match out.find('[') {
        Some(i) if !out.starts_with('"') => (out[..i].trim().to_string(), out[i..].to_string()),
        _ => (out.clone(), String::new()),
    };
    let base = match base.to_ascii_lowercase().as_str() {
        "char" | "character" => "bpchar".to_string(),
        "bit" => "varbit".to_string(),
        _ => base,
    };
    format!("{base}{arrays}")
}

/// A plpgsql body delimiter that the body does not contain.
fn dollar_tag(body: &str) -> String {
    let mut n = 0;
    loop {
        let tag = if n == 0 {
            "$turnout$".to_string()
        } else {
            format!("$turnout{n}$")
        };
        if !body.contains(&tag) {
            return tag;
        }
        n += 1;
    }
}

fn short_hash(s: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(s.as_bytes())
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Deterministic names of everything a migration creates (all well under 63 bytes).
#[derive(Debug, Clone)]
struct Names {
    base: String,
}

impl Names {
    fn of(m: &Migration) -> Names {
        let readable: String = m
            .name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
            .map(|c| {
                if c == '-' {
                    '_'
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .take(20)
            .collect();
        Names {
            base: format!(
                "turnout_{readable}_{}",
                short_hash(&format!("{}/{}", m.name, m.table))
            ),
        }
    }
    fn func(&self, dir: &str) -> String {
        format!("{}_{dir}", self.base)
    }
    fn trunc_func(&self, dir: &str) -> String {
        format!("{}_{dir}_tr", self.base)
    }
    fn new_index(&self, i: usize) -> String {
        format!("{}_n{i}", self.base)
    }
    fn old_index(&self, i: usize) -> String {
        format!("{}_o{i}", self.base)
    }
    fn new_pk(&self) -> String {
        format!("{}_npk", self.base)
    }
    fn old_pk(&self) -> String {
        format!("{}_opk", self.base)
    }
}

/// One direction of dual-write: rows of `source` applied to `target` through `mapped`.
struct Direction<'a> {
    label: &'static str,
    source: String,
    target: String,
    mapped: &'a [Mapped],
    source_key: Vec<&'a str>,
    target_key: Vec<&'a str>,
    source_columns: Vec<&'a str>,
    /// The target has `GENERATED ALWAYS` identity columns that must take our values.
    overriding: bool,
    func: String,
    trunc_func: String,
    trigger: String,
    trunc_trigger: String,
}

/// Facts read from the catalog inside the cutover transaction.
#[derive(Debug, Clone)]
struct CutoverFacts {
    /// The live table's primary key constraint name, which the new table takes over.
    pk_name: Option<String>,
    /// Identity columns of the new table: (column, always, first value to hand out).
    identities: Vec<(String, bool, String)>,
    /// Serial sequences owned by the live table: (schema, sequence, new column).
    sequences: Vec<(String, String, String)>,
}

/// Facts read from the catalog inside a rollback after cutover.
#[derive(Debug, Clone)]
struct RollbackFacts {
    /// The new table's primary key name (the original one), given back to the old table.
    pk_name: Option<String>,
    /// Sequences owned by the new table: (schema, sequence, old column or None).
    sequences: Vec<(String, String, Option<String>)>,
    /// Identity sequences of the old table to move above its rows: (sequence oid, column).
    identities: Vec<(i64, String)>,
}

/// The SQL of one migration, with its schema resolved.
struct Gen<'a> {
    m: &'a Migration,
    schema: String,
    home: String,
    n: Names,
}

impl<'a> Gen<'a> {
    fn new(m: &'a Migration, default_schema: &str) -> Gen<'a> {
        Gen {
            m,
            schema: m
                .schema
                .clone()
                .unwrap_or_else(|| default_schema.to_string()),
            home: default_schema.to_string(),
            n: Names::of(m),
        }
    }

    fn rel(&self, name: &str) -> String {
        qualified(&self.schema, name)
    }
    fn live(&self) -> String {
        self.rel(&self.m.table)
    }
    fn shadow(&self) -> String {
        self.rel(&self.m.shadow)
    }
    fn old(&self) -> String {
        self.rel(&self.m.old)
    }
    fn failures(&self) -> String {
        qualified(&self.home, "turnout_failures")
    }

    fn old_cols(&self) -> Vec<&'a str> {
        self.m
            .before
            .columns
            .iter()
            .map(|c| c.name.as_str())
            .collect()
    }
    fn new_cols(&self) -> Vec<&'a str> {
        self.m
            .after
            .columns
            .iter()
            .map(|c| c.name.as_str())
            .collect()
    }
    fn old_key(&self) -> Vec<&'a str> {
        self.m.key.iter().map(|k| k.old.as_str()).collect()
    }
    fn new_key(&self) -> Vec<&'a str> {
        self.m.key.iter().map(|k| k.new.as_str()).collect()
    }
    /// The key columns' types (a key's type never changes).
    fn key_types(&self) -> Vec<String> {
        self.m
            .key
            .iter()
            .map(|k| {
                self.m
                    .before
                    .column(&k.old)
                    .map_or_else(|| "text".to_string(), |c| c.sql_type.clone())
            })
            .collect()
    }

    fn forward(&self) -> Direction<'a> {
        Direction {
            label: "forward",
            source: self.live(),
            target: self.shadow(),
            mapped: &self.m.forward,
            source_key: self.old_key(),
            target_key: self.new_key(),
            source_columns: self.old_cols(),
            // The shadow has no identity while rows are copied (see the module doc).
            overriding: false,
            func: self.rel(&self.n.func("fwd")),
            trunc_func: self.rel(&self.n.trunc_func("fwd")),
            trigger: self.n.func("fwd"),
            trunc_trigger: self.n.trunc_func("fwd"),
        }
    }

    /// After cutover: the new table (now named `<table>`) feeds `_<table>_old`.
    fn reverse(&self) -> Direction<'a> {
        Direction {
            label: "reverse",
            source: self.live(),
            target: self.old(),
            mapped: &self.m.reverse,
            source_key: self.new_key(),
            target_key: self.old_key(),
            source_columns: self.new_cols(),
            overriding: has_identity_always(&self.m.before),
            func: self.rel(&self.n.func("rev")),
            trunc_func: self.rel(&self.n.trunc_func("rev")),
            trigger: self.n.func("rev"),
            trunc_trigger: self.n.trunc_func("rev"),
        }
    }

    // --- prepare -------------------------------------------------------------------------

    fn create_shadow(&self) -> Vec<String> {
        let mut cols: Vec<String> = self.m.after.columns.iter().map(column_def).collect();
        cols.push(format!(
            "CONSTRAINT {} PRIMARY KEY ({})",
            quote(&self.n.new_pk()),
            list(&self.new_key())
        ));
        let mut out = vec![format!(
            "CREATE TABLE IF NOT EXISTS {} ({})",
            self.shadow(),
            cols.join(", ")
        )];
        // The table is empty: building its indexes now stalls nobody.
        for (i, idx) in self.m.after.indexes.iter().enumerate() {
            out.push(format!(
                "CREATE {}INDEX IF NOT EXISTS {} ON {} ({})",
                if idx.unique { "UNIQUE " } else { "" },
                quote(&self.n.new_index(i)),
                self.shadow(),
                list(&idx.columns)
            ));
        }
        out
    }

    // --- dual-write ----------------------------------------------------------------------

    /// `INSERT INTO target … SELECT <mapped> FROM (<rows>) AS t ON CONFLICT (key) …`; the
    /// plan's expressions read the source row's columns unqualified, whatever `rows` is.
    /// `INSERT INTO target (…) SELECT <mapped> FROM (<rows>) AS t`, no conflict clause.
    fn insert_select(
        &self,
        target: &str,
        mapped: &[Mapped],
        overriding: bool,
        rows: &str,
    ) -> String {
        let targets: Vec<&str> = mapped.iter().map(|mp| mp.target.as_str()).collect();
        let exprs = mapped
            .iter()
            .map(|mp| render_source(mp, &|c| quote(c), &loose_cast))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "INSERT INTO {target} ({}){} SELECT {exprs} FROM ({rows}) AS t",
            list(&targets),
            if overriding {
                " OVERRIDING SYSTEM VALUE"
            } else {
                ""
            },
        )
    }

    fn upsert(&self, d: &Direction, rows: &str, update: bool) -> String {
        let targets: Vec<&str> = d.mapped.iter().map(|mp| mp.target.as_str()).collect();
        let sets: Vec<String> = targets
            .iter()
            .filter(|t| !d.target_key.contains(t))
            .map(|t| format!("{q} = EXCLUDED.{q}", q = quote(t)))
            .collect();
        let action = if update && !sets.is_empty() {
            format!("DO UPDATE SET {}", sets.join(", "))
        } else {
            "DO NOTHING".to_string()
        };
        format!(
            "{} ON CONFLICT ({}) {action}",
            self.insert_select(&d.target, d.mapped, d.overriding, rows),
            list(&d.target_key)
        )
    }

    fn dual_write(&self, d: &Direction) -> Vec<String> {
        let row = |rec: &str| {
            format!(
                "SELECT {}",
                d.source_columns
                    .iter()
                    .map(|c| format!("{rec}.{q} AS {q}", q = quote(c)))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let matches = |rec: &str| {
            d.target_key
                .iter()
                .zip(&d.source_key)
                .map(|(t, s)| format!("{} = {rec}.{}", quote(t), quote(s)))
                .collect::<Vec<_>>()
                .join(" AND ")
        };
        let key_of = |rec: &str| {
            format!(
                "ROW({})",
                d.source_key
                    .iter()
                    .map(|k| format!("{rec}.{}", quote(k)))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let shown_key = |rec: &str| {
            format!(
                "jsonb_build_array({})::text",
                d.source_key
                    .iter()
                    .map(|k| format!("{rec}.{}", quote(k)))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let target = &d.target;
        let apply = format!(
            "IF TG_OP = 'DELETE' THEN\n    DELETE FROM {target} WHERE {};\n    RETURN NULL;\n  END IF;\n  \
             IF TG_OP = 'UPDATE' AND {} IS DISTINCT FROM {} THEN\n    DELETE FROM {target} WHERE {};\n  END IF;\n  \
             {};\n  RETURN NULL;",
            matches("OLD"),
            key_of("OLD"),
            key_of("NEW"),
            matches("OLD"),
            self.upsert(d, &row("NEW"), true),
        );
        let body = match self.m.on_error {
            // The error propagates: the application's statement fails and nothing diverges.
            OnError::Reject => format!("BEGIN\n  {apply}\nEND"),
            // The application's write stands; the target loses the row for that key, so
            // verify flags it, and the failure is recorded for status and verify.
            OnError::Record => format!(
                "BEGIN\n  BEGIN\n  {apply}\n  EXCEPTION WHEN OTHERS THEN\n    \
                 IF TG_OP <> 'INSERT' THEN\n      DELETE FROM {target} WHERE {};\n    END IF;\n    \
                 IF TG_OP <> 'DELETE' THEN\n      DELETE FROM {target} WHERE {};\n      \
                 INSERT INTO {} (migration, direction, key, error) VALUES ({}, '{}', {}, SQLERRM);\n    ELSE\n      \
                 INSERT INTO {} (migration, direction, key, error) VALUES ({}, '{}', {}, SQLERRM);\n    END IF;\n    \
                 RETURN NULL;\n  END;\nEND",
                matches("OLD"),
                matches("NEW"),
                self.failures(),
                literal(&self.m.name),
                d.label,
                shown_key("NEW"),
                self.failures(),
                literal(&self.m.name),
                d.label,
                shown_key("OLD"),
            ),
        };
        // Column names win over plpgsql variables (a column may be called `found`).
        let body = format!("#variable_conflict use_column\n{body}");
        let tag = dollar_tag(&body);
        // SECURITY DEFINER: the application's role may not be allowed to write the shadow.
        // `search_path FROM CURRENT`: expressions resolve as they did for backfill.
        let header =
            "RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT";
        vec![
            format!(
                "CREATE OR REPLACE FUNCTION {}() {header} AS {tag}\n{body}\n{tag}",
                d.func
            ),
            format!(
                "CREATE OR REPLACE FUNCTION {}() {header} AS $turnout$\nBEGIN\n  TRUNCATE {target};\n  RETURN NULL;\nEND\n$turnout$",
                d.trunc_func
            ),
            format!(
                "CREATE OR REPLACE TRIGGER {} AFTER INSERT OR UPDATE OR DELETE ON {} FOR EACH ROW EXECUTE FUNCTION {}()",
                quote(&d.trigger),
                d.source,
                d.func
            ),
            format!(
                "CREATE OR REPLACE TRIGGER {} AFTER TRUNCATE ON {} FOR EACH STATEMENT EXECUTE FUNCTION {}()",
                quote(&d.trunc_trigger),
                d.source,
                d.trunc_func
            ),
        ]
    }

    /// Dropping the functions drops their triggers, on whichever table they now sit.
    fn drop_dual_write(&self, d: &Direction) -> Vec<String> {
        vec![
            format!("DROP FUNCTION IF EXISTS {}() CASCADE", d.func),
            format!("DROP FUNCTION IF EXISTS {}() CASCADE", d.trunc_func),
        ]
    }

    // --- keys and ranges -----------------------------------------------------------------

    /// `(a, b) > (CAST($1 AS t), CAST($2 AS t))` and/or `(a, b) <= (…)`, parameters numbered
    /// from 1 in the order lower bound, upper bound.
    fn range(&self, prefix: &str, cols: &[&str], lo: bool, hi: bool) -> String {
        let types = self.key_types();
        let lhs = format!(
            "({})",
            cols.iter()
                .map(|c| format!("{prefix}{}", quote(c)))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let params = |first: usize| {
            types
                .iter()
                .enumerate()
                .map(|(i, t)| format!("CAST(${} AS {t})", first + i))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut parts = Vec::new();
        let mut next = 1;
        if lo {
            parts.push(format!("{lhs} > ({})", params(next)));
            next += types.len();
        }
        if hi {
            parts.push(format!("{lhs} <= ({})", params(next)));
        }
        if parts.is_empty() {
            "true".to_string()
        } else {
            parts.join(" AND ")
        }
    }

    fn order(&self, prefix: &str, cols: &[&str], desc: bool) -> String {
        cols.iter()
            .map(|c| format!("{prefix}{}{}", quote(c), if desc { " DESC" } else { "" }))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// A key as the cursor stores it: a JSON array of the values as text.
    fn cursor_json(&self, prefix: &str, cols: &[&str]) -> String {
        format!(
            "jsonb_build_array({})::text",
            cols.iter()
                .map(|c| format!("{prefix}{}::text", quote(c)))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }

    /// A key as people read it: a JSON array of the typed values.
    fn shown_key(&self, prefix: &str, cols: &[&str]) -> String {
        format!(
            "jsonb_build_array({})::text",
            cols.iter()
                .map(|c| format!("{prefix}{}", quote(c)))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }

    // --- backfill ------------------------------------------------------------------------

    /// The next batch's size and last key, read from the committed rows (no lock): the copy
    /// then takes exactly the range up to that key, so a row whose key an application
    /// changes mid-batch can never push the cursor past rows not yet copied.
    fn batch_bounds(&self, has_cursor: bool, limit: &str) -> String {
        let key = self.old_key();
        format!(
            "SELECT count(*) OVER (), {} FROM (SELECT {} FROM {} WHERE {} ORDER BY {} LIMIT {limit}) AS b ORDER BY {} LIMIT 1",
            self.cursor_json("b.", &key),
            list(&key),
            self.live(),
            self.range("", &key, has_cursor, false),
            self.order("", &key, false),
            self.order("b.", &key, true)
        )
    }

    /// The live rows of one batch, share-locked: a concurrent update or delete of them
    /// waits for the batch (or the batch waits for it and reads its result).
    fn batch_rows(&self, has_cursor: bool) -> String {
        let key = self.old_key();
        format!(
            "SELECT {} FROM {} WHERE {} ORDER BY {} FOR SHARE",
            list(&self.old_cols()),
            self.live(),
            self.range("", &key, has_cursor, true),
            self.order("", &key, false)
        )
    }

    /// Rows already in the shadow came from the triggers and are newer: DO NOTHING.
    fn batch_copy(&self, has_cursor: bool) -> String {
        self.upsert(&self.forward(), &self.batch_rows(has_cursor), false)
    }

    // --- verify --------------------------------------------------------------------------

    /// The last key of the next verify chunk (None: the rest of the table is one chunk).
    fn chunk_end(&self, has_lo: bool, rows: u64) -> String {
        let key = self.old_key();
        format!(
            "SELECT {} FROM {} WHERE {} ORDER BY {} OFFSET {} LIMIT 1",
            self.cursor_json("", &key),
            self.live(),
            self.range("", &key, has_lo, false),
            self.order("", &key, false),
            rows.saturating_sub(1)
        )
    }

    /// The mapped live rows of a range, with the new key, the comparable row text and the
    /// JSON image. Only mapped columns are compared: a column filled by its default alone
    /// (a volatile one included) has nothing on the live side to compare with.
    fn live_images(&self, lo: bool, hi: bool, with_image: bool) -> String {
        let old_key = self.old_key();
        let exprs: Vec<(String, String)> = self
            .m
            .forward
            .iter()
            .map(|mp| {
                (
                    mp.target.clone(),
                    render_source(mp, &|c| quote(c), &full_cast),
                )
            })
            .collect();
        format!(
            "SELECT {}, ROW({})::text AS r{} FROM (SELECT {} FROM {} WHERE {}) AS t",
            old_key
                .iter()
                .enumerate()
                .map(|(i, k)| format!("t.{} AS k{i}", quote(k)))
                .collect::<Vec<_>>()
                .join(", "),
            exprs
                .iter()
                .map(|(_, e)| e.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            if with_image {
                format!(", {} AS img", json_image(&exprs))
            } else {
                String::new()
            },
            list(&self.old_cols()),
            self.live(),
            self.range("", &old_key, lo, hi)
        )
    }

    fn shadow_images(&self, lo: bool, hi: bool, with_image: bool) -> String {
        let new_key = self.new_key();
        let cols: Vec<(String, String)> = self
            .m
            .forward
            .iter()
            .map(|mp| (mp.target.clone(), format!("s.{}", quote(&mp.target))))
            .collect();
        format!(
            "SELECT {}, ROW({})::text AS r{} FROM {} AS s WHERE {}",
            new_key
                .iter()
                .enumerate()
                .map(|(i, k)| format!("s.{} AS k{i}", quote(k)))
                .collect::<Vec<_>>()
                .join(", "),
            cols.iter()
                .map(|(_, e)| e.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            if with_image {
                format!(", {} AS img", json_image(&cols))
            } else {
                String::new()
            },
            self.shadow(),
            self.range("s.", &new_key, lo, hi)
        )
    }

    /// Row count and one hash per side for a key range, computed in the server.
    fn chunk_hashes(&self, lo: bool, hi: bool) -> String {
        let ks = (0..self.m.key.len())
            .map(|i| format!("k{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let agg = format!("md5(coalesce(string_agg(md5(r), '' ORDER BY {ks}), ''))");
        format!(
            "SELECT l.n, l.h, s.h FROM (SELECT count(*) AS n, {agg} AS h FROM ({l}) AS l) AS l, (SELECT {agg} AS h FROM ({s}) AS s) AS s",
            l = self.live_images(lo, hi, false),
            s = self.shadow_images(lo, hi, false)
        )
    }

    /// The differing rows of a range: (key, expected image, shadow image).
    fn chunk_diffs(&self, lo: bool, hi: bool, limit: u64) -> String {
        let n = self.m.key.len();
        let on = (0..n)
            .map(|i| format!("l.k{i} = s.k{i}"))
            .collect::<Vec<_>>()
            .join(" AND ");
        let key = format!(
            "jsonb_build_array({})::text",
            (0..n)
                .map(|i| format!("coalesce(l.k{i}, s.k{i})"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let order = (0..n)
            .map(|i| format!("coalesce(l.k{i}, s.k{i})"))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "SELECT {key}, l.img::text, s.img::text FROM ({}) AS l FULL JOIN ({}) AS s ON {on} \
             WHERE l.r IS DISTINCT FROM s.r ORDER BY {order} LIMIT {limit}",
            self.live_images(lo, hi, true),
            self.shadow_images(lo, hi, true)
        )
    }

    // --- cutover, cleanup, rollback ------------------------------------------------------

    fn lock_both(&self) -> String {
        format!(
            "LOCK TABLE {}, {} IN ACCESS EXCLUSIVE MODE",
            self.live(),
            self.shadow()
        )
    }

    fn cutover(&self, f: &CutoverFacts) -> Vec<String> {
        let mut out = vec![self.lock_both()];
        out.extend(self.drop_dual_write(&self.forward()));
        out.push(format!(
            "ALTER TABLE {} RENAME TO {}",
            self.live(),
            quote(&self.m.old)
        ));
        out.push(format!(
            "ALTER TABLE {} RENAME TO {}",
            self.shadow(),
            quote(&self.m.table)
        ));
        if let Some(pk) = &f.pk_name {
            out.push(format!(
                "ALTER TABLE {} RENAME CONSTRAINT {} TO {}",
                self.old(),
                quote(pk),
                quote(&self.n.old_pk())
            ));
            out.push(format!(
                "ALTER TABLE {} RENAME CONSTRAINT {} TO {}",
                self.live(),
                quote(&self.n.new_pk()),
                quote(pk)
            ));
        }
        for (i, idx) in self.m.before.indexes.iter().enumerate() {
            out.push(format!(
                "ALTER INDEX {} RENAME TO {}",
                self.rel(&idx.name),
                quote(&self.n.old_index(i))
            ));
        }
        for (i, idx) in self.m.after.indexes.iter().enumerate() {
            out.push(format!(
                "ALTER INDEX {} RENAME TO {}",
                self.rel(&self.n.new_index(i)),
                quote(&idx.name)
            ));
        }
        for (col, always, start) in &f.identities {
            out.push(format!(
                "ALTER TABLE {} ALTER COLUMN {} ADD GENERATED {} AS IDENTITY (START WITH {start})",
                self.live(),
                quote(col),
                if *always { "ALWAYS" } else { "BY DEFAULT" }
            ));
        }
        for (schema, seq, col) in &f.sequences {
            out.push(format!(
                "ALTER SEQUENCE {} OWNED BY {}.{}",
                qualified(schema, seq),
                self.live(),
                quote(col)
            ));
        }
        out.extend(self.dual_write(&self.reverse()));
        out
    }

    fn cleanup(&self, keep_old: bool) -> Vec<String> {
        let mut out = self.drop_dual_write(&self.reverse());
        out.extend(self.drop_dual_write(&self.forward()));
        if !keep_old {
            out.push(format!("DROP TABLE IF EXISTS {}", self.old()));
        }
        out
    }

    /// Rollback before cutover: the live table was the source of truth all along.
    fn rollback_unprepared(&self) -> Vec<String> {
        let mut out = self.drop_dual_write(&self.forward());
        out.extend(self.drop_dual_write(&self.reverse()));
        out.push(format!("DROP TABLE IF EXISTS {}", self.shadow()));
        out
    }

    /// Rollback after cutover: drop the new table (its names free again) and give the old
    /// table back its name, its index and key names and its sequences.
    fn rollback_swapped(&self, f: &RollbackFacts) -> Vec<String> {
        let mut out = vec![format!(
            "LOCK TABLE {}, {} IN ACCESS EXCLUSIVE MODE",
            self.live(),
            self.old()
        )];
        out.extend(self.drop_dual_write(&self.reverse()));
        out.extend(self.drop_dual_write(&self.forward()));
        for (schema, seq, col) in &f.sequences {
            out.push(match col {
                Some(c) => format!(
                    "ALTER SEQUENCE {} OWNED BY {}.{}",
                    qualified(schema, seq),
                    self.old(),
                    quote(c)
                ),
                None => format!("ALTER SEQUENCE {} OWNED BY NONE", qualified(schema, seq)),
            });
        }
        out.push(format!("DROP TABLE {}", self.live()));
        out.push(format!(
            "ALTER TABLE {} RENAME TO {}",
            self.old(),
            quote(&self.m.table)
        ));
        for (i, idx) in self.m.before.indexes.iter().enumerate() {
            out.push(format!(
                "ALTER INDEX IF EXISTS {} RENAME TO {}",
                self.rel(&self.n.old_index(i)),
                quote(&idx.name)
            ));
        }
        if let Some(pk) = &f.pk_name
            && pk != &self.n.old_pk()
        {
            out.push(format!(
                "ALTER TABLE {} RENAME CONSTRAINT {} TO {}",
                self.live(),
                quote(&self.n.old_pk()),
                quote(pk)
            ));
        }
        for (oid, col) in &f.identities {
            // Ids handed out by the new table since cutover were copied back: move the old
            // identity above them.
            out.push(format!(
                "SELECT setval({oid}::oid::regclass, greatest((SELECT max({}) FROM {}), (SELECT coalesce(pg_sequence_last_value({oid}::oid::regclass), 1))))",
                quote(col),
                self.live()
            ));
        }
        out
    }
}

/// `jsonb_build_object('a', <a>, …)`, split in groups under the 100-argument limit.
fn json_image(cols: &[(String, String)]) -> String {
    let parts: Vec<String> = cols
        .chunks(40)
        .map(|group| {
            format!(
                "jsonb_build_object({})",
                group
                    .iter()
                    .map(|(name, e)| format!("{}, {e}", literal(name)))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
        .collect();
    if parts.is_empty() {
        "'{}'::jsonb".to_string()
    } else {
        parts.join(" || ")
    }
}

fn has_identity_always(shape: &TableShape) -> bool {
    shape
        .columns
        .iter()
        .any(|c| matches!(c.generated, Some(Generated::Identity { always: true })))
}

/// A shadow column: no identity while rows are copied (it is attached at cutover).
fn column_def(c: &Column) -> String {
    let mut def = format!("{} {}", quote(&c.name), c.sql_type);
    if !c.nullable {
        def.push_str(" NOT NULL");
    }
    if let Some(d) = &c.default {
        def.push_str(&format!(" DEFAULT ({d})"));
    }
    def
}

fn save_sql(home: &str) -> String {
    format!(
        "INSERT INTO {} (name, plan_hash, phase, body, updated_at) VALUES ($1, $2, $3, $4, now()) \
         ON CONFLICT (name) DO UPDATE SET plan_hash = EXCLUDED.plan_hash, phase = EXCLUDED.phase, body = EXCLUDED.body, updated_at = EXCLUDED.updated_at",
        qualified(home, "turnout_state")
    )
}

// ---------------------------------------------------------------------------------------
// I/O helpers
// ---------------------------------------------------------------------------------------

fn sql(s: String) -> AssertSqlSafe<String> {
    AssertSqlSafe(s)
}

fn sqlstate(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(d) => d.code().map(|c| c.to_string()),
        _ => None,
    }
}

fn db_message(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(d) => d.message().to_string(),
        other => other.to_string(),
    }
}

fn is_lock_timeout(e: &sqlx::Error) -> bool {
    sqlstate(e).as_deref() == Some("55P03")
}

fn is_conflict(e: &sqlx::Error) -> bool {
    matches!(sqlstate(e).as_deref(), Some("40P01" | "40001"))
}

/// Runs each statement with the simple protocol (no prepared-statement cache for DDL).
async fn run_all(
    conn: &mut PgConnection,
    stmts: &[String],
) -> std::result::Result<(), sqlx::Error> {
    for s in stmts {
        sqlx::raw_sql(sql(s.clone())).execute(&mut *conn).await?;
    }
    Ok(())
}

async fn save_in(conn: &mut PgConnection, home: &str, row: &StateRow) -> Result<()> {
    sqlx::query(sql(save_sql(home)))
        .bind(&row.name)
        .bind(&row.plan_hash)
        .bind(&row.phase)
        .bind(&row.body)
        .execute(&mut *conn)
        .await
        .map_err(|e| Error::db("saving the checkpoint", e))?;
    Ok(())
}

/// The values of a cursor, as the text the key columns are cast back from.
fn cursor_values(c: &Cursor, n: usize) -> Result<Vec<String>> {
    let bad = || {
        Error::State(format!(
            "the saved backfill cursor {c} is not a key of {n} values; roll back and start again"
        ))
    };
    let arr = c.as_array().ok_or_else(bad)?;
    if arr.len() != n {
        return Err(bad());
    }
    arr.iter()
        .map(|v| match v {
            serde_json::Value::String(s) => Ok(s.clone()),
            serde_json::Value::Null => Err(bad()),
            other => Ok(other.to_string()),
        })
        .collect()
}

fn parse_cursor(text: &str) -> Result<Cursor> {
    serde_json::from_str(text).map_err(|e| {
        Error::State(format!(
            "the database returned a key that is not JSON ({e}): {text}"
        ))
    })
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

fn bind_texts<'q>(mut q: PgQuery<'q>, values: &[String]) -> PgQuery<'q> {
    for v in values {
        q = q.bind(v.clone());
    }
    q
}

impl Postgres {
    /// Compares chunks in `tx` until none is left to claim.
    async fn verify_worker(
        &self,
        g: &Gen<'_>,
        mut tx: sqlx::Transaction<'static, sqlx::Postgres>,
        chunks: &Mutex<Chunks>,
        req: &VerifyRequest,
        progress: &(dyn Fn(u64) + Sync),
        stop: &(dyn Fn() -> bool + Sync),
    ) -> Result<()> {
        let ctx = |e| Error::db(format!("verify of {}", g.m.table), e);
        let nkey = g.m.key.len();
        loop {
            if stop() {
                break;
            }
            let (n, (lo, hi)) = {
                let mut c = chunks.lock().await;
                let Some(lo) = c.next_start() else {
                    break;
                };
                let mut q = sqlx::query(sql(g.chunk_end(lo.is_some(), req.chunk_rows.max(1))));
                if let Some(l) = &lo {
                    q = bind_texts(q, l);
                }
                let hi = match q.fetch_optional(&mut *tx).await.map_err(ctx)? {
                    Some(r) => Some(cursor_values(&parse_cursor(&r.get::<String, _>(0))?, nkey)?),
                    None => None,
                };
                c.claim(lo, hi)
            };
            let bind_range = |mut q: PgQuery<'static>| {
                if let Some(l) = &lo {
                    q = bind_texts(q, l);
                }
                if let Some(h) = &hi {
                    q = bind_texts(q, h);
                }
                q
            };
            if req.sample_rate.is_some_and(|r| rand::random::<f64>() >= r) {
                chunks.lock().await.skipped();
                continue;
            }
            let r = bind_range(sqlx::query(sql(g.chunk_hashes(lo.is_some(), hi.is_some()))))
                .fetch_one(&mut *tx)
                .await
                .map_err(ctx)?;
            let rows: i64 = r.get(0);
            let (live_hash, shadow_hash): (String, String) = (r.get(1), r.get(2));
            let room = chunks.lock().await.room();
            let mut diffs = Vec::new();
            if live_hash != shadow_hash && room > 0 {
                let found = bind_range(sqlx::query(sql(g.chunk_diffs(
                    lo.is_some(),
                    hi.is_some(),
                    room,
                ))))
                .fetch_all(&mut *tx)
                .await
                .map_err(ctx)?;
                diffs = found
                    .into_iter()
                    .map(|d| RowDiff {
                        key: d.get(0),
                        expected: d.get(1),
                        shadow: d.get(2),
                    })
                    .collect();
            }
            let rows_done = chunks.lock().await.compared(n, rows.max(0) as u64, diffs);
            progress(rows_done);
        }
        tx.rollback().await.map_err(ctx)?;
        Ok(())
    }

    pub async fn connect(url: &str) -> Result<Postgres> {
        let shown = crate::db::redact(url);
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| Error::Unreachable(format!("{shown}: {e}")))?
            .application_name("turnout");
        let pool = PgPoolOptions::new()
            .max_connections(5)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone())
            .await
            .map_err(|e| Error::Unreachable(format!("{shown}: {e}")))?;
        let home: Option<String> = sqlx::query_scalar("SELECT current_schema()::text")
            .fetch_one(&pool)
            .await
            .map_err(|e| Error::Unreachable(format!("{shown}: {e}")))?;
        Ok(Postgres {
            pool,
            options: Box::new(options),
            // No schema of the search_path exists: fall back to the standard one.
            home: home.unwrap_or_else(|| "public".to_string()),
            lock_conn: Mutex::new(None),
        })
    }

    fn gen_for<'a>(&self, m: &'a Migration) -> Gen<'a> {
        Gen::new(m, &self.home)
    }

    async fn relation_exists(&self, conn: &mut PgConnection, qualified_name: &str) -> Result<bool> {
        let oid: Option<i64> = sqlx::query_scalar("SELECT to_regclass($1)::oid::bigint")
            .bind(qualified_name)
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| Error::db("reading the catalog", e))?;
        Ok(oid.is_some())
    }

    /// Runs `body` in a transaction whose locks wait at most [`DDL_LOCK_TIMEOUT`], retrying
    /// a lock timeout or a deadlock so a busy table delays the step instead of failing it.
    /// `fault` names the crash point visited inside the transaction (fault-injection tests).
    async fn ddl_txn(
        &self,
        context: &str,
        stmts: &[String],
        save: &StateRow,
        fault: Option<&str>,
    ) -> Result<()> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result: std::result::Result<(), sqlx::Error> = async {
                let mut tx = self.pool.begin().await?;
                sqlx::raw_sql(sql(format!(
                    "SET LOCAL lock_timeout = '{}ms'",
                    DDL_LOCK_TIMEOUT.as_millis()
                )))
                .execute(&mut *tx)
                .await?;
                run_all(&mut tx, stmts).await?;
                if let Some(point) = fault {
                    crate::fault::point(point);
                }
                sqlx::query(sql(save_sql(&self.home)))
                    .bind(&save.name)
                    .bind(&save.plan_hash)
                    .bind(&save.phase)
                    .bind(&save.body)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await
            }
            .await;
            match result {
                Ok(()) => return Ok(()),
                Err(e) if (is_lock_timeout(&e) || is_conflict(&e)) && attempt < DDL_ATTEMPTS => {
                    tracing::info!(attempt, "{context}: lock not granted, retrying");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                }
                Err(e) => return Err(Error::db(context.to_string(), e)),
            }
        }
    }

    async fn holder_of(&self, migration: &str) -> String {
        let row = sqlx::query(
            "SELECT a.pid, coalesce(a.application_name, ''), coalesce(host(a.client_addr), 'local socket'), \
             coalesce(to_char(a.backend_start, 'YYYY-MM-DD HH24:MI:SS TZ'), '?') \
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted AND l.classid = $1::int4::oid \
             AND l.objid = hashtext($2)::oid AND l.objsubid = 2 \
             AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) LIMIT 1",
        )
        .bind(LOCK_CLASS)
        .bind(format!("turnout:{migration}"))
        .fetch_optional(&self.pool)
        .await;
        match row {
            Ok(Some(r)) => format!(
                "pid {}, application {:?}, from {}, connected since {}",
                r.get::<i32, _>(0),
                r.get::<String, _>(1),
                r.get::<String, _>(2),
                r.get::<String, _>(3)
            ),
            _ => "another session".to_string(),
        }
    }

    /// Names the key and column of the row that made a batch fail: the batch's rows are
    /// retried one by one (each in a savepoint of a transaction that is rolled back).
    async fn explain_batch_error(
        &self,
        g: &Gen<'_>,
        cursor: Option<&[String]>,
        last: &[String],
        e: sqlx::Error,
    ) -> Error {
        let context = format!("backfill of {}", g.m.table);
        let first_message = db_message(&e);
        let found: std::result::Result<Option<(String, String, String)>, sqlx::Error> = async {
            let mut tx = self.pool.begin().await?;
            let old_key = g.old_key();
            let keys_sql = format!(
                "SELECT {}, {} FROM {} WHERE {} ORDER BY {}",
                g.cursor_json("", &old_key),
                g.shown_key("", &old_key),
                g.live(),
                g.range("", &old_key, cursor.is_some(), true),
                g.order("", &old_key, false)
            );
            let mut q = sqlx::query(sql(keys_sql));
            if let Some(c) = cursor {
                q = bind_texts(q, c);
            }
            let keys = bind_texts(q, last).fetch_all(&mut *tx).await?;
            let types = g.key_types();
            let one = |prefix: &str| {
                old_key
                    .iter()
                    .zip(&types)
                    .enumerate()
                    .map(|(i, (k, t))| format!("{prefix}{} = CAST(${} AS {t})", quote(k), i + 1))
                    .collect::<Vec<_>>()
                    .join(" AND ")
            };
            let row_sql = format!(
                "SELECT {} FROM {} WHERE {}",
                list(&g.old_cols()),
                g.live(),
                one("")
            );
            let insert_one = g.upsert(&g.forward(), &row_sql, false);
            for r in keys {
                let cursor_key: String = r.get(0);
                let shown: String = r.get(1);
                let values = cursor_values(&parse_cursor(&cursor_key).unwrap_or_default(), old_key.len())
                    .unwrap_or_default();
                sqlx::raw_sql("SAVEPOINT turnout_probe").execute(&mut *tx).await?;
                let res = bind_texts(sqlx::query(sql(insert_one.clone())), &values)
                    .execute(&mut *tx)
                    .await;
                sqlx::raw_sql("ROLLBACK TO SAVEPOINT turnout_probe").execute(&mut *tx).await?;
                let Err(err) = res else { continue };
                let message = db_message(&err);
                if let sqlx::Error::Database(d) = &err
                    && let Some(pg) = d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                    && let Some(col) = pg.column()
                {
                    return Ok(Some((shown, col.to_string(), message)));
                }
                // Which expression fails, or which value the exact type would alter.
                for mp in g.m.forward.iter() {
                    let loose = render_source(mp, &|c| quote(c), &loose_cast);
                    let exact = render_source(mp, &|c| quote(c), &full_cast);
                    let probe = format!(
                        "SELECT ({exact})::text IS DISTINCT FROM ({loose})::text FROM ({row_sql}) AS t"
                    );
                    sqlx::raw_sql("SAVEPOINT turnout_probe").execute(&mut *tx).await?;
                    let res: std::result::Result<Option<bool>, sqlx::Error> =
                        bind_texts(sqlx::query(sql(probe)), &values)
                            .fetch_optional(&mut *tx)
                            .await
                            .map(|r| r.and_then(|r| r.get::<Option<bool>, _>(0)));
                    sqlx::raw_sql("ROLLBACK TO SAVEPOINT turnout_probe").execute(&mut *tx).await?;
                    let altered = mp.cast.is_some() && matches!(res, Ok(Some(true)));
                    if res.is_err() || altered {
                        return Ok(Some((shown, mp.target.clone(), message)));
                    }
                }
                return Ok(Some((shown, "(unknown column)".to_string(), message)));
            }
            tx.rollback().await?;
            Ok(None)
        }
        .await;
        match found {
            Ok(Some((key, column, message))) => Error::Data {
                table: g.m.table.clone(),
                key,
                column,
                message,
            },
            // The failing row is gone or the failure was not the row's: report it as is.
            Ok(None) | Err(_) => {
                tracing::debug!("could not narrow the batch error: {first_message}");
                Error::db(context, e)
            }
        }
    }

    async fn cutover_facts(
        &self,
        conn: &mut PgConnection,
        g: &Gen<'_>,
    ) -> std::result::Result<CutoverFacts, sqlx::Error> {
        let pk_name: Option<String> = sqlx::query_scalar(
            "SELECT conname::text FROM pg_constraint WHERE conrelid = to_regclass($1) AND contype = 'p'",
        )
        .bind(g.live())
        .fetch_optional(&mut *conn)
        .await?;
        let seqs = sqlx::query(
            "SELECT sn.nspname::text, s.relname::text, a.attname::text, d.deptype::text, \
             coalesce(pg_sequence_last_value(s.oid), 0)::bigint \
             FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S' \
             JOIN pg_namespace sn ON sn.oid = s.relnamespace \
             JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid \
             WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass \
             AND d.refobjid = to_regclass($1) AND d.deptype IN ('a', 'i')",
        )
        .bind(g.live())
        .fetch_all(&mut *conn)
        .await?;
        let new_of_old = |old: &str| {
            g.m.forward.iter().find_map(|mp| match &mp.source {
                crate::schema::Source::Column(c) if c == old && mp.cast.is_none() => {
                    Some(mp.target.clone())
                }
                _ => None,
            })
        };
        let mut sequences = Vec::new();
        let mut last_of_old: std::collections::HashMap<String, i64> = Default::default();
        for r in seqs {
            let (schema, seq, col, kind, last): (String, String, String, String, i64) =
                (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
            if kind == "a" {
                if let Some(new) = new_of_old(&col) {
                    sequences.push((schema, seq, new));
                }
            } else {
                last_of_old.insert(col, last);
            }
        }
        let mut identities = Vec::new();
        for c in &g.m.after.columns {
            let Some(Generated::Identity { always }) = c.generated else {
                continue;
            };
            let old_col = g.m.forward.iter().find_map(|mp| match &mp.source {
                crate::schema::Source::Column(o) if mp.target == c.name => Some(o.clone()),
                _ => None,
            });
            let max: Option<i64> = sqlx::query_scalar(sql(format!(
                "SELECT max({})::bigint FROM {}",
                quote(&c.name),
                g.shadow()
            )))
            .fetch_one(&mut *conn)
            .await?;
            let last = old_col
                .and_then(|o| last_of_old.get(&o).copied())
                .unwrap_or(0);
            let start = max.unwrap_or(0).max(last).saturating_add(1);
            identities.push((c.name.clone(), always, start.to_string()));
        }
        Ok(CutoverFacts {
            pk_name,
            identities,
            sequences,
        })
    }

    async fn rollback_facts(
        &self,
        conn: &mut PgConnection,
        g: &Gen<'_>,
    ) -> std::result::Result<RollbackFacts, sqlx::Error> {
        let pk_name: Option<String> = sqlx::query_scalar(
            "SELECT conname::text FROM pg_constraint WHERE conrelid = to_regclass($1) AND contype = 'p'",
        )
        .bind(g.live())
        .fetch_optional(&mut *conn)
        .await?;
        let seq_query = "SELECT sn.nspname::text, s.relname::text, a.attname::text, s.oid::bigint \
             FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S' \
             JOIN pg_namespace sn ON sn.oid = s.relnamespace \
             JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid \
             WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass \
             AND d.refobjid = to_regclass($1) AND d.deptype = $2";
        let owned = sqlx::query(seq_query)
            .bind(g.live())
            .bind("a")
            .fetch_all(&mut *conn)
            .await?;
        let sequences = owned
            .into_iter()
            .map(|r| {
                let new_col: String = r.get(2);
                let old_col = g.m.reverse.iter().find_map(|mp| match &mp.source {
                    crate::schema::Source::Column(c) if *c == new_col && mp.cast.is_none() => {
                        Some(mp.target.clone())
                    }
                    _ => None,
                });
                (r.get(0), r.get(1), old_col)
            })
            .collect();
        let identities = sqlx::query(seq_query)
            .bind(g.old())
            .bind("i")
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .map(|r| (r.get(3), r.get(2)))
            .collect();
        Ok(RollbackFacts {
            pk_name,
            sequences,
            identities,
        })
    }
}

impl Backend for Postgres {
    fn dialect(&self) -> &'static str {
        "postgres"
    }

    fn quote(&self, ident: &str) -> String {
        quote(ident)
    }

    async fn default_schema(&self) -> Result<Option<String>> {
        let s: Option<String> = sqlx::query_scalar("SELECT current_schema()::text")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| Error::db("reading the default schema", e))?;
        Ok(s.or_else(|| Some(self.home.clone())))
    }

    async fn ensure_state_table(&self) -> Result<()> {
        for stmt in [
            format!(
                "CREATE TABLE IF NOT EXISTS {} (name text PRIMARY KEY, plan_hash text NOT NULL, phase text NOT NULL, body text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())",
                qualified(&self.home, "turnout_state")
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {} (migration text NOT NULL, direction text NOT NULL, key text, error text, at timestamptz NOT NULL DEFAULT now())",
                qualified(&self.home, "turnout_failures")
            ),
        ] {
            if let Err(e) = sqlx::raw_sql(sql(stmt)).execute(&self.pool).await {
                // Two turnouts creating the table at once: the loser sees a duplicate.
                if !matches!(sqlstate(&e).as_deref(), Some("23505" | "42P07")) {
                    return Err(Error::db("creating turnout_state", e));
                }
            }
        }
        Ok(())
    }

    async fn load_state(&self, name: &str) -> Result<Option<StateRow>> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| Error::db("reading turnout_state", e))?;
        if !self
            .relation_exists(&mut conn, &qualified(&self.home, "turnout_state"))
            .await?
        {
            return Ok(None);
        }
        let row = sqlx::query(sql(format!(
            "SELECT name, plan_hash, phase, body FROM {} WHERE name = $1",
            qualified(&self.home, "turnout_state")
        )))
        .bind(name)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| Error::db("reading turnout_state", e))?;
        Ok(row.as_ref().map(StateRow::from_sql))
    }

    async fn list_states(&self) -> Result<Vec<StateRow>> {
        let rows = sqlx::query(sql(format!(
            "SELECT name, plan_hash, phase, body FROM {} ORDER BY name",
            qualified(&self.home, "turnout_state")
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| Error::db("reading turnout_state", e))?;
        Ok(rows.into_iter().map(|r| StateRow::from_sql(&r)).collect())
    }

    async fn save_state(&self, row: &StateRow) -> Result<()> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| Error::db("saving the checkpoint", e))?;
        save_in(&mut conn, &self.home, row).await
    }

    async fn lock(&self, migration: &str) -> Result<()> {
        let mut guard = self.lock_conn.lock().await;
        let mut fresh = false;
        let got = loop {
            let conn = match &mut *guard {
                Some(c) => c,
                None => {
                    fresh = true;
                    let c = PgConnection::connect_with(&self.options)
                        .await
                        .map_err(|e| Error::db("connecting for the migration lock", e))?;
                    guard.insert(c)
                }
            };
            let r: std::result::Result<bool, sqlx::Error> =
                sqlx::query_scalar("SELECT pg_try_advisory_lock($1, hashtext($2))")
                    .bind(LOCK_CLASS)
                    .bind(format!("turnout:{migration}"))
                    .fetch_one(&mut *conn)
                    .await;
            match r {
                Ok(got) => break got,
                // The lock session died (and its locks with it): take them on a new one.
                Err(e) if !fresh && crate::error::is_connection_error(&e) => *guard = None,
                Err(e) => return Err(Error::db("taking the migration lock", e)),
            }
        };
        if got {
            return Ok(());
        }
        Err(Error::LockHeld {
            name: migration.to_string(),
            holder: self.holder_of(migration).await,
        })
    }

    async fn keep_lock(&self, migration: &str) -> Result<()> {
        {
            let mut guard = self.lock_conn.lock().await;
            if let Some(conn) = &mut *guard {
                // A session lock lives as long as its session: a live session still holds it.
                if sqlx::query("SELECT 1").execute(&mut *conn).await.is_ok() {
                    return Ok(());
                }
            }
            *guard = None;
        }
        tracing::warn!("the migration lock's session was lost; taking the lock again");
        self.lock(migration).await
    }

    async fn unlock(&self, migration: &str) -> Result<()> {
        let mut guard = self.lock_conn.lock().await;
        if let Some(conn) = &mut *guard {
            sqlx::query("SELECT pg_advisory_unlock($1, hashtext($2))")
                .bind(LOCK_CLASS)
                .bind(format!("turnout:{migration}"))
                .execute(&mut *conn)
                .await
                .map_err(|e| Error::db("releasing the migration lock", e))?;
        }
        Ok(())
    }

    async fn describe(&self, schema: Option<&str>, table: &str) -> Result<Option<TableShape>> {
        let ctx = |e| Error::db(format!("describing table {table:?}"), e);
        let schema = schema.unwrap_or(&self.home);
        let oid: Option<i64> = sqlx::query_scalar(
            "SELECT c.oid::bigint FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
        )
        .bind(schema)
        .bind(table)
        .fetch_optional(&self.pool)
        .await
        .map_err(ctx)?;
        let Some(oid) = oid else { return Ok(None) };
        let rows = sqlx::query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull, \
             pg_get_expr(d.adbin, d.adrelid), a.attidentity::text, a.attgenerated::text, \
             pg_get_serial_sequence(quote_ident(n.nspname) || '.' || quote_ident(c.relname), a.attname) \
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
             WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        )
        .bind(oid)
        .fetch_all(&self.pool)
        .await
        .map_err(ctx)?;
        let columns = rows
            .iter()
            .map(|r| {
                let identity: String = r.get(4);
                let generated_stored: String = r.get(5);
                let default: Option<String> = r.get(3);
                let serial: Option<String> = r.get(6);
                let generated = match identity.as_str() {
                    "a" => Some(Generated::Identity { always: true }),
                    "d" => Some(Generated::Identity { always: false }),
                    _ => match (&default, serial) {
                        (Some(d), Some(seq)) if d.starts_with("nextval(") => {
                            Some(Generated::Sequence { sequence: seq })
                        }
                        _ => None,
                    },
                };
                Column {
                    name: r.get(0),
                    sql_type: r.get(1),
                    nullable: !r.get::<bool, _>(2),
                    // A stored generated column's expression is not a DEFAULT (preflight refuses it).
                    default: if generated_stored.is_empty() {
                        default
                    } else {
                        None
                    },
                    generated,
                }
            })
            .collect();
        let primary_key: Vec<String> = sqlx::query_scalar(
            "SELECT a.attname::text FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
             WHERE i.indrelid = $1::oid AND i.indisprimary ORDER BY k.ord",
        )
        .bind(oid)
        .fetch_all(&self.pool)
        .await
        .map_err(ctx)?;
        // Only plain btree indexes fit `Index`; the others are refused by preflight.
        let idx_rows = sqlx::query(
            "SELECT ic.relname::text, i.indisunique, \
             (SELECT array_agg(a.attname::text ORDER BY k.ord) FROM unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) \
              JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum) \
             FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_am am ON am.oid = ic.relam \
             WHERE i.indrelid = $1::oid AND NOT i.indisprimary AND am.amname = 'btree' \
             AND i.indexprs IS NULL AND i.indpred IS NULL AND i.indnkeyatts = i.indnatts \
             AND NOT EXISTS (SELECT 1 FROM unnest(i.indoption) o WHERE o <> 0) \
             AND NOT EXISTS (SELECT 1 FROM unnest(i.indclass) oc JOIN pg_opclass op ON op.oid = oc WHERE NOT op.opcdefault) \
             AND NOT EXISTS (SELECT 1 FROM unnest(i.indcollation) WITH ORDINALITY AS co(coll, ord) \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[co.ord - 1] \
                 WHERE co.coll <> 0 AND co.coll <> a.attcollation) \
             ORDER BY ic.relname",
        )
        .bind(oid)
        .fetch_all(&self.pool)
        .await
        .map_err(ctx)?;
        let indexes = idx_rows
            .into_iter()
            .map(|r| Index {
                name: r.get(0),
                unique: r.get(1),
                columns: r.get::<Option<Vec<String>>, _>(2).unwrap_or_default(),
            })
            .collect();
        Ok(Some(TableShape {
            columns,
            primary_key,
            indexes,
        }))
    }

    async fn preflight(&self, m: &Migration) -> Result<Vec<String>> {
        let g = self.gen_for(m);
        let t = &m.table;
        let ctx = |e| Error::db(format!("preflight of {t}"), e);
        let mut problems = Vec::new();
        let mut conn = self.pool.acquire().await.map_err(ctx)?;
        for (name, rel) in [(&m.shadow, g.shadow()), (&m.old, g.old())] {
            if self.relation_exists(&mut conn, &rel).await? {
                problems.push(format!("a relation {name:?} already exists in schema {:?}; turnout needs that name for {t:?} (drop it, or roll back the migration that left it)", g.schema));
            }
        }
        // What TableShape cannot carry to the new table, found in the catalog.
        let live = g.live();
        let checks: [(&str, &str); 9] = [
            (
                "SELECT relkind::text FROM pg_class WHERE oid = to_regclass($1) AND relkind <> 'r'",
                "table {t}: it is a partitioned table ({x}); turnout migrates plain tables only",
            ),
            (
                "SELECT tgname::text FROM pg_trigger WHERE tgrelid = to_regclass($1) AND NOT tgisinternal",
                "table {t}: trigger {x} would stay on the old table after cutover; drop it for the migration and recreate it after",
            ),
            (
                "SELECT conname::text || ' (' || CASE contype WHEN 'c' THEN 'CHECK' WHEN 'f' THEN 'FOREIGN KEY' WHEN 'x' THEN 'EXCLUDE' ELSE contype::text END || ')' \
              FROM pg_constraint WHERE conrelid = to_regclass($1) AND contype IN ('c', 'f', 'x')",
                "table {t}: constraint {x} is not carried to the new table; drop it for the migration and recreate it after",
            ),
            (
                "SELECT conname::text || ' on ' || conrelid::regclass::text FROM pg_constraint WHERE confrelid = to_regclass($1) AND contype = 'f'",
                "table {t}: foreign key {x} references it and would follow the old table at cutover; drop it for the migration and recreate it after",
            ),
            (
                "SELECT DISTINCT v.oid::regclass::text FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid JOIN pg_class v ON v.oid = r.ev_class \
              WHERE d.classid = 'pg_rewrite'::regclass AND d.refobjid = to_regclass($1) AND v.oid <> d.refobjid",
                "table {t}: view {x} depends on it and would follow the old table at cutover; drop it for the migration and recreate it after",
            ),
            (
                "SELECT attname::text FROM pg_attribute WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped AND attgenerated <> ''",
                "table {t}: column {x} is a generated column; turnout cannot copy into it",
            ),
            (
                "SELECT a.attname::text || ' (collation ' || co.collname::text || ')' FROM pg_attribute a JOIN pg_type ty ON ty.oid = a.atttypid \
              JOIN pg_collation co ON co.oid = a.attcollation \
              WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped AND a.attcollation <> 0 AND a.attcollation <> ty.typcollation",
                "table {t}: column {x} has a collation turnout does not carry to the new table",
            ),
            (
                "SELECT ic.relname::text FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_am am ON am.oid = ic.relam \
              WHERE i.indrelid = to_regclass($1) AND NOT i.indisprimary AND (am.amname <> 'btree' OR i.indexprs IS NOT NULL OR i.indpred IS NOT NULL \
              OR i.indnkeyatts <> i.indnatts OR EXISTS (SELECT 1 FROM unnest(i.indoption) o WHERE o <> 0) \
              OR EXISTS (SELECT 1 FROM unnest(i.indclass) oc JOIN pg_opclass op ON op.oid = oc WHERE NOT op.opcdefault) \
              OR EXISTS (SELECT 1 FROM unnest(i.indcollation) WITH ORDINALITY AS co(coll, ord) \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[co.ord - 1] \
                 WHERE co.coll <> 0 AND co.coll <> a.attcollation))",
                "table {t}: index {x} is an expression, partial, INCLUDE, descending, non-btree or special-opclass index, which turnout cannot recreate; drop it for the migration and recreate it after",
            ),
            (
                "SELECT polname::text FROM pg_policy WHERE polrelid = to_regclass($1)",
                "table {t}: row-level security policy {x} is not carried to the new table",
            ),
        ];
        for (query, message) in checks {
            let found: Vec<String> = sqlx::query_scalar(query)
                .bind(&live)
                .fetch_all(&mut *conn)
                .await
                .map_err(ctx)?;
            for x in found {
                problems.push(
                    message
                        .replace("{t}", &format!("{t:?}"))
                        .replace("{x}", &format!("{x:?}")),
                );
            }
        }
        // Index names the new table will take must be free, unless the old table holds them.
        for idx in &m.after.indexes {
            let carried = m.before.indexes.iter().any(|b| b.name == idx.name);
            if !carried && self.relation_exists(&mut conn, &g.rel(&idx.name)).await? {
                problems.push(format!(
                    "index {:?}: the name is taken in schema {:?}; turnout needs it for the new {t:?}",
                    idx.name, g.schema
                ));
            }
        }
        for c in &m.after.columns {
            let mapped = m.forward.iter().any(|mp| mp.target == c.name);
            if !mapped && !c.nullable && c.default.is_none() && c.generated.is_none() {
                problems.push(format!("column {:?}: NOT NULL without a default or `from`; turnout cannot fill it for the rows of {t:?}", c.name));
            }
        }
        drop(conn);

        // The new shape, forward and reverse statements: compiled (EXPLAIN, never run)
        // inside a transaction that is always rolled back.
        let mut tx = self.pool.begin().await.map_err(ctx)?;
        let mut created = true;
        for stmt in g.create_shadow() {
            if let Err(e) = sqlx::raw_sql(sql(stmt)).execute(&mut *tx).await {
                problems.push(format!(
                    "the new shape of {t:?} cannot be created: {}",
                    db_message(&e)
                ));
                created = false;
                break;
            }
        }
        // Only this column's expression and its assignment to the target are checked.
        let probe = |target: &str, overriding: bool, mp: &Mapped, rows: &str| {
            format!(
                "EXPLAIN {}",
                g.insert_select(target, std::slice::from_ref(mp), overriding, rows)
            )
        };
        if created {
            let live_rows = format!("SELECT {} FROM {} LIMIT 0", list(&g.old_cols()), g.live());
            let new_rows = format!("SELECT {} FROM {} LIMIT 0", list(&g.new_cols()), g.shadow());
            // Before cutover the old table is still `<table>`.
            let overriding = has_identity_always(&m.before);
            let cases: Vec<(String, String, &str)> = m
                .forward
                .iter()
                .map(|mp| {
                    (
                        format!("column {:?}: the forward expression", mp.target),
                        probe(&g.shadow(), false, mp, &live_rows),
                        "the live table",
                    )
                })
                .chain(m.reverse.iter().map(|mp| {
                    (
                        format!("column {:?}: the reverse expression", mp.target),
                        probe(&g.live(), overriding, mp, &new_rows),
                        "the new shape",
                    )
                }))
                .collect();
            for (what, stmt, over) in cases {
                sqlx::raw_sql("SAVEPOINT turnout_probe")
                    .execute(&mut *tx)
                    .await
                    .map_err(ctx)?;
                if let Err(e) = sqlx::raw_sql(sql(stmt)).execute(&mut *tx).await {
                    problems.push(format!(
                        "{what} does not compile over {over} of {t:?}: {}",
                        db_message(&e)
                    ));
                }
                sqlx::raw_sql("ROLLBACK TO SAVEPOINT turnout_probe")
                    .execute(&mut *tx)
                    .await
                    .map_err(ctx)?;
            }
            // The verify comparison casts exactly; it must compile too.
            if problems.is_empty() {
                let stmt = format!("EXPLAIN {}", g.chunk_hashes(false, false));
                if let Err(e) = sqlx::raw_sql(sql(stmt)).execute(&mut *tx).await {
                    problems.push(format!(
                        "table {t:?}: the verification query does not compile: {}",
                        db_message(&e)
                    ));
                }
            }
        }
        tx.rollback().await.map_err(ctx)?;
        Ok(problems)
    }

    fn preview(&self, m: &Migration) -> Vec<PhaseSql> {
        let g = self.gen_for(m);
        let mut dual = vec!["BEGIN".to_string()];
        dual.extend(g.dual_write(&g.forward()));
        dual.push("COMMIT".into());
        let mut prepare = vec!["BEGIN".to_string()];
        prepare.extend(g.create_shadow());
        prepare.push("COMMIT".into());
        let facts = CutoverFacts {
            pk_name: Some(format!("{}_pkey", m.table)),
            identities: m
                .after
                .columns
                .iter()
                .filter_map(|c| match c.generated {
                    Some(Generated::Identity { always }) => Some((
                        c.name.clone(),
                        always,
                        ":greatest_of_max_id_and_old_sequence_plus_1".to_string(),
                    )),
                    _ => None,
                })
                .collect(),
            sequences: Vec::new(),
        };
        let mut cutover = vec![
            format!("ANALYZE {}", g.shadow()),
            "BEGIN".to_string(),
            "SET LOCAL lock_timeout = :cutover.lock_timeout".to_string(),
        ];
        cutover.extend(g.cutover(&facts));
        cutover.push("COMMIT".into());
        let mut cleanup = vec!["BEGIN".to_string()];
        cleanup.extend(g.cleanup(false));
        cleanup.push("COMMIT".into());
        let mut rollback = vec!["BEGIN".to_string()];
        rollback.extend(g.rollback_unprepared());
        rollback.push("COMMIT".into());
        vec![
            PhaseSql {
                phase: "prepare",
                statements: prepare,
            },
            PhaseSql {
                phase: "dual-write",
                statements: dual,
            },
            PhaseSql {
                phase: "backfill (each batch)",
                statements: vec![
                    "BEGIN".into(),
                    g.batch_bounds(true, ":batch_size"),
                    g.batch_copy(true),
                    "-- save the checkpoint".into(),
                    "COMMIT".into(),
                ],
            },
            PhaseSql {
                phase: "verify (each chunk, one REPEATABLE READ snapshot)",
                statements: vec![g.chunk_hashes(true, true)],
            },
            PhaseSql {
                phase: "cutover",
                statements: cutover,
            },
            PhaseSql {
                phase: "cleanup",
                statements: cleanup,
            },
            PhaseSql {
                phase: "rollback (before cutover)",
                statements: rollback,
            },
        ]
    }

    async fn prepare(&self, m: &Migration, save: &StateRow) -> Result<()> {
        let g = self.gen_for(m);
        self.ddl_txn(
            &format!("prepare: creating {}", m.shadow),
            &g.create_shadow(),
            save,
            None,
        )
        .await
    }

    async fn start_dual_write(&self, m: &Migration, save: &StateRow) -> Result<()> {
        let g = self.gen_for(m);
        self.ddl_txn(
            &format!("dual-write: creating the triggers on {}", m.table),
            &g.dual_write(&g.forward()),
            save,
            None,
        )
        .await
    }

    async fn estimate_rows(&self, m: &Migration) -> Result<u64> {
        let g = self.gen_for(m);
        let ctx = |e| Error::db("estimating rows", e);
        // Counting is exact and cheap up to this many rows; beyond, the planner's estimate.
        const COUNT_UP_TO: i64 = 100_000;
        let counted: i64 = sqlx::query_scalar(sql(format!(
            "SELECT count(*) FROM (SELECT 1 FROM {} LIMIT {COUNT_UP_TO}) AS c",
            g.live()
        )))
        .fetch_one(&self.pool)
        .await
        .map_err(ctx)?;
        if counted < COUNT_UP_TO {
            return Ok(counted.max(0) as u64);
        }
        let estimate: Option<f64> = sqlx::query_scalar(
            "SELECT reltuples::float8 FROM pg_class WHERE oid = to_regclass($1)",
        )
        .bind(g.live())
        .fetch_optional(&self.pool)
        .await
        .map_err(ctx)?;
        Ok(estimate.unwrap_or(0.0).max(counted as f64) as u64)
    }

    async fn copy_batch(
        &self,
        m: &Migration,
        after: Option<&Cursor>,
        limit: u64,
        checkpoint: &(dyn Fn(&BatchDone) -> StateRow + Sync),
    ) -> Result<BatchDone> {
        let g = self.gen_for(m);
        let ctx = |e| Error::db(format!("backfill of {}", m.table), e);
        let cursor = after.map(|c| cursor_values(c, m.key.len())).transpose()?;
        let limit = limit.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut tx = self.pool.begin().await.map_err(ctx)?;
            let mut q = sqlx::query(sql(g.batch_bounds(cursor.is_some(), &limit.to_string())));
            if let Some(c) = &cursor {
                q = bind_texts(q, c);
            }
            let bounds = q.fetch_optional(&mut *tx).await.map_err(ctx)?;
            let Some(bounds) = bounds else {
                let done = BatchDone {
                    rows: 0,
                    last: None,
                    rest: Duration::ZERO,
                };
                save_in(&mut tx, &self.home, &checkpoint(&done)).await?;
                tx.commit().await.map_err(ctx)?;
                return Ok(done);
            };
            let rows: i64 = bounds.get(0);
            let last_text: String = bounds.get(1);
            let last_cursor = parse_cursor(&last_text)?;
            let last = cursor_values(&last_cursor, m.key.len())?;
            let mut q = sqlx::query(sql(g.batch_copy(cursor.is_some())));
            if let Some(c) = &cursor {
                q = bind_texts(q, c);
            }
            match bind_texts(q, &last).execute(&mut *tx).await {
                Ok(_) => {}
                Err(e) if is_conflict(&e) && attempt < BATCH_ATTEMPTS => {
                    drop(tx);
                    tracing::info!(
                        attempt,
                        "backfill batch deadlocked with the application; retrying"
                    );
                    tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                    continue;
                }
                Err(e) if matches!(sqlstate(&e).as_deref().map(|s| &s[..2]), Some("22" | "23")) => {
                    drop(tx);
                    return Err(self
                        .explain_batch_error(&g, cursor.as_deref(), &last, e)
                        .await);
                }
                Err(e) => return Err(ctx(e)),
            }
            let done = BatchDone {
                rows: rows.max(0) as u64,
                last: Some(last_cursor),
                // Row locks, not a single writer: the application never waits for a rest.
                rest: Duration::ZERO,
            };
            save_in(&mut tx, &self.home, &checkpoint(&done)).await?;
            tx.commit().await.map_err(ctx)?;
            return Ok(done);
        }
    }

    async fn finish_backfill(&self, m: &Migration) -> Result<()> {
        let g = self.gen_for(m);
        sqlx::raw_sql(sql(format!("ANALYZE {}", g.shadow())))
            .execute(&self.pool)
            .await
            .map_err(|e| Error::db("analyzing the shadow table", e))?;
        Ok(())
    }

    async fn verify(
        &self,
        m: &Migration,
        req: &VerifyRequest,
        progress: &(dyn Fn(u64) + Sync),
        stop: &(dyn Fn() -> bool + Sync),
    ) -> Result<VerifyReport> {
        let g = self.gen_for(m);
        let ctx = |e| Error::db(format!("verify of {}", m.table), e);
        // One snapshot for the whole comparison, while the application keeps writing:
        // the first transaction exports it and the other workers' transactions import it.
        let snapshot_tx = || {
            self.pool
                .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        };
        let mut first = snapshot_tx().await.map_err(ctx)?;
        let mut txs = Vec::new();
        if req.workers > 1 {
            let id: String = sqlx::query_scalar("SELECT pg_export_snapshot()")
                .fetch_one(&mut *first)
                .await
                .map_err(ctx)?;
            for _ in 1..req.workers.min(4) {
                let mut tx = snapshot_tx().await.map_err(ctx)?;
                sqlx::raw_sql(sql(format!("SET TRANSACTION SNAPSHOT {}", literal(&id))))
                    .execute(&mut *tx)
                    .await
                    .map_err(ctx)?;
                txs.push(tx);
            }
        }
        txs.insert(0, first);
        let chunks = Mutex::new(Chunks::new(req.max_diffs));
        let runs = txs.into_iter().map(|tx| {
            abandon_on_error(
                &chunks,
                self.verify_worker(&g, tx, &chunks, req, progress, stop),
            )
        });
        for r in futures_util::future::join_all(runs).await {
            r?;
        }
        Ok(chunks.into_inner().into_report())
    }

    async fn cutover(
        &self,
        m: &Migration,
        lock_timeout: Duration,
        save: &StateRow,
    ) -> Result<CutoverOutcome> {
        let g = self.gen_for(m);
        let ctx = |e| Error::db(format!("cutover of {}", m.table), e);
        let mut tx = self.pool.begin().await.map_err(ctx)?;
        let swapped = self.relation_exists(&mut tx, &g.old()).await?
            && !self.relation_exists(&mut tx, &g.shadow()).await?;
        if swapped {
            // A previous attempt committed; only its state row is missing.
            save_in(&mut tx, &self.home, save).await?;
            tx.commit().await.map_err(ctx)?;
            return Ok(CutoverOutcome::Swapped);
        }
        drop(tx);
        // Fresh statistics before the new table serves queries (outside the lock).
        sqlx::raw_sql(sql(format!("ANALYZE {}", g.shadow())))
            .execute(&self.pool)
            .await
            .map_err(ctx)?;
        let mut tx = self.pool.begin().await.map_err(ctx)?;
        let attempt: std::result::Result<(), sqlx::Error> = async {
            sqlx::raw_sql(sql(format!(
                "SET LOCAL lock_timeout = '{}ms'",
                lock_timeout.as_millis().max(1)
            )))
            .execute(&mut *tx)
            .await?;
            // Take the locks first, then read the facts the statements depend on.
            sqlx::raw_sql(sql(g.lock_both())).execute(&mut *tx).await?;
            let facts = self.cutover_facts(&mut tx, &g).await?;
            run_all(&mut tx, &g.cutover(&facts)).await
        }
        .await;
        match attempt {
            Ok(()) => {}
            Err(e) if is_lock_timeout(&e) => {
                tx.rollback().await.map_err(ctx)?;
                return Ok(CutoverOutcome::LockTimeout);
            }
            Err(e) => return Err(ctx(e)),
        }
        crate::fault::point("cutover.inside");
        save_in(&mut tx, &self.home, save).await?;
        tx.commit().await.map_err(ctx)?;
        Ok(CutoverOutcome::Swapped)
    }

    async fn cleanup(&self, m: &Migration, keep_old: bool, save: &StateRow) -> Result<()> {
        let g = self.gen_for(m);
        self.ddl_txn(
            &format!("cleanup of {}", m.table),
            &g.cleanup(keep_old),
            save,
            Some("cleanup.inside"),
        )
        .await
    }

    async fn rollback(&self, m: &Migration, save: &StateRow) -> Result<()> {
        let g = self.gen_for(m);
        let ctx = |e| Error::db(format!("rollback of {}", m.table), e);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut tx = self.pool.begin().await.map_err(ctx)?;
            let old_exists = self.relation_exists(&mut tx, &g.old()).await?;
            let shadow_exists = self.relation_exists(&mut tx, &g.shadow()).await?;
            if old_exists && shadow_exists {
                return Err(Error::State(format!(
                    "both {} and {} exist next to {}; turnout cannot tell which holds the original rows. Inspect them and drop the wrong one, then run rollback again",
                    m.old, m.shadow, m.table
                )));
            }
            let result: std::result::Result<(), sqlx::Error> = async {
                sqlx::raw_sql(sql(format!(
                    "SET LOCAL lock_timeout = '{}ms'",
                    DDL_LOCK_TIMEOUT.as_millis()
                )))
                .execute(&mut *tx)
                .await?;
                let stmts = if old_exists {
                    // The catalog shows a cutover: `<table>` is the new table.
                    sqlx::raw_sql(sql(format!(
                        "LOCK TABLE {}, {} IN ACCESS EXCLUSIVE MODE",
                        g.live(),
                        g.old()
                    )))
                    .execute(&mut *tx)
                    .await?;
                    let facts = self.rollback_facts(&mut tx, &g).await?;
                    g.rollback_swapped(&facts)
                } else {
                    g.rollback_unprepared()
                };
                run_all(&mut tx, &stmts).await
            }
            .await;
            match result {
                Ok(()) => {}
                Err(e) if (is_lock_timeout(&e) || is_conflict(&e)) && attempt < DDL_ATTEMPTS => {
                    drop(tx);
                    tracing::info!(attempt, "rollback: lock not granted, retrying");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                    continue;
                }
                Err(e) => return Err(ctx(e)),
            }
            crate::fault::point("rollback.inside");
            save_in(&mut tx, &self.home, save).await?;
            tx.commit().await.map_err(ctx)?;
            return Ok(());
        }
    }

    async fn trigger_failures(&self, m: &Migration) -> Result<Vec<String>> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| Error::db("reading turnout_failures", e))?;
        let table = qualified(&self.home, "turnout_failures");
        if !self.relation_exists(&mut conn, &table).await? {
            return Ok(Vec::new());
        }
        sqlx::query_scalar(sql(format!(
            "SELECT direction || ': row with key ' || coalesce(key, '?') || ': ' || coalesce(error, '') \
             FROM {table} WHERE migration = $1 ORDER BY at"
        )))
        .bind(&m.name)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| Error::db("reading turnout_failures", e))
    }

    async fn throttle_value(&self, query: &str) -> Result<f64> {
        let row = sqlx::query(sql(query.to_string()))
            .fetch_one(&self.pool)
            .await
            .map_err(|e| Error::db("running the throttle query", e))?;
        row.try_get::<f64, _>(0)
            .or_else(|_| row.try_get::<i64, _>(0).map(|v| v as f64))
            .or_else(|_| row.try_get::<i32, _>(0).map(f64::from))
            .or_else(|_| row.try_get::<f32, _>(0).map(f64::from))
            .or_else(|_| {
                row.try_get::<sqlx::types::Decimal, _>(0)
                    .map(|d| d.to_string().parse().unwrap_or(f64::NAN))
            })
            .map_err(|e| Error::db("reading the throttle query's value", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{KeyColumn, Source};

    #[test]
    fn quote_doubles_inner_quotes() {
        assert_eq!(quote(r#"we"ird name"#), r#""we""ird name""#);
        assert_eq!(qualified("My Schema", "order"), r#""My Schema"."order""#);
        assert_eq!(literal(r"it's \ ok"), r"E'it''s \\ ok'");
    }

    #[test]
    fn loose_types_drop_modifiers_but_keep_meaning() {
        assert_eq!(loose_type("character varying(32)"), "character varying");
        assert_eq!(loose_type("numeric(12,2)"), "numeric");
        assert_eq!(loose_type("numeric(12, 2)[]"), "numeric[]");
        assert_eq!(loose_type("character(3)"), "bpchar");
        assert_eq!(loose_type("bit(3)"), "varbit");
        assert_eq!(
            loose_type("timestamp(3) with time zone"),
            "timestamp with time zone"
        );
        assert_eq!(loose_type(r#""my(1)type""#), r#""my(1)type""#);
        assert_eq!(loose_type("integer[]"), "integer[]");
    }

    use crate::schema::fixtures::col;

    fn migration() -> Migration {
        let before = crate::schema::fixtures::orders(["bigint", "integer", "text"], true);
        let after = TableShape {
            columns: vec![
                col("id", "bigint", false),
                col("comment", "text", true),
                col("amount", "numeric(12,2)", true),
            ],
            primary_key: vec!["id".into()],
            indexes: vec![Index {
                name: "orders_note".into(),
                columns: vec!["comment".into()],
                unique: false,
            }],
        };
        let m = |target: &str, source: Source, cast: Option<&str>| Mapped {
            target: target.into(),
            source,
            cast: cast.map(String::from),
        };
        Migration {
            name: "orders-amount".into(),
            schema: Some("sales".into()),
            table: "orders".into(),
            shadow: "_orders_new".into(),
            old: "_orders_old".into(),
            before,
            after,
            forward: vec![
                m("id", Source::Column("id".into()), None),
                m("comment", Source::Column("note".into()), None),
                m(
                    "amount",
                    Source::Expr("amount_cents / 100.0".into()),
                    Some("numeric(12,2)"),
                ),
            ],
            reverse: vec![
                m("id", Source::Column("id".into()), None),
                m(
                    "amount_cents",
                    Source::Expr("amount * 100".into()),
                    Some("integer"),
                ),
                m("note", Source::Column("comment".into()), None),
            ],
            lossy: vec![],
            key: vec![KeyColumn {
                old: "id".into(),
                new: "id".into(),
            }],
            on_error: OnError::Record,
        }
    }

    #[test]
    fn backfill_sql_reads_a_locked_key_range() {
        let m = migration();
        let g = Gen::new(&m, "public");
        assert_eq!(
            g.batch_copy(true),
            "INSERT INTO \"sales\".\"_orders_new\" (\"id\", \"comment\", \"amount\") SELECT \"id\", \"note\", CAST((amount_cents / 100.0) AS numeric) \
             FROM (SELECT \"id\", \"amount_cents\", \"note\" FROM \"sales\".\"orders\" WHERE (\"id\") > (CAST($1 AS bigint)) AND (\"id\") <= (CAST($2 AS bigint)) \
             ORDER BY \"id\" FOR SHARE) AS t ON CONFLICT (\"id\") DO NOTHING"
        );
        assert_eq!(
            g.batch_bounds(false, "500"),
            "SELECT count(*) OVER (), jsonb_build_array(b.\"id\"::text)::text FROM (SELECT \"id\" FROM \"sales\".\"orders\" WHERE true ORDER BY \"id\" LIMIT 500) AS b ORDER BY b.\"id\" DESC LIMIT 1"
        );
    }

    #[test]
    fn names_are_deterministic_and_short() {
        let m = migration();
        let n = Names::of(&m);
        assert_eq!(n.base, Names::of(&m).base);
        assert!(n.base.starts_with("turnout_orders_amount_"));
        assert!(n.old_index(99).len() < 63);
    }

    #[test]
    fn cutover_renames_indexes_and_keys_then_reverses_dual_write() {
        let m = migration();
        let g = Gen::new(&m, "public");
        let facts = CutoverFacts {
            pk_name: Some("orders_pkey".into()),
            identities: vec![],
            sequences: vec![("sales".into(), "orders_id_seq".into(), "id".into())],
        };
        let stmts = g.cutover(&facts);
        let n = &g.n.base;
        assert_eq!(
            stmts[0],
            "LOCK TABLE \"sales\".\"orders\", \"sales\".\"_orders_new\" IN ACCESS EXCLUSIVE MODE"
        );
        assert!(stmts.contains(&format!(
            "ALTER INDEX \"sales\".\"orders_note\" RENAME TO \"{n}_o0\""
        )));
        assert!(stmts.contains(&format!(
            "ALTER INDEX \"sales\".\"{n}_n0\" RENAME TO \"orders_note\""
        )));
        assert!(stmts.contains(&format!(
            "ALTER TABLE \"sales\".\"orders\" RENAME CONSTRAINT \"{n}_npk\" TO \"orders_pkey\""
        )));
        assert!(
            stmts.contains(
                &"ALTER SEQUENCE \"sales\".\"orders_id_seq\" OWNED BY \"sales\".\"orders\".\"id\""
                    .to_string()
            )
        );
        assert!(stmts.iter().any(|s| s.contains(
            "INSERT INTO \"sales\".\"_orders_old\" (\"id\", \"amount_cents\", \"note\")"
        )));
    }

    #[test]
    fn record_mode_triggers_catch_and_record() {
        let m = migration();
        let g = Gen::new(&m, "public");
        let f = g.dual_write(&g.forward());
        assert!(f[0].contains("EXCEPTION WHEN OTHERS"));
        assert!(f[0].contains("\"public\".\"turnout_failures\""));
        assert!(f[0].contains("'forward'"));
        let mut reject = m.clone();
        reject.on_error = OnError::Reject;
        let g = Gen::new(&reject, "public");
        assert!(!g.dual_write(&g.forward())[0].contains("EXCEPTION"));
    }

    /// The forward trigger of `on_error: record`, reviewed as a whole: a change to the
    /// trigger SQL shows up here.
    #[test]
    fn forward_trigger_function_snapshot() {
        let m = migration();
        let g = Gen::new(&m, "public");
        insta::assert_snapshot!(g.dual_write(&g.forward())[0], @r#"
        CREATE OR REPLACE FUNCTION "sales"."turnout_orders_amount_35db6da0_fwd"() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $turnout$
        #variable_conflict use_column
        BEGIN
          BEGIN
          IF TG_OP = 'DELETE' THEN
            DELETE FROM "sales"."_orders_new" WHERE "id" = OLD."id";
            RETURN NULL;
          END IF;
          IF TG_OP = 'UPDATE' AND ROW(OLD."id") IS DISTINCT FROM ROW(NEW."id") THEN
            DELETE FROM "sales"."_orders_new" WHERE "id" = OLD."id";
          END IF;
          INSERT INTO "sales"."_orders_new" ("id", "comment", "amount") SELECT "id", "note", CAST((amount_cents / 100.0) AS numeric) FROM (SELECT NEW."id" AS "id", NEW."amount_cents" AS "amount_cents", NEW."note" AS "note") AS t ON CONFLICT ("id") DO UPDATE SET "comment" = EXCLUDED."comment", "amount" = EXCLUDED."amount";
          RETURN NULL;
          EXCEPTION WHEN OTHERS THEN
            IF TG_OP <> 'INSERT' THEN
              DELETE FROM "sales"."_orders_new" WHERE "id" = OLD."id";
            END IF;
            IF TG_OP <> 'DELETE' THEN
              DELETE FROM "sales"."_orders_new" WHERE "id" = NEW."id";
              INSERT INTO "public"."turnout_failures" (migration, direction, key, error) VALUES (E'orders-amount', 'forward', jsonb_build_array(NEW."id")::text, SQLERRM);
            ELSE
              INSERT INTO "public"."turnout_failures" (migration, direction, key, error) VALUES (E'orders-amount', 'forward', jsonb_build_array(OLD."id")::text, SQLERRM);
            END IF;
            RETURN NULL;
          END;
        END
        $turnout$
        "#);
    }
}
