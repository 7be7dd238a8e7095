//! The OP25B matrix across an Ethernet upstream (`[upstream] interface`):
//! op25b sits on a veth end in namespace `edge`; the other end is the
//! "internet" namespace `inet`, whose kernel reaches op25b's addresses by ARP
//! and NDP and routes the subscriber prefixes to it. No forwarding, address
//! or route on the host side of op25b's interface.
//!
//! Port 25 from a dynamic subscriber is refused; 587 and 465 pass; an exempt
//! source and a relay destination (off-link, through the gateway) pass port
//! 25; IPv4 and IPv6 alike. All
//! namespaces are the test's own and are removed even when it fails.

// Only a few of the shared helpers are needed here.
#[allow(dead_code)]
#[allow(unused_imports)] // The harness re-exports the lab's addresses; this file builds its own veth link.
mod common;

use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{findings, in_netns, ip_cmd, preflight, promtool, unique_base};
use socket2::{Domain, Protocol, Socket, Type};

const SUB4: &str = "100.64.0.2";
const EXEMPT4: &str = "100.64.9.2";
const SUB6: &str = "2001:db8:100::2";
const EXEMPT6: &str = "2001:db8:100:9::2";
const SERVER4: &str = "198.51.100.1";
const RELAY4: &str = "203.0.113.25";
const SERVER6: &str = "2001:db8:1::1";
const RELAY6: &str = "2001:db8:25::25";

/// The three namespaces and op25b; all removed / stopped on drop.
struct Setup {
    sub: String,
    edge: String,
    inet: String,
    op25b: Option<Child>,
    dir: std::path::PathBuf,
    /// op25b's metrics listener (root namespace loopback).
    metrics: SocketAddr,
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(mut c) = self.op25b.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [&self.sub, &self.edge, &self.inet] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn sh(ns: &str, cmd: &str) {
    let out = Command::new("ip").args(["netns", "exec", ns, "sh", "-c", cmd]).output().expect("run sh");
    assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
}

impl Setup {
    fn start() -> Setup {
        Setup::with("")
    }

    /// Started with op25b's IPv6 gateway at the far end's link-local address.
    fn link_local_gateway() -> Setup {
        Setup::build("", "fe80::1")
    }

    /// Started with `op25b` extra lines in the `[op25b]` section.
    fn with(op25b: &str) -> Setup {
        Setup::build(op25b, "2001:db8:1::1")
    }

    fn build(op25b: &str, gw6: &str) -> Setup {
        preflight(false);
        let base = unique_base();
        let mut s = Setup {
            sub: format!("{base}-s"),
            edge: format!("{base}-e"),
            inet: format!("{base}-i"),
            op25b: None,
            dir: std::env::temp_dir().join(format!("{base}-uplink")),
            metrics: free_port(),
        };
        for ns in [&s.sub, &s.edge, &s.inet] {
            ip_cmd(&["netns", "add", ns]);
        }
        ip_cmd(&["-n", &s.edge, "link", "add", "u0", "type", "veth", "peer", "p0", "netns", &s.inet]);
        sh(&s.edge, "echo 1 > /proc/sys/net/ipv6/conf/u0/disable_ipv6 && ip link set u0 up");
        sh(
            &s.inet,
            "ip link set lo up && ip link set p0 up \
             && ip addr add 198.51.100.1/24 dev p0 && ip addr add 203.0.113.25/32 dev lo \
             && ip addr add 2001:db8:1::1/64 dev p0 nodad && ip addr add 2001:db8:25::25/128 dev lo \
             && ip addr add fe80::1/64 dev p0 nodad \
             && ip route add 100.64.0.0/10 via 198.51.100.2 \
             && ip -6 route add 2001:db8:100::/48 via 2001:db8:1::2",
        );
        std::fs::create_dir_all(&s.dir).expect("temp dir");
        let config = s.dir.join("op25b.toml");
        let text = format!(
            r#"[router]
addresses = ["100.64.0.1", "2001:db8:100::1"]
[subscriber]
tun = "o25s"
netns = "{sub}"
prefixes = ["100.64.0.0/10", "2001:db8:100::/48"]
[upstream]
interface = "u0"
netns = "{edge}"
addresses = ["198.51.100.2/24", "2001:db8:1::2/64"]
gateway = ["198.51.100.1", "{gw6}"]
[op25b]
dynamic = ["100.64.0.0/10", "2001:db8:100::/48"]
exempt_sources = ["100.64.9.0/24", "2001:db8:100:9::/64"]
relays = ["203.0.113.25/32", "2001:db8:25::25/128"]
{op25b}
[control]
socket = "{socket}"
metrics = "{metrics}"
"#,
            sub = s.sub,
            edge = s.edge,
            gw6 = gw6,
            socket = s.dir.join("op25b.sock").display(),
            metrics = s.metrics,
        );
        std::fs::write(&config, text).expect("write config");
        let child = Command::new(env!("CARGO_BIN_EXE_op25b"))
            .args(["run", "--config"])
            .arg(&config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start op25b");
        s.op25b = Some(child);
        let t0 = Instant::now();
        loop {
            let out = Command::new("ip").args(["-n", &s.sub, "link", "show", "o25s"]).output().expect("ip link");
            if out.status.success() {
                break;
            }
            if let Some(st) = s.op25b.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("op25b exited: {st}");
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "op25b made no subscriber TUN in 10 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        sh(
            &s.sub,
            "ip link set lo up && ip link set o25s up \
             && ip addr add 100.64.0.2/32 dev o25s && ip addr add 100.64.9.2/32 dev o25s \
             && ip addr add 2001:db8:100::2/128 dev o25s nodad && ip addr add 2001:db8:100:9::2/128 dev o25s nodad \
             && ip route add default dev o25s && ip -6 route add default dev o25s",
        );
        s
    }

    fn connect(&self, src: &str, dst: &str, port: u16) -> io::Result<TcpStream> {
        let src: IpAddr = src.parse().expect("source");
        let dst = SocketAddr::new(dst.parse().expect("destination"), port);
        in_netns(&self.sub, || {
            let sock = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
            sock.bind(&SocketAddr::new(src, 0).into())?;
            sock.connect_timeout(&dst.into(), Duration::from_secs(8))?;
            Ok(sock.into())
        })
    }
}

/// A port free on the root namespace's loopback now.
fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local address")
}

fn listeners(ns: &str) -> Vec<TcpListener> {
    in_netns(ns, || {
        let mut all = vec![];
        for addr in [SERVER4, RELAY4, SERVER6, RELAY6] {
            for port in [25, 465, 587] {
                let sa = SocketAddr::new(addr.parse().expect("address"), port);
                all.push(TcpListener::bind(sa).unwrap_or_else(|e| panic!("listen {sa}: {e}")));
            }
        }
        all
    })
}

#[test]
fn op25b_matrix_across_an_ethernet_upstream() {
    let s = Setup::start();
    let _servers = listeners(&s.inet);
    let cases = [
        (SUB4, SERVER4, 587, true),
        (SUB4, SERVER4, 465, true),
        (SUB4, SERVER4, 25, false),
        (EXEMPT4, SERVER4, 25, true),
        (SUB4, RELAY4, 25, true),
        (SUB6, SERVER6, 587, true),
        (SUB6, SERVER6, 465, true),
        (SUB6, SERVER6, 25, false),
        (EXEMPT6, SERVER6, 25, true),
        (SUB6, RELAY6, 25, true),
    ];
    let mut wrong = vec![];
    for (src, dst, port, pass) in cases {
        let r = s.connect(src, dst, port);
        println!("{src} -> [{dst}]:{port}: {r:?}");
        match (&r, pass) {
            (Ok(_), true) => {}
            // Refused at once (the router's RST), not a timeout.
            (Err(e), false) if e.kind() == io::ErrorKind::ConnectionRefused => {}
            _ => wrong.push(format!("{src} -> [{dst}]:{port}: want pass={pass}, got {r:?}")),
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// A next hop on the link that never answers ARP/NDP: after the probes the
/// sender gets ICMP host unreachable (EHOSTUNREACH at connect), not silence.
#[test]
fn a_silent_next_hop_is_host_unreachable() {
    let s = Setup::start();
    for (src, dst) in [(SUB4, "198.51.100.77"), (SUB6, "2001:db8:1::77")] {
        let t0 = Instant::now();
        let r = s.connect(src, dst, 587);
        println!("{src} -> [{dst}]:587: {r:?} after {:?}", t0.elapsed());
        let kind = r.as_ref().map(|_| ()).map_err(|e| e.kind());
        assert_eq!(kind, Err(io::ErrorKind::HostUnreachable), "{src} -> {dst}: {r:?}");
    }
}

/// The redirect action across the interface upstream: a subscriber's port-25
/// connection to any server lands on the relay, through the gateway.
#[test]
fn redirect_across_an_ethernet_upstream() {
    let s = Setup::with("action = \"redirect\"\nredirect_to = [\"203.0.113.25:25\", \"[2001:db8:25::25]:25\"]");
    let servers = listeners(&s.inet);
    for (src, dst, relay) in [(SUB4, SERVER4, RELAY4), (SUB6, SERVER6, RELAY6)] {
        let stream = s.connect(src, dst, 25).unwrap_or_else(|e| panic!("{src} -> {dst}:25: {e}"));
        // The client still sees the address it dialled.
        assert_eq!(stream.peer_addr().expect("peer").ip().to_string(), dst);
        let relay_sa = SocketAddr::new(relay.parse().expect("relay"), 25);
        let l = servers.iter().find(|l| l.local_addr().ok() == Some(relay_sa)).expect("relay listener");
        l.set_nonblocking(false).expect("blocking");
        let (_conn, from) = l.accept().expect("the relay accepts");
        assert_eq!(from.ip().to_string(), src, "the relay sees the subscriber");
    }
}

/// The banner action across the interface upstream: op25b answers port 25
/// itself; nothing reaches the server.
#[test]
fn banner_across_an_ethernet_upstream() {
    use std::io::Read;
    let s = Setup::with("action = \"banner\"");
    let _servers = listeners(&s.inet);
    for (src, dst) in [(SUB4, SERVER4), (SUB6, SERVER6)] {
        let mut stream = s.connect(src, dst, 25).unwrap_or_else(|e| panic!("{src} -> {dst}:25: {e}"));
        stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text);
        assert!(text.starts_with("554"), "{src} -> {dst}: {text:?}");
        // Submission still passes to the real server.
        assert!(s.connect(src, dst, 587).is_ok(), "{src} -> {dst}:587");
    }
}

/// Bulk TCP both ways across the interface upstream (with the default
/// offload, GSO super-packets cross the Ethernet edge): every byte arrives.
#[test]
fn bulk_tcp_both_ways_across_an_ethernet_upstream() {
    use std::io::{Read, Write};
    const BYTES: usize = 32 << 20;
    let s = Setup::start();
    for (src, dst) in [(SUB4, SERVER4), (SUB6, SERVER6)] {
        let sa = SocketAddr::new(dst.parse().expect("server"), 2525);
        let listener = in_netns(&s.inet, || TcpListener::bind(sa).expect("listen"));
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            conn.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
            let mut got = 0usize;
            let mut buf = vec![0u8; 1 << 16];
            loop {
                match conn.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) => panic!("server read after {got} bytes: {e}"),
                }
            }
            // And as much back.
            let chunk = vec![0x5au8; 1 << 16];
            let mut sent = 0;
            while sent < BYTES {
                conn.write_all(&chunk).expect("server write");
                sent += chunk.len();
            }
            got
        });
        let mut c = s.connect(src, dst, 2525).unwrap_or_else(|e| panic!("{src} -> {dst}: {e}"));
        c.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
        let chunk = vec![0xa5u8; 1 << 16];
        let mut sent = 0;
        while sent < BYTES {
            c.write_all(&chunk).expect("client write");
            sent += chunk.len();
        }
        c.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let mut back = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match c.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => back += n,
                Err(e) => panic!("client read after {back} bytes: {e}"),
            }
        }
        assert_eq!(server.join().expect("server thread"), BYTES, "{src} -> {dst}");
        assert_eq!(back, BYTES, "{dst} -> {src}");
    }
}

/// The upstream interface deleted under a running op25b: it stops with
/// status 1, as for a deleted upstream TUN.
#[test]
fn a_deleted_upstream_interface_stops_op25b() {
    let mut s = Setup::start();
    assert!(s.connect(SUB4, SERVER4, 587).is_err(), "no server yet: refused");
    ip_cmd(&["-n", &s.edge, "link", "del", "u0"]);
    // Traffic towards the gone interface, so a send meets it too.
    let _ = s.connect(SUB4, SERVER4, 587);
    let child = s.op25b.as_mut().expect("op25b");
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "op25b still runs 10 s after the interface was deleted");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(1), "{status}");
}

/// An IPv6 gateway given by its link-local address (as routers usually are):
/// op25b solicits it from its own link-local address.
#[test]
fn a_link_local_ipv6_gateway() {
    let s = Setup::link_local_gateway();
    let _servers = listeners(&s.inet);
    assert!(s.connect(SUB6, SERVER6, 587).is_ok(), "587 through fe80::1");
    let refused = s.connect(SUB6, SERVER6, 25).map(|_| ()).map_err(|e| e.kind());
    assert_eq!(refused, Err(io::ErrorKind::ConnectionRefused));
}

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
