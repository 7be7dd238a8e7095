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
    assert_eq!(metric(&text, "op25b_blocked_total{action=\"reject\"}"), 2);
    assert_eq!(s["op25b_blocked_by_action"]["reject"], 2);
    assert_eq!(metric(&text, "op25b_replies_total{direction=\"outbound\",kind=\"tcp_rst\"}"), 2);
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
    let line = lab.reload(&lab.policy.clone().rules(COUNT_UDP).toml());
    assert!(line.contains("config reloaded"), "{line}");
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
    let line = lab.reload("[router]\naddresses = [\n");
    assert!(line.contains("reload failed"), "{line}");
    assert_eq!(metric(&get(metrics, "/metrics"), "op25b_config_reloads_total{result=\"failure\"}"), 1);
    drop(lab);
    assert!(!socket.exists(), "op25b removes its socket when it stops");
}
