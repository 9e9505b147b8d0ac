//! A plan goes from YAML text to a [`Plan`] the engine can trust in two steps, as
//! ripgrep goes from low-level to high-level arguments: serde reads the text into the
//! [`model`] (types, defaults, unknown keys), then [`validate`] checks what types alone
//! cannot (ranges, empty lists, conflicting changes). Every problem names the file, the
//! line and column, and the key path.

pub mod dir;
mod locate;
pub mod model;
mod wording;

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};

pub use locate::locate;
pub use model::*;

use crate::error::{Error, PlanProblem, Result};

/// A plan that parsed and passed every check that needs no database.
#[derive(Debug, Clone)]
pub struct Plan {
    pub file: PlanFile,
    /// Where it was read from, for messages (`-` for standard input).
    pub path: String,
    /// Hash of the plan's meaning (not its formatting): a resume with another hash is refused.
    pub hash: String,
}

impl Plan {
    /// The plan as canonical JSON, stored with the state so a changed plan can be diffed.
    pub fn canonical(&self) -> String {
        canonical_json(&self.file)
    }
}

fn canonical_json(file: &PlanFile) -> String {
    serde_json::to_string_pretty(file).unwrap_or_default()
}

/// Reads and validates a plan file.
pub fn load(path: &Path) -> Result<Plan> {
    let shown = path.display().to_string();
    if path.is_dir() {
        return Err(Error::Usage(format!(
            "{shown} is a directory; this command takes one plan file (check, plan, run, resume and status also take a directory of plans)"
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::Plan(vec![PlanProblem {
            file: shown.clone(),
            location: None,
            key: String::new(),
            message: format!("cannot read the plan: {e}"),
        }])
    })?;
    parse(&text, &shown)
}

/// Parses and validates plan text; `file` names it in messages.
pub fn parse(text: &str, file: &str) -> Result<Plan> {
    if wording::is_empty_document(text) {
        return Err(Error::Plan(vec![PlanProblem {
            file: file.to_string(),
            location: Some(crate::error::PlanLocation { line: 1, column: 1 }),
            key: String::new(),
            message: wording::empty_file(),
        }]));
    }
    let parsed: PlanFile =
        serde_yaml::from_str(text).map_err(|e| Error::Plan(vec![yaml_problem(&e, text, file)]))?;
    let problems = validate(&parsed)
        .into_iter()
        .map(|(key, message)| PlanProblem {
            file: file.to_string(),
            location: locate_or_parent(text, &key),
            key,
            message,
        })
        .collect::<Vec<_>>();
    if !problems.is_empty() {
        return Err(Error::Plan(problems));
    }
    let hash = hex(&Sha256::digest(canonical_json(&parsed).as_bytes()));
    Ok(Plan {
        file: parsed,
        path: file.to_string(),
        hash,
    })
}

/// Where `key` sits, or for a key the plan leaves out (a missing `max_lag`), the
/// nearest enclosing key it should be written under.
fn locate_or_parent(text: &str, key: &str) -> Option<crate::error::PlanLocation> {
    let mut key = key;
    loop {
        if let Some(at) = locate(text, key) {
            return Some(at);
        }
        key = &key[..key.rfind('.')?];
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Turns a serde_yaml error into a problem with a key path and a location.
fn yaml_problem(e: &serde_yaml::Error, text: &str, file: &str) -> PlanProblem {
    let raw = e.to_string();
    // yaml_serde prefixes the message with the key path: "changes[0].add_column: unknown field …"
    let (key, message) = match raw.split_once(": ") {
        Some((k, m)) if !k.contains(' ') || k.starts_with("changes") || k.starts_with("tables") => {
            (k.to_string(), m.to_string())
        }
        _ => (String::new(), raw.clone()),
    };
    // Drop the trailing " at line X column Y" the library appends; we show it as file:line:col.
    let message = match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message,
    };
    let location = e
        .location()
        .map(|l| crate::error::PlanLocation {
            line: l.line(),
            column: l.column(),
        })
        .or_else(|| locate(text, &key));
    let said = wording::reword(&key, &message, text, location.as_ref());
    let key = said
        .key
        .unwrap_or_else(|| refine_key(&key, text, location.as_ref()));
    let (location, message) = (said.location.or(location), said.message);
    PlanProblem {
        file: file.to_string(),
        location,
        key,
        message,
    }
}

/// The library names the map that failed; the key under the error's position is the
/// one the user must fix, so it is appended when it is a plain key.
fn refine_key(key: &str, text: &str, at: Option<&crate::error::PlanLocation>) -> String {
    let Some(at) = at else { return key.to_string() };
    let Some(line) = text.lines().nth(at.line.saturating_sub(1)) else {
        return key.to_string();
    };
    let rest: String = line.chars().skip(at.column.saturating_sub(1)).collect();
    let token: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    let is_key = rest[token.len()..].trim_start().starts_with(':');
    if token.is_empty() || !is_key || key.ends_with(&token) {
        return key.to_string();
    }
    if key.is_empty() {
        token
    } else {
        format!("{key}.{token}")
    }
}

const MAX_BATCH_ROWS: u64 = 1_000_000;

/// The checks types cannot express. Returns (key path, message) pairs.
pub fn validate(p: &PlanFile) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut bad = |key: &str, msg: String| out.push((key.to_string(), msg));
    if p.version != 1 {
        bad(
            "version",
            format!(
                "expected 1, the only plan format version; found {}",
                p.version
            ),
        );
    }
    if p.name.trim().is_empty() {
        bad(
            "name",
            "expected a migration name; found an empty string".into(),
        );
    } else if p.name.len() > 63 {
        bad(
            "name",
            format!("expected at most 63 characters; found {}", p.name.len()),
        );
    } else if p.name.ends_with(crate::engine::control::SUFFIX) {
        bad(
            "name",
            format!(
                "names ending in {:?} are reserved for turnout's control records; found {:?}",
                crate::engine::control::SUFFIX,
                p.name
            ),
        );
    }
    if p.schema.as_deref() == Some("") {
        bad(
            "schema",
            "expected a schema name or no key at all; found an empty string".into(),
        );
    }
    if p.tables.is_empty() {
        if p.table.is_empty() {
            bad(
                "table",
                "expected the live table's name (or a `tables` list of several); found none".into(),
            );
        }
        validate_table(&p.specs()[0], "", &mut bad);
    } else {
        for (key, given) in [
            ("table", !p.table.is_empty()),
            ("changes", !p.changes.is_empty()),
            ("views", !p.views.is_empty()),
        ] {
            if given {
                bad(
                    key,
                    format!(
                        "a plan with `tables` gives `{key}` inside each entry of the list; move it there"
                    ),
                );
            }
        }
        let specs = p.specs();
        for (i, t) in specs.iter().enumerate() {
            let at = format!("tables[{i}].");
            validate_table(t, &at, &mut bad);
            if specs[..i]
                .iter()
                .any(|o| o.table == t.table && o.schema == t.schema)
            {
                bad(
                    &format!("{at}table"),
                    format!(
                        "table {:?} is listed twice; give its changes in one entry",
                        t.table
                    ),
                );
            }
        }
    }
    match p.backfill.batch_size {
        BatchSize::Rows(0) => bad(
            "backfill.batch_size",
            "expected at least 1 row, or `auto`; found 0".into(),
        ),
        BatchSize::Rows(n) if n > MAX_BATCH_ROWS => bad(
            "backfill.batch_size",
            format!("expected at most {MAX_BATCH_ROWS} rows per batch; found {n}"),
        ),
        _ => {}
    }
    check_duration(
        &mut bad,
        "backfill.target_batch_time",
        p.backfill.target_batch_time,
        Duration::from_millis(10),
        Duration::from_secs(60),
    );
    if p.backfill.pause > Duration::from_secs(3600) {
        bad(
            "backfill.pause",
            "expected at most 1h between batches".into(),
        );
    }
    if let Some(t) = &p.backfill.throttle {
        validate_throttle(t, &mut bad);
    }
    if !(p.verify.sample_rate > 0.0 && p.verify.sample_rate <= 1.0) {
        bad(
            "verify.sample_rate",
            format!(
                "expected a fraction in (0, 1]; found {}",
                p.verify.sample_rate
            ),
        );
    }
    if p.verify.max_diffs == 0 {
        bad("verify.max_diffs", "expected at least 1".into());
    }
    check_duration(
        &mut bad,
        "cutover.lock_timeout",
        p.cutover.lock_timeout,
        Duration::from_millis(1),
        Duration::from_secs(600),
    );
    if p.cutover.attempts == 0 || p.cutover.attempts > 1000 {
        bad(
            "cutover.attempts",
            format!("expected between 1 and 1000; found {}", p.cutover.attempts),
        );
    }
    if p.cutover.retry_delay > Duration::from_secs(600) {
        bad("cutover.retry_delay", "expected at most 10m".into());
    }
    if p.strategy == Strategy::Instant && p.tables.len() > 1 {
        bad(
            "strategy",
            "expected `auto` or `copy` for a plan of several tables: the instant path changes one table; write one plan per table to take it".into(),
        );
    }
    if let Some(d) = p.cutover.kill_blockers_after {
        check_duration(
            &mut bad,
            "cutover.kill_blockers_after",
            d,
            Duration::from_millis(1),
            Duration::from_secs(24 * 3600),
        );
    }
    out
}

/// A throttle is a query with its `max`, replicas with their `max_lag`, or both.
fn validate_throttle(t: &Throttle, bad: &mut impl FnMut(&str, String)) {
    if t.query.is_none() && t.max.is_none() && t.replicas.is_empty() && t.max_lag.is_none() {
        bad(
            "backfill.throttle",
            "expected `query` with `max`, or `replicas` with `max_lag` (or both); found neither"
                .into(),
        );
        return;
    }
    match (&t.query, t.max) {
        (Some(q), _) if q.trim().is_empty() => bad(
            "backfill.throttle.query",
            "expected a SQL query returning one number; found an empty string".into(),
        ),
        (Some(_), None) => bad(
            "backfill.throttle.max",
            "expected the number above which the throttle query holds the backfill back; found none"
                .into(),
        ),
        (None, Some(_)) => bad(
            "backfill.throttle.query",
            "expected the SQL query whose value `max` bounds; found none".into(),
        ),
        _ => {}
    }
    if let Some(max) = t.max
        && !max.is_finite()
    {
        bad("backfill.throttle.max", "expected a finite number".into());
    }
    for (i, url) in t.replicas.iter().enumerate() {
        if let Err(why) = replica_url(url) {
            bad(&format!("backfill.throttle.replicas[{i}]"), why);
        }
    }
    match t.max_lag {
        None if !t.replicas.is_empty() => bad(
            "backfill.throttle.max_lag",
            "expected the replay lag above which the backfill waits for its replicas, a duration such as 500ms or 2s; found none".into(),
        ),
        Some(_) if t.replicas.is_empty() => bad(
            "backfill.throttle.max_lag",
            "bounds the lag of `replicas`, and none is listed; list the replicas' URLs or remove max_lag".into(),
        ),
        Some(d) => check_duration(
            bad,
            "backfill.throttle.max_lag",
            d,
            Duration::from_millis(10),
            Duration::from_secs(3600),
        ),
        None => {}
    }
}

/// Why a replica's URL cannot be used; its password (if any) is never repeated.
fn replica_url(url: &str) -> std::result::Result<(), String> {
    let shown = crate::db::redact(url);
    let parsed = url::Url::parse(url).map_err(|e| {
        format!("expected a database URL such as postgres://user@host:5432/db; {shown:?}: {e}")
    })?;
    if !matches!(
        parsed.scheme(),
        "postgres" | "postgresql" | "mysql" | "mariadb"
    ) {
        return Err(format!(
            "expected a postgres:// or mysql:// URL of a replica; found the scheme {:?}",
            parsed.scheme()
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!(
            "expected a URL naming the replica's host; found {shown:?}"
        ));
    }
    Ok(())
}

/// The checks of one table's entry; `at` prefixes its keys (`tables[1].`, or nothing in
/// the single-table form).
fn validate_table(t: &TableSpec, at: &str, bad: &mut impl FnMut(&str, String)) {
    let key = |k: &str| format!("{at}{k}");
    if t.table.is_empty() {
        if !at.is_empty() {
            bad(
                &key("table"),
                "expected the live table's name; found an empty string".into(),
            );
        }
    } else if t.table.len() > 54 {
        // The shadow table `_<table>_new` must still fit a 63/64-byte identifier.
        bad(
            &key("table"),
            format!(
                "expected at most 54 characters so `_{}_new` fits an identifier",
                t.table
            ),
        );
    }
    if t.table.contains('\0') {
        bad(&key("table"), "names cannot contain a NUL character".into());
    }
    if !at.is_empty() && t.schema.as_deref() == Some("") {
        bad(
            &key("schema"),
            "expected a schema name or no key at all; found an empty string".into(),
        );
    }
    if t.changes.is_empty() {
        bad(
            &key("changes"),
            "expected at least one change; found an empty list".into(),
        );
    }
    validate_changes(&t.changes, at, bad);
    for (i, v) in t.views.iter().enumerate() {
        if v.name.trim().is_empty() {
            bad(
                &key(&format!("views[{i}].name")),
                "expected the view's name; found an empty string".into(),
            );
        }
        if v.definition.trim().is_empty() {
            bad(
                &key(&format!("views[{i}].definition")),
                "expected the SELECT the view runs over the new table; found an empty string"
                    .into(),
            );
        }
        let same = |w: &ViewDefinition| w.name == v.name && w.schema == v.schema;
        if t.views[..i].iter().any(same) {
            bad(
                &key(&format!("views[{i}].name")),
                format!("view {:?} is given twice; give one definition", v.name),
            );
        }
    }
}

fn check_duration(
    bad: &mut impl FnMut(&str, String),
    key: &str,
    d: Duration,
    min: Duration,
    max: Duration,
) {
    if d < min || d > max {
        bad(
            key,
            format!(
                "expected a duration between {} and {}; found {}",
                humantime::format_duration(min),
                humantime::format_duration(max),
                humantime::format_duration(d)
            ),
        );
    }
}

/// Changes are checked against each other here; against the live table in preflight.
fn validate_changes(changes: &[Change], prefix: &str, bad: &mut impl FnMut(&str, String)) {
    let mut touched: HashSet<String> = HashSet::new();
    let mut indexes: HashSet<String> = HashSet::new();
    let mut renamed_to: HashSet<String> = HashSet::new();
    for (i, change) in changes.iter().enumerate() {
        let at = |field: &str| format!("{prefix}changes[{i}].{}.{field}", change.kind());
        let mut column = |bad: &mut dyn FnMut(&str, String), field: &str, name: &str| {
            if name.is_empty() {
                bad(
                    &at(field),
                    "expected a column name; found an empty string".into(),
                );
            } else if name.len() > 63 {
                bad(
                    &at(field),
                    format!("expected at most 63 characters; found {}", name.len()),
                );
            } else if !touched.insert(name.to_string()) {
                bad(
                    &at(field),
                    format!(
                        "column {name:?} is already changed by an earlier change; combine them into one"
                    ),
                );
            }
        };
        let nonempty = |bad: &mut dyn FnMut(&str, String), field: &str, sql: &Option<String>| {
            if let Some(s) = sql {
                if s.trim().is_empty() {
                    bad(
                        &at(field),
                        "expected a SQL expression; found an empty string".into(),
                    );
                } else if s.contains(';') && !within_quotes_only(s) {
                    bad(
                        &at(field),
                        "expected one SQL expression; found `;`, which would end the statement"
                            .into(),
                    );
                }
            }
        };
        match change {
            Change::AddColumn(c) => {
                column(bad, "name", &c.name);
                if c.sql_type.trim().is_empty() {
                    bad(
                        &at("type"),
                        "expected the new column's SQL type; found an empty string".into(),
                    );
                }
                nonempty(bad, "from", &c.from);
                nonempty(bad, "default", &c.default);
                if !c.nullable && c.from.is_none() && c.default.is_none() {
                    bad(
                        &at("nullable"),
                        "a NOT NULL column needs `from` or `default` to fill the existing rows"
                            .into(),
                    );
                }
            }
            Change::DropColumn(c) => {
                column(bad, "name", &c.name);
                nonempty(bad, "reverse", &c.reverse);
            }
            Change::AlterColumn(c) => {
                column(bad, "name", &c.name);
                if c.sql_type.is_none() && c.using.is_none() && c.nullable.is_none() {
                    bad(
                        &at("name"),
                        "expected at least one of `type`, `using` or `nullable` to change".into(),
                    );
                }
                if let Some(t) = &c.sql_type
                    && t.trim().is_empty()
                {
                    bad(
                        &at("type"),
                        "expected a SQL type; found an empty string".into(),
                    );
                }
                nonempty(bad, "using", &c.using);
                nonempty(bad, "reverse", &c.reverse);
            }
            Change::RenameColumn(c) => {
                column(bad, "from", &c.from);
                if c.to.is_empty() {
                    bad(
                        &at("to"),
                        "expected the new column name; found an empty string".into(),
                    );
                } else if c.to == c.from {
                    bad(
                        &at("to"),
                        format!("renaming {:?} onto itself changes nothing", c.from),
                    );
                } else if !renamed_to.insert(c.to.clone()) || touched.contains(&c.to) {
                    bad(
                        &at("to"),
                        format!("column {:?} is already the target of another change", c.to),
                    );
                }
            }
            Change::AddIndex(c) => {
                if c.name.is_empty() {
                    bad(
                        &at("name"),
                        "expected an index name; found an empty string".into(),
                    );
                } else if !indexes.insert(c.name.clone()) {
                    bad(
                        &at("name"),
                        format!("index {:?} is already changed by an earlier change", c.name),
                    );
                }
                if c.columns.is_empty() {
                    bad(
                        &at("columns"),
                        "expected at least one column; found an empty list".into(),
                    );
                }
                let mut seen = HashSet::new();
                for col in &c.columns {
                    if !seen.insert(col) {
                        bad(&at("columns"), format!("column {col:?} is listed twice"));
                    }
                }
            }
            Change::DropIndex(c) => {
                if c.name.is_empty() {
                    bad(
                        &at("name"),
                        "expected an index name; found an empty string".into(),
                    );
                } else if !indexes.insert(c.name.clone()) {
                    bad(
                        &at("name"),
                        format!("index {:?} is already changed by an earlier change", c.name),
                    );
                }
            }
        }
    }
}

/// True when every `;` in `sql` sits inside a quoted string literal.
fn within_quotes_only(sql: &str) -> bool {
    let mut quote: Option<char> = None;
    for ch in sql.chars() {
        match (quote, ch) {
            (None, '\'' | '"' | '`') => quote = Some(ch),
            (Some(q), c) if c == q => quote = None,
            (None, ';') => return false,
            _ => {}
        }
    }
    true
}

/// A line diff of two plans' canonical forms, for the "plan changed" refusal.
pub fn diff(before: &str, after: &str) -> String {
    let diff = similar::TextDiff::from_lines(before, after);
    let mut out = String::new();
    for change in diff.iter_all_changes() {
        let sign = match change.tag() {
            similar::ChangeTag::Delete => "-",
            similar::ChangeTag::Insert => "+",
            similar::ChangeTag::Equal => continue,
        };
        out.push_str(&format!("{sign} {}", change.value()));
        if !change.value().ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

/// The JSON Schema of plan files, for editors.
pub fn json_schema() -> String {
    serde_json::to_string_pretty(&schemars::schema_for!(PlanFile)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "version: 1\nname: m\ntable: t\nchanges:\n  - add_column:\n      name: c\n      type: integer\n  - rename_column: {from: a, to: b}\n";

    #[test]
    fn a_minimal_plan_gets_the_contract_defaults() {
        let plan = parse(GOOD, "p.yaml").expect("valid");
        assert_eq!(plan.file.backfill.batch_size, BatchSize::Auto);
        assert_eq!(
            plan.file.backfill.target_batch_time,
            Duration::from_millis(200)
        );
        assert_eq!(plan.file.cutover.attempts, 10);
        assert_eq!(plan.file.verify.mode, VerifyMode::Full);
        assert_eq!(plan.file.changes.len(), 2);
    }

    #[test]
    fn formatting_does_not_change_the_hash_but_meaning_does() {
        let a = parse(GOOD, "a").expect("valid");
        let b = parse(&GOOD.replace("name: m\n", "name:   m   # same\n"), "b").expect("valid");
        let c = parse(&GOOD.replace("integer", "bigint"), "c").expect("valid");
        assert_eq!(a.hash, b.hash);
        assert_ne!(a.hash, c.hash);
    }

    fn problem(text: &str) -> PlanProblem {
        match parse(text, "p.yaml") {
            Err(Error::Plan(mut p)) => p.remove(0),
            other => panic!("expected a plan error, got {other:?}"),
        }
    }

    #[test]
    fn an_unknown_key_names_its_line_and_path() {
        let p = problem(&GOOD.replace(
            "      type: integer\n",
            "      type: integer\n      colour: red\n",
        ));
        assert_eq!(p.location.as_ref().map(|l| l.line), Some(8));
        assert!(p.key.starts_with("changes[0]"), "{p}");
        assert!(p.message.contains("colour"), "{p}");
    }

    #[test]
    fn a_bad_duration_says_what_was_expected() {
        let p = problem(&format!("{GOOD}cutover:\n  lock_timeout: soon\n"));
        assert_eq!(p.location.as_ref().map(|l| l.line), Some(10));
        assert!(p.message.contains("duration"), "{p}");
    }

    /// The messages operators read, reviewed as a snapshot.
    #[test]
    fn refusals_read_well() {
        let cases = [
            GOOD.replace(
                "      type: integer\n",
                "      type: integer\n      colour: red\n",
            ),
            format!("{GOOD}cutover:\n  lock_timeout: soon\n"),
            format!("{GOOD}backfill:\n  batch_size: 0\n"),
            GOOD.replace("to: b", "to: a"),
            GOOD.replace("version: 1", "version: 3"),
            "version: 1\nname: m\ntable: t\nchanges: []\n".to_string(),
        ];
        let text: String = cases
            .iter()
            .map(|c| match parse(c, "plan.yaml") {
                Err(e) => format!("{e}\n"),
                Ok(_) => "accepted\n".into(),
            })
            .collect();
        insta::assert_snapshot!(text);
    }

    #[test]
    fn a_semantic_problem_is_located_too() {
        let p = problem(&GOOD.replace("to: b", "to: a"));
        assert_eq!(p.key, "changes[1].rename_column.to");
        assert_eq!(p.location.as_ref().map(|l| l.line), Some(8));
    }

    const SEVERAL: &str = "version: 1\nname: ids\nschema: app\ntables:\n  - table: film\n    changes: [{alter_column: {name: film_id, type: bigint}}]\n  - table: inventory\n    schema: other\n    changes:\n      - alter_column: {name: film_id, type: bigint}\n";

    #[test]
    fn a_plan_of_several_tables_is_a_list_of_specs_with_the_plan_schema_as_default() {
        let plan = parse(SEVERAL, "p.yaml").expect("valid");
        let specs = plan.file.specs();
        let names: Vec<_> = specs
            .iter()
            .map(|t| (t.table.as_str(), t.schema.as_deref()))
            .collect();
        assert_eq!(names, [("film", Some("app")), ("inventory", Some("other"))]);
        assert_eq!(plan.file.table_names(), "film, inventory");
        // One table's plan is a list of one.
        let one = parse(GOOD, "p.yaml").expect("valid").file.specs();
        assert_eq!(
            (one.len(), one[0].table.as_str(), one[0].changes.len()),
            (1, "t", 2)
        );
    }

    /// A migration in flight is identified by its plan's hash: the keys of a single-table
    /// plan's canonical form, in order, are what they were before `tables` existed.
    #[test]
    fn a_single_table_plan_keeps_its_canonical_form() {
        let plan = parse(GOOD, "p.yaml").expect("valid");
        let text = plan.canonical();
        let keys = [
            "version",
            "name",
            "schema",
            "table",
            "changes",
            "backfill",
            "dual_write",
            "verify",
            "cutover",
            "cleanup",
        ];
        let at: Vec<usize> = keys
            .iter()
            .map(|k| text.find(&format!("\n  \"{k}\":")).unwrap_or(usize::MAX))
            .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{text}");
        assert!(at.iter().all(|&i| i != usize::MAX), "{text}");
        assert!(!text.contains("\"tables\""), "{text}");
        assert!(plan.canonical().contains("\"add_column\""));
    }

    /// A migration in flight with a throttle query keeps its hash now that the throttle
    /// has optional replica keys: the hash below is the one turnout gave this plan before.
    #[test]
    fn a_throttle_query_plan_keeps_its_hash_with_the_replica_keys_absent() {
        let text = "version: 1\nname: h\ntable: t\nchanges:\n  - add_column: {name: c, type: INTEGER}\nbackfill:\n  throttle: {query: \"SELECT 0\", max: 10}\n";
        let plan = parse(text, "p.yaml").expect("valid");
        assert_eq!(
            plan.hash,
            "ff4596b30d441600bd77c7c3c859216b5c1091096f8f79199a19f46c7a879d17"
        );
        assert!(
            !plan.canonical().contains("replicas"),
            "{}",
            plan.canonical()
        );
        assert!(
            !plan.canonical().contains("max_lag"),
            "{}",
            plan.canonical()
        );
    }

    #[test]
    fn strategy_defaults_to_auto_and_only_a_given_one_changes_the_hash() {
        let plain = parse(GOOD, "p.yaml").expect("valid");
        assert_eq!(plain.file.strategy, Strategy::Auto);
        assert!(
            !plain.canonical().contains("strategy"),
            "{}",
            plain.canonical()
        );
        let auto = parse(&format!("{GOOD}strategy: auto\n"), "p.yaml").expect("valid");
        assert_eq!(auto.hash, plain.hash);
        let copy = parse(&format!("{GOOD}strategy: copy\n"), "p.yaml").expect("valid");
        assert_eq!(copy.file.strategy, Strategy::Copy);
        assert_ne!(copy.hash, plain.hash);
    }

    #[test]
    fn an_unknown_strategy_names_its_line_and_the_choices() {
        let p = problem(&format!("{GOOD}strategy: fast\n"));
        assert_eq!(p.key, "strategy", "{p}");
        assert_eq!(p.location.as_ref().map(|l| l.line), Some(9), "{p}");
        for word in ["auto", "copy", "instant"] {
            assert!(p.message.contains(word), "{p}");
        }
    }

    #[test]
    fn strategy_instant_is_refused_for_several_tables() {
        let text = "version: 1\nname: m\nstrategy: instant\ntables:\n  - table: a\n    changes: [{rename_column: {from: x, to: y}}]\n  - table: b\n    changes: [{rename_column: {from: x, to: y}}]\n";
        let p = problem(text);
        assert_eq!(p.key, "strategy", "{p}");
        assert_eq!(p.location.as_ref().map(|l| l.line), Some(3), "{p}");
    }

    #[test]
    fn replicas_need_a_max_lag_and_a_database_url_without_repeating_its_password() {
        let with = |throttle: &str| format!("{GOOD}backfill:\n  throttle:\n{throttle}");
        let p = problem(&with("    replicas: [\"postgres://u:pw@r:5433/app\"]\n"));
        assert_eq!(p.key, "backfill.throttle.max_lag", "{p}");
        // Missing, so located at the key it belongs under.
        assert_eq!(p.location.as_ref().map(|l| l.line), Some(10), "{p}");
        let p = problem(&with(
            "    replicas: [\"postgres://u:pw@r:5433/app\"]\n    max_lag: 0ms\n",
        ));
        assert_eq!(p.key, "backfill.throttle.max_lag", "{p}");
        assert_eq!(p.location.as_ref().map(|l| l.line), Some(12), "{p}");
        let p = problem(&with(
            "    replicas: [\"ftp://u:pw@r/app\"]\n    max_lag: 1s\n",
        ));
        assert_eq!(p.key, "backfill.throttle.replicas[0]", "{p}");
        assert!(!p.to_string().contains("pw"), "{p}");
        let ok = parse(
            &with("    replicas: [\"postgres://u:pw@r:5433/app\", \"postgres://r2/app\"]\n    max_lag: 250ms\n"),
            "p.yaml",
        )
        .expect("valid");
        let t = ok.file.backfill.throttle.expect("throttle");
        assert_eq!(t.replicas.len(), 2);
        assert_eq!(t.max_lag, Some(Duration::from_millis(250)));
        assert_eq!((t.query, t.max), (None, None));
    }

    #[test]
    fn tables_and_a_top_level_table_are_exclusive_naming_the_key() {
        let both = SEVERAL.replace("tables:\n", "table: film\ntables:\n");
        let p = problem(&both);
        assert_eq!(p.key, "table", "{p}");
        assert_eq!(p.location.as_ref().map(|l| l.line), Some(4), "{p}");
        assert!(p.message.contains("inside each entry"), "{p}");
        let changes = format!("{SEVERAL}changes: [{{drop_column: {{name: x}}}}]\n");
        assert_eq!(problem(&changes).key, "changes");
    }

    #[test]
    fn a_bad_entry_of_tables_is_named_by_its_index() {
        let p = problem(&SEVERAL.replace("type: bigint}}]", "type: \"\"}}]"));
        assert_eq!(p.key, "tables[0].changes[0].alter_column.type", "{p}");
        assert_eq!(p.location.as_ref().map(|l| l.line), Some(6), "{p}");
        let twice = SEVERAL
            .replace("    schema: other\n", "    schema: app\n")
            .replace("inventory", "film");
        let p = problem(&twice);
        assert_eq!(p.key, "tables[1].table", "{p}");
        assert!(p.message.contains("listed twice"), "{p}");
        let unknown = problem(&SEVERAL.replace("    schema: other\n", "    colour: red\n"));
        assert!(unknown.key.starts_with("tables[1]"), "{unknown}");
        assert!(unknown.message.contains("colour"), "{unknown}");
        let neither = problem("version: 1\nname: x\nbackfill: {pause: 1s}\n");
        assert_eq!(neither.key, "table", "{neither}");
        assert!(neither.message.contains("tables"), "{neither}");
    }
}
