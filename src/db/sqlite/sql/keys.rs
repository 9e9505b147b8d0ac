//! What a primary-key type change means on SQLite, judged without a database.
//!
//! SQLite stores values by storage class, not by declared type: every type name whose
//! affinity is INTEGER (`INT`, `SMALLINT`, `BIGINT`, `INTEGER`, …) holds the same 64-bit
//! integers, and `varchar(n)` enforces no length. A "widening" therefore changes no stored
//! value; what it can change is whether the key is the rowid:
//!
//! - `INTEGER PRIMARY KEY` (in a rowid table) *is* the rowid: SQLite fills it with
//!   `max(rowid) + 1` when an insert leaves it out, so new ids carry on above every
//!   existing one. Turning it into `BIGINT` would make it an ordinary column: inserts
//!   without an id would store NULL keys. That is refused (it gains nothing: the rowid is
//!   already 64-bit).
//! - Any other integer type (`INT`, `BIGINT`, …) to `INTEGER` makes the key the rowid.
//!   Accepted: the copy writes every id explicitly, and SQLite assigns new ids above the
//!   largest. Every existing key must be an integer (preflight counts the others), and
//!   during dual-write an application insert whose key is not an integer fails.
//! - Between integer types of equal or larger declared size (`INT` → `BIGINT`):
//!   accepted, nothing about the storage changes.
//! - `varchar(n)` → `varchar(m ≥ n)` or to an unbounded text type: accepted.
//! - A smaller declared size, or a change of affinity (which converts values: `'01'` as
//!   TEXT becomes `1` as INTEGER): refused with the reason.

/// The affinity SQLite gives a declared type (the rules of "Datatypes In SQLite", 3.1).
pub(in crate::db::sqlite) fn affinity(sql_type: &str) -> &'static str {
    let t = sql_type.to_ascii_uppercase();
    if t.contains("INT") {
        "INTEGER"
    } else if t.contains("CHAR") || t.contains("CLOB") || t.contains("TEXT") {
        "TEXT"
    } else if t.contains("BLOB") || t.trim().is_empty() {
        "BLOB"
    } else if t.contains("REAL") || t.contains("FLOA") || t.contains("DOUB") {
        "REAL"
    } else {
        "NUMERIC"
    }
}

/// Whether a single-column key of this type is the rowid.
pub(in crate::db::sqlite) fn is_rowid_alias(sql_type: &str, without_rowid: bool) -> bool {
    !without_rowid && sql_type.trim().eq_ignore_ascii_case("integer")
}

/// The declared size of an integer type name, in bytes, as other databases read it.
fn integer_size(t: &str) -> u32 {
    let t = t.to_ascii_uppercase();
    if t.contains("TINY") {
        1
    } else if t.contains("SMALL") || t.contains("INT2") {
        2
    } else if t.contains("MEDIUM") {
        3
    } else if t.contains("BIG") || t.contains("INT8") || t.trim() == "INTEGER" {
        8
    } else {
        4
    }
}

/// `varchar(n)`'s n; `None` when the type has no length (unbounded).
fn text_length(t: &str) -> Option<u64> {
    let open = t.find('(')?;
    let close = t[open..].find(')')? + open;
    t[open + 1..close].trim().parse().ok()
}

/// What changing a key column's type from `from` to `to` means: `Ok(true)` when the key
/// becomes the rowid, `Ok(false)` for a change of declaration only, `Err` with the reason
/// it is refused.
pub(in crate::db::sqlite) fn judge(
    from: &str,
    to: &str,
    single_column_key: bool,
    without_rowid: bool,
) -> Result<bool, String> {
    let (fa, ta) = (affinity(from), affinity(to));
    if fa != ta {
        return Err(format!(
            "it changes the column's affinity from {fa} to {ta}, which converts key values (a key change must keep every value)"
        ));
    }
    let was_rowid = single_column_key && is_rowid_alias(from, without_rowid);
    let becomes_rowid = single_column_key && is_rowid_alias(to, without_rowid);
    match fa {
        "INTEGER" => {
            if was_rowid && !becomes_rowid {
                return Err(format!(
                    "INTEGER PRIMARY KEY is the rowid, already a 64-bit integer; as {to} the key would no longer be filled by SQLite and inserts without an id would store NULL. Keep INTEGER"
                ));
            }
            if integer_size(to) < integer_size(from) {
                return Err(format!(
                    "{to} is narrower than {from}; only widenings are carried"
                ));
            }
            Ok(becomes_rowid && !was_rowid)
        }
        "TEXT" => match (text_length(from), text_length(to)) {
            (_, None) => Ok(false),
            (Some(n), Some(m)) if m >= n => Ok(false),
            _ => Err(format!(
                "{to} is shorter than {from}; only widenings are carried"
            )),
        },
        _ => Err(format!(
            "only integer and text keys can be widened on SQLite ({from} has {fa} affinity)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::judge;

    #[test]
    fn integer_widenings_are_carried_and_the_rowid_is_kept() {
        assert_eq!(judge("INT", "BIGINT", true, false), Ok(false));
        assert_eq!(judge("smallint", "int", true, false), Ok(false));
        assert_eq!(judge("INT", "INTEGER", true, false), Ok(true));
        assert_eq!(judge("BIGINT", "INTEGER", true, false), Ok(true));
        // In a WITHOUT ROWID table no key is the rowid.
        assert_eq!(judge("INTEGER", "BIGINT", true, true), Ok(false));
        // A column of a composite key is never the rowid.
        assert_eq!(judge("INTEGER", "BIGINT", false, false), Ok(false));
    }

    #[test]
    fn losing_the_rowid_narrowing_and_affinity_changes_are_refused() {
        let e = judge("INTEGER", "BIGINT", true, false).unwrap_err();
        assert!(e.contains("rowid"), "{e}");
        let e = judge("BIGINT", "INT", true, false).unwrap_err();
        assert!(e.contains("narrower"), "{e}");
        let e = judge("TEXT", "INTEGER", true, false).unwrap_err();
        assert!(e.contains("affinity from TEXT to INTEGER"), "{e}");
        let e = judge("REAL", "DOUBLE", true, false).unwrap_err();
        assert!(e.contains("only integer and text"), "{e}");
    }

    #[test]
    fn text_keys_widen_by_length() {
        assert_eq!(judge("varchar(10)", "varchar(20)", true, false), Ok(false));
        assert_eq!(judge("varchar(10)", "TEXT", true, false), Ok(false));
        assert!(judge("varchar(20)", "varchar(10)", true, false).is_err());
        assert!(judge("TEXT", "varchar(10)", true, false).is_err());
    }
}
