//! End-to-end tests of the OP25B actions (icmp, redirect, banner, drop), IP25B
//! (`block_inbound`) and the per-address reply limit, with a real SMTP client
//! (Python's smtplib, tests/support/smtp.py) in the subscriber namespace and
//! the lab's SMTP servers (`op25b lab serve`) in the upstream namespace,
//! through an `op25b run` between them (see `common::Lab`).
//!
//! One router instance per config; each test has its own namespaces, so they
//! run in parallel. Timings are printed for the reader, never asserted: a
//! "fails at once" check asserts the kind of error (refused, unreachable,
//! access denied), which a timeout can never produce.
//!
//! Needs root, iproute2, iputils-ping and the system Python; without them the
//! tests fail with a message saying what is missing.

// The shared harness also has TCP helpers that only tests/netns.rs uses.
#[allow(dead_code)]
mod common;

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nix::sched::{setns, CloneFlags};
use op25b::lab::smtp::{self, Connection, Mail};
use serde_json::Value;
use std::os::unix::process::CommandExt;

/// The system interpreter (smtplib; the `python3` first in PATH may be another).
const PYTHON: &str = "/usr/bin/python3";
/// The client and SYN flood helper.
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/smtp.py");
/// The `banner` action's default SMTP reply line.
const DEFAULT_BANNER: &str =
    "554 5.7.1 Port 25 is blocked for dynamic addresses (OP25B); send mail through submission port 587 with SMTP AUTH";
/// Client timeout (connect, and each SMTP reply) where an answer is expected.
const CLIENT_TIMEOUT: &str = "3";
/// Client timeout where the connect must hang: covers the first SYN
/// retransmission (1 s), shorter than [`CLIENT_TIMEOUT`].
const HANG_TIMEOUT: &str = "1.5";
const SMTP: u16 = 25;
const SUBMISSION: u16 = 587;
/// How long the SMTP server may take to bind its addresses.
const SERVER_READY: Duration = Duration::from_secs(10);
/// `op25b.redirect_to`: the relay, one per IP family.
const REDIRECT_TO: &str = r#"["198.51.100.25:25", "[2001:db8:25::25]:25"]"#;

/// Fails the test unless the system Python can run the client.
fn preflight_python() {
    assert!(Path::new(PYTHON).exists(), "{PYTHON} is missing: install the Debian package python3");
    assert!(Path::new(SCRIPT).exists(), "{SCRIPT} is missing");
}

/// Starts the test topology after checking the Python side too.
fn start_lab(opts: LabOptions) -> Lab {
    preflight_python();
    Lab::start(opts)
}

/// The lab's SMTP servers (`op25b lab serve`) on addresses of a test's
/// namespace, logging connections and messages to a directory of their own.
/// Dropping it kills the process (by its own handle) and removes the files.
struct SmtpServer {
    child: Option<Child>,
    dir: PathBuf,
}

impl SmtpServer {
    /// Listens on every `(name, address)` in `ns`; waits until all are bound.
    fn start(ns: &str, listen: &[(&str, SocketAddr)]) -> SmtpServer {
        let dir = std::env::temp_dir().join(format!("{}-smtp", unique_base()));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let stderr = File::create(dir.join("stderr")).unwrap_or_else(|e| panic!("creating stderr: {e}"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_op25b"));
        cmd.args(["lab", "serve", "--lifetime", "120s", "--dir"]).arg(&dir);
        for (name, addr) in listen {
            cmd.arg("--listen").arg(format!("{name}={addr}"));
        }
        let ns_file = op25b::lab::netns::open(ns).unwrap_or_else(|e| panic!("{e}"));
        // SAFETY: between fork and exec the child calls only setns(2), which
        // is async-signal-safe, on a descriptor opened before the fork.
        unsafe {
            cmd.pre_exec(move || setns(&ns_file, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from));
        }
        let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr).spawn();
        let mut server =
            SmtpServer { child: Some(child.unwrap_or_else(|e| panic!("cannot start the SMTP server: {e}"))), dir };
        let deadline = Instant::now() + SERVER_READY;
        while !server.dir.join("servers.ready").exists() {
            if let Some(status) = server.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("the SMTP server in {ns} exited ({status}) before it was ready:\n{}", server.stderr_text());
            }
            assert!(
                Instant::now() < deadline,
                "the SMTP server in {ns} was not ready within {SERVER_READY:?}:\n{}",
                server.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    /// Connections accepted by the server called `name`.
    fn connects(&self, name: &str) -> Vec<Connection> {
        smtp::read_connections(&self.dir).into_iter().filter(|c| c.server == name).collect()
    }

    /// The message tagged `tag` (see the client's `--tag`) received by `name`.
    fn message(&self, name: &str, tag: &str) -> Option<Mail> {
        let subject = format!("op25b test {tag}");
        smtp::read_mail(&self.dir, name).into_iter().find(|m| m.subject() == subject)
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // fails only if it already exited
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let log = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
            eprintln!(
                "--- SMTP server connections ({}) ---\n{}--- its stderr ---\n{}",
                self.dir.display(),
                log("connections.jsonl"),
                self.stderr_text()
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir); // may not exist if start failed early
    }
}

/// The outside MX and the ISP relay, both families, port 25.
fn outside_servers(ns: &str) -> SmtpServer {
    SmtpServer::start(
        ns,
        &[("mx", sa(MX4, SMTP)), ("mx", sa(MX6, SMTP)), ("relay", sa(RELAY4, SMTP)), ("relay", sa(RELAY6, SMTP))],
    )
}

/// Runs the smtplib client in `ns` and returns its JSON report.
fn smtp_client(ns: &str, args: &[&str]) -> Value {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, PYTHON, SCRIPT, "client"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run the SMTP client: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the SMTP client ({}) failed ({}): {}{}",
        args.join(" "),
        out.status,
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    println!("client {}: {}", args.join(" "), stdout.trim());
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("client output {stdout:?}: {e}"))
}

/// A client report's socket address field (`peer`, `local`).
fn addr_field(r: &Value, key: &str) -> Option<SocketAddr> {
    r[key].as_str().and_then(|s| s.parse().ok())
}

/// The client's address as a server logged it.
fn peer_ip(peer: &str) -> Option<std::net::IpAddr> {
    peer.parse().ok()
}

/// Asserts the connect itself failed at once with `errname`, not by a timeout.
fn assert_failed_at_once(r: &Value, errname: &str, why: &str) {
    assert_eq!(r["connected"], false, "{why}: the client connected: {r}");
    assert_eq!(r["stage"], "connect", "{why}: {r}");
    assert_eq!(r["timeout"], false, "{why}: the connect timed out: {r}");
    assert_eq!(r["errname"], errname, "{why}: wrong error: {r}");
}

/// Runs `op25b check` on the lab's config and returns its output; asserts the
/// exit status and that the output contains every `expect` text.
fn check_cli(lab: &Lab, packet: &str, expect: &[&str], status: i32) {
    let out = Command::new(env!("CARGO_BIN_EXE_op25b"))
        .arg("check")
        .arg("--config")
        .arg(&lab.config)
        .args(["--packet", packet])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run op25b check: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("$ op25b check --packet {packet:?}\n{}", text.trim_end());
    assert_eq!(out.status.code(), Some(status), "op25b check --packet {packet:?}:\n{text}");
    for e in expect {
        assert!(text.contains(e), "op25b check --packet {packet:?} should say {e:?}:\n{text}");
    }
}

/// The blocked SYN of each family, as `op25b check --packet` specs.
const BLOCKED_SYN: [&str; 2] =
    ["tcp 100.64.1.10:40000 -> 203.0.113.25:25 syn", "tcp [2001:db8:100:1::10]:40000 -> [2001:db8:203::25]:25 syn"];

/// action = "icmp": the client's connect fails at once with the error the
/// kernel maps ICMP administratively prohibited to (IPv4 3/13: EHOSTUNREACH,
/// "No route to host"; ICMPv6 1/1: EACCES, "Permission denied"), the ICMP
/// error comes from the router's address, and the outside MX never sees a
/// connection. The relay still takes a whole message from the dynamic address.
#[test]
fn icmp_action_fails_connect_at_once_with_admin_prohibited() {
    let mut lab = start_lab(LabOptions::edit(|p| p.action("icmp")));
    for p in BLOCKED_SYN {
        check_cli(&lab, p, &["-> action icmp", "prohibited"], 1);
    }
    let servers = outside_servers(&lab.up);
    for (dynamic, mx, relay, router, errname, icmp_type, icmp_code) in
        [(DYN4, MX4, RELAY4, ROUTER4, "EHOSTUNREACH", 3, 13), (DYN6, MX6, RELAY6, ROUTER6, "EACCES", 1, 1)]
    {
        let mx = sa(mx, SMTP).to_string();
        let r = smtp_client(&lab.sub, &["--dest", &mx, "--timeout", CLIENT_TIMEOUT, "--watch-icmp", "--send"]);
        assert_failed_at_once(&r, errname, &format!("dynamic -> {mx} with action = icmp"));
        let icmp = r["icmp"].as_array().cloned().unwrap_or_default();
        assert!(
            icmp.iter().any(|m| m["src"] == router && m["type"] == icmp_type && m["code"] == icmp_code),
            "dynamic -> {mx}: expected ICMP type {icmp_type} code {icmp_code} from {router}, saw {icmp:?}"
        );

        // Relays are not blocked: a whole message, with the real source.
        let tag = format!("icmp-relay-{relay}");
        let relay = sa(relay, SMTP).to_string();
        let r = smtp_client(&lab.sub, &["--dest", &relay, "--timeout", CLIENT_TIMEOUT, "--send", "--tag", &tag]);
        assert_eq!(r["accepted"], true, "dynamic -> relay {relay}: {r}");
        let m = servers.message("relay", &tag).unwrap_or_else(|| panic!("the relay did not record message {tag}"));
        assert_eq!(peer_ip(&m.peer), Some(ip(dynamic)), "relay's view of the client: {m:?}");
    }
    let mx_seen = servers.connects("mx");
    assert!(mx_seen.is_empty(), "the outside MX saw connections: {mx_seen:?}");
    drop(servers);

    let c = lab.stop();
    println!("{c}");
    // One SYN per family: the ICMP error ends the attempt, no retransmission.
    assert_eq!(c.get("op25b_blocked"), 2, "{c}");
    assert_eq!(c.get("reply_prohibited"), 2, "{c}");
    assert_eq!(c.get("reply_tcp_rst"), 0, "{c}");
    assert_eq!(c.get("drop_reply_rate_limited"), 0, "{c}");
}

/// action = "redirect": a whole SMTP transaction to the outside MX lands at
/// the relay instead. The client believes it talks to the MX (its peer is
/// MX:25, while the greeting is the relay's), the relay sees the client's real
/// source address, and the MX sees nothing from the dynamic address. An exempt
/// source still reaches the real MX.
#[test]
fn redirect_action_delivers_to_the_relay_transparently() {
    let mut lab = start_lab(LabOptions::edit(|p| p.action("redirect").op25b("redirect_to", REDIRECT_TO)));
    for p in BLOCKED_SYN {
        check_cli(&lab, p, &["-> action redirect", "redirect", "forward"], 0);
    }
    let servers = outside_servers(&lab.up);
    for (dynamic, exempt, mx, relay) in [(DYN4, STATIC4, MX4, RELAY4), (DYN6, STATIC6, MX6, RELAY6)] {
        let mx_addr = sa(mx, SMTP);
        let tag = format!("redirect-{dynamic}");
        let r = smtp_client(
            &lab.sub,
            &["--dest", &mx_addr.to_string(), "--timeout", CLIENT_TIMEOUT, "--send", "--tag", &tag],
        );
        assert_eq!(r["connected"], true, "dynamic -> {mx_addr} (redirected): {r}");
        assert_eq!(
            addr_field(&r, "peer"),
            Some(mx_addr),
            "the client must believe it talks to the server it dialled: {r}"
        );
        assert_eq!(r["banner_code"], 220, "{r}");
        assert!(
            r["banner_text"].as_str().is_some_and(|t| t.starts_with(&format!("{relay}:{SMTP} "))),
            "the greeting should be the relay's: {r}"
        );
        assert_eq!(r["accepted"], true, "the relay should accept the message: {r}");
        let m = servers.message("relay", &tag).unwrap_or_else(|| panic!("the relay did not record message {tag}"));
        assert_eq!(peer_ip(&m.peer), Some(ip(dynamic)), "relay's view of the client: {m:?}");
        assert_eq!((ip(&m.local), m.local_port), (ip(relay), SMTP), "the relay's own address for the session: {m:?}");
        assert_eq!(m.rcpt_tos, ["rcpt@outside.test"], "{m:?}");
        let client_port = addr_field(&r, "local").map(|a| a.port());
        assert_eq!(Some(m.peer_port), client_port, "the relay should see the client's own source port: {m:?} vs {r}");

        // Exempt sources are not redirected.
        let tag = format!("redirect-exempt-{exempt}");
        let r = smtp_client(
            &lab.sub,
            &["--dest", &mx_addr.to_string(), "--source", exempt, "--timeout", CLIENT_TIMEOUT, "--send", "--tag", &tag],
        );
        assert_eq!(r["accepted"], true, "exempt -> {mx_addr}: {r}");
        assert!(
            r["banner_text"].as_str().is_some_and(|t| t.starts_with(&format!("{mx}:{SMTP} "))),
            "an exempt source should reach the real MX: {r}"
        );
        let m = servers.message("mx", &tag).unwrap_or_else(|| panic!("the MX did not record message {tag}"));
        assert_eq!(peer_ip(&m.peer), Some(ip(exempt)), "{m:?}");
    }
    for e in servers.connects("mx") {
        assert!(
            peer_ip(&e.peer) == Some(ip(STATIC4)) || peer_ip(&e.peer) == Some(ip(STATIC6)),
            "only exempt sources may reach the outside MX: {e:?}"
        );
    }
    drop(servers);

    let c = lab.stop();
    println!("{c}");
    assert!(c.get("op25b_redirected") > 0, "{c}");
    assert_eq!(
        c.get("op25b_redirected"),
        c.get("op25b_blocked"),
        "every blocked packet of a redirected flow is rewritten: {c}"
    );
    assert_eq!(c.get("drop_op25b_blocked"), 0, "{c}");
    assert_eq!(c.get("drop_reply_rate_limited"), 0, "{c}");
    assert_eq!(c.get("drop_redirect_collision"), 0, "{c}");
    assert_eq!(c.get("drop_conntrack_full"), 0, "{c}");
}

/// action = "banner": op25b completes the handshake as the dialled server and
/// sends the 554 line; the outside MX never sees the connection.
///
/// Needs the data plane to hand `Verdict::Terminate` packets to the banner
/// responder; until then the SYN is dropped and the client times out.
#[test]
fn banner_action_answers_554_as_the_dialled_server() {
    let mut lab = start_lab(LabOptions::edit(|p| p.action("banner")));
    for p in BLOCKED_SYN {
        check_cli(&lab, p, &["-> action banner", "terminate"], 1);
    }
    let servers = outside_servers(&lab.up);
    let mut failures = Vec::new();
    for mx in [MX4, MX6] {
        let mx_addr = sa(mx, SMTP);
        let r = smtp_client(&lab.sub, &["--dest", &mx_addr.to_string(), "--timeout", CLIENT_TIMEOUT, "--send"]);
        if r["connected"] != true {
            failures.push(format!(
                "dynamic -> {mx_addr}: no handshake, so no banner \
                 (is the banner responder wired into the data plane?): {r}"
            ));
            continue;
        }
        assert_eq!(addr_field(&r, "peer"), Some(mx_addr), "op25b must answer as the server the client dialled: {r}");
        let line = format!("{} {}", r["banner_code"], r["banner_text"].as_str().unwrap_or(""));
        assert_eq!(line, DEFAULT_BANNER, "the banner line: {r}");
        assert_eq!(r["accepted"], false, "{r}");
    }
    let mx_seen = servers.connects("mx");
    assert!(mx_seen.is_empty(), "the outside MX saw connections: {mx_seen:?}");
    drop(servers);
    let c = lab.stop();
    println!("{c}");
    assert!(failures.is_empty(), "{}\n{}", failures.join("\n"), c);
    assert!(c.get("op25b_terminated") > 0, "{c}");
    // Every blocked packet went to the responder, except a client segment
    // that arrives after its session ended (the responder leaves TIME-WAIT at
    // once): such a segment belongs to no session and the router drops it.
    // How many do depends on how the client's last segments are batched, so
    // the test bounds them (at most the client's FIN/ACK per connection)
    // instead of expecting none.
    assert_eq!(
        c.get("op25b_terminated") + c.get("drop_op25b_blocked"),
        c.get("op25b_blocked"),
        "every blocked packet was terminated or dropped: {c}"
    );
    assert!(c.get("drop_op25b_blocked") <= 2 * 2, "late segments only: {c}");
    assert_eq!(c.get("reply_tcp_rst"), 0, "{c}");
    assert_eq!(c.get("drop_reply_rate_limited"), 0, "{c}");
}

/// action = "drop" with the SMTP client: the connect to the outside MX hangs
/// until the client's timeout, and the MX sees nothing.
#[test]
fn drop_action_makes_the_smtp_client_time_out() {
    let mut lab = start_lab(LabOptions::edit(|p| p.action("drop")));
    for p in BLOCKED_SYN {
        check_cli(&lab, p, &["-> action drop", "drop (op25b_blocked)"], 1);
    }
    let servers = outside_servers(&lab.up);
    for mx in [MX4, MX6] {
        let mx_addr = sa(mx, SMTP).to_string();
        let r = smtp_client(&lab.sub, &["--dest", &mx_addr, "--timeout", HANG_TIMEOUT]);
        assert_eq!(r["connected"], false, "dynamic -> {mx_addr}: {r}");
        assert_eq!(r["timeout"], true, "dynamic -> {mx_addr} must time out: {r}");
    }
    let mx_seen = servers.connects("mx");
    assert!(mx_seen.is_empty(), "the outside MX saw connections: {mx_seen:?}");
    drop(servers);
    let c = lab.stop();
    println!("{c}");
    assert!(c.get("op25b_blocked") >= 2, "{c}");
    assert_eq!(c.get("op25b_blocked"), c.get("drop_op25b_blocked"), "{c}");
}

/// block_inbound = true (IP25B): a new connection from outside to port 25 of a
/// dynamic address never arrives (the client times out), while port 25 of an
/// exempt address and port 587 of the dynamic address take whole messages.
#[test]
fn block_inbound_drops_new_connections_to_dynamic_port_25() {
    let mut lab = start_lab(LabOptions::edit(|p| p.op25b("block_inbound", true)));
    for (p, status, expect) in [
        ("tcp 203.0.113.25:40000 -> 100.64.1.10:25 syn", 1, "ip25b"),
        ("tcp [2001:db8:203::25]:40000 -> [2001:db8:100:1::10]:25 syn", 1, "ip25b"),
        ("tcp 203.0.113.25:40000 -> 100.64.9.10:25 syn", 0, "forward"),
        ("tcp 203.0.113.25:40000 -> 100.64.1.10:587 syn", 0, "forward"),
    ] {
        check_cli(&lab, p, &["inbound", expect], status);
    }
    let servers = SmtpServer::start(
        &lab.sub,
        &[
            ("dynamic", sa(DYN4, SMTP)),
            ("dynamic", sa(DYN6, SMTP)),
            ("exempt", sa(STATIC4, SMTP)),
            ("exempt", sa(STATIC6, SMTP)),
            ("dynamic-587", sa(DYN4, SUBMISSION)),
            ("dynamic-587", sa(DYN6, SUBMISSION)),
        ],
    );
    for (outside, dynamic, exempt) in [(MX4, DYN4, STATIC4), (MX6, DYN6, STATIC6)] {
        let dst = sa(dynamic, SMTP).to_string();
        let r = smtp_client(&lab.up, &["--dest", &dst, "--source", outside, "--timeout", HANG_TIMEOUT]);
        assert_eq!(r["connected"], false, "outside -> {dst} must not connect: {r}");
        assert_eq!(r["timeout"], true, "outside -> {dst} must time out (silent drop): {r}");

        for (name, dst) in [("exempt", sa(exempt, SMTP)), ("dynamic-587", sa(dynamic, SUBMISSION))] {
            let tag = format!("ip25b-{dst}");
            let r = smtp_client(
                &lab.up,
                &[
                    "--dest",
                    &dst.to_string(),
                    "--source",
                    outside,
                    "--timeout",
                    CLIENT_TIMEOUT,
                    "--send",
                    "--tag",
                    &tag,
                ],
            );
            assert_eq!(r["accepted"], true, "outside -> {dst}: {r}");
            let m = servers.message(name, &tag).unwrap_or_else(|| panic!("{name} did not record message {tag}"));
            assert_eq!(peer_ip(&m.peer), Some(ip(outside)), "{m:?}");
        }
    }
    let seen = servers.connects("dynamic");
    assert!(seen.is_empty(), "port 25 of the dynamic address was reached: {seen:?}");
    drop(servers);
    let c = lab.stop();
    println!("{c}");
    // The SYN and its retransmission, per family.
    assert!(c.get("drop_ip25b_blocked") >= 2, "{c}");
    assert_eq!(c.get("op25b_blocked"), 0, "{c}");
}

/// reply_rate = 5, reply_burst = 10, action = "reject": first a real SMTP
/// client (from its own dynamic address, so its own bucket) is refused at
/// once; then a dynamic subscriber sends 200 SYNs to the MX's port 25 in 2 s
/// per IP family (each SYN exactly once). At least the burst and at most
/// burst + rate x elapsed (+ slack) get a RST; the router's counters match what
/// the client saw exactly: one RST per refused connect, one rate-limited drop
/// per unanswered one.
#[test]
fn reply_rate_limits_rsts_under_a_syn_flood() {
    const RATE: f64 = 5.0;
    const BURST: u64 = 10;
    const COUNT: u64 = 200;
    let mut lab = start_lab(LabOptions::edit(|p| p.op25b("reply_rate", 5).op25b("reply_burst", 10)));
    for p in BLOCKED_SYN {
        check_cli(&lab, p, &["-> action reject", "tcp_rst"], 1);
    }
    // A second dynamic subscriber, with a bucket of its own.
    let (other_v4, other_v6) = ("100.64.1.11", "2001:db8:100:1::11");
    lab.sub_ip(&["addr", "add", &format!("{other_v4}/32"), "dev", "lo"]);
    lab.sub_ip(&["addr", "add", &format!("{other_v6}/128"), "dev", "lo", "nodad"]);
    let servers = outside_servers(&lab.up);
    for (src, mx) in [(other_v4, MX4), (other_v6, MX6)] {
        let mx_addr = sa(mx, SMTP).to_string();
        let r = smtp_client(&lab.sub, &["--dest", &mx_addr, "--source", src, "--timeout", CLIENT_TIMEOUT, "--send"]);
        assert_failed_at_once(&r, "ECONNREFUSED", &format!("{src} -> {mx_addr} (reject)"));
    }

    let floods: Vec<(String, Child)> = [(DYN4, MX4), (DYN6, MX6)]
        .into_iter()
        .map(|(src, mx)| {
            let dest = sa(mx, SMTP).to_string();
            let child = Command::new("ip")
                .args(["netns", "exec", &lab.sub, PYTHON, SCRIPT, "flood"])
                .args(["--dest", &dest, "--source", src, "--count", &COUNT.to_string()])
                .args(["--duration", "2.0", "--hold", "0.8"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start the flood: {e}"));
            (format!("{src} -> {dest}"), child)
        })
        .collect();
    // Reap every flood (each stops by itself after about 3 s) before any
    // assertion, so no process outlives a failure.
    let outputs: Vec<_> = floods.into_iter().map(|(what, child)| (what, child.wait_with_output())).collect();
    let mut refused_total = 0;
    let mut unanswered_total = 0;
    for (what, out) in outputs {
        let out = out.unwrap_or_else(|e| panic!("flood {what}: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "flood {what} failed ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        println!("flood {what}: {}", stdout.trim());
        let r: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("flood output {stdout:?}: {e}"));
        let n = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("flood {what}: no {k}: {r}"));
        let (refused, unanswered) = (n("refused"), n("unanswered"));
        let seconds = r["send_seconds"].as_f64().unwrap_or(f64::NAN);
        assert_eq!(n("sent"), COUNT, "{what}: {r}");
        assert_eq!(n("connected"), 0, "{what}: a blocked connect succeeded: {r}");
        assert_eq!(n("other"), 0, "{what}: unexpected errors: {r}");
        assert_eq!(refused + unanswered, COUNT, "{what}: {r}");
        assert!(refused >= BURST, "{what}: fewer RSTs than the burst of {BURST}: {r}");
        // The bucket starts full and refills at RATE while the SYNs arrive; the
        // slack covers the scheduling delay between this clock and the router's.
        let bound = BURST as f64 + RATE * (seconds + 0.2) + 2.0;
        assert!(
            (refused as f64) <= bound,
            "{what}: {refused} RSTs in {seconds} s exceeds burst + rate x time = {bound:.1}: {r}"
        );
        refused_total += refused;
        unanswered_total += unanswered;
    }
    let mx_seen = servers.connects("mx");
    assert!(mx_seen.is_empty(), "the outside MX saw connections: {mx_seen:?}");
    drop(servers);

    let c = lab.stop();
    println!("{c}");
    // Plus the two refused SMTP connects from the other subscriber.
    assert_eq!(c.get("reply_tcp_rst"), refused_total + 2, "{c}");
    assert_eq!(c.get("drop_reply_rate_limited"), unanswered_total, "{c}");
    assert!(c.get("drop_reply_rate_limited") > 0, "{c}");
    assert_eq!(c.get("op25b_blocked"), 2 * COUNT + 2, "{c}");
}
