//! Primary-key type changes: which ones PostgreSQL can carry online and the SQL that keeps
//! them safe. A key may only widen (`smallint` → `integer` → `bigint`, `varchar(n)` →
//! `varchar(m > n)` or `text`): every old value is then a value of the new type, so the
//! backfill, both triggers and verify compare and copy keys without ever changing one.
//! PostgreSQL compares `integer` with `bigint` and `varchar` with `text` directly (the
//! cross-type operators of the same btree family), so the cursor's parameters keep the
//! old key type and every range still uses the index on either side.
//!
//! Why the application sees nothing odd at any moment: until cutover the old table is the
//! source of truth and its key type is unchanged; at cutover the new table takes the name
//! and a serial sequence is retyped `AS <new type>` in the same transaction, so the first
//! insert after the swap can draw ids above the old range (an identity is recreated on the
//! new column, hence of its type). Between cutover and cleanup the reverse trigger still
//! copies every write into the old table, whose key cannot hold an id above its range:
//! such a write is rejected or recorded as `on_error` says, and a rollback that would lose
//! such a row (or a sequence that already handed out such an id) is refused by name.

use super::{Gen, quote};
use crate::schema::KeyTypeChange;

/// A key type turnout understands, read from `format_type` or from a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::db::postgres) enum KeyType {
    /// An integer of this many bytes.
    Int(u8),
    /// `varchar(n)`; `None` is `varchar` without a limit, the same as `text` for a key.
    Varchar(Option<u32>),
}

impl KeyType {
    pub(in crate::db::postgres) fn parse(t: &str) -> Option<KeyType> {
        let t = t.trim().to_ascii_lowercase();
        let t = t.split_whitespace().collect::<Vec<_>>().join(" ");
        match t.as_str() {
            "smallint" | "int2" => return Some(KeyType::Int(2)),
            "integer" | "int" | "int4" => return Some(KeyType::Int(4)),
            "bigint" | "int8" => return Some(KeyType::Int(8)),
            "text" | "varchar" | "character varying" => return Some(KeyType::Varchar(None)),
            _ => {}
        }
        let (base, rest) = t.split_once('(')?;
        let n: u32 = rest.strip_suffix(')')?.trim().parse().ok()?;
        matches!(base.trim(), "varchar" | "character varying").then_some(KeyType::Varchar(Some(n)))
    }

    /// Every value of `self` is a value of `wider`, unchanged.
    pub(in crate::db::postgres) fn fits_in(self, wider: KeyType) -> bool {
        match (self, wider) {
            (KeyType::Int(a), KeyType::Int(b)) => a <= b,
            (KeyType::Varchar(_), KeyType::Varchar(None)) => true,
            (KeyType::Varchar(Some(a)), KeyType::Varchar(Some(b))) => a <= b,
            _ => false,
        }
    }

    /// The SQL name of an integer type (for `ALTER SEQUENCE … AS`).
    pub(in crate::db::postgres) fn int_name(self) -> Option<&'static str> {
        match self {
            KeyType::Int(2) => Some("smallint"),
            KeyType::Int(4) => Some("integer"),
            KeyType::Int(8) => Some("bigint"),
            _ => None,
        }
    }

    /// The largest value of an integer type.
    pub(in crate::db::postgres) fn int_max(self) -> Option<i64> {
        match self {
            KeyType::Int(2) => Some(i64::from(i16::MAX)),
            KeyType::Int(4) => Some(i64::from(i32::MAX)),
            KeyType::Int(8) => Some(i64::MAX),
            _ => None,
        }
    }
}

/// Preflight's judgement of one key type change: `None` when PostgreSQL carries it.
pub(in crate::db::postgres) fn refusal(table: &str, k: &KeyTypeChange) -> Option<String> {
    let what = format!(
        "primary key column {:?} of {table:?}: changing its type from {} to {}",
        k.column, k.from, k.to
    );
    match (KeyType::parse(&k.from), KeyType::parse(&k.to)) {
        (Some(from), Some(to)) if from.fits_in(to) => None,
        (Some(from), Some(to)) if to.fits_in(from) => Some(format!(
            "{what} would narrow it, and a key's values are never changed online; keep the type or widen it (smallint → integer → bigint, varchar(n) → varchar(m > n) or text)"
        )),
        _ => Some(format!(
            "{what} is not a widening turnout can carry on PostgreSQL (it carries smallint → integer → bigint and varchar(n) → varchar(m > n) or text); change the key with an application-level migration instead"
        )),
    }
}

impl<'a> Gen<'a> {
    /// A query returning the first key of the new table that the old table's key type
    /// cannot hold (as text), or no row: run before a rollback after cutover, which would
    /// lose such a row. `None` when no key column changes type.
    pub(in crate::db::postgres) fn keys_beyond_old_type(&self) -> Option<String> {
        let tests: Vec<String> = self
            .m
            .key_type_changes()
            .iter()
            .filter_map(|k| {
                let col = quote(&k.column);
                let old = self.m.key.iter().find(|c| c.new == k.column)?;
                let from = self.m.before.column(&old.old)?;
                match KeyType::parse(&from.sql_type)? {
                    KeyType::Int(n) if n < 8 => {
                        let max = KeyType::Int(n).int_max()?;
                        Some(format!("{col} > {max} OR {col} < {}", -max - 1))
                    }
                    KeyType::Varchar(Some(n)) => Some(format!("char_length({col}) > {n}")),
                    _ => None,
                }
            })
            .collect();
        if tests.is_empty() {
            return None;
        }
        let key = self.new_key();
        Some(format!(
            "SELECT {} FROM {} WHERE {} LIMIT 1",
            self.shown_key("", &key),
            self.live(),
            tests
                .iter()
                .map(|t| format!("({t})"))
                .collect::<Vec<_>>()
                .join(" OR ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(from: &str, to: &str) -> KeyTypeChange {
        KeyTypeChange {
            column: "id".into(),
            from: from.into(),
            to: to.into(),
        }
    }

    #[test]
    fn widenings_are_carried_and_the_rest_refused_with_why() {
        for (from, to) in [
            ("integer", "bigint"),
            ("integer", "BIGINT"),
            ("smallint", "int8"),
            ("smallint", "integer"),
            ("character varying(10)", "varchar(20)"),
            ("character varying(10)", "text"),
            ("text", "varchar"),
        ] {
            assert_eq!(refusal("t", &change(from, to)), None, "{from} → {to}");
        }
        let narrow = refusal("t", &change("bigint", "integer")).expect("refused");
        assert!(narrow.contains("\"id\" of \"t\"") && narrow.contains("narrow"));
        let narrow = refusal("t", &change("character varying(20)", "varchar(5)")).expect("refused");
        assert!(narrow.contains("narrow"));
        let other = refusal("t", &change("integer", "text")).expect("refused");
        assert!(other.contains("not a widening"), "{other}");
        let other = refusal("t", &change("uuid", "text")).expect("refused");
        assert!(other.contains("not a widening"), "{other}");
    }

    #[test]
    fn integer_types_know_their_names_and_ranges() {
        assert_eq!(
            KeyType::parse("int4").and_then(KeyType::int_max),
            Some(2147483647)
        );
        assert_eq!(
            KeyType::parse("int2").and_then(KeyType::int_name),
            Some("smallint")
        );
        assert_eq!(
            KeyType::parse("varchar( 7 )"),
            Some(KeyType::Varchar(Some(7)))
        );
        assert_eq!(KeyType::parse("varchar(x)"), None);
    }
}
