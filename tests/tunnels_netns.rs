//! Tunnels through a running op25b, as an attacker on a dynamic line would
//! send them: crafted packets (this kernel has no ipip, sit or gre drivers)
//! written to the subscriber's TUN from a raw socket in the subscriber
//! namespace (tests/support/rawpkt.py), and what reaches the upstream TUN
//! captured in the upstream namespace. Each case is one packet: forwarded
//! or not. Needs root, iproute2 and python3; fails loudly without them.

#[allow(dead_code)]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use common::*;
use op25b::packet::encap::{encapsulate, Options};
use op25b::packet::TunnelKind;
use op25b::testing::packets::{fragment4, tcp, udp};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/rawpkt.py");

/// One packet and whether it must come out on the upstream side.
struct Case {
    what: String,
    packet: Vec<u8>,
    forwarded: bool,
}

fn case(what: &str, packet: Vec<u8>, forwarded: bool) -> Case {
    Case { what: what.to_string(), packet, forwarded }
}

fn wrap(kind: TunnelKind, src: &str, dst: &str, inner: &[u8], o: Options) -> Vec<u8> {
    encapsulate(kind, ip(src), ip(dst), 64, inner, &o).unwrap_or_else(|e| panic!("{kind}: {e}"))
}

/// A SYN maker: destination and port.
type MakeSyn = fn(&str, u16) -> Vec<u8>;

fn syn4(dst: &str, port: u16) -> Vec<u8> {
    tcp("10.0.0.1", 40000, dst, port).syn().build()
}

fn syn6(dst: &str, port: u16) -> Vec<u8> {
    tcp("2001:db8:1::1", 40000, dst, port).syn().build()
}

/// The packet with the fields forwarding changes (TTL, IPv4 header checksum) cleared.
fn normal(p: &[u8]) -> Vec<u8> {
    let mut p = p.to_vec();
    match p.first().map(|b| b >> 4) {
        Some(4) if p.len() >= 20 => {
            p[8] = 0;
            p[10] = 0;
            p[11] = 0;
        }
        Some(6) if p.len() >= 40 => p[7] = 0,
        _ => {}
    }
    p
}

/// Sends every case from the subscriber side and asserts which came out upstream.
fn run(lab: &Lab, cases: &[Case]) {
    let mut recv = Command::new("ip")
        .args(["netns", "exec", &lab.up, "python3", SCRIPT, "recv", UP_TUN, "20"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 is installed (scripts/setup.sh)");
    let mut lines = BufReader::new(recv.stdout.take().expect("piped"));
    let mut first = String::new();
    lines.read_line(&mut first).expect("receiver starts");
    assert_eq!(first.trim(), "ready", "the receiver in {} did not start", lab.up);
    let end = udp(DYN4, 40000, MX4, 9, b"end-of-test");
    let mut send = Command::new("ip")
        .args(["netns", "exec", &lab.sub, "python3", SCRIPT, "send", SUB_TUN])
        .stdin(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    {
        let mut input = send.stdin.take().expect("piped");
        for c in cases {
            writeln!(input, "{}", hex(&c.packet)).expect("write to the sender");
        }
        writeln!(input, "{}", hex(&end)).expect("write to the sender");
    }
    assert!(send.wait().expect("sender ends").success(), "the sender failed");
    let mut seen = Vec::new();
    for line in lines.lines() {
        let line = line.expect("receiver output");
        if line == "timeout" {
            break;
        }
        seen.push(normal(&unhex(&line)));
    }
    let status = recv.wait().expect("receiver ends");
    assert!(status.success(), "the receiver failed");
    assert!(seen.last() == Some(&normal(&end)), "the end marker never came through: {} packets seen", seen.len());
    let mut wrong = Vec::new();
    for c in cases {
        let out = seen.contains(&normal(&c.packet));
        if out != c.forwarded {
            wrong.push(format!(
                "{}: {}",
                c.what,
                if out { "forwarded, should be blocked" } else { "blocked, should pass" }
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2).map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex")).collect()
}

/// Every kind over IPv4 outers: port 25 inside blocked; 587, the relay and
/// an exempt source pass.
#[test]
fn tunnels_over_ipv4_are_judged_inside() {
    let mut lab = Lab::start(LabOptions::default());
    let o = Options::default();
    let mut cases = Vec::new();
    let kinds: [(TunnelKind, bool, Options); 8] = [
        (TunnelKind::Ipip, false, o),
        (TunnelKind::SixIn4, true, o),
        (TunnelKind::Gre, false, Options { gre_extras: true, ..o }),
        (TunnelKind::Gre, true, Options { gre_ethernet: true, vlan: true, ..o }),
        (TunnelKind::Teredo, true, Options { teredo_indicators: true, ..o }),
        (TunnelKind::Teredo, true, o),
        (TunnelKind::Vxlan, false, Options { vlan: true, ..o }),
        (TunnelKind::Geneve, true, Options { geneve_options: 8, ..o }),
    ];
    for (kind, v6, o) in kinds {
        let (mx, relay, syn): (&str, &str, MakeSyn) = if v6 { (MX6, RELAY6, syn6) } else { (MX4, RELAY4, syn4) };
        let name = format!("{kind} {o:?}");
        cases.push(case(&format!("{name}: 25 to an MX"), wrap(kind, DYN4, MX4, &syn(mx, 25), o), false));
        cases.push(case(&format!("{name}: 587 to an MX"), wrap(kind, DYN4, MX4, &syn(mx, 587), o), true));
        cases.push(case(&format!("{name}: 25 to the relay"), wrap(kind, DYN4, MX4, &syn(relay, 25), o), true));
        cases.push(case(&format!("{name}: from an exempt source"), wrap(kind, STATIC4, MX4, &syn(mx, 25), o), true));
    }
    run(&lab, &cases);
    let c = lab.stop();
    assert_eq!(c.get("tunnel_blocked_gre"), 2, "{c}");
    assert_eq!(c.get("tunnel_blocked_teredo"), 2, "{c}");
    assert_eq!(c.get("tunnel_packets_vxlan"), 4, "{c}");
    assert_eq!(c.dir("outbound")["dropped"]["tunnel_blocked"], 8, "{c}");
}

/// IPv6 outers: 4in6, 6in6, GRE, VXLAN and Geneve.
#[test]
fn tunnels_over_ipv6_are_judged_inside() {
    let lab = Lab::start(LabOptions::default());
    let o = Options::default();
    let mut cases = Vec::new();
    for (kind, v6) in [
        (TunnelKind::FourIn6, false),
        (TunnelKind::SixIn6, true),
        (TunnelKind::Gre, false),
        (TunnelKind::Vxlan, true),
        (TunnelKind::Geneve, false),
    ] {
        let (mx, syn): (&str, MakeSyn) = if v6 { (MX6, syn6) } else { (MX4, syn4) };
        cases.push(case(&format!("{kind}: 25"), wrap(kind, DYN6, MX6, &syn(mx, 25), o), false));
        cases.push(case(&format!("{kind}: 587"), wrap(kind, DYN6, MX6, &syn(mx, 587), o), true));
        cases.push(case(&format!("{kind}: exempt"), wrap(kind, STATIC6, MX6, &syn(mx, 25), o), true));
    }
    run(&lab, &cases);
}

/// Nested to the depth judged, deeper dropped; fragments must hold the inner
/// headers; malformed tunnels of a dynamic address are dropped.
#[test]
fn nested_fragmented_and_malformed_tunnels() {
    let mut lab = Lab::start(LabOptions::default());
    let o = Options::default();
    let ipip = |inner: &[u8]| wrap(TunnelKind::Ipip, "10.1.0.1", "10.2.0.1", inner, o);
    let vx = |inner: &[u8]| wrap(TunnelKind::Vxlan, "10.3.0.1", "10.4.0.1", inner, o);
    let gre = |inner: &[u8]| wrap(TunnelKind::Gre, DYN4, MX4, inner, o);
    let big = tcp("10.0.0.1", 40000, MX4, 25).syn().payload(&[0; 600]).build();
    let big587 = tcp("10.0.0.1", 40000, MX4, 587).syn().payload(&[0; 600]).build();
    let raw = |proto: u8, body: &[u8]| {
        let mut out = Vec::new();
        etherparse::PacketBuilder::ipv4(ip4(DYN4), ip4(MX4), 64)
            .write(&mut out, etherparse::IpNumber(proto), body)
            .expect("builds");
        out
    };
    let cases = vec![
        case("depth 3, 25 inside", gre(&vx(&ipip(&syn4(MX4, 25)))), false),
        case("depth 3, 587 inside", gre(&vx(&ipip(&syn4(MX4, 587)))), true),
        case("depth 4, 587 inside", gre(&ipip(&vx(&ipip(&syn4(MX4, 587))))), false),
        case("first fragment holding the inner SYN to 25", fragment4(&gre(&big), 0, 200, true), false),
        case("first fragment holding the inner SYN to 587", fragment4(&gre(&big587), 0, 200, true), true),
        case("first fragment cut inside the inner TCP header", fragment4(&gre(&big587), 0, 32, true), false),
        case("short GRE header", raw(47, &[0, 0, 8]), false),
        case("bad Teredo (IPv4 inside)", udp(DYN4, 3544, MX4, 3544, &syn4(MX4, 587)), false),
        case("truncated VXLAN", udp(DYN4, 40000, MX4, 4789, &[8, 0, 0, 0, 0, 0]), false),
        case("plain UDP to 4790 (not a tunnel port)", udp(DYN4, 40000, MX4, 4790, &[8, 0, 0, 0, 0, 0]), true),
    ];
    run(&lab, &cases);
    let c = lab.stop();
    assert_eq!(c.get("drop_tunnel_too_deep"), 1, "{c}");
    assert_eq!(c.get("drop_tiny_fragment"), 1, "{c}");
    assert_eq!(c.get("drop_tunnel_malformed"), 3, "{c}");
}

/// `tunnels = "block"`: only tunnels to the endpoints pass, and are inspected.
#[test]
fn tunnels_block_keeps_only_the_endpoints() {
    let lab = Lab::start(LabOptions::edit(|p| {
        p.op25b("tunnels", "\"block\"").op25b("tunnel_endpoints", op25b::testing::list(&[RELAY4]))
    }));
    let o = Options::default();
    let cases = vec![
        case("to an MX", wrap(TunnelKind::Gre, DYN4, MX4, &syn4(MX4, 443), o), false),
        case("to the endpoint", wrap(TunnelKind::Gre, DYN4, RELAY4, &syn4(MX4, 443), o), true),
        case("to the endpoint, 25 inside", wrap(TunnelKind::Gre, DYN4, RELAY4, &syn4(MX4, 25), o), false),
        case("from an exempt source", wrap(TunnelKind::Vxlan, STATIC4, MX4, &syn4(MX4, 443), o), true),
    ];
    run(&lab, &cases);
}

fn ip4(s: &str) -> [u8; 4] {
    s.parse::<std::net::Ipv4Addr>().expect("IPv4").octets()
}
