//! op25b.toml(5), the man page of the config file, in roff, made from the
//! "## Config reference" section of docs/CONFIG.md: its paragraphs (a paragraph that
//! opens in bold becomes a subsection), its table of keys (one tagged
//! paragraph per row) and its examples. `op25b man op25b.toml` prints it
//! (scripts/package.sh ships it); tests/config_reference.rs checks that it
//! carries every key the parser accepts.

/// The heading of the section the page is made from.
pub const SECTION: &str = "## Config reference";

/// The page, or why `reference` (docs/CONFIG.md) has no config reference.
pub fn render(reference: &str, version: &str) -> Result<String, String> {
    let lines: Vec<&str> = reference.lines().collect();
    let start = lines.iter().position(|l| *l == SECTION).ok_or(format!("no {SECTION:?} heading in the reference"))?;
    let end = lines[start + 1..].iter().position(|l| l.starts_with("## ")).map_or(lines.len(), |e| start + 1 + e);
    let mut out = vec![
        format!(".TH OP25B.TOML 5 \"\" \"op25b {version}\" \"File Formats\""),
        ".SH NAME".into(),
        "op25b.toml \\- configuration file of op25b".into(),
        ".SH SYNOPSIS".into(),
        "\\fI/etc/op25b/op25b.toml\\fR (the packaged unit runs \\fBop25b run \\-\\-config /etc/op25b/op25b.toml\\fR)"
            .into(),
        ".SH DESCRIPTION".into(),
        "A TOML file of sections; this page is the \"Config reference\" of docs/CONFIG.md.".into(),
    ];
    body(&lines[start + 1..end], &mut out);
    out.push(".SH SEE ALSO".into());
    out.push(
        "\\fBop25b\\fR(1), \\fBop25b\\-check\\fR(1), \\fBop25b\\-run\\fR(1); \
         /usr/share/doc/op25b/docs/CONFIG.md; /usr/share/doc/op25b/examples/"
            .into(),
    );
    Ok(out.join("\n") + "\n")
}

/// The section's blocks: code blocks, the table, paragraphs.
fn body(lines: &[&str], out: &mut Vec<String>) {
    let mut i = 0;
    while i < lines.len() {
        let text = lines[i];
        if text.trim().is_empty() {
            i += 1;
        } else if text.starts_with("```") {
            i += 1;
            out.extend([".PP", ".nf", ".RS 2"].map(String::from));
            while i < lines.len() && !lines[i].starts_with("```") {
                out.push(line(escape(lines[i])));
                i += 1;
            }
            i += 1;
            out.extend([".RE", ".fi"].map(String::from));
        } else if text.starts_with('|') {
            let mut rows = Vec::new();
            while i < lines.len() && lines[i].starts_with('|') {
                rows.push(lines[i]);
                i += 1;
            }
            // The header row and the delimiter row: the rest are keys.
            out.push(".SH KEYS".into());
            for row in rows.iter().skip(2) {
                let cells: Vec<&str> = row.trim().trim_matches('|').split(" | ").map(str::trim).collect();
                if let [key, meaning, ..] = cells[..] {
                    out.extend([".TP".into(), line(inline(key)), line(inline(meaning))]);
                }
            }
        } else {
            let mut para = Vec::new();
            while i < lines.len()
                && !lines[i].trim().is_empty()
                && !lines[i].starts_with("```")
                && !lines[i].starts_with('|')
            {
                para.push(lines[i].trim());
                i += 1;
            }
            let joined = para.join(" ");
            match lead(&joined) {
                Some((title, rest)) => out.extend([format!(".SS {}", escape(title)), line(inline(rest))]),
                None => out.extend([".PP".into(), line(inline(&joined))]),
            }
        }
    }
}

/// A paragraph that opens with `**Title.**`: the title (without its dot) and the rest.
fn lead(text: &str) -> Option<(&str, &str)> {
    let inner = text.strip_prefix("**")?;
    let close = inner.find('*')?;
    if close == 0 || !inner[close..].starts_with("**") {
        return None;
    }
    let title = &inner[..close];
    let title = if title.len() > 1 { title.strip_suffix('.').unwrap_or(title) } else { title };
    Some((title, inner[close + 2..].trim_start()))
}

/// Plain text for roff.
fn escape(text: &str) -> String {
    text.replace('\\', "\\e")
}

/// One output line: a leading dot or quote would be a request.
fn line(text: String) -> String {
    if text.starts_with(['.', '\'']) {
        format!("\\&{text}")
    } else {
        text
    }
}

/// Markdown inline markup to roff font changes: code spans (literal, bold,
/// hyphens as minus signs), links as "text (url)", bold and italic.
fn inline(text: &str) -> String {
    let mut parts: Vec<&str> = text.split('`').collect();
    let mut out = String::new();
    // An unpaired last backtick is literal.
    let unpaired = parts.len() % 2 == 0;
    let tail = if unpaired { parts.pop() } else { None };
    for (i, part) in parts.iter().enumerate() {
        let part = if unpaired && i == parts.len() - 1 {
            format!("{part}`{}", tail.unwrap_or_default())
        } else {
            part.to_string()
        };
        if i % 2 == 1 {
            out += &format!("\\fB{}\\fR", escape(&part).replace('-', "\\-"));
        } else {
            out += &emphasis(&links(&escape(&part)));
        }
    }
    out
}

/// `[text](url)` as `text (url)`.
fn links(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        let url = after.find(']').filter(|&e| e > 0).and_then(|e| {
            let tail = after[e + 1..].strip_prefix('(')?;
            tail.find(')').filter(|&u| u > 0).map(|u| (e, &tail[..u]))
        });
        match url {
            Some((e, url)) => {
                out += &format!("{}{} ({url})", &rest[..open], &after[..e]);
                rest = &after[e + 2 + url.len() + 1..];
            }
            None => {
                out += &rest[..=open];
                rest = after;
            }
        }
    }
    out + rest
}

/// `**bold**` (a part without a star between two pairs of stars), then `*italic*`.
fn emphasis(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i..].starts_with(&['*', '*']) {
            let inner: String = chars[i + 2..].iter().take_while(|c| **c != '*').collect();
            let end = i + 2 + inner.chars().count();
            if !inner.is_empty() && chars[end..].starts_with(&['*', '*']) {
                out += &format!("\\fB{inner}\\fR");
                i = end + 2;
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    italic(&out)
}

/// `*italic*`: a star not after a word character or a star, then a part
/// without a star that does not open with a space, then a star not before
/// a word character or a star.
fn italic(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let word = |c: Option<&char>| c.is_some_and(|c| c.is_alphanumeric() || *c == '_' || *c == '*');
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '*' && !word(i.checked_sub(1).and_then(|p| chars.get(p))) {
            let inner: String = chars[i + 1..].iter().take_while(|c| **c != '*').collect();
            let end = i + 1 + inner.chars().count();
            let opens = inner.chars().next().is_some_and(|c| !c.is_whitespace());
            if opens && chars.get(end) == Some(&'*') && !word(chars.get(end + 1)) {
                out += &format!("\\fI{inner}\\fR");
                i = end + 1;
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_markup_becomes_font_changes() {
        assert_eq!(inline("`a-b` and **c** *d* [e](f) x*y"), "\\fBa\\-b\\fR and \\fBc\\fR \\fId\\fR e (f) x*y");
        assert_eq!(line(inline(".x")), "\\&.x");
    }

    #[test]
    fn a_file_without_the_section_is_refused() {
        assert!(render("# x\n", "1").is_err());
    }
}
