//! Every input a fuzz target ever failed on (`fuzz/regressions/TARGET/*`),
//! and the seed corpora (`fuzz/seeds/TARGET/*`), run through the targets'
//! bodies in the ordinary test suite: no cargo-fuzz, no nightly. The bodies
//! are fuzz/src, included here by path.

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod fuzz;

use std::path::Path;

/// A target's body.
type Body = fn(&[u8]);

const TARGETS: &[(&str, Body)] = &[
    ("router_raw", fuzz::router_raw),
    ("router_structured", fuzz::router_structured),
    ("config", fuzz::config),
    ("spec", fuzz::spec),
    ("replay", fuzz::replay),
];

/// Runs every file under `fuzz/DIR/TARGET/` through TARGET; how many.
fn run_all(dir: &str) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(dir);
    let mut n = 0;
    for (target, body) in TARGETS {
        let Ok(entries) = std::fs::read_dir(root.join(target)) else { continue };
        let mut files: Vec<_> = entries.map(|e| e.expect("a directory entry").path()).collect();
        files.sort();
        for f in files {
            let data = std::fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            let caught = std::panic::catch_unwind(|| body(&data));
            assert!(caught.is_ok(), "{target} fails on {}", f.display());
            n += 1;
        }
    }
    n
}

#[test]
fn every_saved_crash_input_passes() {
    let n = run_all("regressions");
    assert!(n > 0, "no inputs under fuzz/regressions");
}

#[test]
fn every_seed_passes() {
    let n = run_all("seeds");
    assert!(
        n >= TARGETS.len(),
        "seeds missing: {n} files for {} targets (examples/fuzz_seeds.rs writes them)",
        TARGETS.len()
    );
}
