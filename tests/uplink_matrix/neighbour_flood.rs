//! The neighbour cache under floods of forged ARP and NDP frames from the
//! upstream link: counted, bounded, and never displacing the gateway.

use std::io;
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use super::common::{findings, in_netns, promtool};
use super::{listeners, Setup, SERVER4, SERVER6, SUB4, SUB6};

impl Setup {
    /// `stats.neighbours` of `op25b stats --json` (the control socket).
    fn neighbours(&self) -> serde_json::Value {
        let out = Command::new(env!("CARGO_BIN_EXE_op25b"))
            .args(["stats", "--json", "--socket"])
            .arg(self.dir.join("op25b.sock"))
            .output()
            .expect("op25b stats");
        assert!(out.status.success(), "op25b stats: {}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stats --json is JSON");
        v["stats"]["neighbours"].clone()
    }

    /// The metrics text.
    fn metrics(&self) -> String {
        use std::io::{Read, Write};
        let mut c = TcpStream::connect(self.metrics).expect("connect to the metrics listener");
        c.write_all(b"GET /metrics HTTP/1.1\r\nHost: op25b\r\nConnection: close\r\n\r\n").expect("request");
        let mut text = String::new();
        c.read_to_string(&mut text).expect("answer");
        text
    }

    /// Waits (bounded) until the neighbour counters stop moving; their last reading.
    fn settled_neighbours(&self) -> serde_json::Value {
        let t0 = Instant::now();
        let mut last = self.neighbours();
        loop {
            std::thread::sleep(Duration::from_millis(300));
            let now = self.neighbours();
            if now == last || t0.elapsed() > Duration::from_secs(10) {
                return now;
            }
            last = now;
        }
    }
}

fn n(v: &serde_json::Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("no neighbour counter {key} in {v}"))
}

/// Sends `frames` on `dev` of namespace `ns` through an AF_PACKET socket, a
/// hundred at a time with a pause between, so the far socket can keep up.
fn send_frames(ns: &str, dev: &str, frames: &[Vec<u8>]) {
    use nix::libc;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    in_netns(ns, || {
        let ifindex = nix::net::if_::if_nametoindex(dev).expect("the far end of the veth");
        // SAFETY: plain socket(2), owned at once.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        assert!(raw >= 0, "AF_PACKET socket: {}", io::Error::last_os_error());
        // SAFETY: raw is a fresh descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: an all-zero sockaddr_ll is valid; the fields below complete it.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = ifindex as i32;
        let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: sll is a valid sockaddr_ll of that length.
        let rc = unsafe { libc::bind(fd.as_raw_fd(), (&sll as *const libc::sockaddr_ll).cast(), len) };
        assert_eq!(rc, 0, "bind: {}", io::Error::last_os_error());
        for chunk in frames.chunks(100) {
            for f in chunk {
                // SAFETY: f is a live buffer of that length.
                let n = unsafe { libc::send(fd.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
                assert_eq!(n, f.len() as isize, "send: {}", io::Error::last_os_error());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    });
}

/// A flood of forged frames from the link: unsolicited answers (ARP and
/// NDP, every tenth for a gateway), requests for others' addresses and, now
/// and then, for op25b's; and how many of each.
struct Flood {
    frames: Vec<Vec<u8>>,
    answers: u64,
    requests: u64,
    own_requests: u64,
}

impl Flood {
    /// The flood aimed at op25b's interface `own` (its MAC address).
    fn at(own: [u8; 6]) -> Flood {
        use op25b::state::neighbour::wire;
        use smoltcp::wire::ArpOperation;
        let own4: std::net::Ipv4Addr = "198.51.100.2".parse().expect("address");
        let own6: std::net::Ipv6Addr = "2001:db8:1::2".parse().expect("address");
        let forged = |i: u32| [0x02, 0xaa, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8];
        let mut f = Flood { frames: Vec::new(), answers: 0, requests: 0, own_requests: 0 };
        let mut buf = [0u8; 256];
        let mut push = |len: Option<usize>, buf: &[u8]| f.frames.push(buf[..len.expect("a frame")].to_vec());
        for i in 0..4000u32 {
            // An answer nobody asked for, from a forged host; every tenth claims the gateway.
            let sender = if i % 10 == 0 { v4(1) } else { v4(10 + i % 200) };
            push(wire::arp(&mut buf, ArpOperation::Reply, (forged(i), sender), (own, own4), own), &buf);
            // The same in IPv6, every tenth for the gateway.
            let target: std::net::Ipv6Addr = if i % 10 == 0 {
                SERVER6.parse().expect("gw")
            } else {
                format!("2001:db8:1::{:x}", 0x100 + i).parse().expect("v6")
            };
            push(wire::advert(&mut buf, forged(i), target, (own, own6)), &buf);
            f.answers += 2;
            // A request for someone else's address, broadcast.
            push(
                wire::arp(
                    &mut buf,
                    ArpOperation::Request,
                    (forged(i), v4(10 + i % 200)),
                    ([0; 6], v4(100 + i % 100)),
                    [0xff; 6],
                ),
                &buf,
            );
            f.requests += 1;
            if i % 100 == 0 {
                push(
                    wire::arp(
                        &mut buf,
                        ArpOperation::Request,
                        (forged(i), v4(10 + i % 200)),
                        ([0; 6], own4),
                        [0xff; 6],
                    ),
                    &buf,
                );
                f.own_requests += 1;
            }
        }
        f
    }
}

/// 198.51.100.`last`, on the upstream link.
fn v4(last: u32) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(198, 51, 100, last as u8)
}

/// The MAC address of op25b's interface.
fn own_mac(s: &Setup) -> [u8; 6] {
    let out = Command::new("ip")
        .args(["netns", "exec", &s.edge, "cat", "/sys/class/net/u0/address"])
        .output()
        .expect("op25b's interface address");
    let text = String::from_utf8_lossy(&out.stdout);
    let own: Vec<u8> = text.trim().split(':').map(|h| u8::from_str_radix(h, 16).expect("a MAC")).collect();
    own.try_into().expect("six octets")
}

/// Sends `flood` from the far end and checks that it made no entry and moved
/// no gateway, each frame counted; the neighbour figures after it.
fn flood_is_ignored(s: &Setup, before: &serde_json::Value, flood: &Flood) -> serde_json::Value {
    send_frames(&s.inet, "p0", &flood.frames);
    let after = s.settled_neighbours();
    let (answers, requests) = (flood.answers, flood.requests);
    println!(
        "sent {answers} forged answers, {requests} requests for others, {} for op25b: {after}",
        flood.own_requests
    );
    assert_eq!(n(&after, "resolved"), 2, "a forged answer resolved something: {after}");
    assert_eq!(n(&after, "entries"), 2, "a forged frame made an entry: {after}");
    let unsolicited = n(&after, "unsolicited") - n(before, "unsolicited");
    assert!(unsolicited > 0 && unsolicited <= answers, "{unsolicited} of {answers}");
    let not_ours = n(&after, "not_ours") - n(before, "not_ours");
    assert!(not_ours > 0 && not_ours <= requests + 10, "{not_ours} of {requests}");
    assert!(n(&after, "answered") > n(before, "answered"), "{after}");
    // The gateways did not move: traffic still reaches them.
    for (src, dst) in [(SUB4, SERVER4), (SUB6, SERVER6)] {
        s.connect(src, dst, 587).unwrap_or_else(|e| panic!("{dst} after the flood: {e}"));
    }
    after
}

/// op25b's own lookups: a hundred silent on-link hosts, then six packets to
/// one more; checks the table stays bounded, evicts, holds, drops and gives
/// up. The neighbour figures once the hops were given up.
fn silent_hops_are_given_up(s: &Setup, after: &serde_json::Value) -> serde_json::Value {
    in_netns(&s.sub, || {
        let sock = std::net::UdpSocket::bind((SUB4, 0)).expect("udp");
        for last in 100..200u32 {
            sock.send_to(b"x", (v4(last), 9)).expect("send");
        }
        // Six flows (six sockets), so the subscriber side's UDP coalescing keeps them apart.
        for _ in 0..6 {
            let one = std::net::UdpSocket::bind((SUB4, 0)).expect("udp");
            one.send_to(b"x", (v4(77), 9)).expect("send");
        }
    });
    let t0 = Instant::now();
    let table = loop {
        let v = s.neighbours();
        assert!(n(&v, "entries") <= 64, "the table grew past its bound: {v}");
        if n(&v, "entries") == 2 || t0.elapsed() > Duration::from_secs(15) {
            break s.settled_neighbours();
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    println!("after 101 silent hops: {table}");
    let d = |k: &str| n(&table, k) - n(after, k);
    assert_eq!(n(&table, "entries"), 2, "the silent hops were given up: {table}");
    // 62 places beside the two gateways: at least 39 of the 101 hops met a full table and evicted one.
    assert!(d("table_full") >= 39 && d("evicted") == d("table_full"), "{table}");
    // Each sweep hop held one packet; the last hop at most four of its six,
    // fewer when the 64 hold buffers ran out (61 still in use by the sweep):
    // every one of the 106 packets was held or dropped at once.
    assert!(d("held") >= 101 + 2 && d("held") <= 101 + 3, "{table}");
    assert_eq!(d("held") + d("held_dropped") - d("evicted"), 106, "{table}");
    assert_eq!(d("failed"), 101 - d("evicted"), "{table}");
    // Every held packet was dropped with its evicted hop or came back unreachable.
    assert_eq!(d("unreachable") + d("evicted"), d("held"), "{table}");
    table
}

/// The neighbour figures of `table` are the same in /metrics (which lint
/// clean) and in the text of `op25b stats`.
fn neighbour_figures_everywhere(s: &Setup, table: &serde_json::Value) {
    let m = s.metrics();
    let series = |name: &str| -> u64 {
        m.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{m}")) as u64
    };
    assert_eq!(series("op25b_neighbour_ignored_frames_total{reason=\"unsolicited\"}"), n(table, "unsolicited"));
    assert_eq!(series("op25b_neighbour_table_full_next_hops_total"), n(table, "table_full"));
    assert_eq!(series("op25b_neighbour_unreachable_packets_total"), n(table, "unreachable"));
    assert_eq!(series("op25b_neighbour_entries"), 2);
    // The neighbour families lint clean (the rest of the scrape: tests/metrics.rs).
    let body = m.split_once("\r\n\r\n").map_or(m.as_str(), |(_, b)| b);
    let lint = promtool(&["check", "metrics"], body);
    let found = findings(&lint);
    assert!(lint.status.success() && found.is_empty(), "promtool: {found:?}");
    let out = Command::new(env!("CARGO_BIN_EXE_op25b"))
        .args(["stats", "--socket"])
        .arg(s.dir.join("op25b.sock"))
        .output()
        .expect("op25b stats");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("upstream neighbours unsolicited"), "{text}");
}

/// The upstream's neighbour table under floods, with its counters in `op25b
/// stats --json` and /metrics: forged answers and requests from the link make
/// no entry and move no gateway; op25b's own lookups of a hundred silent
/// on-link hosts fill the table, evict, hold, drop and give up, bounded.
#[test]
fn floods_of_the_neighbour_cache_are_counted_and_bounded() {
    let s = Setup::start();
    let _servers = listeners(&s.inet);
    // Both gateways resolved.
    for dst in [SERVER4, SERVER6] {
        s.connect(if dst == SERVER4 { SUB4 } else { SUB6 }, dst, 587).unwrap_or_else(|e| panic!("{dst}: {e}"));
    }
    let before = s.settled_neighbours();
    assert_eq!((n(&before, "resolved"), n(&before, "entries")), (2, 2), "{before}");
    let after = flood_is_ignored(&s, &before, &Flood::at(own_mac(&s)));
    let table = silent_hops_are_given_up(&s, &after);
    neighbour_figures_everywhere(&s, &table);
}
