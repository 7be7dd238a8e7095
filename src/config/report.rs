//! What a config error shows besides its one line: the offending line of the
//! file with a caret under the bad value, and, for TOML syntax errors (which
//! come with a position but no key), the table and key at that position.

use std::ops::Range;

use annotate_snippets::{Level, Renderer, Snippet};

/// The line of the file an error points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Excerpt {
    /// The line, without its line break.
    pub text: String,
    /// The bytes of `text` the error is about (at least one, unless the line is empty).
    pub span: Range<usize>,
}

/// The line holding byte `span.start` of `text`, with the part of `span` on it.
pub(super) fn excerpt(text: &str, span: &Range<usize>) -> Option<Excerpt> {
    let at = span.start.min(text.len());
    if !text.is_char_boundary(at) {
        return None;
    }
    let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let end = text[at..].find('\n').map_or(text.len(), |i| at + i);
    let line = text[start..end].trim_end_matches('\r');
    if line.trim().is_empty() {
        return None;
    }
    let from = (at - start).min(line.len());
    let mut to = span.end.saturating_sub(start).clamp(from, line.len());
    if to == from {
        // An empty span (a syntax error's position): one character.
        to = line[from..].chars().next().map_or(from, |c| from + c.len_utf8());
    }
    Some(Excerpt { text: line.to_string(), span: from..to })
}

/// Bytes of a line shown around the bad value.
const WIDE: usize = 100;

/// The part of a long line around the span, tabs shown as spaces, so the
/// renderer never trims it: annotate-snippets 0.11 overflows trimming a line
/// wider than its terminal width whose span lies in the leading whitespace
/// (found by fuzzing, tests/fuzz_regressions.rs).
fn narrow(e: &Excerpt) -> Excerpt {
    let text = e.text.replace('\t', " ");
    if text.len() <= WIDE {
        return Excerpt { text, span: e.span.clone() };
    }
    let mut from = e.span.start.saturating_sub(WIDE / 2);
    while !text.is_char_boundary(from) {
        from -= 1;
    }
    let mut to = (from + WIDE).min(text.len());
    while !text.is_char_boundary(to) {
        to -= 1;
    }
    let start = e.span.start.clamp(from, to);
    let end = e.span.end.clamp(start, to);
    Excerpt { text: text[from..to].to_string(), span: start - from..end - from }
}

/// The error as text: `error: TITLE`, then the excerpt with its caret.
/// Colours (`color`) only for a terminal.
pub(super) fn render(title: &str, line: usize, excerpt: Option<&Excerpt>, color: bool) -> String {
    let renderer = if color { Renderer::styled() } else { Renderer::plain() };
    let mut message = Level::Error.title(title);
    let shown = excerpt.map(narrow);
    if let Some(e) = &shown {
        message =
            message.snippet(Snippet::source(&e.text).line_start(line).annotation(Level::Error.span(e.span.clone())));
    }
    let out = renderer.render(message).to_string();
    // The renderer closes the excerpt with an empty margin line (`  |`); drop it.
    let mut lines: Vec<&str> = out.lines().collect();
    let visible = |l: &str| {
        let mut plain = String::new();
        let mut escape = false;
        for c in l.chars() {
            match (escape, c) {
                (false, '\x1b') => escape = true,
                (true, 'm') => escape = false,
                (false, c) => plain.push(c),
                _ => {}
            }
        }
        plain
    };
    if lines.len() > 1 && lines.last().is_some_and(|l| visible(l).trim() == "|") {
        lines.pop();
    }
    lines.join("\n")
}

/// A bare or quoted key at the start of `line` (`key =`, `"a b" =`, `a.b =`).
fn key_of(line: &str) -> Option<String> {
    let t = line.trim_start();
    let eq = t.find('=')?;
    let key = t[..eq].trim();
    let bare = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '"' | '\'' | ' ');
    (!key.is_empty() && !key.starts_with('[') && key.chars().all(bare)).then(|| key.to_string())
}

/// A table header at the start of `line`: (name, whether `[[array]]`).
fn header_of(line: &str) -> Option<(String, bool)> {
    let t = line.split('#').next().unwrap_or("").trim();
    if let Some(inner) = t.strip_prefix("[[").and_then(|r| r.strip_suffix("]]")) {
        return Some((inner.trim().to_string(), true));
    }
    t.strip_prefix('[').and_then(|r| r.strip_suffix(']')).map(|inner| (inner.trim().to_string(), false))
}

/// Where byte `at` of `text` is: the table and key, as the config's other
/// errors name them (`op25b.ports`, `rule[1] "limit".action`, `router`), or
/// `(top level)`; and the line a key or table seen there was first given on,
/// when `at` is on a second one (a duplicate).
///
/// An error at the very start of a key's line (toml stops there when the
/// previous value was not finished) belongs to the previous key, unless
/// `same_line` (a duplicate key is reported on the key itself).
pub(super) fn locate(text: &str, at: usize, same_line: bool) -> (String, Option<usize>) {
    let at = at.min(text.len());
    let mut table = String::new();
    let mut arrays: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut tables_seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut rule_name: Option<String> = None;
    // Keys of the current table: key -> line.
    let mut keys: Vec<(String, usize)> = Vec::new();
    let mut key: Option<String> = None;
    let mut first = None;
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let n = i + 1;
        let start = offset;
        offset += line.len();
        let here = at < offset || offset == text.len();
        let indent = line.len() - line.trim_start().len();
        let at_line_start = here && at <= start + indent;
        if here && at_line_start && !same_line {
            break;
        }
        if let Some((name, array)) = header_of(line) {
            table = if array {
                let k = arrays.entry(name.clone()).or_insert(0);
                *k += 1;
                format!("{name}[{}]", *k - 1)
            } else {
                name
            };
            rule_name = None;
            keys.clear();
            key = None;
            if here {
                first = tables_seen.get(&table).copied().filter(|l| *l != n);
            } else {
                tables_seen.entry(table.clone()).or_insert(n);
            }
        } else if let Some(k) = key_of(line) {
            if table.starts_with("rule[") && k == "name" {
                let v = line.split_once('=').map(|(_, v)| v.trim().trim_matches('"').to_string());
                rule_name = v;
            }
            if here {
                first = keys.iter().find(|(seen, _)| *seen == k).map(|(_, l)| *l);
            }
            keys.push((k.clone(), n));
            key = Some(k);
        }
        if here {
            break;
        }
    }
    let table = match (&rule_name, table.strip_prefix("rule[")) {
        (Some(name), Some(_)) => format!("{table} {name:?}"),
        _ => table,
    };
    let path = match (table.is_empty(), key) {
        (true, None) => "(top level)".to_string(),
        (true, Some(k)) => k,
        (false, None) => table,
        (false, Some(k)) => format!("{table}.{k}"),
    };
    (path, first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_tables_and_keys() {
        let text =
            "a = 1\n[router]\naddresses = [\"x\"]\n[[rule]]\nname = \"r\"\naction = bad\n[[rule]]\nname = \"s\"\n";
        assert_eq!(locate(text, 2, false).0, "a");
        assert_eq!(locate(text, text.find("\"x\"").unwrap(), false).0, "router.addresses");
        assert_eq!(locate(text, text.find("bad").unwrap(), false).0, "rule[0] \"r\".action");
        assert_eq!(locate(text, text.find("\"s\"").unwrap(), false).0, "rule[1] \"s\".name");
        // At the start of a line: the value before was not finished.
        assert_eq!(locate(text, text.find("action").unwrap(), false).0, "rule[0] \"r\".name");
        let dup = "[router]\na = 1\nb = 2\na = 3\n[router]\n";
        assert_eq!(locate(dup, dup.rfind("a = 3").unwrap(), true), ("router.a".to_string(), Some(2)));
        assert_eq!(locate(dup, dup.rfind("[router]").unwrap(), true), ("router".to_string(), Some(1)));
    }

    #[test]
    fn excerpt_marks_the_span_on_its_line() {
        let text = "a = 1\nports = [70000]\n";
        let at = text.find("70000").unwrap();
        let e = excerpt(text, &(at..at + 5)).unwrap();
        assert_eq!((e.text.as_str(), e.span.clone()), ("ports = [70000]", 9..14));
        let plain = render("t.toml:2: ports: too big", 2, Some(&e), false);
        assert_eq!(plain, "error: t.toml:2: ports: too big\n  |\n2 | ports = [70000]\n  |          ^^^^^");
        assert!(!plain.contains('\x1b'));
        assert!(render("x", 2, Some(&e), true).contains('\x1b'));
        assert_eq!(excerpt("", &(0..0)), None);
    }
}
