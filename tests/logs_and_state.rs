//! The files a running op25b writes, between namespaces with real TCP:
//! the events file rotated under a steady stream of blocked SYNs, by hand
//! (`mv`, then a reload) and by logrotate with the packaged file, loses no
//! line and duplicates none, and the capture rotates with it; `[events]` and
//! `[capture]` paths and limits change on reload, and a refused reload still
//! reopens them, while turning one off or moving the control socket is
//! refused in words; the abuse state file keeps a quarantine across a
//! restart and a SIGKILL (a quarantine that ended while op25b was down stays
//! ended, a release is kept too), a damaged one is moved aside with one
//! warning, and a full disk under it is counted while op25b runs on.

#[allow(dead_code)]
mod common;

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use socket2::{Domain, Protocol, Socket, Type};

const WAIT: Duration = Duration::from_secs(10);

/// Files of one test under the temporary directory, removed at the end.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Dir {
        let d = std::env::temp_dir().join(format!("{}-files", unique_base()));
        std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
        Dir(d)
    }
    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0); // a mount point left by a failed test stays
    }
}

fn counters(socket: &Path) -> Value {
    let (code, out, err) = op25b_at(&["stats", "--json"], &[socket]);
    assert_eq!(code, 0, "op25b stats: {err}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    v["stats"]["counters"].clone()
}

/// Every line of `path`: each must end with a newline and parse as JSON.
fn json_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(text.is_empty() || text.ends_with('\n'), "{}: a partial last line", path.display());
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {e}: {l:?}", path.display()))).collect()
}

/// A connection from `src` (bound to `port` when given) to `dst`: true when
/// it was established, false when refused at once.
fn reaches_from(lab: &Lab, src: &str, port: u16, dst: SocketAddr) -> bool {
    in_netns(&lab.sub, || attempt(src, port, dst))
}

/// The same, on a thread already in the subscriber namespace.
fn attempt(src: &str, port: u16, dst: SocketAddr) -> bool {
    let sock = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP)).expect("socket");
    sock.set_reuse_address(true).expect("SO_REUSEADDR");
    sock.bind(&sa(src, port).into()).unwrap_or_else(|e| panic!("bind {src}:{port}: {e}"));
    match sock.connect_timeout(&dst.into(), Duration::from_secs(3)) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => false,
        Err(e) => panic!("{src}:{port} -> {dst}: neither connected nor refused at once: {e}"),
    }
}

/// The pcap records of `path`, checked whole.
fn pcap_records(path: &Path) -> usize {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut r = pcap_file::pcap::PcapReader::new(f).unwrap_or_else(|e| panic!("{}: not a pcap: {e}", path.display()));
    let mut n = 0;
    while let Some(p) = r.next_packet() {
        p.unwrap_or_else(|e| panic!("{}: a broken record after {n}: {e}", path.display()));
        n += 1;
    }
    n
}

/// The shipped /etc/logrotate.d/op25b for one events file, its postrotate
/// sending SIGHUP to `pid` (what `systemctl reload op25b` comes to).
fn logrotate_conf(events: &Path, pid: u32) -> String {
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/op25b.logrotate"))
        .expect("packaging/op25b.logrotate");
    let (pattern, reload) = ("/var/log/op25b/*.jsonl", "systemctl reload op25b >/dev/null 2>&1 || true");
    assert!(shipped.contains(pattern) && shipped.contains(reload), "{shipped}");
    shipped.replace(pattern, events.to_str().expect("utf-8 path")).replace(reload, &format!("kill -HUP {pid}"))
}

#[test]
fn rotating_the_events_file_under_a_stream_of_blocked_syns_loses_and_repeats_no_line() {
    let dir = Dir::new();
    let (events, capture, socket) = (dir.join("events.jsonl"), dir.join("dropped.pcap"), dir.join("op25b.sock"));
    let mut lab = Lab::start(LabOptions::edit(|p| {
        p.events("path", toml_path(&events))
            .events("per_subscriber_per_minute", 1_000_000)
            .capture("dropped", toml_path(&capture))
            .control("socket", toml_path(&socket))
            .unlimited_replies()
    }));
    let (moved, rotated, moved_pcap) =
        (dir.join("events.jsonl.moved"), dir.join("events.jsonl.1"), dir.join("dropped.pcap.moved"));
    let conf = dir.join("logrotate.conf");
    std::fs::write(&conf, logrotate_conf(&events, lab.pid())).expect("logrotate.conf");
    // A steady stream of blocked SYNs, each from its own source port, until
    // the files were rotated twice (bounded in time); each rotation waits
    // for attempts before and after it.
    let first_port = 20_000u16;
    let (made, stop) = (AtomicU32::new(0), AtomicBool::new(false));
    let more = |n: u32| {
        let (from, deadline) = (made.load(Ordering::Relaxed), Instant::now() + WAIT);
        while made.load(Ordering::Relaxed) < from + n {
            assert!(Instant::now() < deadline, "the stream of SYNs stalled");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let sent = std::thread::scope(|s| {
        let stream = s.spawn(|| {
            in_netns(&lab.sub, || {
                let end = Instant::now() + Duration::from_secs(60);
                let mut port = first_port;
                while !stop.load(Ordering::Relaxed) && Instant::now() < end && port < first_port + 40_000 {
                    assert!(!attempt(DYN4, port, sa(MX4, 25)), "port 25 from a dynamic address is refused");
                    port += 1;
                    made.fetch_add(1, Ordering::Relaxed);
                    // Steady, not a flood: the events queue must never be full.
                    std::thread::sleep(Duration::from_micros(500));
                }
                port - first_port
            })
        });
        more(500);
        // By hand, as logrotate does: rename, then reload (SIGHUP).
        std::fs::rename(&events, &moved).expect("mv events.jsonl");
        std::fs::rename(&capture, &moved_pcap).expect("mv dropped.pcap");
        let r = lab.reload(&lab.policy.toml());
        assert!(r.accepted, "{r}");
        more(500);
        // logrotate itself, with the shipped file.
        let out = Command::new("logrotate")
            .args(["--force", "--verbose", "--state"])
            .arg(dir.join("logrotate.state"))
            .arg(&conf)
            .output()
            .unwrap_or_else(|e| panic!("cannot run logrotate (install it: scripts/setup.sh): {e}"));
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "logrotate failed: {text}");
        assert!(text.contains("running postrotate script"), "{text}");
        lab.wait_counters("the reload of logrotate's postrotate", |c| c.get("reloads_accepted") == 2);
        more(500);
        stop.store(true, Ordering::Relaxed);
        stream.join().expect("the stream of SYNs")
    });
    println!("blocked SYNs sent: {sent}");
    assert!(sent > 50, "a stream, not a trickle: {sent}");
    let c = lab.stop();
    assert_eq!((c.get("reloads_accepted"), c.get("reloads_refused")), (2, 0), "by hand and by logrotate: {c}");
    assert_eq!(c.get("events_dropped"), 0, "the queue kept up, so every attempt has its line: {c}");
    assert_eq!(c.get("events_write_errors"), 0, "{c}");
    let files = [json_lines(&moved), json_lines(&rotated), json_lines(&events)];
    let blocked = |lines: &[Value]| -> Vec<String> {
        lines.iter().filter(|e| e["event"] == "blocked").map(|e| e["src"].as_str().unwrap_or("?").to_string()).collect()
    };
    let counts: Vec<usize> = files.iter().map(|f| blocked(f).len()).collect();
    println!("blocked lines in the moved, the rotated and the current file: {counts:?}");
    assert!(counts.iter().all(|n| *n > 0), "each rotation came in the middle of the stream: {counts:?}");
    let reloads: Vec<usize> = files.iter().map(|f| f.iter().filter(|e| e["event"] == "reload").count()).collect();
    assert_eq!(reloads, [0, 1, 1], "each reload's own event opens the file after it");
    let mut all: Vec<String> = files.iter().flat_map(|f| blocked(f)).collect();
    let total = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), total, "no attempt has two lines");
    let mut want: Vec<String> = (0..sent).map(|i| format!("{DYN4}:{}", first_port + i)).collect();
    want.sort();
    assert_eq!(all, want, "every attempt has exactly one line, in one of the files");
    // Time order holds across the files.
    for pair in files.windows(2) {
        let last = pair[0].iter().filter_map(|e| e["ts"].as_str()).max().expect("timestamps");
        let first = pair[1].iter().filter_map(|e| e["ts"].as_str()).min().expect("timestamps");
        assert!(last <= first, "{last} then {first}");
    }
    // The capture was reopened too: both files whole, both with records,
    // and each blocked SYN in one of them.
    let (a, b) = (pcap_records(&moved_pcap), pcap_records(&capture));
    println!("capture records before the rotation: {a}, after: {b}");
    assert!(a > 0 && b > 0, "the capture went on in a new file");
    assert_eq!(c.get("capture_dropped"), 0, "{c}");
    assert_eq!(a + b, total, "each blocked SYN captured once, in one of the two files");
}

#[test]
fn events_and_capture_paths_change_on_reload_and_refusals_name_the_key() {
    let dir = Dir::new();
    let (events, capture) = (dir.join("a/events.jsonl"), dir.join("a/dropped.pcap"));
    let (events2, capture2) = (dir.join("b/events.jsonl"), dir.join("b/dropped.pcap"));
    let mut lab = Lab::start(LabOptions::edit(|p| {
        p.events("path", toml_path(&events)).capture("dropped", toml_path(&capture)).unlimited_replies()
    }));
    assert!(!reaches_from(&lab, DYN4, 0, sa(MX4, 25)));
    let policy = lab.policy.clone();
    // New paths and a new limit: in force at once, the old files left whole.
    let moved = policy
        .clone()
        .events("path", toml_path(&events2))
        .events("per_subscriber_per_minute", 2)
        .capture("dropped", toml_path(&capture2));
    let r = lab.reload(&moved.toml());
    assert!(r.accepted, "{r}");
    for port in 30_000..30_005 {
        assert!(!reaches_from(&lab, DYN4, port, sa(MX4, 25)));
    }
    let deadline = Instant::now() + WAIT;
    while json_lines(&events2).iter().filter(|e| e["event"] == "blocked").count() < 1 {
        assert!(Instant::now() < deadline, "no events in the new file");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let new = json_lines(&events2);
    let blocked = new.iter().filter(|e| e["event"] == "blocked").count();
    // Sampling goes on across the reload: the subscriber's minute had one
    // line before it, so the new limit of two leaves one for the five attempts.
    assert_eq!(blocked, 1, "the new limit samples the five attempts: {new:#?}");
    assert_eq!(
        json_lines(&events).iter().filter(|e| e["event"] == "blocked").count(),
        1,
        "the old file keeps its line"
    );
    let captured = pcap_records(&capture2);
    assert!(captured >= 5 && pcap_records(&capture) >= 1);

    // Turning the events off, or moving the control socket: refused, in words.
    let off = PolicyBuilder::lab()
        .defaults()
        .unlimited_replies()
        .capture("dropped", toml_path(&capture2))
        .devices((SUB_TUN, Some(lab.sub.as_str())), (UP_TUN, Some(lab.up.as_str())));
    // The file is rotated first: a refused reload reopens it all the same.
    let moved_away = dir.join("b/events.jsonl.1");
    std::fs::rename(&events2, &moved_away).expect("mv events.jsonl");
    let r = lab.reload(&off.toml());
    assert!(!r.accepted, "{r}");
    let deadline = Instant::now() + WAIT;
    while std::fs::metadata(&events2).map_or(0, |m| m.len()) == 0 {
        assert!(Instant::now() < deadline, "no reopened events file");
        std::thread::sleep(Duration::from_millis(20));
    }
    let reopened = json_lines(&events2);
    assert!(
        matches!(reopened.as_slice(), [e] if e["event"] == "reload" && e["result"] == "failure"),
        "the refused reload's event opens the reopened file: {reopened:#?}"
    );
    assert_eq!(pcap_records(&capture2), captured, "the capture reopened where it was, nothing lost");
    assert!(
        r.message.contains(&format!(
            "events.path: changed from {} to (none), which needs a restart of op25b",
            toml_path(&events2)
        )),
        "{r}"
    );
    let socket = moved.clone().control("socket", toml_path(&dir.join("other.sock")));
    let r = lab.reload(&socket.toml());
    assert!(!r.accepted && r.message.contains("control.socket: changed from (none) to "), "{r}");
    assert!(!r.message.contains("Some(") && !r.message.contains("Config {"), "no Rust debug output: {r}");
    let c = lab.stop();
    assert_eq!((c.get("reloads_accepted"), c.get("reloads_refused")), (1, 2), "{c}");
}

/// The lab with abuse handling, a control socket and a state file.
fn abuse_lab(dir: &Dir, state: &Path, opts: LabOptions) -> (Lab, PathBuf) {
    let socket = dir.join("op25b.sock");
    let (s, st) = (toml_path(&socket), toml_path(state));
    let policy = opts.policy.clone().control("socket", s).abuse("threshold", 1000).abuse("state_file", st);
    (Lab::start(LabOptions { policy, ..opts }), socket)
}

const OTHER4: &str = "100.64.1.11";

#[test]
fn a_quarantine_survives_a_restart_and_one_that_ended_meanwhile_does_not() {
    let dir = Dir::new();
    let state = dir.join("state/abuse.state");
    let (mut lab, socket) = abuse_lab(&dir, &state, LabOptions::default());
    lab.sub_ip(&["addr", "add", &format!("{OTHER4}/32"), "dev", "lo"]);
    let _servers = Servers::start(&lab.up, &[25, 80]);
    let web = sa(MX4, 80);
    for _ in 0..3 {
        assert!(!reaches_from(&lab, DYN4, 0, sa(MX4, 25)));
    }
    for (who, time) in [(DYN4, "10m"), (OTHER4, "2s")] {
        let (code, out, err) = op25b_at(&["quarantine", who, "--for", time], &[&socket]);
        assert_eq!(code, 0, "{out}{err}");
    }
    assert!(!reaches_from(&lab, DYN4, 0, web) && !reaches_from(&lab, OTHER4, 0, web));
    let tracked_before = counters(&socket)["abuse_tracked"].clone();

    // Down for longer than OTHER4's quarantine.
    lab.restart(Duration::from_secs(3));
    assert!(!reaches_from(&lab, DYN4, 0, web), "still in quarantine after the restart");
    assert!(reaches_from(&lab, OTHER4, 0, web), "a quarantine that ended while op25b was down stays ended");
    let log = lab.log_text();
    let restored: Vec<&str> = log.lines().filter(|l| l.contains("abuse state restored")).collect();
    assert_eq!(restored.len(), 1, "{log}");
    assert!(restored[0].contains("quarantines=1") && restored[0].contains("ended_meanwhile=1"), "{}", restored[0]);
    assert_eq!(counters(&socket)["abuse_tracked"], tracked_before, "the table came back too");
    let (code, out, err) = op25b_at(&["top", "--json"], &[&socket]);
    assert_eq!(code, 0, "{err}");
    let top: Value = serde_json::from_str(&out).expect("top JSON");
    let top = &top["top"];
    assert_eq!((top[0]["subscriber"].as_str(), top[0]["total"].as_u64()), (Some(DYN4), Some(3)), "{top}");
    assert_eq!(top[0]["state"], "quarantined", "{top}");

    // Release works after the restart, and the release is saved too.
    let (code, out, err) = op25b_at(&["release", DYN4], &[&socket]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(reaches_from(&lab, DYN4, 0, web), "released at once");
    lab.restart(Duration::ZERO);
    assert!(reaches_from(&lab, DYN4, 0, web), "a release survives a restart");
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&state).expect("the state file")).expect("JSON");
    assert_eq!(saved["version"], 1, "{saved}");
    assert_eq!(saved["quarantines"], serde_json::json!([]), "{saved}");
    let log = lab.log_text();
    let alarms = log.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR "));
    assert!(alarms.clone().all(|l| l.contains("abuse: quarantine started")), "{log}");
}

/// Waits until the state file at `state` holds `who` as its first
/// quarantine (the abuse thread saves within a second of a change).
fn wait_saved_quarantine(state: &Path, who: &str, what: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let saved = std::fs::read_to_string(state).ok().and_then(|t| serde_json::from_str::<Value>(&t).ok());
        if saved.as_ref().is_some_and(|s| s["quarantines"][0]["subscriber"] == who) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {saved:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_quarantine_survives_a_crash_once_saved() {
    let dir = Dir::new();
    let state = dir.join("abuse.state");
    let (mut lab, socket) = abuse_lab(&dir, &state, LabOptions::default());
    let _servers = Servers::start(&lab.up, &[80]);
    let (code, out, err) = op25b_at(&["quarantine", DYN4, "--for", "10m"], &[&socket]);
    assert_eq!(code, 0, "{out}{err}");
    // Saved within a second of the change, without a stop.
    wait_saved_quarantine(&state, DYN4, "the quarantine was never saved");
    lab.signal(Signal::SIGKILL);
    let (status, _) = lab.wait_exit(WAIT).expect("op25b killed");
    println!("op25b: {status}");
    lab.relaunch();
    assert!(!reaches_from(&lab, DYN4, 0, sa(MX4, 80)), "still in quarantine after the crash");
}

#[test]
fn a_damaged_state_file_is_moved_aside_with_one_warning_and_op25b_starts_empty() {
    let dir = Dir::new();
    let state = dir.join("abuse.state");
    let damaged = b"{\"version\":1,\"saved_at\":17";
    std::fs::write(&state, damaged).expect("the damaged file");
    let (lab, socket) = abuse_lab(&dir, &state, LabOptions::default());
    let _servers = Servers::start(&lab.up, &[80]);
    assert!(reaches_from(&lab, DYN4, 0, sa(MX4, 80)), "nobody in quarantine");
    let log = lab.log_text();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(warnings[0].contains("abuse state not restored") && warnings[0].contains("moved aside"), "{}", warnings[0]);
    let aside: Vec<PathBuf> = std::fs::read_dir(&dir.0)
        .expect("the directory")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains("abuse.state.broken-"))
        .collect();
    assert_eq!(aside.len(), 1, "moved aside, not deleted");
    assert_eq!(std::fs::read(&aside[0]).expect("the moved file"), damaged, "kept as it was");
    // The next change writes a good file.
    let (code, out, err) = op25b_at(&["quarantine", DYN4, "--for", "10m"], &[&socket]);
    assert_eq!(code, 0, "{out}{err}");
    wait_saved_quarantine(&state, DYN4, "no good state file after the quarantine");
}

#[test]
fn a_full_disk_under_the_state_file_is_counted_and_logged_once_and_op25b_runs_on() {
    let dir = Dir::new();
    let mount = dir.join("full");
    std::fs::create_dir_all(&mount).expect("mount point");
    let state = mount.join("abuse.state");
    let opts = LabOptions {
        // op25b in a mount namespace of its own, on a 64 KiB tmpfs that
        // exists only there (and goes with it).
        wrapper: ["unshare", "-m", "--propagation", "private", "sh", "-c"]
            .iter()
            .map(|s| s.to_string())
            .chain([format!("mount -t tmpfs -o size=64k o25t-full {} && exec \"$0\" \"$@\"", mount.display())])
            .collect(),
        ..LabOptions::default()
    };
    let (mut lab, socket) = abuse_lab(&dir, &state, opts);
    let inside = PathBuf::from(format!("/proc/{}/root", lab.pid())).join(mount.strip_prefix("/").expect("absolute"));
    fill(&inside);
    let _servers = Servers::start(&lab.up, &[80, 587]);
    let (code, out, err) = op25b_at(&["quarantine", DYN4, "--for", "10m"], &[&socket]);
    assert_eq!(code, 0, "{out}{err}");
    let deadline = Instant::now() + WAIT;
    while counters(&socket)["abuse_state_write_errors"].as_u64() < Some(2) {
        assert!(Instant::now() < deadline, "no write error counted: {}", counters(&socket));
        // Each blocked attempt is a change to save; saves come at most once a second.
        assert!(!reaches_from(&lab, DYN4, 0, sa(MX4, 25)));
        std::thread::sleep(Duration::from_millis(300));
    }
    // op25b runs on: the quarantine holds in memory, others are forwarded.
    assert!(!reaches_from(&lab, DYN4, 0, sa(MX4, 80)), "the quarantine is in force");
    assert!(reaches_from(&lab, DYN4, 0, sa(MX4, 587)), "the walled garden works");
    assert!(reaches_from(&lab, STATIC4, 0, sa(MX4, 80)), "forwarding goes on");
    let (code, _, err) = op25b_at(&["stats"], &[&socket]);
    assert_eq!(code, 0, "{err}");
    let c = lab.stop();
    assert!(c.get("abuse_state_write_errors") >= 2, "{c}");
    let log = lab.log_text();
    let alarms: Vec<&str> = log
        .lines()
        .filter(|l| (l.contains(" WARN ") || l.contains(" ERROR ")) && !l.contains("abuse: quarantine started"))
        .collect();
    assert_eq!(alarms.len(), 1, "one line for the file:\n{log}");
    assert!(
        alarms[0].contains("cannot write the abuse_state file") && alarms[0].contains("abuse.state"),
        "{}",
        alarms[0]
    );
}
