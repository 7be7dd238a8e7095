//! What the lab's tests share: running op25b, and a lab of a name of its own
//! that is taken down when the test ends (also when it fails).

#![allow(dead_code)] // each test uses part of it

use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use op25b::lab::def::Names;
use serde_json::Value;

/// Runs this build's op25b with `args`.
pub fn op25b(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_op25b"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run op25b {}: {e}", args.join(" ")))
}

/// What a command wrote, stdout then stderr.
pub fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A lab of a name of its own; `down` on drop.
pub struct TestLab {
    pub names: Names,
}

impl TestLab {
    /// `op25b lab up --name o25lab-PID-N EXTRA...`; fails loudly when not root.
    pub fn up(extra: &[&str]) -> TestLab {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        assert!(
            status.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0")),
            "the lab tests must run as root (they create network namespaces and TUN devices)"
        );
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!("o25lab-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let lab = TestLab { names: Names::new(&name).expect("a valid lab name") };
        let out = op25b(&[&["lab", "up", "--name", &name], extra].concat());
        assert!(out.status.success(), "op25b lab up {} failed ({}):\n{}", extra.join(" "), out.status, text(&out));
        lab
    }

    /// The lab's name.
    pub fn name(&self) -> &str {
        &self.names.name
    }

    /// `op25b lab CMD --name NAME ARGS...` for `args` = [CMD, ARGS...].
    pub fn lab(&self, args: &[&str]) -> Output {
        op25b(&[&["lab"], &args[..1], &["--name", self.name()], &args[1..]].concat())
    }

    /// Asks the lab's op25b for its counters (`op25b stats --json` on the
    /// lab's control socket) until counter `name` is `want`; fails the test
    /// after 5 s.
    pub fn wait_counter(&self, name: &str, want: u64) {
        let socket = self.names.state_dir().join("op25b.sock");
        let socket = socket.to_str().expect("a UTF-8 socket path");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let out = op25b(&["stats", "--json", "--socket", socket]);
            assert!(out.status.success(), "op25b stats --socket {socket}: {}", text(&out));
            let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
            let got = v["stats"]["counters"][name].as_u64().unwrap_or_else(|| panic!("no counter {name}: {v}"));
            if got == want {
                return;
            }
            assert!(Instant::now() < deadline, "{name} is {got}, not {want}, after 5 s: {v}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The lab's state file.
    pub fn state(&self) -> Value {
        let path = self.names.state_dir().join("lab.json");
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
            .expect("the state file is JSON")
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        let out = self.lab(&["down"]);
        if !out.status.success() {
            eprintln!("op25b lab down --name {} failed: {}", self.name(), text(&out));
        }
    }
}
