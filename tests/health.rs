//! `/healthz` follows the data plane's liveness as the systemd watchdog sees
//! it: 200 while both devices are present and every worker loops; 503 with
//! the reason when a worker stalls (a rule given in code holds it, as a
//! wedged worker would be held) or a device is deleted underneath.
//!
//! The data plane and the control plane run in this test's process (the
//! library, as `op25b run` assembles them, without the part that stops on a
//! lost device), between two namespaces of the test's own.

#[allow(dead_code)]
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::*;
use op25b::control::{Control, Hooks};
use op25b::dataplane::{Dataplane, Sinks};
use op25b::packet::PacketView;
use op25b::policy::Place;
use op25b::policy::{Rule, RuleContext, RuleVerdict};

/// Where the stalling rule's packets go (the upstream side; nothing answers).
const STALL_DST: &str = "203.0.113.99";
/// The longest a held worker waits for the gate to open: bounded, so that a
/// failed test cannot hang.
const HOLD_AT_MOST: Duration = Duration::from_secs(30);

/// Holds the worker that judges a UDP packet to [`STALL_DST`] while the gate is shut.
struct Stall {
    shut: Arc<(Mutex<bool>, Condvar)>,
}

impl Rule for Stall {
    fn name(&self) -> &str {
        "stall"
    }

    fn evaluate(&self, packet: &PacketView, _cx: &RuleContext) -> RuleVerdict {
        if packet.protocol != 17 || packet.dst != ip(STALL_DST) {
            return RuleVerdict::NoMatch;
        }
        let (lock, cv) = &*self.shut;
        let shut = lock.lock().unwrap_or_else(|e| e.into_inner());
        let _unused = cv.wait_timeout_while(shut, HOLD_AT_MOST, |shut| *shut);
        RuleVerdict::Drop
    }
}

/// The test's namespaces, deleted when it ends (also on failure).
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in self.0.drain(..) {
            let out = std::process::Command::new("ip").args(["netns", "delete", &ns]).output();
            if !out.is_ok_and(|o| o.status.success()) {
                eprintln!("cleanup: `ip netns delete {ns}` failed");
            }
        }
    }
}

/// `GET /healthz`: status code and body.
fn healthz(addr: SocketAddr) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("the metrics listener answers");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    write!(s, "GET /healthz HTTP/1.1\r\nHost: op25b\r\nConnection: close\r\n\r\n").expect("request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("response");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP body: {text}"));
    (head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0), body.to_string())
}

/// Polls `/healthz` until its status is `want` (bounded).
fn wait_for(addr: SocketAddr, want: u16, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = healthz(addr);
        if status == want {
            return body;
        }
        assert!(Instant::now() < deadline, "{what}: /healthz still answers {status} {body:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn healthz_is_503_while_a_worker_is_stalled_or_a_device_is_gone() {
    preflight(false);
    let base = unique_base();
    let (sub, up) = (format!("{base}-sub"), format!("{base}-up"));
    let mut namespaces = Namespaces(Vec::new());
    for ns in [&sub, &up] {
        ip_cmd(&["netns", "add", ns]);
        namespaces.0.push(ns.clone());
        ip_cmd(&["-n", ns, "link", "set", "lo", "up"]);
    }
    ip_cmd(&["-n", &sub, "addr", "add", &format!("{DYN4}/32"), "dev", "lo"]);
    let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
    let policy = PolicyBuilder::lab()
        .defaults()
        .devices((SUB_TUN, Some(sub.as_str())), (UP_TUN, Some(up.as_str())))
        .control("metrics", format!("\"{addr}\""));
    let path = std::env::temp_dir().join(format!("{base}.toml"));
    let mut config = op25b::Config::parse(&path, &policy.toml()).unwrap_or_else(|e| panic!("the config: {e}"));
    let shut = Arc::new((Mutex::new(true), Condvar::new()));
    let stall: Arc<dyn Rule> = Arc::new(Stall { shut: Arc::clone(&shut) });
    config.policy.attach(&[(Place::First, stall)]).expect("the rule attaches");
    let dp = Dataplane::start(&config, Sinks::default()).unwrap_or_else(|e| panic!("the data plane starts: {e}"));
    let control = Control::start(&config.control, &path, dp.stats_reader(), Hooks::default())
        .unwrap_or_else(|e| panic!("the control plane starts: {e}"))
        .expect("[control] has a metrics address");
    let open_gate = || {
        *shut.0.lock().unwrap_or_else(|e| e.into_inner()) = false;
        shut.1.notify_all();
    };

    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert_eq!(wait_for(addr, 200, "a fresh data plane"), "ok\n");
        ip_cmd(&["-n", &sub, "route", "add", "default", "dev", SUB_TUN, "src", DYN4]);
        // One UDP packet to the stalling destination: its worker stops looping.
        in_netns(&sub, || {
            let s = UdpSocket::bind((ip(DYN4), 0)).expect("a UDP socket");
            s.send_to(b"hold", sa(STALL_DST, 9)).expect("send");
        });
        let body = wait_for(addr, 503, "a held worker");
        println!("held worker: {body:?}");
        assert!(body.starts_with("unhealthy: worker op25b-outbound-") && body.contains("has not looped"), "{body}");
        open_gate();
        assert_eq!(wait_for(addr, 200, "the worker let go"), "ok\n");

        // The subscriber TUN deleted underneath: 503 naming it, and it stays so.
        ip_cmd(&["-n", &sub, "link", "del", SUB_TUN]);
        let body = wait_for(addr, 503, "a deleted device");
        println!("deleted device: {body:?}");
        assert!(body.starts_with(&format!("unhealthy: subscriber device {SUB_TUN} (netns {sub}) is gone")), "{body}");
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(healthz(addr).0, 503);
    }));
    open_gate();
    control.stop();
    let _final_counts = dp.stop();
    drop(namespaces);
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}
