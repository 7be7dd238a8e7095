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

use common::{in_netns, ip_cmd, preflight, unique_base};
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

// The neighbour cache under a flood from the link.
#[path = "uplink_matrix/neighbour_flood.rs"]
mod neighbour_flood;
