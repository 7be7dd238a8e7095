//! Puts the git commit of the source tree into `op25b --version`.
//!
//! `OP25B_GIT_COMMIT` is the short commit hash when the crate is built from a
//! git checkout (the checkout's own top level, not some enclosing repository),
//! or from a crate package, whose `.cargo_vcs_info.json` records the commit;
//! otherwise it is empty and the version is the crate version alone.
//!
//! `OP25B_GIT_REVISION` is the full revision for the metrics' `op25b_build_info`,
//! or `unknown`. Set in the build's environment (a build from an exported tree
//! that knows its commit), it overrides both.

use std::path::{Path, PathBuf};
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git").arg("-C").arg(dir).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

fn from_git(dir: &Path) -> Option<String> {
    let top = PathBuf::from(git(dir, &["rev-parse", "--show-toplevel"])?);
    if top.canonicalize().ok()? != dir.canonicalize().ok()? {
        return None;
    }
    // Rebuild when the checked-out commit moves: HEAD itself (another branch),
    // the branch's ref (a new commit), or packed refs (after `git gc`).
    let path = |name: &str| git(dir, &["rev-parse", "--path-format=absolute", "--git-path", name]).map(PathBuf::from);
    // Cargo reruns the script on every build for a path that does not exist:
    // only existing paths are watched, and a branch that lives only in
    // packed-refs through its directory, where the next commit creates it.
    let mut watch: Vec<PathBuf> =
        ["HEAD", "packed-refs"].iter().filter_map(|n| path(n)).filter(|p| p.exists()).collect();
    if let Some(branch) = git(dir, &["symbolic-ref", "-q", "HEAD"]).and_then(|r| path(&r)) {
        match branch.exists() {
            true => watch.push(branch),
            false => watch.extend(branch.parent().filter(|d| d.exists()).map(Path::to_path_buf)),
        }
    }
    for p in watch {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    git(dir, &["rev-parse", "HEAD"])
}

/// A packaged crate (`cargo package`, crates.io) records the commit it was made from.
fn from_package(dir: &Path) -> Option<String> {
    let path = dir.join(".cargo_vcs_info.json");
    let text = std::fs::read_to_string(&path).ok()?;
    println!("cargo:rerun-if-changed={}", path.display());
    let at = text.find("\"sha1\"")?;
    let rest = &text[at + 6..];
    let start = rest.find('"')? + 1;
    let sha: String = rest[start..].chars().take_while(|c| c.is_ascii_hexdigit()).collect();
    (sha.len() >= 12).then_some(sha)
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    println!("cargo:rerun-if-env-changed=OP25B_GIT_REVISION");
    let revision = std::env::var("OP25B_GIT_REVISION")
        .ok()
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty() && r.chars().all(|c| c.is_ascii_alphanumeric() || "-_.+".contains(c)))
        .or_else(|| from_git(&dir))
        .or_else(|| from_package(&dir));
    let commit: String = revision.as_deref().unwrap_or_default().chars().take(12).collect();
    println!("cargo:rustc-env=OP25B_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=OP25B_GIT_REVISION={}", revision.as_deref().unwrap_or("unknown"));
}
