//! What only the table's own text (`sqlite_master.sql`) says: CHECK constraints, column
//! collations, generated columns and AUTOINCREMENT, none of which SQLite's pragmas list;
//! and an index's own text, re-aimed at the shadow under the shadow's index name. A small
//! tokenizer keeps byte offsets so every clause is carried verbatim, as the user wrote it.

use super::quote;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A keyword or bare identifier (`text` lower-cased).
    Word,
    /// A quoted identifier (`text` unquoted, case kept).
    Quoted,
    /// A string literal.
    Str,
    /// Any other character (`text` is it).
    Punct,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Token {
    kind: Kind,
    text: String,
    /// A bare word as written (case kept); otherwise the same as `text`.
    raw: String,
    start: usize,
    end: usize,
}

impl Token {
    fn is(&self, word: &str) -> bool {
        self.kind == Kind::Word && self.text == word
    }

    fn punct(&self, c: char) -> bool {
        self.kind == Kind::Punct && self.text.starts_with(c)
    }

    /// The name it stands for, as SQLite compares it (case-insensitively) when bare.
    fn name(&self) -> String {
        self.raw.clone()
    }
}

fn tokens(sql: &str) -> Vec<Token> {
    let chars: Vec<(usize, char)> = sql.char_indices().collect();
    let at = |i: usize| chars.get(i).map(|(_, c)| *c);
    let offset = |i: usize| chars.get(i).map_or(sql.len(), |(o, _)| *o);
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i].1;
        let start = offset(i);
        if c.is_whitespace() {
            i += 1;
        } else if c == '-' && at(i + 1) == Some('-') {
            while i < chars.len() && chars[i].1 != '\n' {
                i += 1;
            }
        } else if c == '/' && at(i + 1) == Some('*') {
            i += 2;
            while i < chars.len() && !(chars[i].1 == '*' && at(i + 1) == Some('/')) {
                i += 1;
            }
            i += 2;
        } else if c == '\'' || c == '"' || c == '`' || c == '[' {
            let close = if c == '[' { ']' } else { c };
            let mut text = String::new();
            i += 1;
            while i < chars.len() {
                let d = chars[i].1;
                if d == close && close != ']' && at(i + 1) == Some(close) {
                    text.push(close);
                    i += 2;
                } else if d == close {
                    break;
                } else {
                    text.push(d);
                    i += 1;
                }
            }
            i += 1;
            let kind = if c == '\'' { Kind::Str } else { Kind::Quoted };
            out.push(Token {
                kind,
                raw: text.clone(),
                text,
                start,
                end: offset(i),
            });
        } else if c.is_alphanumeric() || c == '_' || c == '$' {
            let mut text = String::new();
            while i < chars.len()
                && (chars[i].1.is_alphanumeric() || chars[i].1 == '_' || chars[i].1 == '$')
            {
                text.push(chars[i].1);
                i += 1;
            }
            out.push(Token {
                kind: Kind::Word,
                text: text.to_lowercase(),
                raw: text,
                start,
                end: offset(i),
            });
        } else {
            i += 1;
            out.push(Token {
                kind: Kind::Punct,
                text: c.to_string(),
                raw: c.to_string(),
                start,
                end: offset(i),
            });
        }
    }
    out
}

/// The index just past the parenthesis that closes the one at `open`.
fn close_of(t: &[Token], open: usize) -> usize {
    let mut depth = 0usize;
    for (i, tok) in t.iter().enumerate().skip(open) {
        if tok.punct('(') {
            depth += 1;
        } else if tok.punct(')') {
            depth = depth.saturating_sub(1);
            if depth == 0 {
                return i + 1;
            }
        }
    }
    t.len()
}

/// A CHECK constraint, verbatim: `CHECK (…)`, with its `CONSTRAINT name` when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::db::sqlite) struct Check {
    pub name: Option<String>,
    /// The column it is declared on; `None` for a table constraint.
    pub column: Option<String>,
    /// `[CONSTRAINT name] CHECK (…)` as written.
    pub clause: String,
    /// The expression inside the parentheses.
    pub expr: String,
}

impl Check {
    /// How messages name it.
    pub fn label(&self) -> String {
        match &self.name {
            Some(n) => format!("CHECK constraint {n:?}"),
            None => format!("CHECK ({})", self.expr),
        }
    }
}

/// A generated column, verbatim, with the columns declared before it (to keep its place).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::db::sqlite) struct GeneratedColumn {
    pub name: String,
    /// The whole column definition as written.
    pub definition: String,
    pub expr: String,
    pub preceding: Vec<String>,
}

/// What the table's text declares beyond what the pragmas tell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(in crate::db::sqlite) struct TableText {
    pub checks: Vec<Check>,
    /// (column, `COLLATE name` as written).
    pub collations: Vec<(String, String)>,
    pub generated: Vec<GeneratedColumn>,
    pub autoincrement: bool,
    /// Per foreign-key clause, in the order of the text (which is the order SQLite
    /// declares them in), its `[NOT] DEFERRABLE [INITIALLY …]` as written, if any: the
    /// pragmas do not tell.
    pub deferrals: Vec<Option<String>>,
}

impl TableText {
    pub fn collation(&self, column: &str) -> Option<&str> {
        self.collations
            .iter()
            .find(|(c, _)| c.eq_ignore_ascii_case(column))
            .map(|(_, k)| k.as_str())
    }
}

/// The definitions between the outer parentheses of a CREATE TABLE, as token ranges.
fn definitions(t: &[Token]) -> Vec<(usize, usize)> {
    let Some(open) = t.iter().position(|x| x.punct('(')) else {
        return Vec::new();
    };
    let close = close_of(t, open) - 1;
    let mut parts = Vec::new();
    let (mut depth, mut from) = (0usize, open + 1);
    for (i, tok) in t.iter().enumerate().take(close).skip(open + 1) {
        if tok.punct('(') {
            depth += 1;
        } else if tok.punct(')') {
            depth = depth.saturating_sub(1);
        } else if tok.punct(',') && depth == 0 {
            parts.push((from, i));
            from = i + 1;
        }
    }
    if from < close {
        parts.push((from, close));
    }
    parts
}

/// The CHECK constraints at depth 0 of `t[from..to]`.
fn checks_in(sql: &str, t: &[Token], from: usize, to: usize, column: Option<&str>) -> Vec<Check> {
    let mut out = Vec::new();
    let mut i = from;
    while i < to {
        if t[i].is("check") && t.get(i + 1).is_some_and(|x| x.punct('(')) {
            let end = close_of(t, i + 1).min(to);
            let named = i >= from + 2 && t[i - 2].is("constraint");
            let first = if named { i - 2 } else { i };
            let inner_end = t[end - 1].start;
            out.push(Check {
                name: named.then(|| t[i - 1].name()),
                column: column.map(str::to_string),
                clause: sql[t[first].start..t[end - 1].end].to_string(),
                expr: sql[t[i + 1].end..inner_end].trim().to_string(),
            });
            i = end;
        } else if t[i].punct('(') {
            i = close_of(t, i);
        } else {
            i += 1;
        }
    }
    out
}

/// Where `word` stands at depth 0 of `t[from..to]`.
fn depth0_all(t: &[Token], from: usize, to: usize, word: &str) -> Vec<usize> {
    let mut out = Vec::new();
    let mut i = from;
    while i < to {
        if t[i].is(word) {
            out.push(i);
        }
        i = if t[i].punct('(') {
            close_of(t, i)
        } else {
            i + 1
        };
    }
    out
}

/// The `[NOT] DEFERRABLE [INITIALLY DEFERRED|IMMEDIATE]` of the foreign-key clause in
/// `t[from..to]`, verbatim.
fn deferral_in(sql: &str, t: &[Token], from: usize, to: usize) -> Option<String> {
    let at = *depth0_all(t, from, to, "deferrable").first()?;
    let first = if at > from && t[at - 1].is("not") {
        at - 1
    } else {
        at
    };
    let last = if t.get(at + 1).is_some_and(|x| x.is("initially")) && at + 2 < to {
        at + 2
    } else {
        at
    };
    Some(sql[t[first].start..t[last].end].to_string())
}

/// Reads a CREATE TABLE text. Anything it does not recognise is left to the pragmas.
pub(in crate::db::sqlite) fn read_table(sql: &str) -> TableText {
    let t = tokens(sql);
    let mut out = TableText::default();
    let mut declared: Vec<String> = Vec::new();
    for (from, to) in definitions(&t) {
        let first = &t[from];
        let constraint = ["constraint", "primary", "unique", "check", "foreign"]
            .iter()
            .any(|k| first.is(k));
        let depth0 = |word: &str| {
            let mut i = from;
            while i < to {
                if t[i].is(word) {
                    return Some(i);
                }
                i = if t[i].punct('(') {
                    close_of(&t, i)
                } else {
                    i + 1
                };
            }
            None
        };
        // Also inside a table constraint's parentheses: `PRIMARY KEY (id AUTOINCREMENT)`.
        if t[from..to].iter().any(|x| x.is("autoincrement")) {
            out.autoincrement = true;
        }
        if constraint {
            out.checks.extend(checks_in(sql, &t, from, to, None));
            if depth0("foreign").is_some() {
                out.deferrals.push(deferral_in(sql, &t, from, to));
            }
            continue;
        }
        let references = depth0_all(&t, from, to, "references");
        for (n, &r) in references.iter().enumerate() {
            let end = references.get(n + 1).copied().unwrap_or(to);
            out.deferrals.push(deferral_in(sql, &t, r, end));
        }
        let name = first.name();
        let generated = depth0("as").filter(|&i| t.get(i + 1).is_some_and(|x| x.punct('(')));
        if let Some(g) = generated {
            out.generated.push(GeneratedColumn {
                name: name.clone(),
                definition: sql[first.start..t[to - 1].end].to_string(),
                expr: sql[t[g + 1].end..t[close_of(&t, g + 1) - 1].start]
                    .trim()
                    .to_string(),
                preceding: declared.clone(),
            });
        } else {
            out.checks
                .extend(checks_in(sql, &t, from + 1, to, Some(&name)));
            if let Some(c) = depth0("collate").filter(|&i| i + 1 < to) {
                out.collations
                    .push((name.clone(), sql[t[c].start..t[c + 1].end].to_string()));
            }
        }
        declared.push(name);
    }
    out
}

/// An index's own text re-aimed: `CREATE [UNIQUE] INDEX IF NOT EXISTS <name> ON <table>`
/// followed by the original's columns, expressions, order, collations and WHERE verbatim.
pub(in crate::db::sqlite) fn index_on(sql: &str, name: &str, table: &str) -> Option<String> {
    let (unique, body) = index_body(sql)?;
    Some(format!(
        "CREATE {}INDEX IF NOT EXISTS {} ON {} {body}",
        if unique { "UNIQUE " } else { "" },
        quote(name),
        quote(table),
    ))
}

/// Whether a CREATE INDEX text is UNIQUE, and its text from the parenthesis after the
/// table's name on: the columns, expressions and WHERE, which name the table's columns.
pub(in crate::db::sqlite) fn index_body(sql: &str) -> Option<(bool, &str)> {
    let t = tokens(sql);
    let index = t.iter().position(|x| x.is("index"))?;
    let unique = t[..index].iter().any(|x| x.is("unique"));
    let on = index + t[index..].iter().position(|x| x.is("on"))?;
    let mut rest = on + 2;
    if t.get(on + 2).is_some_and(|x| x.punct('.')) {
        rest = on + 4;
    }
    let rest = t.get(rest).filter(|x| x.punct('('))?;
    Some((unique, &sql[rest.start..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GEAR: &str = "CREATE TABLE gear (id INTEGER PRIMARY KEY AUTOINCREMENT,
  qty INTEGER NOT NULL CONSTRAINT gear_qty_range CHECK (qty BETWEEN 0 AND 999),
  tag INTEGER CHECK (tag IS NULL OR tag < 10) -- a comment, with a comma
  , Code TEXT COLLATE NOCASE DEFAULT 'a,b (c)',
  double_qty INTEGER GENERATED ALWAYS AS (qty * 2) VIRTUAL,
  label TEXT AS ('g' || id) STORED CHECK (label <> ''),
  CONSTRAINT gear_tag_qty CHECK (tag IS NULL OR qty >= tag - 1000),
  CHECK (id > 0), UNIQUE (qty, tag))";

    #[test]
    fn a_table_text_gives_its_checks_collations_generated_columns_and_autoincrement() {
        let t = read_table(GEAR);
        assert!(t.autoincrement);
        let checks: Vec<(Option<&str>, Option<&str>, &str, &str)> = t
            .checks
            .iter()
            .map(|c| {
                (
                    c.name.as_deref(),
                    c.column.as_deref(),
                    c.clause.as_str(),
                    c.expr.as_str(),
                )
            })
            .collect();
        assert_eq!(
            checks,
            [
                (
                    Some("gear_qty_range"),
                    Some("qty"),
                    "CONSTRAINT gear_qty_range CHECK (qty BETWEEN 0 AND 999)",
                    "qty BETWEEN 0 AND 999"
                ),
                (
                    None,
                    Some("tag"),
                    "CHECK (tag IS NULL OR tag < 10)",
                    "tag IS NULL OR tag < 10"
                ),
                (
                    Some("gear_tag_qty"),
                    None,
                    "CONSTRAINT gear_tag_qty CHECK (tag IS NULL OR qty >= tag - 1000)",
                    "tag IS NULL OR qty >= tag - 1000"
                ),
                (None, None, "CHECK (id > 0)", "id > 0"),
            ]
        );
        assert_eq!(t.collation("code"), Some("COLLATE NOCASE"));
        assert_eq!(t.collations[0].0, "Code");
        assert_eq!(t.collations.len(), 1);
        let generated: Vec<(&str, &str, &str, usize)> = t
            .generated
            .iter()
            .map(|g| {
                (
                    g.name.as_str(),
                    g.definition.as_str(),
                    g.expr.as_str(),
                    g.preceding.len(),
                )
            })
            .collect();
        assert_eq!(
            generated,
            [
                (
                    "double_qty",
                    "double_qty INTEGER GENERATED ALWAYS AS (qty * 2) VIRTUAL",
                    "qty * 2",
                    4
                ),
                (
                    "label",
                    "label TEXT AS ('g' || id) STORED CHECK (label <> '')",
                    "'g' || id",
                    5
                ),
            ]
        );
        assert_eq!(t.generated[0].preceding, ["id", "qty", "tag", "Code"]);
        assert!(t.deferrals.is_empty());
    }

    #[test]
    fn each_foreign_key_clause_gives_its_deferral_in_the_order_of_the_text() {
        let t = read_table(
            "CREATE TABLE r (id INT PRIMARY KEY, a INT REFERENCES p DEFERRABLE INITIALLY DEFERRED, \
             b INT REFERENCES p (id) ON DELETE CASCADE, c INT, d INT, \
             FOREIGN KEY (c) REFERENCES p NOT DEFERRABLE, \
             CONSTRAINT fd FOREIGN KEY (d) REFERENCES p (id) ON UPDATE SET NULL DEFERRABLE)",
        );
        assert_eq!(
            t.deferrals,
            [
                Some("DEFERRABLE INITIALLY DEFERRED".to_string()),
                None,
                Some("NOT DEFERRABLE".to_string()),
                Some("DEFERRABLE".to_string()),
            ]
        );
    }

    #[test]
    fn autoincrement_is_read_from_a_table_constraint_too() {
        assert!(
            read_table("CREATE TABLE t (id INTEGER, PRIMARY KEY (id AUTOINCREMENT))").autoincrement
        );
        assert!(!read_table("CREATE TABLE t (id INTEGER PRIMARY KEY, \"autoincrement\" TEXT DEFAULT 'AUTOINCREMENT')").autoincrement);
    }

    #[test]
    fn a_plain_table_declares_nothing_more() {
        let t = read_table(
            "CREATE TABLE \"a b\" (id INT PRIMARY KEY, \"check\" TEXT, note TEXT DEFAULT 'CHECK (x)')",
        );
        assert_eq!(t, TableText::default());
    }

    #[test]
    fn an_index_text_is_re_aimed_at_the_shadow() {
        assert_eq!(
            index_on(
                "CREATE INDEX gear_open_idx ON gear (qty) WHERE tag IS NOT NULL",
                "gear_open_idx_new",
                "_gear_new"
            )
            .as_deref(),
            Some(
                "CREATE INDEX IF NOT EXISTS \"gear_open_idx_new\" ON \"_gear_new\" (qty) WHERE tag IS NOT NULL"
            )
        );
        assert_eq!(
            index_on(
                "create unique index if not exists main.\"on\" ON \"gear\"(lower(code) COLLATE NOCASE DESC)",
                "on_new",
                "_gear_new"
            )
            .as_deref(),
            Some(
                "CREATE UNIQUE INDEX IF NOT EXISTS \"on_new\" ON \"_gear_new\" (lower(code) COLLATE NOCASE DESC)"
            )
        );
    }
}
