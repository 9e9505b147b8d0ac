//! Pure SQL generation for PostgreSQL: every statement turnout runs, built from the
//! migration alone, with no I/O, so it is unit- and snapshot-tested without a database.
//! This file holds quoting, the names of everything a migration creates, the [`Gen`]
//! struct with its core helpers (relation names, column lists, keys, casts) and the
//! assembly of every phase's SQL for `turnout plan`; the statements of each phase live in
//! the file named after it.
//!
//! Naming: every object turnout creates is named from the migration (`turnout_<name>_<hash>`
//! plus a suffix), so a crashed step can be finished or undone by looking at the catalog.
//! Index names are schema-wide in PostgreSQL, so the shadow's indexes (and its primary key)
//! carry temporary names until cutover, when the old table's are renamed out of the way
//! (`…_o<i>`, `…_opk`) and the new ones take the final names; rollback renames them back.

mod backfill;
mod blockers;
mod carry;
mod children;
mod cutover;
mod furniture;
pub(super) mod instant;
mod keys;
mod matviews;
mod publications;
pub(super) mod replicas;
mod rls;
mod rules;
pub(super) mod shadow;
mod shape;
mod triggers;
mod verify;
mod views;

pub(super) use carry::{create_undo_table, forget_undo, undo_key, undo_rows, undo_table};
pub(super) use children::ChildFk;
pub(super) use cutover::{CutoverFacts, Grant, RollbackFacts};
pub(super) use furniture::TableAttributes;
pub(super) use keys::{KeyType, refusal as key_type_refusal};
pub(super) use matviews::MatviewIndex;
pub(super) use publications::Membership;
pub(super) use rls::{Policy, RowSecurity};
pub(super) use rules::Rule;
pub(super) use shape::{Furniture, IndexParts, KeyPart};
pub(super) use views::View;

use crate::db::PhaseSql;
use crate::schema::{Generated, Mapped, Migration, TableShape};

/// `maps` without those into a generated column of `target`.
fn written(maps: &[Mapped], target: &TableShape) -> Vec<Mapped> {
    maps.iter()
        .filter(|mp| {
            !target
                .column(&mp.target)
                .is_some_and(|c| matches!(c.generated, Some(Generated::Computed { .. })))
        })
        .cloned()
        .collect()
}

/// First half of turnout's two-int advisory lock keys: "turn" in ASCII, so its locks are
/// recognisable in `pg_locks` and do not collide with an application's one-int locks.
pub(super) const LOCK_CLASS: i32 = 0x7475_726e;

/// `lock_timeout` for the rest of the transaction: `wait`, or half the server's
/// `deadlock_timeout` if that is shorter, so that when one of turnout's lock waits and an
/// application transaction's wait on each other it is turnout's that times out (and is
/// retried), never the application's that the deadlock detector aborts. turnout's waits
/// are tens of milliseconds; a server may set `deadlock_timeout` lower than that.
pub(super) fn lock_wait(wait: std::time::Duration) -> String {
    format!(
        "SELECT set_config('lock_timeout', greatest(1, least({}, \
         extract(epoch FROM current_setting('deadlock_timeout')::interval) * 500))::int || 'ms', true)",
        wait.as_millis().max(1)
    )
}

/// The one quoting function of this dialect: double quotes, inner quotes doubled.
pub fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// A string literal that reads the same whatever `standard_conforming_strings` says.
pub(super) fn literal(s: &str) -> String {
    format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

pub(super) fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", quote(schema), quote(name))
}

pub(super) fn list<S: AsRef<str>>(names: &[S]) -> String {
    names
        .iter()
        .map(|n| quote(n.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The cast used where the value is compared (verify): the exact target type.
pub(super) fn full_cast(value: &str, t: &str) -> String {
    format!("CAST({value} AS {t})")
}

/// The cast used where the value is stored: the target type without its modifier, so the
/// column's own assignment check rejects a value that does not fit (an explicit cast to
/// `varchar(3)` would silently truncate it).
pub(super) fn loose_cast(value: &str, t: &str) -> String {
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

/// The SQL of one migration, with its schema resolved.
pub(super) struct Gen<'a> {
    pub(super) m: &'a Migration,
    pub(super) schema: String,
    home: String,
    n: Names,
}

impl<'a> Gen<'a> {
    pub(super) fn new(m: &'a Migration, default_schema: &str) -> Gen<'a> {
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

    pub(super) fn rel(&self, name: &str) -> String {
        qualified(&self.schema, name)
    }
    pub(super) fn live(&self) -> String {
        self.rel(&self.m.table)
    }
    pub(super) fn shadow(&self) -> String {
        self.rel(&self.m.shadow)
    }
    pub(super) fn old(&self) -> String {
        self.rel(&self.m.old)
    }
    /// A LIKE pattern (a literal) matching the names of this migration's own triggers.
    pub(super) fn own_names_like(&self) -> String {
        literal(&format!("{}%", self.n.base))
    }
    fn failures(&self) -> String {
        qualified(&self.home, "turnout_failures")
    }

    /// The forward mappings turnout writes: none into a generated column of the new
    /// table, which PostgreSQL computes itself (and refuses a value for). Verify still
    /// compares every mapping, so a recomputed value must equal the live table's.
    pub(super) fn forward_written(&self) -> Vec<Mapped> {
        written(&self.m.forward, &self.m.after)
    }

    /// The reverse mappings turnout writes into the old table, its generated columns left out.
    pub(super) fn reverse_written(&self) -> Vec<Mapped> {
        written(&self.m.reverse, &self.m.before)
    }

    pub(super) fn old_cols(&self) -> Vec<&'a str> {
        self.m
            .before
            .columns
            .iter()
            .map(|c| c.name.as_str())
            .collect()
    }
    pub(super) fn new_cols(&self) -> Vec<&'a str> {
        self.m
            .after
            .columns
            .iter()
            .map(|c| c.name.as_str())
            .collect()
    }
    pub(super) fn old_key(&self) -> Vec<&'a str> {
        self.m.key.iter().map(|k| k.old.as_str()).collect()
    }
    pub(super) fn new_key(&self) -> Vec<&'a str> {
        self.m.key.iter().map(|k| k.new.as_str()).collect()
    }
    /// The old key columns' types: every cursor value comes from the old table, and a key
    /// only widens, so the new table compares with them too (see `keys`).
    pub(super) fn key_types(&self) -> Vec<String> {
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

    // --- keys and ranges -----------------------------------------------------------------

    /// `(a, b) > (CAST($1 AS t), CAST($2 AS t))` and/or `(a, b) <= (…)`, parameters numbered
    /// from 1 in the order lower bound, upper bound.
    pub(super) fn range(&self, prefix: &str, cols: &[&str], lo: bool, hi: bool) -> String {
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

    pub(super) fn order(&self, prefix: &str, cols: &[&str], desc: bool) -> String {
        cols.iter()
            .map(|c| format!("{prefix}{}{}", quote(c), if desc { " DESC" } else { "" }))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// A key as the cursor stores it: a JSON array of the values as text.
    pub(super) fn cursor_json(&self, prefix: &str, cols: &[&str]) -> String {
        format!(
            "jsonb_build_array({})::text",
            cols.iter()
                .map(|c| format!("{prefix}{}::text", quote(c)))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }

    /// A key as people read it: a JSON array of the typed values.
    pub(super) fn shown_key(&self, prefix: &str, cols: &[&str]) -> String {
        format!(
            "jsonb_build_array({})::text",
            cols.iter()
                .map(|c| format!("{prefix}{}", quote(c)))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

pub(super) fn has_identity_always(shape: &TableShape) -> bool {
    shape
        .columns
        .iter()
        .any(|c| matches!(c.generated, Some(Generated::Identity { always: true })))
}

/// The SQL of every phase, changing nothing (`turnout plan`).
pub(super) fn preview(m: &Migration, home: &str) -> Vec<PhaseSql> {
    let g = Gen::new(m, home);
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
        retyped: Vec::new(),
        deferrable_immediate: Vec::new(),
        children: Vec::new(),
        parents: Vec::new(),
        triggers: Vec::new(),
        grants: Vec::new(),
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
            phase: "prepare".into(),
            statements: prepare,
        },
        PhaseSql {
            phase: "dual-write".into(),
            statements: dual,
        },
        PhaseSql {
            phase: "backfill (each slice of a batch, about 20 ms)".into(),
            statements: vec![
                "BEGIN".into(),
                "SET LOCAL synchronous_commit = off".into(),
                g.batch_bounds(true, ":slice_rows"),
                g.batch_copy(true),
                "-- save the checkpoint".into(),
                "COMMIT".into(),
            ],
        },
        PhaseSql {
            phase: "backfill (after the last batch)".into(),
            statements: g
                .deferred_indexes()
                .into_iter()
                .map(|(_, build)| build)
                .chain([format!("ANALYZE {}", g.shadow())])
                .collect(),
        },
        PhaseSql {
            phase: "verify (each chunk, one REPEATABLE READ snapshot)".into(),
            statements: vec![g.chunk_hashes(true, true)],
        },
        PhaseSql {
            phase: "cutover".into(),
            statements: cutover,
        },
        PhaseSql {
            phase: "cleanup".into(),
            statements: cleanup,
        },
        PhaseSql {
            phase: "rollback (before cutover)".into(),
            statements: rollback,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every lock wait of turnout's is capped by half the server's deadlock_timeout, and
    /// never becomes 0 (which would mean no bound at all).
    #[test]
    fn a_lock_wait_is_capped_by_half_the_deadlock_timeout_and_never_unbounded() {
        assert_eq!(
            lock_wait(std::time::Duration::from_millis(50)),
            "SELECT set_config('lock_timeout', greatest(1, least(50, \
             extract(epoch FROM current_setting('deadlock_timeout')::interval) * 500))::int || 'ms', true)"
        );
        assert!(lock_wait(std::time::Duration::ZERO).contains("least(1,"));
    }
    use crate::plan::OnError;
    use crate::schema::{Index, KeyColumn, Mapped, Source};

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

    pub(super) fn migration() -> Migration {
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
                ..Default::default()
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
            views: vec![],
            nth: 0,
            together: vec![],
        }
    }

    #[test]
    fn names_are_deterministic_and_short() {
        let m = migration();
        let n = Names::of(&m);
        assert_eq!(n.base, Names::of(&m).base);
        assert!(n.base.starts_with("turnout_orders_amount_"));
        assert!(n.old_index(99).len() < 63);
    }
}
