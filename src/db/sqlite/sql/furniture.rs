//! What the table carries besides its columns, primary key and plain indexes, as the
//! shadow's DDL must repeat it: foreign keys to other tables (by the parent's name, so a
//! self-reference names `<table>`: the live table during dual-write, the new table itself
//! after the swap), `UNIQUE` constraints, and the table options (`STRICT`,
//! `WITHOUT ROWID`). Also the one lexical question preflight asks of a trigger's or
//! view's text: does it name this identifier?

use super::quote;
use super::table_text::TableText;
use crate::schema::{Migration, Source};

/// A foreign key of the table, as `pragma_foreign_key_list` gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::db::sqlite) struct ForeignKey {
    pub columns: Vec<String>,
    pub parent: String,
    /// Empty when the clause names no columns (the parent's primary key).
    pub parent_columns: Vec<String>,
    pub on_update: String,
    pub on_delete: String,
}

/// What the shadow must carry beyond the shape the engine derives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(in crate::db::sqlite) struct Furniture {
    pub foreign_keys: Vec<ForeignKey>,
    pub strict: bool,
    pub without_rowid: bool,
    /// CHECKs, collations, generated columns, AUTOINCREMENT: from the table's own text.
    pub text: TableText,
    /// Indexes only their own text describes (partial, on expressions, descending,
    /// collated), as (name, `sqlite_master.sql`).
    pub index_text: Vec<(String, String)>,
}

/// The live table's column a new column carries the declaration of (its CHECKs and
/// collation): the one it is copied from, or the one of its name that a `using`
/// expression rewrites; `None` for a column the plan adds.
pub(in crate::db::sqlite) fn origin<'m>(m: &'m Migration, new: &str) -> Option<&'m str> {
    match m
        .forward
        .iter()
        .find(|mp| mp.target == new)
        .map(|mp| &mp.source)
    {
        Some(Source::Column(c)) => Some(c.as_str()),
        _ => m.before.column(new).map(|c| c.name.as_str()),
    }
}

/// The new table's name for an old column that the plan carries unchanged in value
/// (kept or renamed); `None` when the plan drops it or fills it from an expression.
pub(in crate::db::sqlite) fn carried_as<'m>(m: &'m Migration, old: &str) -> Option<&'m str> {
    m.forward
        .iter()
        .find(|mp| matches!(&mp.source, Source::Column(c) if c == old))
        .map(|mp| mp.target.as_str())
}

fn quoted_list(cols: &[String]) -> String {
    cols.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", ")
}

/// The clause on the shadow; `None` when a column of it does not reach the new table
/// (preflight refuses that before).
pub(in crate::db::sqlite) fn foreign_key_clause(m: &Migration, fk: &ForeignKey) -> Option<String> {
    let columns = fk
        .columns
        .iter()
        .map(|c| carried_as(m, c).map(str::to_string))
        .collect::<Option<Vec<_>>>()?;
    let parent_cols = if fk.parent_columns.is_empty() {
        String::new()
    } else {
        format!(" ({})", quoted_list(&fk.parent_columns))
    };
    Some(format!(
        "FOREIGN KEY ({}) REFERENCES {}{parent_cols} ON UPDATE {} ON DELETE {}",
        quoted_list(&columns),
        quote(&fk.parent),
        fk.on_update,
        fk.on_delete
    ))
}

/// The words after the closing parenthesis of the CREATE TABLE.
pub(in crate::db::sqlite) fn table_options(f: &Furniture) -> String {
    match (f.strict, f.without_rowid) {
        (true, true) => " STRICT, WITHOUT ROWID".into(),
        (true, false) => " STRICT".into(),
        (false, true) => " WITHOUT ROWID".into(),
        (false, false) => String::new(),
    }
}

/// The identifiers and keywords of an SQL text, lower-cased, strings and comments left out.
pub(in crate::db::sqlite) fn words(sql: &str) -> Vec<String> {
    let chars: Vec<char> = sql.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '-' && chars.get(i + 1) == Some(&'-') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && chars.get(i + 1) == Some(&'*') {
            i += 2;
            while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                i += 1;
            }
            i += 2;
        } else if c == '\'' {
            i += 1;
            while i < chars.len() {
                if chars[i] == '\'' && chars.get(i + 1) == Some(&'\'') {
                    i += 2;
                } else if chars[i] == '\'' {
                    break;
                } else {
                    i += 1;
                }
            }
            i += 1;
        } else if c == '"' || c == '`' || c == '[' {
            let close = if c == '[' { ']' } else { c };
            let mut word = String::new();
            i += 1;
            while i < chars.len() {
                if chars[i] == close && close != ']' && chars.get(i + 1) == Some(&close) {
                    word.push(close);
                    i += 2;
                } else if chars[i] == close {
                    break;
                } else {
                    word.push(chars[i]);
                    i += 1;
                }
            }
            i += 1;
            out.push(word.to_lowercase());
        } else if c.is_alphanumeric() || c == '_' || c == '$' {
            let mut word = String::new();
            while i < chars.len()
                && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '$')
            {
                word.push(chars[i]);
                i += 1;
            }
            out.push(word.to_lowercase());
        } else {
            i += 1;
        }
    }
    out
}

/// Whether the text names `ident` (case-insensitively, as SQLite compares names).
pub(in crate::db::sqlite) fn mentions(sql: &str, ident: &str) -> bool {
    let ident = ident.to_lowercase();
    words(sql).contains(&ident)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_skip_strings_and_comments_and_unquote_names() {
        let sql = "CREATE VIEW v AS SELECT \"Last \"\"Name\"\", x\" , [y z] -- note\n FROM t WHERE a = 'note' /* b */";
        assert_eq!(
            words(sql),
            [
                "create",
                "view",
                "v",
                "as",
                "select",
                "last \"name\", x",
                "y z",
                "from",
                "t",
                "where",
                "a"
            ]
        );
        assert!(mentions(sql, "T"));
        assert!(!mentions(sql, "note"));
        assert!(!mentions(sql, "b"));
    }

    #[test]
    fn a_foreign_key_follows_renamed_columns() {
        let before = crate::schema::fixtures::orders(["INTEGER", "INTEGER", "TEXT"], false);
        let plan = crate::plan::parse(
            "version: 1\nname: m\ntable: orders\nchanges:\n  - rename_column: {from: note, to: comment}\n",
            "p.yaml",
        )
        .expect("plan");
        let m = Migration::derive(&plan, &before).expect("derive");
        let fk = ForeignKey {
            columns: vec!["note".into()],
            parent: "notes".into(),
            parent_columns: vec![],
            on_update: "NO ACTION".into(),
            on_delete: "SET NULL".into(),
        };
        assert_eq!(
            foreign_key_clause(&m, &fk).as_deref(),
            Some(
                "FOREIGN KEY (\"comment\") REFERENCES \"notes\" ON UPDATE NO ACTION ON DELETE SET NULL"
            )
        );
        let gone = ForeignKey {
            columns: vec!["nowhere".into()],
            ..fk
        };
        assert_eq!(foreign_key_clause(&m, &gone), None);
    }
}
