//! SQLite accepts any word as a column type and gives it an affinity by substring rules
//! (https://sqlite.org/datatype3.html §3.1): a name with none of INT, CHAR, CLOB, TEXT,
//! BLOB, REAL, FLOA or DOUB falls through to NUMERIC. So a typo such as `numbr(12,2)`, or
//! a name from another database (`STRING`, `UUID`, `JSON`, `TIMESTAMP`), silently makes a
//! NUMERIC column, which turns the text '0012' into the integer 12. Preflight refuses a
//! plan's type that gets its affinity only by that fall-through, unless it is one of the
//! NUMERIC names SQLite documents. To insist on such a name, the plan says the affinity
//! in the type itself, as a last word: `type: TIMESTAMP NUMERIC` (or `… TEXT`, `… INTEGER`,
//! …), which SQLite reads as intended and this check accepts because the affinity that
//! word implies is the one SQLite gives.

/// The type names of SQLite's documentation (datatype3 §3.1.1), by affinity.
pub const KNOWN: &[(&str, &[&str])] = &[
    (
        "INTEGER",
        &[
            "INT",
            "INTEGER",
            "TINYINT",
            "SMALLINT",
            "MEDIUMINT",
            "BIGINT",
            "UNSIGNED BIG INT",
            "INT2",
            "INT8",
        ],
    ),
    (
        "TEXT",
        &[
            "CHARACTER",
            "VARCHAR",
            "VARYING CHARACTER",
            "NCHAR",
            "NATIVE CHARACTER",
            "NVARCHAR",
            "TEXT",
            "CLOB",
        ],
    ),
    ("BLOB", &["BLOB"]),
    ("REAL", &["REAL", "DOUBLE", "DOUBLE PRECISION", "FLOAT"]),
    (
        "NUMERIC",
        &["NUMERIC", "DECIMAL", "BOOLEAN", "DATE", "DATETIME"],
    ),
];

const AFFINITIES: &[&str] = &["INTEGER", "TEXT", "BLOB", "REAL", "NUMERIC"];

/// SQLite's affinity for a declared type, by its rules in their order.
pub fn affinity(declared: &str) -> &'static str {
    let t = declared.to_ascii_uppercase();
    if t.contains("INT") {
        "INTEGER"
    } else if ["CHAR", "CLOB", "TEXT"].iter().any(|s| t.contains(s)) {
        "TEXT"
    } else if t.contains("BLOB") || t.trim().is_empty() {
        "BLOB"
    } else if ["REAL", "FLOA", "DOUB"].iter().any(|s| t.contains(s)) {
        "REAL"
    } else {
        "NUMERIC"
    }
}

/// The name without its `(precision, scale)`, upper-cased, words single-spaced.
fn bare(declared: &str) -> String {
    let name = declared.split('(').next().unwrap_or_default();
    name.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_ascii_uppercase()
}

/// Why SQLite would give `declared` its affinity only by accident; `None` when the name
/// says what it means.
pub fn accidental(column: &str, declared: &str) -> Option<String> {
    let name = bare(declared);
    let last = name.rsplit(' ').next().unwrap_or_default();
    let given = affinity(declared);
    // A last word naming an affinity is the user's insistence; it must be the one SQLite
    // gives, which it is not when an earlier word holds INT (`POINT TEXT` is INTEGER).
    if name.contains(' ') && AFFINITIES.contains(&last) && last != given {
        return Some(format!(
            "column {column:?}: the type {declared:?} ends in {last}, but SQLite gives it {given} affinity (by its rules INT, then CHAR/CLOB/TEXT, then BLOB, then REAL/FLOA/DOUB decide, wherever they appear in the name); choose a name SQLite reads as {last}"
        ));
    }
    if name.is_empty() || given != "NUMERIC" {
        return None;
    }
    let numeric_names = KNOWN
        .iter()
        .find(|(a, _)| *a == "NUMERIC")
        .map_or(&[][..], |(_, names)| *names);
    if numeric_names.contains(&name.as_str()) || numeric_names.contains(&last) {
        return None;
    }
    let known = KNOWN
        .iter()
        .map(|(a, names)| format!("{a}: {}", names.join(", ")))
        .collect::<Vec<_>>()
        .join("; ");
    Some(format!(
        "column {column:?}: SQLite does not know the type {declared:?}; it would make it NUMERIC only because the name contains none of INT, CHAR, CLOB, TEXT, BLOB, REAL, FLOA, DOUB. SQLite's type names are {known}. If {declared:?} is meant, say the affinity as the type's last word before any `(…)`, e.g. `{} NUMERIC{}` (or TEXT, INTEGER, REAL, BLOB)",
        declared.split('(').next().unwrap_or_default().trim(),
        declared.find('(').map_or("", |i| &declared[i..]),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affinity_follows_sqlites_rules_in_order() {
        for (declared, want) in [
            ("INTEGER", "INTEGER"),
            ("UNSIGNED BIG INT", "INTEGER"),
            ("FLOATING POINT", "INTEGER"), // SQLite's own example: "INT" wins
            ("VARCHAR(255)", "TEXT"),
            ("CHARINT", "INTEGER"),
            ("BLOB", "BLOB"),
            ("", "BLOB"),
            ("DOUBLE PRECISION", "REAL"),
            ("numeric(12,2)", "NUMERIC"),
            ("numbr(12,2)", "NUMERIC"),
            ("STRING", "NUMERIC"),
        ] {
            assert_eq!(affinity(declared), want, "{declared:?}");
        }
    }

    #[test]
    fn every_documented_name_is_accepted_and_has_its_affinity() {
        for (aff, names) in KNOWN {
            for name in *names {
                assert_eq!(affinity(name), *aff, "{name}");
                assert_eq!(accidental("c", name), None, "{name}");
                assert_eq!(
                    accidental("c", &format!("{} (10, 2)", name.to_lowercase())),
                    None
                );
            }
        }
    }

    #[test]
    fn a_name_that_only_falls_through_to_numeric_is_refused() {
        for declared in [
            "numbr(12,2)",
            "STRING",
            "uuid",
            "TIMESTAMP",
            "json",
            "nubmer",
        ] {
            let why = accidental("amount", declared).expect(declared);
            assert!(why.contains("column \"amount\""), "{why}");
            assert!(why.contains(declared), "{why}");
            assert!(why.contains("DOUBLE PRECISION"), "the list of names: {why}");
        }
    }

    #[test]
    fn naming_the_affinity_insists() {
        for declared in [
            "numbr NUMERIC(12,2)",
            "TIMESTAMP NUMERIC",
            "uuid text",
            "json TEXT",
            "STRING BLOB",
        ] {
            assert_eq!(accidental("c", declared), None, "{declared}");
        }
        // The refusal's own suggestion is accepted.
        let why = accidental("c", "numbr(12,2)").expect("refused");
        assert!(why.contains("`numbr NUMERIC(12,2)`"), "{why}");
        assert_eq!(accidental("c", "numbr NUMERIC(12,2)"), None);
    }

    #[test]
    fn an_insisted_affinity_sqlite_would_not_give_is_refused() {
        let why = accidental("at", "POINT TEXT").expect("INT wins over TEXT");
        assert!(why.contains("INTEGER affinity"), "{why}");
        assert_eq!(accidental("at", "BIG TEXT"), None);
    }
}
