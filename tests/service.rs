//! op25b as a service: the systemd unit passes `systemd-analyze verify`; the
//! sd_notify messages, read from a datagram socket the test makes, come in
//! order; op25b runs as an unprivileged user holding only the capabilities it
//! needs (created devices, forwarded traffic, a reload) and, without them,
//! exits 2 with one line naming the missing one.
//!
//! The namespace tests need root, `setpriv` and `unshare` (util-linux), and
//! `systemd-analyze` (systemd); a missing tool fails the test with its name.

#[allow(dead_code)]
mod common;

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

const CONNECT: Duration = Duration::from_secs(3);
/// Longest wait for one notification.
const NOTIFY_WAIT: Duration = Duration::from_secs(10);
/// The unprivileged user of the tests (nobody).
const NOBODY: &str = "65534";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{cmd}` ({e}); install it (scripts/setup.sh does: systemd, util-linux)"))
}

/// A directory under the temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("{}-{tag}", unique_base()));
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("creating {}: {e}", p.display()));
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0); // best effort
    }
}

// ---------------------------------------------------------------- the unit

/// Runs `systemd-analyze verify` on `unit` and fails on any complaint
/// (unknown keys are only warnings to it, so stderr must be empty too).
pub fn verify_unit(unit: &Path, man: bool) {
    let man = if man { "--man=yes" } else { "--man=no" };
    let out = run("systemd-analyze", &["verify", man, &unit.display().to_string()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.trim().is_empty(),
        "systemd-analyze verify {}: {}\n{err}",
        unit.display(),
        out.status
    );
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let text = std::fs::read_to_string(repo("packaging/op25b.service")).expect("packaging/op25b.service");
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    for want in [
        "Type=notify",
        "ExecStart=/usr/bin/op25b run --config /etc/op25b/op25b.toml",
        "ExecReload=/usr/bin/op25b reload",
        "Restart=on-failure",
        "RestartPreventExitStatus=2",
        "DynamicUser=yes",
        "AmbientCapabilities=CAP_NET_ADMIN",
        "CapabilityBoundingSet=CAP_NET_ADMIN",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "RuntimeDirectory=op25b",
        "DeviceAllow=/dev/net/tun rw",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
    ] {
        assert!(lines.contains(&want), "packaging/op25b.service lacks the line {want:?}");
    }
    for never in ["PrivateDevices=yes", "PrivateNetwork=yes", "PrivateUsers=yes", "ProtectKernelTunables=yes"] {
        assert!(!lines.contains(&never), "{never} would break op25b (see the unit's comment)");
    }
    // The unit as the package installs it names /usr/bin/op25b, which
    // verify requires to exist: here it names the binary just built.
    let dir = TempDir::new("unit");
    let unit = dir.0.join("op25b.service");
    std::fs::write(&unit, text.replace("/usr/bin/op25b", env!("CARGO_BIN_EXE_op25b"))).expect("writing the unit");
    verify_unit(&unit, false);
    // And verify does catch a broken unit, so the check above means something.
    let broken = dir.0.join("broken.service");
    std::fs::write(&broken, text.replace("/usr/bin/op25b", "/nonexistent/op25b")).expect("writing the unit");
    let out = run("systemd-analyze", &["verify", "--man=no", &broken.display().to_string()]);
    assert!(!out.status.success(), "systemd-analyze verify accepted a unit whose binary is missing");
}

// ------------------------------------------------------------- sd_notify

/// The test's end of NOTIFY_SOCKET: every datagram op25b sent, in order.
struct NotifySocket {
    sock: UnixDatagram,
    path: PathBuf,
    seen: Vec<String>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap_or_else(|e| panic!("binding {}: {e}", path.display()));
        sock.set_read_timeout(Some(Duration::from_millis(200))).expect("read timeout");
        NotifySocket { sock, path, seen: Vec::new() }
    }

    /// Reads until a message satisfies `want` (returned); fails after NOTIFY_WAIT.
    fn wait_for(&mut self, what: &str, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + NOTIFY_WAIT;
        let mut buf = [0u8; 4096];
        loop {
            match self.sock.recv(&mut buf) {
                Ok(n) => {
                    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                    println!("notify: {:?}", msg);
                    self.seen.push(msg.clone());
                    if want(&msg) {
                        return msg;
                    }
                }
                // A signal to the test process (EINTR) is no answer either: read again.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => panic!("reading {}: {e}", self.path.display()),
            }
            assert!(Instant::now() < deadline, "no {what} within {NOTIFY_WAIT:?}; messages so far: {:?}", self.seen);
        }
    }

    /// What is left in the socket, without waiting for more.
    fn drain(&mut self) {
        self.sock.set_nonblocking(true).expect("non-blocking");
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.sock.recv(&mut buf) {
            self.seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
}

fn has(msg: &str, line: &str) -> bool {
    msg.lines().any(|l| l == line)
}

fn status_of(msg: &str) -> Option<&str> {
    msg.lines().find_map(|l| l.strip_prefix("STATUS="))
}

#[test]
fn sd_notify_ready_reload_status_watchdog_stopping_in_order() {
    let dir = TempDir::new("notify");
    let mut notify = NotifySocket::bind(&dir.0);
    let env = vec![
        ("NOTIFY_SOCKET".to_string(), notify.path.display().to_string()),
        // WatchdogSec=1s: a ping every 500 ms.
        ("WATCHDOG_USEC".to_string(), "1000000".to_string()),
    ];
    let mut lab = Lab::start(LabOptions { env, ..LabOptions::default() });

    let ready = notify.wait_for("READY=1", |m| has(m, "READY=1"));
    let status = status_of(&ready).unwrap_or_else(|| panic!("READY=1 came without STATUS=: {ready:?}"));
    assert!(status.starts_with("forwarded ") && status.contains("op25b blocked 0"), "{status}");
    let servers = Servers::start(&lab.up, &[25]);
    let e = lab.connect(None, sa(MX4, 25), CONNECT).expect_err("dynamic -> MX:25 is blocked");
    assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
    notify.wait_for("WATCHDOG=1", |m| has(m, "WATCHDOG=1"));

    // An accepted reload: RELOADING=1 with the monotonic clock, then READY=1.
    let r = lab.reload(&lab.policy.clone().op25b("ports", "[25, 2525]").toml());
    assert!(r.accepted, "{r}");
    let reloading = notify.wait_for("RELOADING=1", |m| has(m, "RELOADING=1"));
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("RELOADING=1 without a MONOTONIC_USEC number: {reloading:?}"));
    // CLOCK_MONOTONIC counts from boot, as /proc/uptime does (a second's slack for rounding).
    let uptime = std::fs::read_to_string("/proc/uptime").expect("/proc/uptime");
    let uptime: f64 = uptime.split_whitespace().next().and_then(|u| u.parse().ok()).expect("uptime seconds");
    let uptime_usec = (uptime * 1e6) as u64;
    assert!(
        usec > 0 && usec <= uptime_usec + 1_000_000,
        "MONOTONIC_USEC={usec} is not a CLOCK_MONOTONIC time (uptime {uptime_usec} us)"
    );
    let ready = notify.wait_for("READY=1 after the reload", |m| has(m, "READY=1"));
    let status = status_of(&ready).unwrap_or_default();
    assert!(status.contains("op25b blocked 1") && !status.contains("refused"), "{status}");

    // A refused reload: still READY=1 (the old config runs), and the status says why.
    let r = lab.reload("[router]\naddresses = [\n");
    assert!(!r.accepted, "{r}");
    notify.wait_for("RELOADING=1", |m| has(m, "RELOADING=1"));
    let ready = notify.wait_for("READY=1 after the refused reload", |m| has(m, "READY=1"));
    let status = status_of(&ready).unwrap_or_default();
    let file = lab.config.display().to_string();
    assert!(status.starts_with("reload refused: ") && status.contains(&file), "{status}");
    assert!(status.contains("op25b blocked 1"), "{status}");
    // The watchdog goes on after the reloads.
    notify.wait_for("WATCHDOG=1 after the reloads", |m| has(m, "WATCHDOG=1"));

    drop(servers);
    let c = lab.stop();
    assert_eq!((c.get("reloads_accepted"), c.get("reloads_refused")), (1, 1), "{c}");
    notify.drain();
    let last = notify.seen.last().cloned().unwrap_or_default();
    assert!(has(&last, "STOPPING=1"), "the last message is not STOPPING=1: {:?}", notify.seen);
    // The whole life in order: READY, two reloads, STOPPING.
    let lifecycle: Vec<&str> = notify
        .seen
        .iter()
        .flat_map(|m| m.lines())
        .filter(|l| ["READY=1", "RELOADING=1", "STOPPING=1"].contains(l))
        .collect();
    assert_eq!(
        lifecycle,
        ["READY=1", "RELOADING=1", "READY=1", "RELOADING=1", "READY=1", "STOPPING=1"],
        "{:?}",
        notify.seen
    );
    assert_eq!(c.get("op25b_blocked"), 1, "{c}");
}

#[test]
fn without_notify_socket_nothing_is_sent_and_op25b_runs() {
    // The same lab without NOTIFY_SOCKET (every other netns test runs so
    // too): op25b must not need a service manager.
    let mut lab = Lab::start(LabOptions::default());
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", lab.pid()))
        .expect("op25b's threads")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        .collect();
    assert!(threads.iter().any(|t| t.starts_with("op25b-outbound")), "no worker among {threads:?}");
    assert!(!threads.iter().any(|t| t == "op25b-notify"), "a notify thread without NOTIFY_SOCKET: {threads:?}");
    assert!(!lab.log_text().contains("notify"), "{}", lab.log_text());
    lab.stop();
}

// ------------------------------------------------- unprivileged operation

/// The words that run the next command as nobody holding only `caps`
/// (`"+net_admin,+sys_admin"`, or empty for none), with `/dev/net/tun`
/// replaced, in a private mount namespace, by a node of mode `tun_mode`
/// when given (0666 as distributions make it, 0600 as some containers do);
/// the machine's own device is never touched.
fn unprivileged(caps: &str, tun_mode: Option<u32>, scratch: &Path) -> Vec<String> {
    let mut w: Vec<String> = Vec::new();
    if let Some(mode) = tun_mode {
        let script = r#"set -e; d=$1; mode=$2; shift 2
mount -t tmpfs -o mode=0755 op25b-test "$d"
mknod -m "$mode" "$d/tun" c 10 200
mount --bind "$d/tun" /dev/net/tun
exec "$@""#;
        w.extend(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh"].map(String::from));
        w.push(scratch.display().to_string());
        w.push(format!("{mode:o}"));
    }
    // As the unit has it: no supplementary groups, no new privileges, and a
    // bounding set of only these capabilities.
    w.extend(["setpriv", "--reuid", NOBODY, "--regid", NOBODY, "--clear-groups", "--no-new-privs"].map(String::from));
    if caps.is_empty() {
        w.push("--bounding-set=-all".into());
    } else {
        w.push(format!("--bounding-set=-all,{caps}"));
        w.push(format!("--inh-caps={caps}"));
        w.push(format!("--ambient-caps={caps}"));
    }
    w
}

/// The effective uid and capability set of a running process; asserts that
/// its bounding set is the same and that it cannot gain privileges.
fn creds(pid: u32) -> (String, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("op25b's /proc status");
    let field = |n: &str| status.lines().find_map(|l| l.strip_prefix(n)).map(str::trim).unwrap_or_default().to_string();
    let uid = field("Uid:").split_whitespace().nth(1).unwrap_or_default().to_string();
    let eff = u64::from_str_radix(&field("CapEff:"), 16).expect("CapEff");
    assert_eq!(u64::from_str_radix(&field("CapBnd:"), 16).ok(), Some(eff), "bounding set != effective set:\n{status}");
    assert_eq!(field("NoNewPrivs:"), "1", "op25b could gain privileges:\n{status}");
    (uid, eff)
}

const CAP_DAC_OVERRIDE: u64 = 1 << 1;
const CAP_NET_ADMIN: u64 = 1 << 12;
const CAP_SYS_ADMIN: u64 = 1 << 21;

fn assert_reaches(lab: &Lab, servers: &Servers, port: u16) {
    let s = lab.connect(None, sa(MX4, port), CONNECT).unwrap_or_else(|e| panic!("dynamic -> MX:{port}: {e}"));
    assert_eq!(read_banner(&s), BANNER);
    assert!(!servers.accepted_on(sa(MX4, port)).is_empty());
}

fn assert_refused(lab: &Lab, port: u16) {
    let e = lab.connect(None, sa(MX4, port), CONNECT).expect_err("blocked");
    assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "dynamic -> MX:{port}: {e}");
}

/// As nobody with CAP_NET_ADMIN and CAP_SYS_ADMIN (the lab's devices are in
/// namespaces) and a 0666 /dev/net/tun: devices made, traffic forwarded and
/// blocked, a reload in force, a clean stop with the counters written.
#[test]
fn runs_as_nobody_with_net_admin_and_sys_admin() {
    preflight(true);
    let scratch = TempDir::new("tun");
    let wrapper = unprivileged("+net_admin,+sys_admin", Some(0o666), &scratch.0);
    let mut lab = Lab::start(LabOptions { wrapper, ..LabOptions::default() });
    let (uid, caps) = creds(lab.pid());
    assert_eq!(uid, NOBODY, "op25b does not run as nobody");
    assert_eq!(caps, CAP_NET_ADMIN | CAP_SYS_ADMIN, "op25b's effective capabilities: {caps:#x}");
    let servers = Servers::start(&lab.up, &[25, 587]);
    assert_reaches(&lab, &servers, 587);
    assert_refused(&lab, 25);
    let (ok, out) = lab.ping(&["-c", "1", "-W", "2", MX6]);
    assert!(ok, "ping -6 through op25b: {out}");
    // A reload re-reads the file as nobody and puts the policy in force.
    let r = lab.reload(&lab.policy.clone().op25b("ports", "[25, 587]").toml());
    assert!(r.accepted, "{r}");
    assert_refused(&lab, 587);
    let log = lab.log_text();
    assert!(!log.contains("cannot disable IPv6 address generation"), "a sysctl write failed as nobody:\n{log}");
    drop(servers);
    let c = lab.stop();
    assert_eq!(c.get("reloads_accepted"), 1, "the reload as nobody was put in force: {c}");
    assert_eq!(c.get("op25b_blocked"), 2, "{c}");
    assert!(c.get("forwarded_outbound") >= 3, "{c}");
}

/// Where /dev/net/tun is 0600, nobody also needs CAP_DAC_OVERRIDE to open it
/// (the real device of this kind of machine, or a 0600 node elsewhere).
#[test]
fn a_0600_tun_device_needs_dac_override() {
    preflight(true);
    let scratch = TempDir::new("tun");
    let wrapper = unprivileged("+net_admin,+sys_admin,+dac_override", Some(0o600), &scratch.0);
    let mut lab = Lab::start(LabOptions { wrapper, ..LabOptions::default() });
    let (uid, caps) = creds(lab.pid());
    assert_eq!((uid.as_str(), caps), (NOBODY, CAP_NET_ADMIN | CAP_SYS_ADMIN | CAP_DAC_OVERRIDE));
    let servers = Servers::start(&lab.up, &[587]);
    assert_reaches(&lab, &servers, 587);
    drop(servers);
    lab.stop();
}

/// `op25b run` as nobody with `caps` and a `tun_mode` /dev/net/tun, on the
/// lab's config (devices in namespaces that need not exist: the check comes
/// first). Its exit status and stderr.
fn run_unprivileged(caps: &str, tun_mode: u32, netns: bool) -> (Option<i32>, String) {
    let scratch = TempDir::new("tun");
    let policy = PolicyBuilder::lab().defaults();
    let policy = if netns {
        policy.devices(("o25sub", Some("o25-no-such-ns-a")), ("o25up", Some("o25-no-such-ns-b")))
    } else {
        policy.devices(("o25sub", None), ("o25up", None))
    };
    let config = scratch.0.join("op25b.toml");
    std::fs::write(&config, policy.toml()).expect("writing the config");
    let mut w = unprivileged(caps, Some(tun_mode), &scratch.0.join("dev"));
    std::fs::create_dir_all(scratch.0.join("dev")).expect("scratch dir");
    w.push(env!("CARGO_BIN_EXE_op25b").into());
    w.extend(["run", "--config"].map(String::from));
    w.push(config.display().to_string());
    let out = Command::new(&w[0])
        .args(&w[1..])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("running op25b through unshare and setpriv");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_missing_capability_is_one_line_and_exit_status_2() {
    preflight(false);
    let one_line = |err: &str| {
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "not one line: {err}");
        lines[0].to_string()
    };
    // No capability at all.
    let (code, err) = run_unprivileged("", 0o666, true);
    let line = one_line(&err);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        line.starts_with("op25b: error: ") && line.contains("needs CAP_NET_ADMIN") && line.contains("uid 65534"),
        "{line}"
    );
    // CAP_NET_ADMIN, but the config puts the devices in namespaces.
    let (code, err) = run_unprivileged("+net_admin", 0o666, true);
    let line = one_line(&err);
    assert_eq!(code, Some(2), "{err}");
    assert!(line.contains("needs CAP_SYS_ADMIN") && line.contains("subscriber.netns"), "{line}");
    // Both, but /dev/net/tun is 0600.
    let (code, err) = run_unprivileged("+net_admin,+sys_admin", 0o600, true);
    let line = one_line(&err);
    assert_eq!(code, Some(2), "{err}");
    assert!(line.contains("/dev/net/tun") && line.contains("mode 0600") && line.contains("CAP_DAC_OVERRIDE"), "{line}");
}

/// Without namespaces in the config, CAP_NET_ADMIN alone is enough: op25b
/// (as nobody) started inside a namespace the test made creates both
/// devices there, reloads, and stops cleanly.
#[test]
fn net_admin_alone_is_enough_without_netns() {
    preflight(false);
    let scratch = TempDir::new("tun");
    let ns = format!("{}-solo", unique_base());
    ip_cmd(&["netns", "add", &ns]);
    struct Ns(String);
    impl Drop for Ns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "delete", &self.0]).status();
        }
    }
    let _ns = Ns(ns.clone());
    let policy = PolicyBuilder::lab().defaults().devices(("o25sub", None), ("o25up", None));
    let config = scratch.0.join("op25b.toml");
    std::fs::write(&config, policy.toml()).expect("writing the config");
    let dev = scratch.0.join("dev");
    std::fs::create_dir_all(&dev).expect("scratch dir");
    let mut w: Vec<String> = ["ip", "netns", "exec", &ns].map(String::from).to_vec();
    w.extend(unprivileged("+net_admin", Some(0o666), &dev));
    w.push(env!("CARGO_BIN_EXE_op25b").into());
    w.extend(["run", "--config"].map(String::from));
    w.push(config.display().to_string());
    // Where nobody may write its counters (SIGUSR1).
    let stats_dir = scratch.0.join("stats");
    std::fs::create_dir_all(&stats_dir).expect("scratch dir");
    std::fs::set_permissions(&stats_dir, std::fs::Permissions::from_mode(0o777)).expect("chmod the stats dir");
    let stats = stats_dir.join("stats.json");
    w.extend(["--stats".to_string(), stats.display().to_string()]);
    let log = scratch.0.join("log");
    let mut child = Command::new(&w[0])
        .args(&w[1..])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("starting op25b");
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill(); // fails only when it already exited
            let _ = self.0.wait();
        }
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let guard = Kill(&mut child);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let links = run("ip", &["-n", &ns, "-o", "link", "show", "up"]);
        let text = String::from_utf8_lossy(&links.stdout);
        if text.contains("o25sub") && text.contains("o25up") {
            break;
        }
        if let Ok(Some(status)) = guard.0.try_wait() {
            panic!("op25b exited ({status}) before its devices were up:\n{}", read_log());
        }
        assert!(Instant::now() < deadline, "the devices did not come up in {ns}:\n{}", read_log());
        std::thread::sleep(Duration::from_millis(50));
    }
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
    let c = wait_counters_of(guard.0.id(), &stats, &read_log, "the reload", |c| {
        c.get("reloads_accepted") + c.get("reloads_refused") > 0
    });
    assert_eq!((c.get("reloads_accepted"), c.get("reloads_refused")), (1, 0), "{c}");
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Ok(Some(s)) = guard.0.try_wait() {
            break s;
        }
        assert!(Instant::now() < deadline, "op25b did not stop after SIGTERM:\n{}", read_log());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "op25b exited {status}:\n{}", read_log());
    assert!(!read_log().contains("cannot disable IPv6"), "{}", read_log());
}

// ------------------------------------------------------ the packaged config

/// /etc/op25b/op25b.toml as the package installs it validates, and so does
/// every optional setting it shows commented out (uncommented).
#[test]
fn the_packaged_config_and_its_commented_options_validate() {
    let text = std::fs::read_to_string(repo("packaging/op25b.toml")).expect("packaging/op25b.toml");
    let optional = ["[events]", "[capture]", "path = ", "dropped = ", "metrics = "];
    let uncommented: String = text
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest) if optional.iter().any(|o| rest.starts_with(o)) => rest,
            _ => l,
        })
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(uncommented.lines().filter(|l| optional.iter().any(|o| l.starts_with(o))).count(), optional.len());
    let dir = TempDir::new("conf");
    for (name, body) in [("packaged.toml", text.as_str()), ("uncommented.toml", uncommented.as_str())] {
        let path = dir.0.join(name);
        std::fs::write(&path, body).expect("writing the config");
        let out = run(env!("CARGO_BIN_EXE_op25b"), &["check", "--config", &path.display().to_string()]);
        assert!(out.status.success(), "op25b check on the {name}: {}", String::from_utf8_lossy(&out.stderr));
    }
    // Devices in the host's namespace: the unit's CAP_NET_ADMIN is enough.
    assert!(!text.lines().any(|l| l.trim_start().starts_with("netns")), "the packaged config sets a netns");
}

/// The watchdog follows the data plane, not a timer: a device deleted under
/// op25b ends it (one line, exit status 1: tests/faults.rs), it tells systemd
/// it is stopping, and no watchdog ping follows, so systemd restarts it. (A
/// worker that stops looping for any other reason stops the pings itself, with
/// "no more watchdog pings" in the log.)
#[test]
fn a_lost_device_stops_the_watchdog_pings() {
    let dir = TempDir::new("wd");
    let mut notify = NotifySocket::bind(&dir.0);
    let env = vec![
        ("NOTIFY_SOCKET".to_string(), notify.path.display().to_string()),
        ("WATCHDOG_USEC".to_string(), "1000000".to_string()),
    ];
    let mut lab = Lab::start(LabOptions { env, ..LabOptions::default() });
    notify.wait_for("READY=1", |m| has(m, "READY=1"));
    notify.wait_for("WATCHDOG=1", |m| has(m, "WATCHDOG=1"));
    lab.sub_ip(&["link", "delete", SUB_TUN]);
    let (status, _) = lab
        .wait_exit(NOTIFY_WAIT)
        .unwrap_or_else(|| panic!("op25b still runs after its device was deleted; its log:\n{}", lab.log_text()));
    assert_eq!(status.code(), Some(1), "{}", lab.log_text());
    notify.wait_for("STOPPING=1", |m| has(m, "STOPPING=1"));
    // Nothing after it: three ping periods of silence.
    let before = notify.seen.len();
    std::thread::sleep(Duration::from_millis(1500));
    notify.drain();
    let after: Vec<&String> = notify.seen[before..].iter().filter(|m| has(m, "WATCHDOG=1")).collect();
    assert!(after.is_empty(), "WATCHDOG=1 after op25b stopped: {after:?}\n{}", lab.log_text());
    println!("{}", lab.log_text());
}
