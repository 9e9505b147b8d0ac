//! Finds where a key path (`changes[2].rename_column.to`) sits in a plan's YAML text, so
//! a problem found after parsing can still point at a line and column. It understands
//! the block style plans are written in, and flow maps (`{from: a, to: b}`) on one line.

use crate::error::PlanLocation;

#[derive(Debug, PartialEq)]
pub(super) enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

pub(super) fn segments(path: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, rest) = part.split_once('[').map_or((part, ""), |(k, r)| (k, r));
        if !key.is_empty() {
            out.push(Segment::Key(key));
        }
        for idx in rest.split('[') {
            if let Ok(i) = idx.trim_end_matches(']').parse() {
                out.push(Segment::Index(i));
            }
        }
    }
    out
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

fn is_content(line: &str) -> bool {
    let t = line.trim_start();
    !t.is_empty() && !t.starts_with('#')
}

/// Position of `key:` in `line` at or after byte `from`, as a flow or block key.
fn key_in_line(line: &str, from: usize, key: &str) -> Option<usize> {
    let hay = line.get(from..)?;
    let mut search = 0;
    while let Some(pos) = hay[search..].find(key) {
        let at = search + pos;
        let before = hay[..at].chars().last();
        let after = &hay[at + key.len()..];
        let boundary = matches!(before, None | Some(' ' | '{' | ',' | '-' | '"' | '\''));
        let after = after.trim_start_matches(['"', '\'']);
        if boundary && after.trim_start().starts_with(':') {
            return Some(from + at);
        }
        search = at + key.len();
    }
    None
}

/// Line and column (1-based) of the deepest part of `path` that can be found.
pub fn locate(text: &str, path: &str) -> Option<PlanLocation> {
    let lines: Vec<&str> = text.lines().collect();
    // The block we search: lines [start, end) whose indent is above `min_indent`;
    // `col` is where on the first line the search may begin (after "- " or "key: ").
    let (mut start, mut end, mut col, mut min_indent) =
        (0usize, lines.len(), 0usize, None::<usize>);
    let mut found = None;
    for seg in segments(path) {
        match seg {
            Segment::Key(key) => {
                let mut hit = None;
                for (i, line) in lines.iter().enumerate().take(end).skip(start) {
                    let from = if i == start { col } else { 0 };
                    if !is_content(line)
                        || (i != start && min_indent.is_some_and(|m| indent(line) <= m))
                    {
                        if i != start && is_content(line) {
                            break;
                        }
                        continue;
                    }
                    if let Some(pos) = key_in_line(line, from, key) {
                        hit = Some((i, pos));
                        break;
                    }
                }
                let (i, pos) = hit?;
                found = Some(PlanLocation {
                    line: i + 1,
                    column: pos + 1,
                });
                let key_indent = indent(lines[i]).max(pos);
                start = i;
                col = pos + key.len();
                end = block_end(&lines, i, key_indent);
                min_indent = Some(indent(lines[i]).min(pos));
            }
            Segment::Index(n) => {
                let mut seen = 0;
                let mut hit = None;
                for (i, line) in lines.iter().enumerate().take(end).skip(start) {
                    let t = line.trim_start();
                    let from = if i == start { col } else { 0 };
                    if i == start && line.get(from..).is_some_and(|r| r.contains('[')) {
                        return found; // flow sequences: the key's own line is close enough
                    }
                    if t.starts_with("- ") || t == "-" {
                        if seen == n {
                            hit = Some(i);
                            break;
                        }
                        seen += 1;
                    }
                }
                let i = hit?;
                let pos = indent(lines[i]);
                found = Some(PlanLocation {
                    line: i + 1,
                    column: pos + 1,
                });
                start = i;
                col = pos + 1;
                end = block_end(&lines, i, pos);
                min_indent = Some(pos);
            }
        }
    }
    found
}

/// The first line after `at` whose indent is not deeper than `base`.
fn block_end(lines: &[&str], at: usize, base: usize) -> usize {
    lines
        .iter()
        .enumerate()
        .skip(at + 1)
        .find(|(_, l)| is_content(l) && indent(l) <= base)
        .map_or(lines.len(), |(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAN: &str = "version: 1\nname: x\ntable: orders\nchanges:\n  - add_column:\n      name: amount\n      type: int\n  - rename_column: {from: note, to: comment}\n  - drop_column:\n      name: old\nbackfill:\n  batch_size: 10\n";

    fn at(path: &str) -> (usize, usize) {
        let l = locate(PLAN, path).expect(path);
        (l.line, l.column)
    }

    #[test]
    fn finds_top_level_keys() {
        assert_eq!(at("table"), (3, 1));
        assert_eq!(at("backfill.batch_size"), (12, 3));
    }

    #[test]
    fn finds_keys_inside_list_items() {
        assert_eq!(at("changes[0].add_column.type"), (7, 7));
        assert_eq!(at("changes[2].drop_column.name"), (10, 7));
    }

    #[test]
    fn finds_keys_inside_flow_maps() {
        assert_eq!(at("changes[1].rename_column.to"), (8, 33));
    }
}
