//! Shared harness of the namespace tests: a [`Lab`] (the lab of `op25b lab`,
//! made by its own set-up, `op25b::lab::setup`, under a name of the test's,
//! with one `op25b run` child between its namespaces), TCP [`Servers`]
//! in the upstream namespace, and TCP clients in the subscriber namespace.
//!
//! Invariants: every namespace, config file and process a test creates is owned
//! by a guard whose `Drop` removes it, so a failed assertion cleans up too; all
//! addresses live only inside the test's own namespaces; every wait is bounded.
//! Missing prerequisites (root, `ip`, `ping`, /dev/net/tun) are test failures
//! with a message saying what is missing, never a silent skip.
//!
//! The lab's config comes from [`PolicyBuilder`] (the same lab as
//! config/lab.toml, with typed edits); its counters come from the JSON op25b
//! writes with `--stats` on SIGUSR1 and when it stops, never from its log.

use std::fs::File;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use nix::sched::{setns, CloneFlags};
pub use op25b::testing::lab::*;

mod control;
mod lab;
mod programs;
mod promtool;
mod servers;

// Each test binary uses its own part of the harness.
#[allow(unused_imports)]
pub use control::*;
#[allow(unused_imports)]
pub use lab::*;
#[allow(unused_imports)]
pub use programs::*;
#[allow(unused_imports)]
pub use promtool::*;
#[allow(unused_imports)]
pub use servers::*;

/// Subscriber-side TUN name; the same in every lab, as each lab has its own namespaces.
pub const SUB_TUN: &str = "o25sub";
/// Upstream-side TUN name.
pub const UP_TUN: &str = "o25up";

/// How long to wait for op25b to create its devices or to exit after SIGTERM.
const PROCESS_WAIT: Duration = Duration::from_secs(5);

/// Parses an address constant.
pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("test constant {s:?}: {e}"))
}

/// `ip:port` as a socket address.
pub fn sa(addr: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip(addr), port)
}

/// Fails the test unless it can create namespaces and TUN devices and run the tools.
pub fn preflight(need_ping: bool) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid =
        status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().nth(1)).unwrap_or("?");
    assert_eq!(
        euid, "0",
        "the netns tests must run as root (they create network namespaces and TUN devices); effective uid is {euid}"
    );
    require_tool("ip", "-V", "iproute2");
    if need_ping {
        require_tool("ping", "-V", "iputils-ping");
    }
    assert!(
        std::path::Path::new("/dev/net/tun").exists(),
        "/dev/net/tun is missing: the kernel's TUN driver is needed (modprobe tun)"
    );
}

fn require_tool(cmd: &str, arg: &str, package: &str) {
    match Command::new(cmd).arg(arg).output() {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            panic!("the `{cmd}` command is missing: install {package}")
        }
        Err(e) => panic!("cannot run `{cmd} {arg}`: {e}"),
    }
}

/// A name no other test (or test run) uses: `o25t-<pid>-<n>`.
pub fn unique_base() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("o25t-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Runs a command to completion and returns its output, panicking if it cannot start.
fn output(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{cmd} {}`: {e}", args.join(" ")))
}

/// Runs `ip ARGS` and panics with its stderr if it fails.
pub fn ip_cmd(args: &[&str]) {
    let out = output("ip", args);
    assert!(
        out.status.success(),
        "`ip {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Runs `f` on a thread that has joined the network namespace `ns`; sockets it
/// creates live there (a thread's network namespace is its own).
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(&file, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns into {path}: {e}"));
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Fills the file system at `dir` (as op25b sees it) until it refuses a
/// write; the file that filled it.
#[allow(dead_code)] // faults and logs_and_state
pub fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write as _;
    let filler = dir.join("filler");
    let mut f = File::create(&filler).unwrap_or_else(|e| panic!("{}: {e}", filler.display()));
    let chunk = [0u8; 4096];
    let e = loop {
        if let Err(e) = f.write_all(&chunk).and_then(|()| f.sync_all()) {
            break e;
        }
    };
    assert_eq!(e.raw_os_error(), Some(nix::errno::Errno::ENOSPC as i32), "filling {}: {e}", dir.display());
    filler
}
