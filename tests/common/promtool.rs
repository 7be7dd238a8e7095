//! `promtool`, Prometheus's own checker, as the tests run it.

#![allow(dead_code)] // Each test file that uses the harness uses its own part of this.

use std::io::Write;
use std::process::{Command, Output, Stdio};

/// Runs `promtool ARGS` with `stdin` as its standard input; fails the test,
/// saying what to install, when promtool is missing.
pub fn promtool(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}): install Debian's prometheus package (scripts/setup.sh)")
        });
    let mut input = child.stdin.take().expect("promtool's stdin");
    input.write_all(stdin.as_bytes()).expect("write to promtool");
    drop(input);
    child.wait_with_output().expect("promtool ends")
}

/// promtool's findings (stdout and stderr), one per line.
pub fn findings(out: &Output) -> Vec<String> {
    [&out.stdout, &out.stderr]
        .iter()
        .flat_map(|b| String::from_utf8_lossy(b).lines().map(str::to_string).collect::<Vec<_>>())
        .filter(|l| !l.trim().is_empty())
        .collect()
}
