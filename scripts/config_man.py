#!/usr/bin/env python3
"""Writes op25b.toml(5), the man page of the config file, in roff to standard
output, made from the README's "## Config reference" section: its paragraphs,
its table of keys (one tagged paragraph per row) and its examples. The page
cannot drift from the README: scripts/package.sh makes it at every build, and
tests/config_reference.rs checks that the README's table names every key the
config parser accepts and that this page carries each of them.
  scripts/config_man.py [--version VERSION] [README.md]
"""
import argparse
import re
import sys

SECTION = "## Config reference"


def section(text):
    """The lines of the config reference section, heading excluded."""
    lines = text.splitlines()
    try:
        start = lines.index(SECTION)
    except ValueError:
        sys.exit(f"config_man.py: no {SECTION!r} heading in the README")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start + 1:end]


def escape(text):
    """Plain text for roff: backslashes, and a dot or quote at a line's start."""
    return text.replace("\\", "\\e")


def inline(text):
    """Markdown inline markup to roff font changes."""
    out = []
    # Code spans first: their contents are literal (bold, hyphens as minus signs).
    for i, part in enumerate(re.split(r"`([^`]*)`", text)):
        if i % 2:
            out.append("\\fB" + escape(part).replace("-", "\\-") + "\\fR")
            continue
        part = escape(part)
        part = re.sub(r"\[([^\]]+)\]\(([^)]+)\)", r"\1 (\2)", part)
        part = re.sub(r"\*\*([^*]+)\*\*", r"\\fB\1\\fR", part)
        part = re.sub(r"(?<![\w*])\*([^*\s][^*]*)\*(?![\w*])", r"\\fI\1\\fR", part)
        out.append(part)
    return "".join(out)


def line(text):
    """One output line: a leading dot or quote would be a request."""
    return "\\&" + text if text[:1] in (".", "'") else text


def cells(row):
    return [c.strip() for c in row.strip().strip("|").split(" | ")]


def render(lines, version):
    out = [
        '.TH OP25B.TOML 5 "" "op25b %s" "File Formats"' % version,
        ".SH NAME",
        "op25b.toml \\- configuration file of op25b",
        ".SH SYNOPSIS",
        "\\fI/etc/op25b/op25b.toml\\fR (the packaged unit runs \\fBop25b run \\-\\-config /etc/op25b/op25b.toml\\fR)",
        ".SH DESCRIPTION",
        "A TOML file of sections; this page is the README's \"Config reference\".",
    ]
    i = 0
    while i < len(lines):
        text = lines[i]
        if not text.strip():
            i += 1
            continue
        if text.startswith("```"):
            block = []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                block.append(lines[i])
                i += 1
            i += 1
            out += [".PP", ".nf", ".RS 2"] + [line(escape(b)) for b in block] + [".RE", ".fi"]
            continue
        if text.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(cells(lines[i]))
                i += 1
            # The header row and the delimiter row: the rest are keys.
            out.append(".SH KEYS")
            for key, meaning in (r[:2] for r in rows[2:] if len(r) >= 2):
                out += [".TP", line(inline(key)), line(inline(meaning))]
            continue
        para = []
        while i < len(lines) and lines[i].strip() and not lines[i].startswith(("```", "|")):
            para.append(lines[i].strip())
            i += 1
        joined = " ".join(para)
        lead = re.match(r"\*\*([^*]+?)\.?\*\*\s*(.*)", joined)
        if lead:
            out += [".SS " + escape(lead.group(1)), line(inline(lead.group(2)))]
        else:
            out += [".PP", line(inline(joined))]
    out += [
        ".SH SEE ALSO",
        "\\fBop25b\\fR(1), \\fBop25b\\-check\\fR(1), \\fBop25b\\-run\\fR(1);"
        " /usr/share/doc/op25b/README.md; /usr/share/doc/op25b/examples/",
    ]
    return "\n".join(out) + "\n"


def main():
    p = argparse.ArgumentParser(description="op25b.toml(5) from the README's config reference")
    p.add_argument("readme", nargs="?", default="README.md")
    p.add_argument("--version", default="")
    a = p.parse_args()
    with open(a.readme, encoding="utf-8") as f:
        sys.stdout.write(render(section(f.read()), a.version))


if __name__ == "__main__":
    main()
