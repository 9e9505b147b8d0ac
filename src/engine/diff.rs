//! How a differing row reaches the user: the two row images (JSON objects from the
//! backends) as a unified diff with one line per column. Each value keeps its exact text
//! (a 40-digit numeric must not be rounded through a float on its way to the screen), and
//! a long value is shortened to its start, its length and the place where the two sides
//! part, so a 1 MB text still shows what differs in a few lines.

use serde::de::{DeserializeOwned, IgnoredAny};

use crate::db::RowDiff;

/// Values longer than this many characters are shortened.
const LONG: usize = 120;
/// Characters shown from the start of a shortened value, and around its first difference.
const HEAD: usize = 40;

/// A unified diff of the expected (mapped live) row image and the shadow's.
pub fn render_diff(d: &RowDiff) -> String {
    let expected = d.expected.as_deref().map(fields);
    let shadow = d.shadow.as_deref().map(fields);
    let left = lines(expected.as_ref(), shadow.as_ref());
    let right = lines(shadow.as_ref(), expected.as_ref());
    let diff = similar::TextDiff::from_lines(&left, &right);
    // Backends render keys as a JSON array or as values joined by ", "; show one form.
    let key = if d.key.starts_with('[') {
        d.key.clone()
    } else {
        format!("[{}]", d.key)
    };
    let mut out = format!("row with key {key}");
    match (&d.expected, &d.shadow) {
        (Some(_), None) => out.push_str(" is missing from the shadow table\n"),
        (None, Some(_)) => out.push_str(" is in the shadow table but not in the live table\n"),
        _ => out.push_str(" differs\n"),
    }
    out.push_str(
        &diff
            .unified_diff()
            .context_radius(1)
            .header("expected (live, mapped)", "shadow")
            .to_string(),
    );
    out
}

/// A row image split into its columns, each value as its raw JSON text; an image that is
/// not a flat JSON object stays one piece.
enum Image<'a> {
    Fields(Vec<(String, &'a str)>),
    Whole(&'a str),
}

fn fields(json: &str) -> Image<'_> {
    split_object(json).map_or(Image::Whole(json), Image::Fields)
}

/// One line per column, `"name": value`, a long value shortened against the other side.
fn lines(image: Option<&Image<'_>>, other: Option<&Image<'_>>) -> String {
    let other_value = |name: &str| match other {
        Some(Image::Fields(f)) => f.iter().find(|(n, _)| n == name).map(|(_, v)| *v),
        _ => None,
    };
    match image {
        None => String::new(),
        Some(Image::Whole(text)) => {
            let other = match other {
                Some(Image::Whole(o)) => Some(*o),
                _ => None,
            };
            format!("{}\n", shorten(text, other))
        }
        Some(Image::Fields(f)) => {
            let mut out = String::from("{\n");
            for (name, value) in f {
                let shown = serde_json::to_string(name).unwrap_or_else(|_| name.clone());
                out.push_str(&format!(
                    "  {shown}: {}\n",
                    shorten(value, other_value(name))
                ));
            }
            out.push_str("}\n");
            out
        }
    }
}

/// A value's JSON text, or, when longer than [`LONG`] characters, its start, its length
/// and (when the other side differs) the stretch where the two first part.
fn shorten(raw: &str, other: Option<&str>) -> String {
    if raw.chars().count() <= LONG {
        return raw.to_string();
    }
    // A JSON string is measured and cut as the text it holds; anything else (an array,
    // an object, a long number) as its JSON text.
    let text = |r: &str| serde_json::from_str::<String>(r).unwrap_or_else(|_| r.to_string());
    let mine: Vec<char> = text(raw).chars().collect();
    let head: String = mine.iter().take(HEAD).collect();
    let quoted = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| s.to_string());
    let length = crate::progress::thousands(mine.len() as u64);
    let mut out = format!("{}… ({length} chars", quoted(&head));
    if let Some(theirs) = other.map(|o| text(o).chars().collect::<Vec<char>>()) {
        let parted = mine
            .iter()
            .zip(&theirs)
            .position(|(a, b)| a != b)
            .or_else(|| (mine.len() != theirs.len()).then(|| mine.len().min(theirs.len())));
        if let Some(at) = parted {
            let from = at.saturating_sub(HEAD / 2);
            let stretch: String = mine.iter().skip(from).take(HEAD + HEAD / 2).collect();
            out.push_str(&format!(
                "; from char {}: …{}…",
                crate::progress::thousands(from as u64),
                quoted(&stretch)
            ));
        }
    }
    out.push(')');
    out
}

/// `{"a": 1, "b": "x"}` as `[("a", "1"), ("b", "\"x\"")]`, each value's text untouched;
/// None when the text is not one flat JSON object.
fn split_object(json: &str) -> Option<Vec<(String, &str)>> {
    let mut rest = json.trim().strip_prefix('{')?.trim_start();
    let mut out = Vec::new();
    if let Some(after) = rest.strip_prefix('}') {
        return after.trim().is_empty().then_some(out);
    }
    loop {
        let (name, used) = first::<String>(rest)?;
        rest = rest[used..].trim_start().strip_prefix(':')?.trim_start();
        let (_, used) = first::<IgnoredAny>(rest)?;
        out.push((name, rest[..used].trim()));
        rest = rest[used..].trim_start();
        if let Some(after) = rest.strip_prefix(',') {
            rest = after.trim_start();
            continue;
        }
        let after = rest.strip_prefix('}')?;
        return after.trim().is_empty().then_some(out);
    }
}

/// The first JSON value of `s` and how many bytes it took.
fn first<T: DeserializeOwned>(s: &str) -> Option<(T, usize)> {
    let mut values = serde_json::Deserializer::from_str(s).into_iter::<T>();
    let value = values.next()?.ok()?;
    Some((value, values.byte_offset()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diff(expected: Option<&str>, shadow: Option<&str>) -> String {
        render_diff(&RowDiff {
            key: "[7]".into(),
            expected: expected.map(str::to_string),
            shadow: shadow.map(str::to_string),
        })
    }

    #[test]
    fn values_keep_their_exact_text() {
        let out = diff(
            Some(r#"{"n": 1234567890123456789012345678901234567890.5, "t": "a"}"#),
            Some(r#"{"n": 1234567890123456789012345678901234567890.6, "t": "a"}"#),
        );
        assert!(
            out.contains("-  \"n\": 1234567890123456789012345678901234567890.5\n"),
            "{out}"
        );
        assert!(
            out.contains("+  \"n\": 1234567890123456789012345678901234567890.6\n"),
            "{out}"
        );
        assert!(out.contains("   \"t\": \"a\"\n"), "{out}");
    }

    #[test]
    fn a_long_value_is_shortened_to_its_length_and_where_the_sides_part() {
        let long = "x".repeat(1_000_000);
        let tampered = format!("{}Y{}", &long[..500_000], &long[500_001..]);
        let out = diff(
            Some(&format!(r#"{{"doc": "{long}"}}"#)),
            Some(&format!(r#"{{"doc": "{tampered}"}}"#)),
        );
        assert!(out.len() < 1000, "{out}");
        assert!(
            out.contains("(1,000,000 chars; from char 499,980:"),
            "{out}"
        );
        assert!(out.contains('Y'), "{out}");
    }

    #[test]
    fn equal_long_values_read_equal_and_a_missing_row_shows_whole() {
        let long = "é".repeat(500);
        let row = format!(r#"{{"a": 1, "doc": "{long}"}}"#);
        let out = diff(Some(&row), Some(&row.replace("1,", "2,")));
        assert!(out.contains("   \"doc\": \"ééé"), "{out}");
        assert!(out.contains("(500 chars)"), "{out}");
        let missing = diff(Some(r#"{"a": 1}"#), None);
        assert!(
            missing.contains("is missing from the shadow table"),
            "{missing}"
        );
        assert!(missing.contains("-  \"a\": 1"), "{missing}");
    }

    #[test]
    fn an_image_that_is_not_an_object_is_shown_as_it_is() {
        let out = diff(Some("not json"), Some("[1, 2]"));
        assert!(
            out.contains("-not json") && out.contains("+[1, 2]"),
            "{out}"
        );
    }
}
