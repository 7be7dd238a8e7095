//! Rule programs (WebAssembly) for the tests, built from C with clang.

#![allow(dead_code)] // Each test file that uses the harness uses its own part of this.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds the example programs into `out` with rules/examples/build.sh.
pub fn build_examples(out: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/examples/build.sh");
    let run = Command::new("bash").arg(&script).arg(out).output().expect("run rules/examples/build.sh");
    assert!(
        run.status.success(),
        "rules/examples/build.sh failed (clang and lld installed? scripts/setup.sh): {}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
}

/// Builds program `name` from the C text `source` into `dir` (which it
/// makes), with the base flags of rules/examples/build.sh (a wasm32 library
/// with no libc and no entry point; rules/examples/op25b.h on the include
/// path) and `extra`; the program's path.
pub fn compile_program(dir: &Path, name: &str, source: &str, extra: &[&str]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, source).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
    let out = dir.join(format!("{name}.wasm"));
    let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/examples");
    let run = Command::new("clang")
        .args(["--target=wasm32", "-O1", "-nostdlib", "-ffreestanding", "-Wl,--no-entry"])
        .args(extra)
        .arg("-I")
        .arg(&include)
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .output()
        .expect("run clang (scripts/setup.sh installs it)");
    assert!(run.status.success(), "clang {name}: {}", String::from_utf8_lossy(&run.stderr));
    out
}
