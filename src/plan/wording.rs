//! serde and the YAML library describe a bad plan in Rust's terms ("invalid type:
//! sequence, expected struct PlanFile", "expected enum Change"); the user wrote YAML keys.
//! This rewrites each message in the plan's own words: what is expected is read from the
//! plan's JSON Schema at the key path (so a new key or type is described without touching
//! this file), what was found is said in YAML's terms, and a flow mapping split by an
//! unquoted comma (`{type: numeric(12,2)}`) gets a hint to quote the value.

use std::sync::LazyLock;

use serde_json::Value;

use super::locate::{Segment, segments};
use crate::error::PlanLocation;

static SCHEMA: LazyLock<Value> = LazyLock::new(|| {
    serde_json::to_value(schemars::schema_for!(super::PlanFile)).unwrap_or(Value::Null)
});

/// True when the text holds no YAML content: only blank lines, comments and markers.
pub(super) fn is_empty_document(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .all(|l| l.is_empty() || l.starts_with('#') || l == "---" || l == "...")
}

pub(super) fn empty_file() -> String {
    format!("the plan file is empty; a plan is {}", describe_at(""))
}

/// A library message said again in the plan's words.
pub(super) struct Reworded {
    /// The key the user must fix, when the library's path is not it (a missing key).
    pub key: Option<String>,
    pub message: String,
    /// A better place than the library's, when it points at the enclosing mapping.
    pub location: Option<PlanLocation>,
}

/// Rewords `message`, which the library reported for the key path `key`.
pub(super) fn reword(key: &str, message: &str, text: &str, at: Option<&PlanLocation>) -> Reworded {
    // The library's path is the key whose value is wrong; only an unknown key is better
    // named by the token under the error, which the caller appends when `key` is None.
    let plain = |message: String| Reworded {
        key: Some(key.to_string()),
        message,
        location: None,
    };
    if let Some(field) = between(message, "missing field `", "`") {
        return Reworded {
            key: Some(join(key, field)),
            message: format!("the required key `{field}` is missing"),
            location: None,
        };
    }
    if let Some(field) = between(message, "duplicate field `", "`") {
        return Reworded {
            key: Some(join(key, field)),
            message: format!("the key `{field}` is given twice; keep one"),
            location: at.and_then(|at| second_occurrence(text, at, field)),
        };
    }
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (field, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let expected = expected
            .trim_start_matches(", ")
            .replace("expected one of", "expected one of the keys")
            .replace("there are no fields", "this mapping takes no keys");
        let hint = at.and_then(|at| comma_split_hint(text, at, field));
        return Reworded {
            key: None,
            location: None,
            message: format!(
                "unknown key `{field}`{}{}",
                if expected.is_empty() {
                    String::new()
                } else {
                    format!("; {expected}")
                },
                hint.map(|h| format!("\n  hint: {h}")).unwrap_or_default()
            ),
        };
    }
    if let Some(rest) = message.strip_prefix("unknown variant `") {
        let (value, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let what = if is_change_list_item(key) {
            "unknown change"
        } else {
            "unknown value"
        };
        return plain(format!(
            "{what} `{value}`; {}",
            expected.trim_start_matches(", ")
        ));
    }
    if message.contains("expected map with a single key") {
        return plain(format!(
            "expected {}; found a mapping with no key or several — start each change with its own `- `",
            describe_at(change_item(key))
        ));
    }
    if message.contains("unit variant, expected newtype variant") {
        return plain(
            "expected the change's keys under its kind, e.g. `- drop_column: {name: old}`; found the kind alone"
                .into(),
        );
    }
    if message.starts_with("expected a YAML tag starting with") {
        return plain(format!("expected {}", describe_at(key)));
    }
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix)
            && let Some(i) = rest.rfind(", expected ")
        {
            let found = found(&rest[..i]);
            let expected = described(key).unwrap_or_else(|| rust_free(&rest[i + 11..]));
            if key.is_empty() {
                return plain(format!("the plan must be {expected}; found {found}"));
            }
            return plain(format!("expected {expected}; found {found}"));
        }
    }
    Reworded {
        key: None,
        message: message.to_string(),
        location: None,
    }
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let rest = s.strip_prefix(start)?;
    Some(&rest[..rest.find(end)?])
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// `changes[3]` (the list item) of a path inside it.
fn change_item(key: &str) -> &str {
    match key.find(']') {
        Some(i) if key.starts_with("changes[") => &key[..=i],
        _ => key,
    }
}

/// `changes[3]` or `changes[3].kind`: where the kind of a change is read.
fn is_change_list_item(key: &str) -> bool {
    key.starts_with("changes[") && key[change_item(key).len()..].matches('.').count() <= 1
}

/// What the library found, in YAML's terms.
fn found(what: &str) -> String {
    if let Some(s) = what.strip_prefix("string ") {
        return format!("the text {s}");
    }
    for number in ["integer ", "floating point "] {
        if let Some(n) = what.strip_prefix(number) {
            return format!("the number {}", n.trim_matches('`'));
        }
    }
    if let Some(b) = what.strip_prefix("boolean ") {
        return b.to_string();
    }
    match what {
        "sequence" => "a list".into(),
        "map" => "a mapping".into(),
        "unit value" => "nothing (an empty value)".into(),
        "enum" => "a value with a YAML tag (`!…`)".into(),
        other => rust_free(other),
    }
}

/// The library's own words for what it expected, with Rust's type names replaced; used
/// only where the schema has no node for the path.
fn rust_free(expected: &str) -> String {
    let e = expected.trim();
    if e.starts_with("struct ") || e == "map" {
        return "a mapping of keys".into();
    }
    if e.starts_with("enum ") || e.contains("variant") {
        return "one of the allowed values".into();
    }
    match e {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number, 0 or more".into(),
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number".into(),
        "f32" | "f64" => "a number".into(),
        "a boolean" | "bool" => "`true` or `false`".into(),
        "a string" | "a borrowed string" | "char" => "text".into(),
        "a sequence" => "a list".into(),
        other => other.to_string(),
    }
}

/// The schema's node at a key path, `$ref`s followed.
fn node_at(path: &str) -> Option<&'static Value> {
    let root: &'static Value = &SCHEMA;
    let mut node = resolve(root);
    for seg in segments(path) {
        node = match seg {
            Segment::Key(k) => node.get("properties").and_then(|p| p.get(k)).or_else(|| {
                variants(node).find_map(|v| v.get("properties").and_then(|p| p.get(k)))
            })?,
            Segment::Index(_) => node.get("items")?,
        };
        node = resolve(node);
    }
    Some(node)
}

fn resolve(node: &'static Value) -> &'static Value {
    node.get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/$defs/"))
        .and_then(|name| SCHEMA.get("$defs")?.get(name))
        .unwrap_or(node)
}

fn variants(node: &'static Value) -> impl Iterator<Item = &'static Value> {
    ["oneOf", "anyOf"]
        .into_iter()
        .filter_map(|k| node.get(k).and_then(Value::as_array))
        .flatten()
        .map(resolve)
}

fn described(path: &str) -> Option<String> {
    describe(node_at(path)?)
}

fn describe_at(path: &str) -> String {
    described(path).unwrap_or_else(|| "a mapping of keys".into())
}

/// What a schema node accepts, said as a person would.
fn describe(node: &'static Value) -> Option<String> {
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        let required: Vec<&str> = node
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let optional: Vec<&str> = props
            .keys()
            .map(String::as_str)
            .filter(|k| !required.contains(k))
            .collect();
        // A choice of required keys (a plan's `table` and `changes`, or `tables`): the
        // first is said as required, the others as what may stand in for it.
        let choices: Vec<Vec<&str>> = node
            .get("oneOf")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|v| {
                v.get("required")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect()
            })
            .filter(|r: &Vec<&str>| !r.is_empty())
            .collect();
        let chosen: Vec<&str> = choices.iter().flatten().copied().collect();
        let optional: Vec<&str> = optional
            .into_iter()
            .filter(|k| !chosen.contains(k))
            .collect();
        let mut parts = Vec::new();
        if let Some((first, others)) = choices.split_first() {
            let mut all = required.clone();
            all.extend(first);
            let instead: Vec<String> = others
                .iter()
                .map(|o| format!("or {} instead of {}", o.join(", "), first.join(" and ")))
                .collect();
            parts.push(format!(
                "{} (required; {})",
                all.join(", "),
                instead.join("; ")
            ));
        } else if !required.is_empty() {
            parts.push(format!("{} (required)", required.join(", ")));
        }
        if !optional.is_empty() {
            parts.push(format!("{} (optional)", optional.join(", ")));
        }
        return Some(format!("a mapping of keys: {}", parts.join("; ")));
    }
    let choices: Vec<&str> = node
        .get("enum")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .chain(variants(node).filter_map(|v| v.get("const").and_then(Value::as_str)))
        .collect();
    if !choices.is_empty() {
        let quoted: Vec<String> = choices.iter().map(|c| format!("`{c}`")).collect();
        return Some(format!("one of {}", quoted.join(", ")));
    }
    let kinds: Vec<&str> = variants(node)
        .filter(|v| v.get("type").and_then(Value::as_str) == Some("object"))
        .filter_map(|v| v.get("properties")?.as_object()?.keys().next())
        .map(String::as_str)
        .collect();
    if !kinds.is_empty() {
        return Some(format!(
            "a change: a mapping with one key naming its kind ({})",
            kinds.join(", ")
        ));
    }
    let ty = match node.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).find(|t| *t != "null")?,
        _ => return None,
    };
    Some(match (ty, node.get("format").and_then(Value::as_str)) {
        ("integer", Some("uint32")) => "a whole number from 0 to 4294967295".into(),
        ("integer", Some(f)) if f.starts_with("uint") => "a whole number, 0 or more".into(),
        ("integer", _) => "a whole number".into(),
        ("number", _) => "a number".into(),
        ("boolean", _) => "`true` or `false`".into(),
        ("string", _) => "text".into(),
        ("array", _) => "a list".into(),
        ("object", _) => "a mapping of keys".into(),
        (other, _) => other.to_string(),
    })
}

/// In a flow mapping an unquoted comma ends the value: `{type: numeric(12,2)}` reads as
/// the key `type` with `numeric(12` and a key `2)` with no value. When the unknown key
/// is such a leftover (no `:` after it, a `,` before it), say so and show the quoted value.
fn comma_split_hint(text: &str, at: &PlanLocation, field: &str) -> Option<String> {
    let line = text.lines().nth(at.line.checked_sub(1)?)?;
    let start = line
        .char_indices()
        .nth(at.column.checked_sub(1)?)
        .map(|(i, _)| i)?;
    if !line.get(start..)?.starts_with(field) {
        return None;
    }
    let before = line[..start].trim_end();
    let after = line[start + field.len()..].trim_start();
    if !before.ends_with(',') || after.starts_with(':') || !before.contains('{') {
        return None;
    }
    // The key whose value the comma cut short: the last `key:` before the comma.
    let head = &before[..before.len() - 1];
    let colon = head.rfind(": ")?;
    let key_start = head[..colon].rfind(['{', ',', ' ']).map_or(0, |i| i + 1);
    let key = head[key_start..colon].trim();
    let value = format!(
        "{}{}",
        head[colon + 2..].trim_start(),
        &line[head.len()..start + field.len()]
    );
    Some(format!(
        "inside `{{…}}` a comma ends a value, so `{value}` was cut at its comma and `{field}` read as a key; quote the value: `{key}: \"{value}\"`"
    ))
}

/// Where a duplicated block-style key appears the second time under the same parent.
fn second_occurrence(text: &str, at: &PlanLocation, field: &str) -> Option<PlanLocation> {
    let lines: Vec<&str> = text.lines().collect();
    let first = at.line.checked_sub(1)?;
    let indent = |l: &str| l.len() - l.trim_start().len();
    let base = indent(lines.get(first)?);
    let is_key = |l: &str| {
        l.trim_start()
            .strip_prefix(field)
            .is_some_and(|r| r.trim_start().starts_with(':'))
    };
    let mut seen = 0;
    for (i, l) in lines.iter().enumerate().skip(first) {
        let t = l.trim_start();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if i > first && indent(l) < base {
            break;
        }
        if indent(l) == base && is_key(l) {
            seen += 1;
            if seen == 2 {
                return Some(PlanLocation {
                    line: i + 1,
                    column: base + 1,
                });
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use crate::error::Error;
    use crate::plan::parse;

    const HEAD: &str = "version: 1\nname: m\ntable: t\n";

    /// Every way of giving a key the wrong shape that the plan's types allow, one per
    /// type of node: the root, each section, a change, each scalar kind.
    fn cases() -> Vec<(&'static str, String)> {
        let with = |changes: &str| format!("{HEAD}changes:\n{changes}");
        let ok = "  - drop_column: {name: old}\n";
        let tail = |yaml: &str| format!("{HEAD}changes:\n{ok}{yaml}");
        vec![
            ("an empty file", String::new()),
            ("only comments", "# a plan\n\n# to come\n".into()),
            ("a list at the top", "- version: 1\n- name: m\n".into()),
            ("text at the top", "hello\n".into()),
            ("a number at the top", "42\n".into()),
            ("null at the top", "~\n".into()),
            (
                "a comma inside a flow mapping",
                with("  - add_column: {name: amount, type: numeric(12,2)}\n"),
            ),
            (
                "a comma and a space inside a flow mapping",
                with("  - add_column: {name: x, type: INTEGER, from: coalesce(qty, 0)}\n"),
            ),
            (
                "changes as a mapping",
                format!("{HEAD}changes:\n  drop_column: {{name: x}}\n"),
            ),
            ("changes as text", format!("{HEAD}changes: hello\n")),
            ("a change as a bare kind", with("  - drop_column\n")),
            ("a change as a list", with("  - [a, b]\n")),
            ("a change with a tag", with("  - !drop_column {name: x}\n")),
            ("an empty change", with("  -\n")),
            ("a change with no kind", with("  - {}\n")),
            (
                "two kinds in one change",
                with("  - add_column: {name: x, type: int}\n    drop_column: {name: y}\n"),
            ),
            (
                "an unknown change",
                with("  - add_coloumn: {name: x, type: int}\n"),
            ),
            ("a change's keys as a list", with("  - add_column: [a]\n")),
            ("a change's keys as text", with("  - add_column: x\n")),
            ("a missing type", with("  - add_column: {name: x}\n")),
            (
                "a missing version",
                format!("name: m\ntable: t\nchanges:\n{ok}"),
            ),
            (
                "a key given twice",
                format!("{HEAD}name: again\nchanges:\n{ok}"),
            ),
            (
                "version as text",
                format!("version: one\nname: m\ntable: t\nchanges:\n{ok}"),
            ),
            (
                "name as a list",
                format!("version: 1\nname: [a]\ntable: t\nchanges:\n{ok}"),
            ),
            ("a section as a list", tail("backfill: [1]\n")),
            ("a section as text", tail("verify: full\n")),
            (
                "a number as text",
                tail("backfill:\n  throttle: {query: x, max: lots}\n"),
            ),
            ("a fraction as text", tail("verify:\n  sample_rate: lots\n")),
            (
                "a boolean as a number",
                tail("cleanup:\n  keep_old_table: 1\n"),
            ),
            (
                "nullable as a word",
                with("  - add_column: {name: x, type: int, nullable: maybe}\n"),
            ),
            (
                "columns as text",
                with("  - add_index: {name: i, columns: qty}\n"),
            ),
            ("a negative count", tail("cutover:\n  attempts: -1\n")),
            (
                "an enormous count",
                tail("cutover:\n  attempts: 99999999999\n"),
            ),
            ("a choice as a list", tail("dual_write:\n  on_error: [a]\n")),
            ("an unknown choice", tail("verify:\n  mode: sometimes\n")),
            ("an unknown key", tail("colour: red\n")),
        ]
    }

    fn rendered(text: &str) -> String {
        match parse(text, "plan.yaml") {
            Err(e @ Error::Plan(_)) => e.to_string(),
            other => panic!("expected a plan error, got {other:?}"),
        }
    }

    #[test]
    fn no_message_names_a_rust_type() {
        let rust = [
            "struct",
            "enum ",
            "variant",
            "PlanFile",
            "Change",
            "AddColumn",
            "Backfill",
            "Verify ",
            "u32",
            "u64",
            "f64",
            "sequence",
            "starting with '!'",
            "field",
            "unit",
            "newtype",
            "map with",
        ];
        for (what, text) in cases() {
            let message = rendered(&text);
            for word in rust {
                assert!(!message.contains(word), "{what}: {word:?} in {message}");
            }
        }
    }

    #[test]
    fn every_message_keeps_its_place_and_key() {
        for (what, text) in cases() {
            let Err(Error::Plan(problems)) = parse(&text, "plan.yaml") else {
                panic!("{what}: accepted");
            };
            for p in problems {
                assert!(p.location.is_some(), "{what}: no line and column in {p}");
                let whole_document =
                    what.contains("top") || what.contains("file") || what.contains("comments");
                assert!(
                    whole_document || !p.key.is_empty(),
                    "{what}: no key path in {p}"
                );
            }
        }
    }

    /// The messages as the user reads them, reviewed as a snapshot.
    #[test]
    fn wrong_shapes_read_in_the_plans_words() {
        let text: String = cases()
            .iter()
            .map(|(what, text)| format!("# {what}\n{}\n", rendered(text)))
            .collect();
        insta::assert_snapshot!(text);
    }
}
