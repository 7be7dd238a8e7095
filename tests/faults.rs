//! Faults under a running op25b, in its own namespaces: a TUN device deleted
//! underneath it (`ip link del`), the namespace of a device deleted
//! (`ip netns delete`), a link set down and up again, and a full disk under
//! every file op25b writes.
//!
//! A lost device must stop op25b with exit status 1 and one log line naming
//! the device (so a supervisor restarts it), never a spinning or chatty
//! half-alive process; a link that goes down and comes back must carry
//! traffic again by itself; a full disk is counted per file, logged once, and
//! forwarding goes on. How long each exit took is printed, never asserted.

#[allow(dead_code)]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Longest wait for op25b to notice a lost device (the namespace watch looks
/// once a second).
const EXIT_WAIT: Duration = Duration::from_secs(10);

/// op25b's log lines at WARN or ERROR.
fn alarms(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).collect()
}

/// A ping each way works through the lab.
fn ping_both(lab: &Lab) {
    let (ok, out) = lab.ping(&["-c", "1", "-W", "2", MX4]);
    assert!(ok, "ping {MX4} through op25b failed:\n{out}");
    let (ok, out) = lab.ping(&["-6", "-c", "1", "-W", "2", MX6]);
    assert!(ok, "ping {MX6} through op25b failed:\n{out}");
}

/// Deletes something of the lab under a running op25b with `fault` and
/// checks that op25b exits with status 1 and one alarm line naming `device`
/// and `also`.
fn lost(what: &str, fault: impl FnOnce(&mut Lab), device: &str, also: &str) {
    preflight(true);
    let mut lab = Lab::start(LabOptions::default());
    ping_both(&lab);
    let t0 = Instant::now();
    fault(&mut lab);
    let exited = lab.wait_exit(EXIT_WAIT);
    let log = lab.log_text();
    let (status, waited) =
        exited.unwrap_or_else(|| panic!("{what}: op25b still runs after {EXIT_WAIT:?}; log:\n{log}"));
    println!("{what}: op25b exited with {status} {:?} after the fault ({waited:?} of waiting)", t0.elapsed());
    assert_eq!(status.code(), Some(1), "{what}: exit status; log:\n{log}");
    let alarms = alarms(&log);
    assert_eq!(alarms.len(), 1, "{what}: one alarm line, got {}:\n{log}", alarms.len());
    let line = alarms[0];
    println!("{what}: {line}");
    assert!(line.contains(" ERROR ") && line.contains(device) && line.contains(also), "{what}: the line: {line}");
}

#[test]
fn a_deleted_subscriber_tun_stops_op25b_with_one_line() {
    lost("ip link del subscriber TUN", |lab| lab.sub_ip(&["link", "del", SUB_TUN]), SUB_TUN, "is gone");
}

#[test]
fn a_deleted_upstream_tun_stops_op25b_with_one_line() {
    lost("ip link del upstream TUN", |lab| lab.up_ip(&["link", "del", UP_TUN]), UP_TUN, "is gone");
}

#[test]
fn a_deleted_subscriber_namespace_stops_op25b_with_one_line() {
    lost(
        "ip netns delete subscriber namespace",
        |lab| {
            let ns = lab.sub.clone();
            lab.delete_netns(&ns);
        },
        SUB_TUN,
        "was deleted",
    );
}

#[test]
fn a_deleted_upstream_namespace_stops_op25b_with_one_line() {
    lost(
        "ip netns delete upstream namespace",
        |lab| {
            let ns = lab.up.clone();
            lab.delete_netns(&ns);
        },
        UP_TUN,
        "was deleted",
    );
}

/// The kernel drops a device's routes when its link goes down: the lab's
/// routes again, as `Lab::start` made them.
fn restore_routes(lab: &Lab) {
    lab.sub_ip(&["route", "replace", "default", "dev", SUB_TUN, "src", DYN4]);
    lab.sub_ip(&["-6", "route", "replace", "default", "dev", SUB_TUN, "src", DYN6]);
    lab.up_ip(&["route", "replace", "100.64.0.0/10", "dev", UP_TUN]);
    lab.up_ip(&["-6", "route", "replace", "2001:db8:100::/48", "dev", UP_TUN]);
}

#[test]
fn a_link_down_and_up_again_resumes_forwarding_by_itself() {
    preflight(true);
    let mut lab = Lab::start(LabOptions::default());
    ping_both(&lab);
    let cpu0 = lab.cpu_time();
    // Each link down in turn while traffic heads for it: op25b's writes to
    // the down device fail (EIO) and are counted, nothing else.
    for (side, dev) in [("subscriber", SUB_TUN), ("upstream", UP_TUN)] {
        let ip_side = |args: &[&str]| if side == "subscriber" { lab.sub_ip(args) } else { lab.up_ip(args) };
        ip_side(&["link", "set", dev, "down"]);
        // Towards the down device: from the other side, whose route stays.
        let out = if side == "subscriber" {
            Command::new("ip")
                .args(["netns", "exec", &lab.up, "ping", "-c", "5", "-i", "0.2", "-W", "1", DYN4])
                .output()
        } else {
            Command::new("ip")
                .args(["netns", "exec", &lab.sub, "ping", "-c", "5", "-i", "0.2", "-W", "1", MX4])
                .output()
        }
        .expect("ping runs");
        assert!(!out.status.success(), "{side} link down, yet pings through it were answered");
        ip_side(&["link", "set", dev, "up"]);
        restore_routes(&lab);
        ping_both(&lab);
        let (ok, out) = Command::new("ip")
            .args(["netns", "exec", &lab.up, "ping", "-c", "1", "-W", "2", DYN4])
            .output()
            .map(|o| (o.status.success(), String::from_utf8_lossy(&o.stdout).to_string()))
            .expect("ping runs");
        assert!(ok, "after the {side} link came back, a ping from outside to {DYN4} failed:\n{out}");
    }
    println!("op25b CPU time over both link faults: {:?}", lab.cpu_time().saturating_sub(cpu0));
    let log = lab.log_text();
    let c = lab.stop();
    assert!(alarms(&log).is_empty(), "a link going down is not worth an alarm:\n{log}");
    let tx_errors = |d: &str| c.json["devices"][d]["tx_errors"].as_u64().expect("tx_errors");
    println!("tx_errors: subscriber {} upstream {}", tx_errors("subscriber"), tx_errors("upstream"));
    assert!(tx_errors("subscriber") > 0 && tx_errors("upstream") > 0, "writes to a down link are counted: {c}");
    for d in ["outbound", "inbound"] {
        let v = c.dir(d);
        let sum: u64 = ["forwarded", "terminated"].iter().map(|k| v[k].as_u64().unwrap()).sum::<u64>()
            + ["dropped", "replies"]
                .iter()
                .map(|k| v[k].as_object().unwrap().values().map(|x| x.as_u64().unwrap()).sum::<u64>())
                .sum::<u64>();
        assert_eq!(v["received"].as_u64(), Some(sum), "{d}: received = sum over verdicts");
    }
}

/// `op25b stats --json` over the control socket.
fn stats(socket: &Path) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_op25b"))
        .args(["stats", "--json", "--socket"])
        .arg(socket)
        .output()
        .expect("op25b stats runs");
    assert!(out.status.success(), "op25b stats: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("op25b stats --json prints JSON")
}

fn counter(v: &Value, name: &str) -> u64 {
    v["stats"]["counters"][name].as_u64().unwrap_or_else(|| panic!("no counter {name}: {v}"))
}

/// Waits (bounded) until `cond` holds of op25b's counters.
fn wait_counters(socket: &Path, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = stats(socket);
        if cond(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within 10 s: {}", v["stats"]["counters"]);
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Blocked SYNs: `n` connects to MX4:25, each refused at once.
fn blocked_syns(lab: &Lab, n: usize) {
    for _ in 0..n {
        let r = lab.connect(None, sa(MX4, 25), Duration::from_secs(2));
        assert!(r.is_err(), "port 25 from a dynamic address must be refused");
    }
}

#[test]
fn a_full_disk_is_counted_and_logged_once_and_forwarding_goes_on() {
    preflight(true);
    let base = unique_base();
    let dir = std::env::temp_dir().join(format!("{base}-full"));
    std::fs::create_dir_all(&dir).expect("mount point");
    let socket = std::env::temp_dir().join(format!("{base}.sock"));
    let (events, capture, stats_file) = (dir.join("events.jsonl"), dir.join("dropped.pcap"), dir.join("stats.json"));
    let opts = LabOptions {
        // op25b in a mount namespace of its own, on a 64 KiB tmpfs that
        // exists only there (and goes with it).
        wrapper: ["unshare", "-m", "--propagation", "private", "sh", "-c"]
            .iter()
            .map(|s| s.to_string())
            .chain([format!("mount -t tmpfs -o size=64k o25t-full {} && exec \"$0\" \"$@\"", dir.display())])
            .collect(),
        stats_file: Some(stats_file.clone()),
        ..LabOptions::edit(|p| {
            p.events("path", toml_path(&events))
                .events("per_subscriber_per_minute", 1000)
                .capture("dropped", toml_path(&capture))
                .control("socket", toml_path(&socket))
        })
    };
    let mut lab = Lab::start(opts);
    // The tmpfs as op25b sees it.
    let inside = PathBuf::from(format!("/proc/{}/root", lab.pid())).join(dir.strip_prefix("/").unwrap());
    wait_counters(&socket, "the control socket answers", |_| true);
    let filler = fill(&inside);

    blocked_syns(&lab, 30);
    lab.signal(Signal::SIGUSR1);
    let v = wait_counters(&socket, "write errors of every file counted", |v| {
        ["events_write_errors", "capture_write_errors", "stats_write_errors"].iter().all(|c| counter(v, c) > 0)
    });
    println!("after the first SYNs: {}", v["stats"]["counters"]);
    // Forwarding goes on: both families, data through a TCP connection.
    ping_both(&lab);
    let servers = Servers::start(&lab.up, &[587]);
    let stream = lab.connect(None, sa(MX4, 587), Duration::from_secs(5)).expect("587 connects");
    assert_eq!(read_banner(&stream), BANNER);
    assert_eq!(send_bulk(stream, 1 << 20).trim(), "250 received 1048576");
    drop(servers);

    // More of the same: counted, not logged again.
    blocked_syns(&lab, 30);
    lab.signal(Signal::SIGUSR1);
    let w = wait_counters(&socket, "more write errors", |w| {
        counter(w, "stats_write_errors") > counter(&v, "stats_write_errors")
            && counter(w, "capture_write_errors") > counter(&v, "capture_write_errors")
    });
    println!("after more SYNs: {}", w["stats"]["counters"]);
    // `op25b stats` shows them to a person too.
    let out = Command::new(env!("CARGO_BIN_EXE_op25b"))
        .args(["stats", "--socket"])
        .arg(&socket)
        .output()
        .expect("op25b stats runs");
    let text = String::from_utf8_lossy(&out.stdout);
    for f in ["events", "capture", "stats"] {
        assert!(text.contains(&format!("{f} file write errors")), "op25b stats shows the {f} write errors:\n{text}");
    }
    assert_eq!(counter(&w, "capture_dropped"), 0, "the capture pool keeps up: {}", w["stats"]["counters"]);
    let log = lab.log_text();
    let alarms = alarms(&log);
    for a in &alarms {
        println!("alarm: {a}");
    }
    assert_eq!(alarms.len(), 3, "one line per file:\n{log}");
    for (file, path) in [("events", &events), ("capture", &capture), ("stats", &stats_file)] {
        let lines: Vec<_> = alarms.iter().filter(|l| l.contains(&format!("cannot write the {file} file"))).collect();
        assert_eq!(lines.len(), 1, "{file}: one line:\n{log}");
        assert!(lines[0].contains(path.to_str().unwrap()), "{file}: the line names the file: {}", lines[0]);
    }

    // Room again: the counters are written.
    std::fs::remove_file(&filler).expect("remove the filler");
    lab.signal(Signal::SIGUSR1);
    let deadline = Instant::now() + Duration::from_secs(10);
    let written = loop {
        if let Ok(text) = std::fs::read_to_string(inside.join("stats.json")) {
            break text;
        }
        assert!(Instant::now() < deadline, "no stats file after the disk had room again");
        std::thread::sleep(Duration::from_millis(50));
    };
    let written: Value = serde_json::from_str(&written).expect("the stats file is JSON");
    assert!(written["counters"]["stats_write_errors"].as_u64() >= Some(2), "{}", written["counters"]);
    let status = lab.stop_status();
    assert!(status.is_some_and(|s| s.success()), "op25b exits cleanly: {status:?}\n{}", lab.log_text());
    assert_eq!(alarms.len(), crate::alarms(&lab.log_text()).len(), "no alarm after the disk had room again");
    drop(lab);
    let _ = std::fs::remove_dir(&dir);
}

#[test]
fn a_namespace_deleted_and_made_again_under_the_same_name_stops_op25b_with_one_line() {
    lost(
        "ip netns delete + add subscriber namespace",
        |lab| {
            // The new namespace under the old name is the lab's to remove again.
            ip_cmd(&["netns", "delete", &lab.sub]);
            ip_cmd(&["netns", "add", &lab.sub]);
        },
        SUB_TUN,
        "now names another network namespace",
    );
}
