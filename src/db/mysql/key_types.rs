//! Which primary-key type changes MySQL/MariaDB can carry: widenings whose every old
//! value is the same value in the new type, so the key never changes, only its room.
//!
//! Accepted: an integer to a larger one (`TINYINT` < `SMALLINT` < `MEDIUMINT` < `INT` <
//! `BIGINT`), keeping signedness, or unsigned to a larger signed type (which holds every
//! unsigned value of the smaller one), or signed to a larger unsigned type when no key is
//! negative (checked by preflight against the table, and after that a negative key the
//! application writes fails in the forward trigger exactly as it would fail in the new
//! table: the plan asked for unsigned); `VARCHAR(n)` → `VARCHAR(m ≥ n)` and
//! `VARBINARY(n)` → `VARBINARY(m ≥ n)` with the same character set and collation, so keys
//! compare (and the cursor orders) the same in both tables.
//!
//! Why the rest of turnout needs nothing else for these: the forward triggers and the
//! backfill insert old keys into the wider column unchanged; the cursor's keyset
//! comparison casts its bound by the key's type, and an old value compares equal in both
//! types; verify hashes the key as JSON text, the same for `5` in an `INT` and a `BIGINT`;
//! `AUTO_INCREMENT` is carried at cutover by reading the live counter. After cutover the
//! reverse triggers copy new rows back into the narrower old table: a key the old type
//! cannot hold (an id above 2^31 - 1 for `INT`) fails there like any other value that
//! does not fit the reverse mapping (`dual_write.on_error` decides: recorded, and a
//! rollback then asks for `--accept-loss`; or the write is refused) until cleanup drops
//! the old table, after which such ids are ordinary.

use crate::schema::KeyTypeChange;

/// A key column's type as far as widening is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum KeyType {
    /// Storage size in bytes (1, 2, 3, 4, 8).
    Int {
        bytes: u8,
        unsigned: bool,
    },
    /// `VARCHAR`/`VARBINARY` with its length and whatever follows (character set, collation).
    Var {
        binary: bool,
        len: u64,
        rest: String,
    },
    Other,
}

/// How an accepted change must be checked against the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Widening {
    /// Every old value fits; nothing to check.
    Plain,
    /// Signed to unsigned: no existing key may be negative.
    NoNegatives,
}

pub(super) fn parse(sql_type: &str) -> KeyType {
    let lower = sql_type.trim().to_lowercase();
    let mut words = lower.split_whitespace();
    let Some(first) = words.next() else {
        return KeyType::Other;
    };
    let (base, args) = match first.find('(') {
        Some(open) => (&first[..open], first[open + 1..].trim_end_matches(')')),
        None => (first, ""),
    };
    let rest: Vec<&str> = words.collect();
    let bytes = match base {
        "tinyint" => Some(1),
        "smallint" => Some(2),
        "mediumint" => Some(3),
        "int" | "integer" => Some(4),
        "bigint" => Some(8),
        _ => None,
    };
    if let Some(bytes) = bytes {
        // ZEROFILL changes how the key reads as text; anything else is not a plain integer.
        return match rest.as_slice() {
            [] | ["signed"] => KeyType::Int {
                bytes,
                unsigned: false,
            },
            ["unsigned"] => KeyType::Int {
                bytes,
                unsigned: true,
            },
            _ => KeyType::Other,
        };
    }
    match (base, args.parse::<u64>()) {
        ("varchar", Ok(len)) | ("varbinary", Ok(len)) => KeyType::Var {
            binary: base == "varbinary",
            len,
            rest: rest.join(" "),
        },
        _ => KeyType::Other,
    }
}

/// Accepts a widening or says, in the user's words, why the change cannot be carried.
pub(super) fn judge(table: &str, c: &KeyTypeChange) -> Result<Widening, String> {
    let refuse = |why: &str| {
        format!(
            "primary key column {} of {table}: changing its type from {} to {} is refused: {why}",
            c.column, c.from, c.to
        )
    };
    match (parse(&c.from), parse(&c.to)) {
        (
            KeyType::Int {
                bytes: a,
                unsigned: ua,
            },
            KeyType::Int {
                bytes: b,
                unsigned: ub,
            },
        ) => {
            if b < a {
                Err(refuse(
                    "it narrows the key (existing ids may not fit); only widening is supported",
                ))
            } else if a == b && ua == ub {
                Ok(Widening::Plain)
            } else if a == b {
                Err(refuse(
                    "a change of signedness at the same size does not hold every existing id; widen it too (e.g. to BIGINT)",
                ))
            } else if !ua && ub {
                Ok(Widening::NoNegatives)
            } else {
                Ok(Widening::Plain)
            }
        }
        (
            KeyType::Var {
                binary: a,
                len: la,
                rest: ra,
            },
            KeyType::Var {
                binary: b,
                len: lb,
                rest: rb,
            },
        ) if a == b => {
            if lb < la {
                Err(refuse(
                    "it shortens the key (existing ids may not fit); only lengthening is supported",
                ))
            } else if ra != rb {
                Err(refuse(&format!(
                    "the character set or collation would change ({:?} to {:?}), which changes how keys compare; keep it, writing the type as {}({lb}) {}",
                    if ra.is_empty() { "the table's" } else { &ra },
                    if rb.is_empty() { "the table's" } else { &rb },
                    if a { "VARBINARY" } else { "VARCHAR" },
                    ra
                )))
            } else {
                Ok(Widening::Plain)
            }
        }
        _ => Err(refuse(
            "only widening an integer key (e.g. INT to BIGINT) or lengthening a VARCHAR/VARBINARY key is supported on MySQL/MariaDB, since any other change could alter key values",
        )),
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
    fn widenings_are_accepted_and_the_rest_refused_with_the_reason() {
        let ok = |f: &str, t: &str| judge("orders", &change(f, t));
        assert_eq!(ok("int(11)", "bigint"), Ok(Widening::Plain));
        assert_eq!(ok("smallint(6)", "INT"), Ok(Widening::Plain));
        assert_eq!(
            ok("int(10) unsigned", "bigint unsigned"),
            Ok(Widening::Plain)
        );
        assert_eq!(ok("int(10) unsigned", "BIGINT"), Ok(Widening::Plain));
        assert_eq!(ok("int(11)", "BIGINT UNSIGNED"), Ok(Widening::NoNegatives));
        assert_eq!(ok("varchar(20)", "VARCHAR(64)"), Ok(Widening::Plain));
        assert_eq!(ok("varbinary(16)", "varbinary(32)"), Ok(Widening::Plain));
        let why = |f: &str, t: &str| ok(f, t).expect_err("refused");
        assert!(why("bigint(20)", "int").contains("narrows"));
        assert!(why("int(11)", "int unsigned").contains("signedness"));
        assert!(why("varchar(64)", "varchar(20)").contains("shortens"));
        assert!(
            why(
                "varchar(20) CHARACTER SET latin1 COLLATE latin1_swedish_ci",
                "varchar(40)"
            )
            .contains("VARCHAR(40) character set latin1")
        );
        assert!(why("int(11)", "varchar(20)").contains("only widening"));
        assert!(why("int(11) zerofill", "bigint zerofill").contains("only widening"));
        let msg = why("bigint(20)", "int");
        assert!(
            msg.starts_with(
                "primary key column id of orders: changing its type from bigint(20) to int"
            ),
            "{msg}"
        );
    }
}
