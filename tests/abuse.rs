//! Abuse handling against a running op25b between namespaces, with real TCP
//! and UDP clients: a subscriber that keeps trying port 25 outside is
//! reported once and quarantined (it loses port 80 while another subscriber
//! keeps it; DNS and 587 still work), the quarantine ends by itself after
//! its (short) time, `op25b quarantine` and `op25b release` act at once,
//! `op25b top --json` lists the heavy hitter first, and `action = "monitor"`
//! lets port 25 through and reports it.

#[allow(dead_code)]
mod common;

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A second dynamic subscriber in the subscriber namespace.
const OTHER4: &str = "100.64.1.11";
const WAIT: Duration = Duration::from_secs(10);

/// op25b's events file, removed on drop.
struct Files {
    events: PathBuf,
}

impl Files {
    fn new() -> Files {
        Files { events: std::env::temp_dir().join(format!("{}-abuse.jsonl", unique_base())) }
    }

    fn edit(&self, p: PolicyBuilder) -> PolicyBuilder {
        p.events("path", toml_path(&self.events))
    }

    fn events(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.events).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
    }

    /// Waits (bounded) for an event that `pred` accepts.
    fn wait_event(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(e) = self.events().into_iter().find(&pred) {
                return e;
            }
            assert!(Instant::now() < deadline, "no {what} event; the events:\n{:#?}", self.events());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.events);
    }
}

/// The rows of `op25b top --json` (the object's `top`), heaviest first.
fn top_json(socket: &Path) -> Vec<Value> {
    let (code, out, err) = op25b_at(&["top", "--json"], &[socket]);
    assert_eq!(code, 0, "op25b top --json: {out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    v["top"].as_array().unwrap_or_else(|| panic!("an array of rows: {out}")).clone()
}

/// Whether a TCP connection from `src` to `dst` is established (false when refused).
fn reaches(lab: &Lab, src: &str, dst: SocketAddr) -> bool {
    match lab.connect(Some(ip(src)), dst, Duration::from_secs(3)) {
        Ok(_) => true,
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => false,
        Err(e) => panic!("{src} -> {dst}: neither connected nor refused at once: {e}"),
    }
}

/// Waits (bounded) until `src` reaching `dst` is `want`.
fn wait_reaches(lab: &Lab, src: &str, dst: SocketAddr, want: bool) {
    let deadline = Instant::now() + WAIT;
    while reaches(lab, src, dst) != want {
        assert!(
            Instant::now() < deadline,
            "{src} -> {dst} never became {}",
            if want { "reachable" } else { "refused" }
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A DNS-like UDP exchange from `src` to the upstream side's port 53: true
/// when the echo came back.
fn udp_53(lab: &Lab, src: &str) -> bool {
    let server = in_netns(&lab.up, || UdpSocket::bind(sa(MX4, 53)).expect("bind udp/53 upstream"));
    server.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        if let Ok((n, from)) = server.recv_from(&mut buf) {
            let _ = server.send_to(&buf[..n], from);
        }
    });
    let client = in_netns(&lab.sub, || UdpSocket::bind(sa(src, 0)).expect("bind the client"));
    client.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    client.send_to(b"query", sa(MX4, 53)).expect("send");
    let mut buf = [0u8; 512];
    let ok = matches!(client.recv_from(&mut buf), Ok((5, _)));
    let _ = echo.join();
    ok
}

fn subscriber_events<'a>(events: &'a [Value], kind: &str, who: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == kind && e["subscriber"] == who).collect()
}

#[test]
fn a_zombie_is_reported_once_quarantined_and_released() {
    let files = Files::new();
    let lab = Lab::start(
        LabOptions::edit(|p| {
            files
                .edit(p)
                .unlimited_replies()
                .abuse("window", "\"60s\"")
                .abuse("threshold", 5)
                .abuse("destinations_threshold", 100)
                .abuse("on_suspect", "\"quarantine\"")
                .abuse("quarantine_for", "\"3s\"")
        })
        .with_socket(),
    );
    lab.sub_ip(&["addr", "add", &format!("{OTHER4}/32"), "dev", "lo"]);
    let _servers = Servers::start(&lab.up, &[25, 53, 80, 587]);
    let web = sa(MX4, 80);
    assert!(reaches(&lab, DYN4, web), "port 80 works before");

    // The zombie: 8 attempts to port 25 outside, each refused at once. The
    // other subscriber tries twice.
    for _ in 0..8 {
        assert!(!reaches(&lab, DYN4, sa(MX4, 25)));
    }
    for _ in 0..2 {
        assert!(!reaches(&lab, OTHER4, sa(MX4, 25)));
    }
    let suspected = files.wait_event("abuse_suspected", |e| e["event"] == "abuse_suspected");
    assert_eq!(suspected["subscriber"], DYN4, "{suspected}");
    assert_eq!(suspected["attempts"], 5, "reported at the threshold: {suspected}");
    assert_eq!(suspected["samples"], serde_json::json!([MX4]), "{suspected}");
    assert_eq!(suspected["action"], "blocked", "{suspected}");
    files.wait_event("quarantine_start", |e| e["event"] == "quarantine_start" && e["cause"] == "threshold");

    // In quarantine: port 80 is refused for it (RST), not for the other
    // subscriber; DNS and submission still work.
    wait_reaches(&lab, DYN4, web, false);
    assert!(reaches(&lab, OTHER4, web), "another subscriber keeps port 80");
    assert!(reaches(&lab, DYN4, sa(MX4, 587)), "587 stays reachable in quarantine");
    assert!(reaches(&lab, DYN4, sa(MX4, 53)), "tcp/53 stays reachable in quarantine");
    assert!(udp_53(&lab, DYN4), "udp/53 stays reachable in quarantine");

    // It ends by itself after its time.
    wait_reaches(&lab, DYN4, web, true);
    let ended = files.wait_event("quarantine_end", |e| e["event"] == "quarantine_end");
    assert_eq!((ended["subscriber"].as_str(), ended["reason"].as_str()), (Some(DYN4), Some("expired")), "{ended}");

    // By hand: `op25b quarantine` for a long time, then `op25b release`.
    let (code, out, err) = op25b_at(&["quarantine", DYN4, "--for", "10m"], &[lab.socket()]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), format!("{DYN4} in quarantine for 10 min"));
    assert!(!reaches(&lab, DYN4, web), "in force as soon as the command returns");
    let top = top_json(lab.socket());
    assert_eq!(top[0]["subscriber"], DYN4, "the heavy hitter first: {top:?}");
    assert_eq!(top[0]["state"], "quarantined", "{top:?}");
    assert_eq!((top[0]["attempts"].as_u64(), top[0]["total"].as_u64()), (Some(8), Some(8)), "{top:?}");
    assert_eq!(top[0]["destinations"], 1, "{top:?}");
    assert_eq!(top[1]["subscriber"], OTHER4, "{top:?}");
    assert_eq!((top[1]["attempts"].as_u64(), top[1]["state"].as_str()), (Some(2), Some("normal")), "{top:?}");
    for field in ["first_seen", "last_seen"] {
        assert!(top[0][field].as_f64().is_some_and(|t| t > 1.7e9), "{field}: {top:?}");
    }
    let (code, out, err) = op25b_at(&["release", DYN4], &[lab.socket()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(reaches(&lab, DYN4, web), "released at once");
    let (code, _, err) = op25b_at(&["release", DYN4], &[lab.socket()]);
    assert_eq!(code, 1, "not in quarantine any more: {err}");
    assert!(err.contains("not in quarantine"), "{err}");

    // The text screen names both subscribers.
    let (code, out, err) = op25b_at(&["top"], &[lab.socket()]);
    assert_eq!(code, 0, "{err}");
    println!("op25b top:\n{out}");
    assert!(out.starts_with("op25b top: 2 tracked"), "{out}");
    assert!(out.contains(DYN4) && out.contains(OTHER4), "{out}");

    let metrics_like = {
        let (code, out, err) = op25b_at(&["stats", "--json"], &[lab.socket()]);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<Value>(&out).expect("stats JSON")
    };
    let counters = &metrics_like["stats"]["counters"];
    assert_eq!(counters["abuse_tracked"], 2, "{counters}");
    assert!(counters["abuse_refused"].as_u64().is_some_and(|n| n >= 2), "{counters}");
    drop(lab);
    let events = files.events();
    for e in &events {
        println!("event: {e}");
    }
    assert_eq!(subscriber_events(&events, "abuse_suspected", DYN4).len(), 1, "one report per window: {events:#?}");
    assert!(subscriber_events(&events, "abuse_suspected", OTHER4).is_empty());
    let ends: Vec<&str> =
        subscriber_events(&events, "quarantine_end", DYN4).iter().filter_map(|e| e["reason"].as_str()).collect();
    assert_eq!(ends, ["expired", "released"]);
    let starts: Vec<&str> =
        subscriber_events(&events, "quarantine_start", DYN4).iter().filter_map(|e| e["cause"].as_str()).collect();
    assert_eq!(starts, ["threshold", "manual"]);
}

#[test]
fn monitor_lets_port_25_through_and_reports_who_would_be_blocked() {
    let files = Files::new();
    let lab = Lab::start(
        LabOptions::edit(|p| {
            files.edit(p).action("monitor").abuse("threshold", 3).abuse("on_suspect", "\"quarantine\"")
        })
        .with_socket(),
    );
    let servers = Servers::start(&lab.up, &[25, 80]);
    for _ in 0..4 {
        assert!(reaches(&lab, DYN4, sa(MX4, 25)), "monitor blocks nothing");
    }
    let dst6: IpAddr = ip(MX6);
    assert!(reaches(&lab, DYN6, SocketAddr::new(dst6, 25)));
    let blocked = files.wait_event("blocked", |e| e["event"] == "blocked" && e["subscriber"] == DYN4);
    assert_eq!((blocked["action"].as_str(), blocked["reply"].as_str()), (Some("monitor"), Some("none")), "{blocked}");
    let suspected = files.wait_event("abuse_suspected", |e| e["event"] == "abuse_suspected");
    assert_eq!((suspected["subscriber"].as_str(), suspected["action"].as_str()), (Some(DYN4), Some("monitor")));
    // Measuring quarantines nobody.
    assert!(reaches(&lab, DYN4, sa(MX4, 80)));
    let top = top_json(lab.socket());
    assert_eq!((top[0]["subscriber"].as_str(), top[0]["attempts"].as_u64()), (Some(DYN4), Some(4)), "{top:?}");
    assert_eq!(top[0]["state"], "suspected", "{top:?}");
    assert_eq!(servers.accepted_on(sa(MX4, 25)).len(), 4, "every connection reached the outside server");
    let mut lab = lab;
    let c = lab.stop();
    assert!(c.get("op25b_monitored") >= 5, "SYNs, ACKs and FINs of 5 connections");
    assert_eq!(c.get("op25b_blocked"), 0);
    assert!(files.events().iter().all(|e| e["event"] != "quarantine_start"));
}

/// TcpExtTCPSynRetrans of the calling thread's network namespace: SYNs its
/// clients sent again.
fn syn_retransmits() -> u64 {
    let text = std::fs::read_to_string("/proc/thread-self/net/netstat").expect("/proc/thread-self/net/netstat");
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next().unwrap_or_default(), lines.next().unwrap_or_default());
    let at = names.split_whitespace().position(|n| n == "TCPSynRetrans").expect("TCPSynRetrans in netstat");
    values.split_whitespace().nth(at).and_then(|v| v.parse().ok()).expect("a TCPSynRetrans value")
}

#[test]
fn a_retransmitted_syn_is_one_attempt_and_every_syn_one_packet() {
    let files = Files::new();
    let lab = Lab::start(LabOptions::edit(|p| files.edit(p).action("drop").abuse("threshold", 100)).with_socket());
    let before = in_netns(&lab.sub, syn_retransmits);
    // One connect(): nothing answers, so the kernel sends its SYN again
    // (1 s, then 2 s later) until the connect timeout.
    let err = lab.connect(Some(ip(DYN4)), sa(MX4, 25), Duration::from_millis(4500)).expect_err("dropped");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
    let retransmits = in_netns(&lab.sub, syn_retransmits) - before;
    assert!(retransmits >= 1, "the client retransmitted its SYN (else this test shows nothing)");
    let syns = 1 + retransmits;
    println!("one connect(), {syns} SYNs");

    // Abuse handling counted one attempt (once the workers' queue is drained).
    let deadline = Instant::now() + WAIT;
    let stats = loop {
        let (code, out, err) = op25b_at(&["stats", "--json"], &[lab.socket()]);
        assert_eq!(code, 0, "{err}");
        let v: Value = serde_json::from_str(&out).expect("stats JSON");
        if v["stats"]["counters"]["op25b_blocked"].as_u64() == Some(syns) || Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let counters = &stats["stats"]["counters"];
    assert_eq!(counters["op25b_blocked"], syns, "every SYN is a blocked packet: {counters}");
    assert_eq!(counters["drop_op25b_blocked"], syns, "{counters}");
    assert_eq!(counters["op25b_blocked_connections"], 1, "one connection attempt: {counters}");
    assert_eq!(stats["stats"]["op25b_blocked_connections_by_action"]["drop"], 1, "{stats}");
    let deadline = Instant::now() + WAIT;
    let top = loop {
        let top = top_json(lab.socket());
        if !top.is_empty() || Instant::now() > deadline {
            break top;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!((top[0]["subscriber"].as_str(), top[0]["attempts"].as_u64()), (Some(DYN4), Some(1)), "{top:?}");
    files.wait_event("blocked", |e| e["event"] == "blocked");

    let mut lab = lab;
    let c = lab.stop();
    assert_eq!(c.get("op25b_blocked"), syns, "{c}");
    assert_eq!(c.get("op25b_blocked_connections"), 1, "{c}");
    let events = files.events();
    let blocked: Vec<&Value> = events.iter().filter(|e| e["event"] == "blocked").collect();
    assert_eq!(blocked.len(), 1, "one event for one connect(): {events:#?}");
    assert_eq!((blocked[0]["action"].as_str(), blocked[0]["reply"].as_str()), (Some("drop"), Some("none")));
}
