//! The layering of the crate (docs/ARCHITECTURE.md): every top-level module
//! imports only modules of lower layers, so there is no import cycle. Run on
//! its own with `cargo test --test architecture`.
//!
//! What counts as an import: any `crate::NAME` path or `use super::...` that
//! leaves the module, in code (comments and test code, which may use the
//! `testing` module, are left out).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Top-level modules, bottom layer first; a module may import only modules
/// listed before its own layer.
const LAYERS: &[&[&str]] = &[
    &["packet"],
    &["stats"],
    &["policy"],
    &["state"],
    &["router"],
    &["config"],
    &["tools", "reload"],
    &["dataplane"],
    &["control"],
    // The lab is a tool beside the daemon: nothing below imports it.
    &["daemon", "lab"],
    &["testing"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without comments and without its `#[cfg(test)]`
/// items: a `mod x;` line, or a `{ ... }` block to its closing brace.
fn code_of(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") {
            let mut depth = 0i32;
            for item in lines.by_ref() {
                let i = item.trim_start();
                if depth == 0 && i.starts_with("#[") {
                    continue;
                }
                depth += item.matches('{').count() as i32 - item.matches('}').count() as i32;
                if depth <= 0 && (i.ends_with(';') || i.ends_with('}')) {
                    break;
                }
            }
            continue;
        }
        if t.starts_with("//") {
            continue;
        }
        out.push_str(line.split(" // ").next().unwrap_or(""));
        out.push('\n');
    }
    out
}

fn imports(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let name: String = rest[i + 7..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        found.push(name);
        rest = &rest[i + 7..];
    }
    found
}

#[test]
fn no_module_imports_a_module_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    let mut wrong = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).expect("under src");
        let top =
            rel.components().next().expect("a path").as_os_str().to_string_lossy().trim_end_matches(".rs").to_string();
        if top == "lib" || top == "main" {
            continue;
        }
        let name = rel.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        if name == "tests.rs" || name.starts_with("tests_") {
            continue;
        }
        let Some(own) = layer_of(&top) else {
            panic!("src/{}: module {top:?} is in no layer; add it to LAYERS and docs/ARCHITECTURE.md", rel.display());
        };
        let text = std::fs::read_to_string(file).expect("readable source");
        for dep in imports(&code_of(&text)) {
            if dep == top || dep.is_empty() {
                continue;
            }
            // Re-exports at the crate root name their home module's layer.
            let dep_layer = match dep.as_str() {
                "Direction" => layer_of("packet"),
                "DropReason" | "ReplyKind" | "Stats" => layer_of("stats"),
                "Router" | "Verdict" | "RxInfo" => layer_of("router"),
                "State" => layer_of("state"),
                "Config" | "ConfigError" => layer_of("config"),
                d => layer_of(d),
            };
            let Some(dep_layer) = dep_layer else {
                panic!("src/{}: imports crate::{dep}, which is in no layer", rel.display());
            };
            graph.entry(top.clone()).or_default().insert(dep.clone());
            if dep_layer >= own {
                wrong.push(format!("src/{} ({top}) imports crate::{dep}", rel.display()));
            }
        }
    }
    assert!(wrong.is_empty(), "imports that point up or sideways:\n{}", wrong.join("\n"));
    // The graph the docs draw: printed with --nocapture.
    for (m, deps) in &graph {
        println!("{m} -> {}", deps.iter().cloned().collect::<Vec<_>>().join(", "));
    }
    assert!(graph.len() >= 8, "the scan found the modules: {graph:?}");
}
