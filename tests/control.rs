//! The control plane against a running op25b between namespaces: `/metrics`
//! and `op25b stats` report the same counts after real traffic, received
//! equals the sum over verdicts, rule counters survive a reload, and
//! `op25b stats` without a router says so and exits 2.
//!
//! The metrics listener is on the root namespace's loopback (where op25b
//! runs), on a port the test picked free; the traffic stays in the lab.

#[allow(dead_code)]
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const COUNT_587: &str = "[[rule]]\nname = \"count-587\"\nprotocol = \"tcp\"\ndst_ports = [587]\naction = \"count\"\n";
const COUNT_UDP: &str = "[[rule]]\nname = \"count-udp\"\nprotocol = \"udp\"\naction = \"count\"\n";

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    l.local_addr().expect("its address").port()
}

/// `GET path` on the metrics listener, retried until op25b listens (bounded).
fn get(addr: SocketAddr, path: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(mut s) => {
                s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
                write!(s, "GET {path} HTTP/1.1\r\nHost: op25b\r\nConnection: close\r\n\r\n").expect("request");
                let mut text = String::new();
                s.read_to_string(&mut text).expect("response");
                let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP body: {text}"));
                assert!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
                return body.to_string();
            }
            Err(e) => {
                assert!(Instant::now() < deadline, "nothing listens on {addr}: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// `op25b stats ARGS`: (exit code, stdout, stderr).
fn op25b_stats(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_op25b")).arg("stats").args(args).output().expect("op25b stats runs");
    let text = |b: &[u8]| String::from_utf8_lossy(b).to_string();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

/// A series' value in the metrics text (`name{labels} value`).
fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("{series} is not in the metrics:\n{text}")) as u64
}

#[test]
fn stats_without_a_router_exit_2_with_one_line() {
    let missing = std::env::temp_dir().join(format!("{}-none.sock", unique_base()));
    let (code, out, err) = op25b_stats(&["--socket", missing.to_str().expect("utf-8 path")]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.is_empty(), "{out}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("op25b: error: no op25b answers at "), "{err}");
}

#[test]
fn metrics_and_stats_agree_after_traffic_and_rules_survive_a_reload() {
    let socket = std::env::temp_dir().join(format!("{}-control.sock", unique_base()));
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("address");
    let sock = socket.to_str().expect("utf-8 path").to_string();
    let lab = Lab::start(LabOptions::edit(|p| {
        p.control("socket", format!("{sock:?}")).control("metrics", format!("\"{metrics}\"")).rules(COUNT_587)
    }));
    let servers = Servers::start(&lab.up, &[587]);
    assert_eq!(get(metrics, "/healthz"), "ok\n");
    let mode = std::fs::metadata(&socket).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()));
    assert_eq!(mode.expect("the socket exists") & 0o777, 0o600, "socket mode");

    // Two blocked SYNs (refused at once), two connections to 587, pings.
    for (dynamic, mx) in [(DYN4, MX4), (DYN6, MX6)] {
        let e = lab.connect(None, sa(mx, 25), Duration::from_secs(3)).expect_err("port 25 is blocked");
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{dynamic} -> {mx}:25");
        let s = lab.connect(None, sa(mx, 587), Duration::from_secs(3)).expect("587 passes");
        assert!(read_banner(&s).starts_with("220 "));
    }
    let (ok, out) = lab.ping(&["-4", "-c2", "-i0.2", "-W2", MX4]);
    assert!(ok, "{out}");
    std::thread::sleep(Duration::from_millis(300));
    drop(servers);
    std::thread::sleep(Duration::from_millis(300));

    let (code, out, err) = op25b_stats(&["--socket", &sock, "--json"]);
    assert_eq!(code, 0, "{err}");
    let j: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    let text = get(metrics, "/metrics");
    let s = &j["stats"];
    for dir in ["outbound", "inbound"] {
        let d = &s[dir];
        let received = d["received"].as_u64().expect("received");
        assert!(received > 0, "{dir}: {d}");
        let series = |v: &str| metric(&text, &format!("op25b_packets_total{{direction=\"{dir}\",verdict=\"{v}\"}}"));
        let verdicts = series("forward") + series("drop") + series("reply") + series("terminate");
        assert_eq!(metric(&text, &format!("op25b_received_packets_total{{direction=\"{dir}\"}}")), received, "{dir}");
        assert_eq!(verdicts, received, "{dir}: received = the sum over verdicts\n{text}");
        assert_eq!(series("forward"), d["forwarded"].as_u64().expect("forwarded"), "{dir}");
    }
    assert_eq!(metric(&text, "op25b_blocked_packets_total{action=\"reject\"}"), 2);
    assert_eq!(s["op25b_blocked_by_action"]["reject"], 2);
    assert_eq!(metric(&text, "op25b_reply_packets_total{direction=\"outbound\",kind=\"tcp_rst\"}"), 2);
    let rule_packets = metric(&text, "op25b_rule_packets_total{rule=\"count-587\"}");
    assert!(rule_packets >= 6, "two handshakes and their data to 587 matched the rule: {rule_packets}\n{text}");
    assert_eq!(s["rules"][0]["packets"].as_u64(), Some(rule_packets), "{s}");
    assert_eq!(metric(&text, "op25b_config_reloads_total{result=\"success\"}"), 0);

    // The text form: only the lines with something in them.
    let (code, plain, _) = op25b_stats(&["--socket", &sock]);
    assert_eq!(code, 0);
    println!("op25b stats:\n{plain}");
    assert!(plain.contains("outbound reply tcp_rst") && plain.contains("rule count-587 packets"), "{plain}");
    assert!(!plain.contains("drop bad_checksum"), "zero lines are left out:\n{plain}");

    // A reload that adds a rule keeps the count of the one whose name stays.
    let r = lab.reload(&lab.policy.clone().rules(COUNT_UDP).toml());
    assert!(r.accepted, "{r}");
    // Idle workers take the new policy (and its rule list) within a second.
    let deadline = Instant::now() + Duration::from_secs(3);
    let text = loop {
        let text = get(metrics, "/metrics");
        if text.contains("rule=\"count-udp\"") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(metric(&text, "op25b_rule_packets_total{rule=\"count-587\"}"), rule_packets, "{text}");
    assert_eq!(metric(&text, "op25b_rule_packets_total{rule=\"count-udp\"}"), 0);
    assert_eq!(metric(&text, "op25b_config_reloads_total{result=\"success\"}"), 1);
    // A refused reload is counted too.
    let r = lab.reload("[router]\naddresses = [\n");
    assert!(!r.accepted, "{r}");
    assert_eq!(metric(&get(metrics, "/metrics"), "op25b_config_reloads_total{result=\"failure\"}"), 1);
    // `op25b stats --json` has the outcomes too, and what the accepted reload kept.
    let (code, out, err) = op25b_stats(&["--socket", &sock, "--json"]);
    assert_eq!(code, 0, "{err}");
    let j: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    let r = &j["stats"]["reloads"];
    assert_eq!((r["accepted"].as_u64(), r["refused"].as_u64()), (Some(1), Some(1)), "{r}");
    assert_eq!(r["kept"]["reply_buckets"], 1, "the same reply limit keeps its buckets: {r}");
    drop(lab);
    assert!(!socket.exists(), "op25b removes its socket when it stops");
}

/// Sends one SYN from the subscriber namespace to `dst` (a non-blocking
/// connect that is given up at once).
fn syn(lab: &Lab, dst: SocketAddr) {
    in_netns(&lab.sub, || {
        let domain = if dst.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
        let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP)).expect("socket");
        s.set_nonblocking(true).expect("non-blocking");
        // EINPROGRESS: the SYN is on its way.
        let _ = s.connect(&dst.into());
    });
}

fn event_lines(path: &std::path::Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

#[test]
fn one_event_per_blocked_syn_for_each_action_and_sampling_holds_under_a_flood() {
    let expected =
        [("reject", "tcp_rst"), ("drop", "none"), ("icmp", "icmp"), ("banner", "banner"), ("redirect", "redirect")];
    for (action, reply) in expected {
        let events = std::env::temp_dir().join(format!("{}-events.jsonl", unique_base()));
        let path = events.to_str().expect("utf-8 path").to_string();
        let lab = Lab::start(LabOptions::edit(|p| {
            let p = p.action(action).events("path", format!("{path:?}"));
            if action == "redirect" {
                p.op25b("redirect_to", r#"["198.51.100.25:25", "[2001:db8:25::25]:25"]"#)
            } else {
                p
            }
        }));
        for mx in [MX4, MX6] {
            syn(&lab, sa(mx, 25));
        }
        std::thread::sleep(Duration::from_millis(300));
        drop(lab);
        let lines = event_lines(&events);
        let _ = std::fs::remove_file(&events);
        assert_eq!(lines.len(), 2, "{action}: one line per blocked SYN: {lines:?}");
        for (v, (dynamic, mx)) in lines.iter().zip([(DYN4, MX4), (DYN6, MX6)]) {
            assert_eq!(v["event"], "blocked", "{v}");
            assert_eq!(
                (v["action"].as_str(), v["reply"].as_str(), v["rule"].as_str()),
                (Some(action), Some(reply), Some("op25b")),
                "{v}"
            );
            assert_eq!(v["dst"].as_str(), Some(sa(mx, 25).to_string().as_str()), "{v}");
            assert!(v["src"].as_str().is_some_and(|s| s.contains(dynamic)), "{v}");
            let who = if dynamic.contains(':') { "2001:db8:100:1::/64" } else { DYN4 };
            assert_eq!(v["subscriber"], who, "{v}");
            assert!(v["ts"].as_str().is_some_and(|t| t.ends_with('Z') && t.contains('T')), "{v}");
        }
    }

    // A flood of 1,000 blocked SYNs from one subscriber: at most 10 lines in its minute.
    let events = std::env::temp_dir().join(format!("{}-flood.jsonl", unique_base()));
    let path = events.to_str().expect("utf-8 path").to_string();
    let opts = LabOptions::edit(|p| p.events("path", format!("{path:?}")).events("per_subscriber_per_minute", 10));
    let mut lab = Lab::start(LabOptions { log_json: true, ..opts });
    for _ in 0..1000 {
        syn(&lab, sa(MX4, 25));
    }
    std::thread::sleep(Duration::from_millis(300));
    // A reload is an event too.
    let r = lab.reload(&lab.policy.clone().op25b("ports", "[25, 2525]").toml());
    assert!(r.accepted, "{r}");
    let c = lab.stop();
    // --log-format json: op25b's own log lines are JSON objects too.
    let log = lab.log_text();
    assert!(log.lines().count() >= 3, "{log}");
    for l in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {l}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{l}");
    }
    let lines = event_lines(&events);
    let _ = std::fs::remove_file(&events);
    let blocked: Vec<&Value> = lines.iter().filter(|v| v["event"] == "blocked").collect();
    assert_eq!(blocked.len(), 10, "the sampling bound: {} lines", blocked.len());
    assert!(blocked.iter().all(|v| v["subscriber"] == DYN4));
    assert_eq!(c.get("op25b_blocked"), 1000, "{c}");
    let reloads: Vec<&Value> = lines.iter().filter(|v| v["event"] == "reload").collect();
    assert_eq!(reloads.len(), 1, "{lines:?}");
    assert_eq!(reloads[0]["result"], "success");
}

#[test]
fn the_dropped_capture_holds_what_was_not_forwarded_and_replays_to_the_same_verdicts() {
    let pcap = std::env::temp_dir().join(format!("{}-dropped.pcap", unique_base()));
    let path = pcap.to_str().expect("utf-8 path").to_string();
    let mut lab = Lab::start(LabOptions::edit(|p| p.capture("dropped", format!("{path:?}"))));
    let servers = Servers::start(&lab.up, &[587]);
    for (dynamic, mx, router) in [(DYN4, MX4, ROUTER4), (DYN6, MX6, ROUTER6)] {
        let e = lab.connect(None, sa(mx, 25), Duration::from_secs(3)).expect_err("port 25 is blocked");
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{dynamic}");
        let s = lab.connect(None, sa(mx, 587), Duration::from_secs(3)).expect("587 passes");
        assert!(read_banner(&s).starts_with("220 "));
        let family = if mx.contains(':') { "-6" } else { "-4" };
        let (ok, out) = lab.ping(&[family, "-c2", "-i0.2", "-W2", router]);
        assert!(ok, "{out}");
        let _ = lab.ping(&[family, "-c1", "-W2", "-t1", mx]);
    }
    std::thread::sleep(Duration::from_millis(300));
    drop(servers);
    let c = lab.stop();
    let not_forwarded: u64 = ["outbound", "inbound"]
        .iter()
        .map(|d| {
            let d = c.dir(d);
            let sum = |k: &str| d[k].as_object().map_or(0, |m| m.values().filter_map(Value::as_u64).sum::<u64>());
            sum("dropped") + sum("replies") + d["terminated"].as_u64().unwrap_or(0)
        })
        .sum();
    assert!(not_forwarded >= 8, "blocked SYNs, echo requests, expired pings: {c}");
    assert_eq!(c.get("capture_dropped"), 0, "{c}");

    // Every packet that was not forwarded, as it arrived, and nothing else.
    let out = Command::new("tcpdump").args(["-nn", "-r", &path]).output().expect("tcpdump runs");
    let listing = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "tcpdump -r: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(listing.lines().count() as u64, not_forwarded, "{listing}");

    // Replayed through the same config: the same verdicts, reason by reason.
    let out = Command::new(env!("CARGO_BIN_EXE_op25b"))
        .args(["replay", "--json", "--config"])
        .arg(&lab.config)
        .arg(&pcap)
        .output()
        .expect("op25b replay runs");
    assert!(out.status.success(), "replay: {}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).expect("replay JSON");
    assert_eq!(r["packets"].as_u64(), Some(not_forwarded), "{r}");
    assert_eq!(r["verdicts"].get("forward"), None, "nothing in it is forwarded: {r}");
    for (kind, n) in r["replies"].as_object().expect("replies") {
        assert_eq!(n.as_u64(), Some(c.get(&format!("reply_{kind}"))), "reply {kind}: {r}\n{c}");
    }
    for (reason, n) in r["drops"].as_object().expect("drops") {
        assert_eq!(n.as_u64(), Some(c.get(&format!("drop_{reason}"))), "drop {reason}: {r}\n{c}");
    }
    let _ = std::fs::remove_file(&pcap);
}
