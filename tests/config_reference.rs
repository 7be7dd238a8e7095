//! The config reference (docs/CONFIG.md) names every key the config parser accepts,
//! and op25b.toml(5), which `op25b man op25b.toml` makes from that section
//! (scripts/package.sh ships it), carries each of them. The keys come from
//! the parser itself: an unknown key in a section is refused with the list
//! of the keys the section takes.

use std::path::Path;
use std::process::Command;

use op25b::config::Config;

const REFERENCE: &str = include_str!("../docs/CONFIG.md");
const LAB: &str = include_str!("../config/lab.toml");
const ABUSE: &str = include_str!("../config/abuse-section.toml");

/// A valid config with every section (`[[rule]]` last).
fn base() -> String {
    format!("{LAB}\n{ABUSE}\n[[rule]]\nname = \"probe\"\naction = \"count\"\n")
}

/// The keys section `name` accepts, read from the parser's refusal of an
/// unknown one.
fn keys_of(name: &str) -> Vec<String> {
    let text = base();
    let header = if name == "rule" { "[[rule]]".to_string() } else { format!("[{name}]") };
    let probed = match text.rfind(&format!("\n{header}\n")) {
        Some(at) => {
            let end = at + header.len() + 2;
            format!("{}zz_unknown = 1\n{}", &text[..end], &text[end..])
        }
        None => format!("{text}\n{header}\nzz_unknown = 1\n"),
    };
    let err = match Config::parse(Path::new("probe.toml"), &probed) {
        Ok(_) => panic!("[{name}] took an unknown key"),
        Err(e) => e.to_string(),
    };
    let first = err.lines().next().unwrap_or_default().to_string();
    let expected = first.split_once("expected").map(|(_, rest)| rest.to_string());
    let expected = expected.unwrap_or_else(|| panic!("[{name}]: no list of keys in {first:?}"));
    let keys: Vec<String> = expected.split('`').skip(1).step_by(2).map(str::to_string).collect();
    assert!(!keys.is_empty(), "[{name}]: no keys in {first:?}");
    keys
}

fn reference() -> &'static str {
    let start = REFERENCE.find("\n## Config reference\n").expect("docs/CONFIG.md has a config reference");
    let rest = &REFERENCE[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |e| e + 3);
    &rest[..end]
}

const SECTIONS: [&str; 10] =
    ["router", "subscriber", "upstream", "op25b", "dataplane", "control", "events", "capture", "abuse", "rule"];

#[test]
fn the_reference_names_every_key_the_parser_accepts() {
    let section = reference();
    let mut missing = Vec::new();
    let mut total = 0;
    for name in SECTIONS {
        for key in keys_of(name) {
            total += 1;
            if !section.contains(&format!("`{name}.{key}`")) {
                missing.push(format!("{name}.{key}"));
            }
        }
    }
    assert!(section.contains("`sets.NAME`"), "[sets] is not in the reference");
    assert!(total > 50, "only {total} keys found: the probe is broken");
    assert!(missing.is_empty(), "keys the parser accepts and docs/CONFIG.md does not name: {missing:?}");
}

#[test]
fn the_man_page_made_from_the_reference_carries_every_key() {
    let out = Command::new(env!("CARGO_BIN_EXE_op25b"))
        .args(["man", "op25b.toml"])
        .output()
        .expect("op25b man op25b.toml runs");
    assert!(out.status.success(), "op25b man op25b.toml failed: {}", String::from_utf8_lossy(&out.stderr));
    let page = String::from_utf8(out.stdout).expect("the page is UTF-8");
    assert!(page.starts_with(".TH OP25B.TOML 5 "), "{}", &page[..page.len().min(200)]);
    for name in SECTIONS {
        for key in keys_of(name) {
            assert!(page.contains(&format!("\\fB{name}.{key}\\fR")), "the page lacks {name}.{key}");
        }
    }
    assert!(page.contains("RUST_LOG"), "the page does not document RUST_LOG");
    // No line of prose may start with a dot or a quote (roff would take it as a request).
    for line in page.lines().filter(|l| l.starts_with('.') || l.starts_with('\'')) {
        let request = line.split_whitespace().next().unwrap_or_default();
        assert!(
            [".TH", ".SH", ".SS", ".PP", ".TP", ".nf", ".fi", ".RS", ".RE"].contains(&request),
            "stray request {line:?}"
        );
    }
}
