//! op25b's metrics against the Prometheus toolchain: a running op25b's
//! `/metrics` in the classic text and in OpenMetrics, each as its `Accept`
//! header asks; the classic answer linted clean by `promtool check metrics`
//! (which reads the classic text only: on OpenMetrics it can but report each
//! counter, whose family is named without `_total`, as lacking help), the
//! OpenMetrics answer read by a strict OpenMetrics parser (the Python
//! client's) as the same families; the shipped alert and recording rules checked and
//! unit-tested by promtool; every metric the rules and the Grafana dashboard
//! name is one a scrape shows; the kernel's TUN queue drops as op25b reports them.
//!
//! promtool comes with Debian's `prometheus` package, the parser with
//! `python3-prometheus-client` (scripts/setup.sh installs both); a missing one
//! fails the tests, it never skips them.

#[allow(dead_code)]
mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const OPENMETRICS: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
const CLASSIC: &str = "text/plain; version=0.0.4";

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    l.local_addr().expect("its address").port()
}

/// An HTTP answer: status code, header block, body.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn content_type(&self) -> &str {
        self.head
            .lines()
            .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-type")))
            .map_or("", |(_, v)| v.trim())
    }
}

/// `GET path` with an optional `Accept` header, retried until something
/// listens on `addr` (bounded).
fn get(addr: SocketAddr, path: &str, accept: Option<&str>) -> Answer {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(mut s) => {
                s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
                let accept = accept.map(|a| format!("Accept: {a}\r\n")).unwrap_or_default();
                write!(s, "GET {path} HTTP/1.1\r\nHost: op25b\r\n{accept}Connection: close\r\n\r\n").expect("request");
                let mut text = String::new();
                s.read_to_string(&mut text).expect("response");
                let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP body: {text}"));
                let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
                return Answer { status, head: head.to_string(), body: body.to_string() };
            }
            Err(e) => {
                assert!(Instant::now() < deadline, "nothing listens on {addr}: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A lab op25b with its metrics listener on the root namespace's loopback,
/// after a blocked SYN and a ping, so that counters have values.
fn lab_with_metrics() -> (Lab, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("address");
    let lab = Lab::start(LabOptions::edit(|p| p.control("metrics", format!("\"{addr}\""))));
    let e = lab.connect(None, sa(MX4, 25), Duration::from_secs(3)).expect_err("port 25 is blocked");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
    let (ok, out) = lab.ping(&["-c1", "-W2", MX4]);
    assert!(ok, "{out}");
    (lab, addr)
}

/// A series' value in a scrape.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn each_format_as_asked_promtool_clean_classic_and_strictly_valid_openmetrics() {
    let (lab, addr) = lab_with_metrics();
    // No Accept, or the classic one: the classic text, which promtool lints clean.
    for accept in [None, Some(CLASSIC), Some("*/*")] {
        let a = get(addr, "/metrics", accept);
        assert_eq!(a.status, 200, "{accept:?}: {}", a.head);
        assert_eq!(a.content_type(), "text/plain; version=0.0.4; charset=utf-8", "{accept:?}");
        assert!(!a.body.contains("# EOF"), "{accept:?}");
        let out = promtool(&["check", "metrics"], &a.body);
        let problems = findings(&out);
        assert!(out.status.success() && problems.is_empty(), "{accept:?}: promtool check metrics: {problems:#?}");
        assert_eq!(value(&a.body, r#"op25b_blocked_packets_total{action="reject"}"#), Some(1.0), "{}", a.body);
        assert_eq!(value(&a.body, r#"op25b_reply_packets_total{direction="outbound",kind="tcp_rst"}"#), Some(1.0));
        let forwarded = value(&a.body, r#"op25b_packets_total{direction="outbound",verdict="forward"}"#);
        assert!(forwarded.is_some_and(|n| n >= 1.0), "the echo request: {forwarded:?}");
        assert!(value(&a.body, "process_cpu_seconds_total").is_some_and(|v| v >= 0.0), "{}", a.body);
        for name in ["process_resident_memory_bytes", "process_virtual_memory_bytes", "process_open_fds"] {
            assert!(value(&a.body, name).is_some_and(|v| v > 0.0), "{name} in\n{}", a.body);
        }
        assert!(value(&a.body, "process_max_fds").is_some_and(|v| v >= 1.0), "{}", a.body);
        let start = value(&a.body, "process_start_time_seconds").expect("process_start_time_seconds");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        assert!(start <= now && now - start < 300.0, "op25b started {start}, now {now}");
        let info = a.body.lines().find(|l| l.starts_with("op25b_build_info{")).expect("op25b_build_info");
        assert!(info.contains("revision=\"") && !info.contains("revision=\"\""), "{info}");
    }
    // OpenMetrics when asked for (what Prometheus sends by default).
    let a = get(addr, "/metrics", Some(OPENMETRICS));
    assert_eq!(a.status, 200);
    assert_eq!(a.content_type(), "application/openmetrics-text; version=1.0.0; charset=utf-8");
    assert!(a.body.ends_with("# EOF\n"), "{}", a.body);
    assert_eq!(value(&a.body, r#"op25b_blocked_packets_total{action="reject"}"#), Some(1.0), "{}", a.body);
    // promtool lints only the classic text: an OpenMetrics counter's family
    // (`# HELP op25b_x`) is named without the `_total` its sample carries, so
    // promtool reports each counter sample as having no help text, and
    // nothing else. Every one of those families must be a counter with help.
    let out = promtool(&["check", "metrics"], &a.body);
    let counters: BTreeSet<&str> =
        a.body.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let helped: BTreeSet<&str> = a.body.lines().filter_map(|l| l.strip_prefix("# HELP ")?.split(' ').next()).collect();
    for line in findings(&out) {
        let family =
            line.strip_suffix("_total no help text").unwrap_or_else(|| panic!("promtool on OpenMetrics: {line}"));
        assert!(counters.contains(family) && helped.contains(family), "{line}");
    }
    // So the OpenMetrics answer goes through a strict OpenMetrics parser (the
    // Python client's), which must find the same families as the classic one.
    let families = openmetrics_families(&a.body);
    let classic = get(addr, "/metrics", None).body;
    let classic: BTreeSet<String> = classic
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split_once(' '))
        .map(|(n, t)| format!("{n} {t}"))
        .collect();
    let om: BTreeSet<String> = families
        .iter()
        .map(|(n, t)| if t == "counter" { format!("{n}_total {t}") } else { format!("{n} {t}") })
        .collect();
    assert_eq!(om, classic, "the two formats describe different metrics");
    drop(lab);
}

/// The families (name, type) of an OpenMetrics text as the Python client's
/// strict parser reads them; a parse error fails the test.
fn openmetrics_families(text: &str) -> Vec<(String, String)> {
    const PARSE: &str = "import sys\n\
        from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse\n\
        for f in parse(sys.stdin.read()):\n    print(f.name, f.type)\n";
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write");
    let out = child.wait_with_output().expect("python3 ends");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the OpenMetrics parser (install python3-prometheus-client: scripts/setup.sh) refused it: {err}\n{text}"
    );
    let listing = String::from_utf8_lossy(&out.stdout).to_string();
    listing.lines().filter_map(|l| l.split_once(' ')).map(|(n, t)| (n.to_string(), t.to_string())).collect()
}

#[test]
fn healthz_answers_ok_from_a_running_op25b() {
    let (lab, addr) = lab_with_metrics();
    let a = get(addr, "/healthz", None);
    assert_eq!((a.status, a.body.as_str()), (200, "ok\n"), "{}", a.head);
    drop(lab);
}

#[test]
fn the_shipped_rules_pass_promtool_check_and_their_unit_tests() {
    let rules = repo("packaging/prometheus/op25b.rules.yml");
    let tests = repo("packaging/prometheus/op25b.rules.test.yml");
    let out = Command::new("promtool").args(["check", "rules"]).arg(&rules).output().unwrap_or_else(|e| {
        panic!("cannot run promtool ({e}): install Debian's prometheus package (scripts/setup.sh)")
    });
    let text = findings(&out).join("\n");
    assert!(out.status.success(), "promtool check rules:\n{text}");
    assert!(text.contains("SUCCESS") && !text.contains("WARNING"), "{text}");
    let out = Command::new("promtool").args(["test", "rules"]).arg(&tests).output().expect("promtool runs");
    let text = findings(&out).join("\n");
    assert!(out.status.success() && text.contains("SUCCESS"), "promtool test rules:\n{text}");
}

/// The metric names (`op25b_*`, `process_*`) a PromQL expression uses:
/// identifiers outside string literals.
fn metric_names(expr: &str, into: &mut BTreeSet<String>) {
    let mut chars = expr.chars().peekable();
    let mut word = String::new();
    let mut flush = |word: &mut String| {
        if word.starts_with("op25b_") || word.starts_with("process_") {
            into.insert(word.clone());
        }
        word.clear();
    };
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                flush(&mut word);
                while let Some(d) = chars.next() {
                    match d {
                        '\\' => {
                            chars.next();
                        }
                        d if d == c => break,
                        _ => {}
                    }
                }
            }
            c if c.is_ascii_alphanumeric() || c == '_' || c == ':' => word.push(c),
            _ => flush(&mut word),
        }
    }
    flush(&mut word);
}

/// Every `expr` (and templating `query`) string in the dashboard's JSON.
fn dashboard_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr" | "query", serde_json::Value::String(s)) => out.push(s.clone()),
                    ("query", serde_json::Value::Object(q)) => {
                        if let Some(s) = q.get("query").and_then(|s| s.as_str()) {
                            out.push(s.to_string());
                        }
                    }
                    _ => dashboard_exprs(x, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| dashboard_exprs(x, out)),
        _ => {}
    }
}

/// The rules' expressions and the unit tests' input series.
fn rules_exprs() -> (Vec<String>, Vec<String>) {
    use yaml_rust2::YamlLoader;
    let load = |p: &str| {
        let text = std::fs::read_to_string(repo(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
        YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{p}: {e}")).remove(0)
    };
    let rules = load("packaging/prometheus/op25b.rules.yml");
    let exprs: Vec<String> = rules["groups"]
        .as_vec()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_vec().expect("rules").iter())
        .map(|r| r["expr"].as_str().expect("every rule has an expr").to_string())
        .collect();
    let tests = load("packaging/prometheus/op25b.rules.test.yml");
    let series: Vec<String> = tests["tests"]
        .as_vec()
        .expect("tests")
        .iter()
        .flat_map(|t| t["input_series"].as_vec().expect("input_series").iter())
        .map(|s| s["series"].as_str().expect("series").to_string())
        .collect();
    (exprs, series)
}

#[test]
fn the_rules_and_the_dashboard_name_only_metrics_op25b_exports() {
    let (lab, addr) = lab_with_metrics();
    let scrape = get(addr, "/metrics", None).body;
    drop(lab);
    // Classic text: the TYPE line names a family as its samples are named.
    let exported: BTreeSet<String> =
        scrape.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next().map(str::to_string)).collect();
    assert!(exported.len() > 30, "{scrape}");
    // A TUN upstream has no neighbour table (tests/uplink_matrix.rs checks an Ethernet one's).
    assert!(!exported.iter().any(|n| n.starts_with("op25b_neighbour")), "{scrape}");

    let text = std::fs::read_to_string(repo("packaging/grafana/op25b.json")).expect("the dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard, &mut exprs);
    let (rules, series) = rules_exprs();
    for (what, list) in [("dashboard", &exprs), ("rules", &rules), ("rule tests' input series", &series)] {
        let mut names = BTreeSet::new();
        for e in list.iter() {
            metric_names(e, &mut names);
        }
        assert!(!names.is_empty(), "{what}: no metric named in {list:?}");
        let unknown: Vec<&String> = names.difference(&exported).collect();
        assert!(unknown.is_empty(), "{what} names metrics op25b does not export: {unknown:?}");
        println!("{what}: {} expressions, metrics {names:?}", list.len());
    }
    // What the dashboard shows: traffic by verdict, blocked by action,
    // replies, drops by reason, devices, reloads, abuse.
    let mut shown = BTreeSet::new();
    exprs.iter().for_each(|e| metric_names(e, &mut shown));
    for want in [
        "op25b_packets_total",
        "op25b_blocked_packets_total",
        "op25b_reply_packets_total",
        "op25b_dropped_packets_total",
        "op25b_device_rx_packets_total",
        "op25b_device_tx_errors_total",
        "op25b_device_queue_dropped_packets_total",
        "op25b_config_reloads_total",
        "op25b_abuse_quarantined_subscribers",
    ] {
        assert!(shown.contains(want), "the dashboard does not show {want}");
    }
}

#[test]
fn metric_names_are_read_outside_strings() {
    let mut names = BTreeSet::new();
    metric_names(
        r#"sum by (reason) (rate(op25b_dropped_packets_total{reason!="op25b_x"}[5m])) / on() process_open_fds > 0 and op25b:recorded"#,
        &mut names,
    );
    let want: BTreeSet<String> = ["op25b_dropped_packets_total", "process_open_fds"].map(String::from).into();
    assert_eq!(names, want);
}

/// `tx_dropped` of `dev` in `ns`, as `ip -s` shows it.
fn kernel_tx_dropped(ns: &str, dev: &str) -> u64 {
    let out = Command::new("ip").args(["-n", ns, "-s", "-j", "link", "show", "dev", dev]).output().expect("ip runs");
    assert!(out.status.success(), "ip -s link: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j is JSON");
    v[0]["stats64"]["tx"]["dropped"].as_u64().unwrap_or_else(|| panic!("no tx dropped in {v}"))
}

/// Packets the kernel drops at a TUN device's queue while op25b does not
/// read (here: stopped with SIGSTOP during a burst) are op25b's
/// `op25b_device_queue_dropped_packets_total`, the device's own `tx_dropped`.
#[test]
fn tun_queue_drops_are_the_devices_tx_dropped() {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("address");
    let lab = Lab::start(LabOptions::edit(|p| p.control("metrics", format!("\"{addr}\"")).dataplane("queue_len", 16)));
    let series =
        |text: &str, dev: &str| value(text, &format!("op25b_device_queue_dropped_packets_total{{device=\"{dev}\"}}"));
    let before = get(addr, "/metrics", None).body;
    assert_eq!((series(&before, "subscriber"), series(&before, "upstream")), (Some(0.0), Some(0.0)), "{before}");

    const BURST: usize = 200;
    lab.signal(Signal::SIGSTOP);
    let sent = in_netns(&lab.sub, || {
        let s = std::net::UdpSocket::bind((ip(DYN4), 0)).expect("a UDP socket");
        (0..BURST).filter(|_| s.send_to(b"burst", sa(MX4, 9)).is_ok()).count()
    });
    lab.signal(Signal::SIGCONT);
    let kernel = kernel_tx_dropped(&lab.sub, SUB_TUN);
    let after = get(addr, "/metrics", None).body;
    println!("{sent} UDP packets sent while op25b was stopped; queue of 16; the kernel dropped {kernel}");
    assert!(sent == BURST && kernel >= (BURST - 16) as u64, "{sent} sent, {kernel} dropped");
    assert_eq!(series(&after, "subscriber"), Some(kernel as f64), "{after}");
    assert_eq!(series(&after, "upstream"), Some(kernel_tx_dropped(&lab.up, UP_TUN) as f64));
    drop(lab);
}
