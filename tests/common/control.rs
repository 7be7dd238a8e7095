//! The control socket as the tests use it: a path of a test's own, the
//! `op25b` client on it, and `curl` on its HTTP API.

#![allow(dead_code)] // Each test file that uses the harness uses its own part of this.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// A socket path in the temporary directory that no other test uses; `tag`
/// ends its name.
pub fn socket_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{}-{tag}.sock", super::unique_base()))
}

/// `path` as a TOML string, for a config value.
pub fn toml_path(path: &Path) -> String {
    format!("{:?}", path.to_str().expect("utf-8 path"))
}

/// `op25b ARGS --socket S...`, one `--socket` for each of `sockets`
/// (`OP25B_SOCKET` unset): (exit code, stdout, stderr).
pub fn op25b_at(args: &[&str], sockets: &[&Path]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_op25b"));
    cmd.args(args).env_remove("OP25B_SOCKET");
    for s in sockets {
        cmd.arg("--socket").arg(s);
    }
    let out = cmd.output().expect("op25b runs");
    let text = |b: &[u8]| String::from_utf8_lossy(b).to_string();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

/// `curl --unix-socket SOCKET -X METHOD http://op25b/PATH [-d BODY]`:
/// (HTTP status, the JSON answer).
pub fn curl(socket: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "30", "--unix-socket"]).arg(socket).args(["-X", method]);
    cmd.args(["-w", "\n%{http_code}"]).arg(format!("http://op25b{path}"));
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    let out = cmd.output().expect("curl runs (scripts/setup.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "curl {method} {path}: {}{text}", String::from_utf8_lossy(&out.stderr));
    let (json, status) = text.trim_end().rsplit_once('\n').unwrap_or_else(|| panic!("no status line: {text}"));
    let status: u16 = status.parse().unwrap_or_else(|e| panic!("{e}: {text}"));
    let v = serde_json::from_str(json).unwrap_or_else(|e| panic!("{method} {path}: {e}: {json}"));
    (status, v)
}
