//! The layering of the crate (docs/ARCHITECTURE.md): every top-level module
//! imports only modules of lower layers, and inside every folder the modules
//! import one another without a circle. Run on its own with
//! `cargo test --test architecture`.
//!
//! What counts as an import: any `crate::...` or `super::...` path in code
//! (comments and test code, which may use the `testing` module, are left
//! out). Inside a folder, a path to a name the folder's module re-exports
//! (`pub use child::{Name}`) counts as an import of that child.

use std::collections::{BTreeMap, BTreeSet};
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
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut wrong = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).expect("under src");
        let top =
            rel.components().next().expect("a path").as_os_str().to_string_lossy().trim_end_matches(".rs").to_string();
        if top == "lib" || top == "main" {
            continue;
        }
        let name = rel.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        if name == "tests.rs" || name.starts_with("tests_") || rel.components().any(|c| c.as_os_str() == "tests") {
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

/// A source file's module path: `src/policy/program.rs` is `[policy, program]`,
/// `src/state/mod.rs` is `[state]`.
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().to_string()).collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_string());
    }
    parts
}

/// The paths a path expression starting at `rest` names, a `{...}` group
/// expanded: `a::{b, c::d}` gives `[a, b]` and `[a, c, d]`.
fn paths_at(rest: &str) -> Vec<Vec<String>> {
    let ident = |s: &str| -> usize { s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len()) };
    let mut segs = Vec::new();
    let mut at = rest;
    loop {
        let n = ident(at);
        if n == 0 {
            break;
        }
        segs.push(at[..n].to_string());
        at = &at[n..];
        if !at.starts_with("::") {
            return vec![segs];
        }
        at = &at[2..];
    }
    if !at.starts_with('{') {
        return vec![segs];
    }
    // The group, split at its top-level commas.
    let mut depth = 0;
    let mut items = Vec::new();
    let mut start = 1;
    for (i, c) in at.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    items.push(&at[start..i]);
                    break;
                }
            }
            ',' if depth == 1 => {
                items.push(&at[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for item in items {
        for tail in paths_at(item.trim_start()) {
            let mut p = segs.clone();
            p.extend(tail);
            out.push(p);
        }
    }
    if out.is_empty() {
        out.push(segs);
    }
    out
}

/// Every module path `code` (of the module at `own`) names, absolute.
fn absolute_imports(own: &[String], is_folder: bool, code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    for (i, _) in code.match_indices("crate::") {
        if i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_' || bytes[i - 1] == b':') {
            continue;
        }
        out.extend(paths_at(&code[i + 7..]));
    }
    // `super` of a folder's own file (mod.rs) is the folder's parent.
    let base = if is_folder { own.len() } else { own.len().saturating_sub(1) };
    let mut i = 0;
    while let Some(k) = code[i..].find("super::") {
        let at = i + k;
        i = at + 7;
        if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_' || bytes[at - 1] == b':') {
            continue;
        }
        let mut up = 1;
        let mut rest = &code[at + 7..];
        while let Some(r) = rest.strip_prefix("super::") {
            up += 1;
            rest = r;
        }
        i = code.len() - rest.len();
        let Some(keep) = base.checked_sub(up - 1) else { continue };
        for tail in paths_at(rest) {
            let mut p = own[..keep.min(own.len())].to_vec();
            p.extend(tail);
            out.push(p);
        }
    }
    out
}

/// A cycle in `graph`, if there is one (depth-first search).
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in graph.get(n).into_iter().flatten() {
            match state.get(m.as_str()).copied().unwrap_or(0) {
                1 => {
                    let from = stack.iter().position(|s| s == m).unwrap_or(0);
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(m, graph, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(n, graph, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn no_import_circle_among_the_modules_of_any_folder() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut modules: BTreeSet<Vec<String>> = BTreeSet::new();
    let mut code = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).expect("under src");
        let name = rel.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        let own = module_path(rel);
        modules.insert(own.clone());
        if name == "tests.rs"
            || name.starts_with("tests_")
            || rel.components().any(|c| c.as_os_str() == "tests")
            || name == "main.rs"
            || name == "lib.rs"
        {
            continue;
        }
        let text = std::fs::read_to_string(file).expect("readable source");
        code.push((own, name == "mod.rs", code_of(&text)));
    }
    // What each folder's own file re-exports, by name: `pub use child::{A, B}`.
    let mut reexports: BTreeMap<(Vec<String>, String), String> = BTreeMap::new();
    for (own, _, text) in &code {
        for line in text.lines().map(str::trim_start) {
            let Some(rest) = line.strip_prefix("pub use ").or_else(|| line.strip_prefix("pub(crate) use ")) else {
                continue;
            };
            for path in paths_at(rest) {
                let mut child = own.clone();
                child.push(path[0].clone());
                if path.len() >= 2 && modules.contains(&child) {
                    reexports.insert((own.clone(), path[path.len() - 1].clone()), path[0].clone());
                }
            }
        }
    }
    // Per folder, the graph among its modules.
    let mut graphs: BTreeMap<Vec<String>, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (own, is_folder, text) in &code {
        for target in absolute_imports(own, *is_folder, text) {
            let common = own.iter().zip(&target).take_while(|(a, b)| a == b).count();
            if common >= own.len() || common >= target.len() {
                continue;
            }
            let parent = own[..common].to_vec();
            let mut child = parent.clone();
            child.push(target[common].clone());
            let to = if modules.contains(&child) {
                target[common].clone()
            } else if let Some(c) = reexports.get(&(parent.clone(), target[common].clone())) {
                c.clone()
            } else {
                // An item of the folder's own file: the folder, not a sibling.
                continue;
            };
            if to != own[common] {
                graphs.entry(parent).or_default().entry(own[common].clone()).or_default().insert(to);
            }
        }
    }
    let mut circles = Vec::new();
    for (parent, graph) in &graphs {
        if let Some(cycle) = find_cycle(graph) {
            let at = if parent.is_empty() { "crate".to_string() } else { parent.join("::") };
            circles.push(format!("in {at}: {}", cycle.join(" -> ")));
        }
    }
    assert!(circles.is_empty(), "import circles:\n{}", circles.join("\n"));
    assert!(graphs.len() >= 10, "the scan found the folders: {:?}", graphs.keys().collect::<Vec<_>>());
}
