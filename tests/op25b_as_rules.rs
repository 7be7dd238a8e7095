//! Property test: the OP25B fast path and the same policy written as ordinary
//! config rules give the same verdict, reply bytes included, for generated
//! packets (addresses in and out of the pools, ports, flags, both IP versions,
//! fragments).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use etherparse::PacketBuilder;
use op25b::{Config, Direction, Router, Verdict};
use proptest::prelude::*;
use proptest::strategy::ValueTree;

const LAB: &str = include_str!("../config/lab.toml");

/// The lab config with OP25B switched off in the fast path and written as rules.
const AS_RULES: &str = r#"
[sets]
dynamic = ["100.64.0.0/10", "2001:db8:100::/48"]
exempt = ["100.64.9.0/24", "2001:db8:100:9::/64"]
relays = ["198.51.100.25/32", "2001:db8:25::25/128"]

[[rule]]
name = "exempt-sources"
direction = "outbound"
protocol = "tcp"
src = ["@exempt"]
dst_ports = [25]
action = "accept"

[[rule]]
name = "relays"
direction = "outbound"
protocol = "tcp"
dst = ["@relays"]
dst_ports = [25]
action = "accept"

[[rule]]
name = "op25b-syn"
direction = "outbound"
protocol = "tcp"
src = ["@dynamic"]
dst_ports = [25]
tcp_flags = "syn"
action = "reject"

[[rule]]
name = "op25b-rest"
direction = "outbound"
protocol = "tcp"
src = ["@dynamic"]
dst_ports = [25]
action = "drop"
"#;

fn routers() -> (Router, Router) {
    let fast = Config::parse(Path::new("fast.toml"), LAB).expect("lab config");
    let text = LAB.replacen("dynamic = [\"100.64.0.0/10\", \"2001:db8:100::/48\"]", "dynamic = []", 1);
    assert_ne!(text, LAB);
    let rules = Config::parse(Path::new("rules.toml"), &format!("{text}\n{AS_RULES}")).expect("rule config");
    (Router::new(Arc::new(fast.policy)), Router::new(Arc::new(rules.policy)))
}

#[derive(Debug, Clone)]
struct Pkt {
    v6: bool,
    src_pick: u8,
    src_low: u16,
    dst_pick: u8,
    tcp: bool,
    dport: u16,
    flags: u8,
    payload: usize,
    frag: u8,
    inbound: bool,
}

fn pkt() -> impl Strategy<Value = Pkt> {
    (
        any::<bool>(),
        0u8..5,
        any::<u16>(),
        0u8..3,
        prop::bool::weighted(0.8),
        prop_oneof![Just(25u16), Just(587), Just(465), Just(2525), any::<u16>()],
        any::<u8>(),
        0usize..64,
        0u8..4,
        prop::bool::weighted(0.2),
    )
        .prop_map(|(v6, src_pick, src_low, dst_pick, tcp, dport, flags, payload, frag, inbound)| Pkt {
            v6,
            src_pick,
            src_low,
            dst_pick,
            tcp,
            dport,
            flags,
            payload,
            frag,
            inbound,
        })
}

fn build(p: &Pkt) -> Vec<u8> {
    let lo = p.src_low;
    // Sources: dynamic, exempt, dynamic edge, outside the pools, another dynamic.
    let (s4, s6): (Ipv4Addr, Ipv6Addr) = match p.src_pick {
        0 => (Ipv4Addr::new(100, 64, (lo >> 8) as u8, lo as u8), format!("2001:db8:100:1::{lo:x}").parse().unwrap()),
        1 => (Ipv4Addr::new(100, 64, 9, lo as u8), format!("2001:db8:100:9::{lo:x}").parse().unwrap()),
        2 => (Ipv4Addr::new(100, 127, 255, lo as u8), format!("2001:db8:100:ffff::{lo:x}").parse().unwrap()),
        3 => (Ipv4Addr::new(198, 51, 100, lo as u8), format!("2001:db8:200::{lo:x}").parse().unwrap()),
        _ => (Ipv4Addr::new(100, 100, (lo >> 8) as u8, lo as u8), format!("2001:db8:100:5::{lo:x}").parse().unwrap()),
    };
    let (d4, d6): (Ipv4Addr, Ipv6Addr) = match p.dst_pick {
        0 => ([203, 0, 113, 25].into(), "2001:db8:203::25".parse().unwrap()),
        1 => ([198, 51, 100, 25].into(), "2001:db8:25::25".parse().unwrap()),
        _ => ([198, 51, 100, 26].into(), "2001:db8:25::26".parse().unwrap()),
    };
    let (src4, dst4, src6, dst6) = if p.inbound { (d4, s4, d6, s6) } else { (s4, d4, s6, d6) };
    let b = if p.v6 {
        PacketBuilder::ipv6(src6.octets(), dst6.octets(), 64)
    } else {
        PacketBuilder::ipv4(src4.octets(), dst4.octets(), 64)
    };
    let payload = vec![0x5a; p.payload];
    let mut v = Vec::new();
    if p.tcp {
        let mut h = etherparse::TcpHeader::new(40000, p.dport, 77, 1000);
        h.syn = p.flags & 0x02 != 0;
        h.ack = p.flags & 0x10 != 0;
        h.rst = p.flags & 0x04 != 0;
        h.fin = p.flags & 0x01 != 0;
        h.acknowledgment_number = 99;
        b.tcp_header(h).write(&mut v, &payload).unwrap();
    } else {
        b.udp(40000, p.dport).write(&mut v, &payload).unwrap();
    }
    match (p.frag, p.v6) {
        // Turn into an IPv4 first fragment (MF) or a later fragment (offset 3).
        (1, false) => set_v4_frag(&mut v, 0x2000),
        (2, false) => set_v4_frag(&mut v, 3),
        (1 | 2, true) => {
            // Insert a fragment header: first fragment with MF, or offset 3.
            let word: u16 = if p.frag == 1 { 1 } else { 3 << 3 };
            let next = v[6];
            v[6] = 44;
            let w = word.to_be_bytes();
            let hdr = [next, 0, w[0], w[1], 0, 0, 0, 9];
            v.splice(40..40, hdr);
            let plen = (v.len() - 40) as u16;
            v[4..6].copy_from_slice(&plen.to_be_bytes());
        }
        _ => {}
    }
    v
}

fn set_v4_frag(v: &mut [u8], word: u16) {
    v[6..8].copy_from_slice(&word.to_be_bytes());
    v[10] = 0;
    v[11] = 0;
    let mut sum: u32 = v[..20].chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    v[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

fn run(r: &mut Router, dir: Direction, pkt: &[u8]) -> (String, Vec<u8>) {
    let mut buf = pkt.to_vec();
    let mut reply = vec![0u8; 2048];
    let v = r.handle(Instant::now(), dir, &mut buf, &mut reply);
    match v {
        Verdict::Forward { len } => ("forward".into(), buf[..len].to_vec()),
        Verdict::Reply { len, kind } => (format!("reply {}", kind.name()), reply[..len].to_vec()),
        // Both forms drop for their own reason (op25b_blocked vs rule_drop).
        Verdict::Drop(_) => ("drop".into(), Vec::new()),
        Verdict::Terminate => ("terminate".into(), Vec::new()),
    }
}

thread_local! {
    static ROUTERS: std::cell::RefCell<(Router, Router)> = std::cell::RefCell::new(routers());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 5000, ..ProptestConfig::default() })]

    #[test]
    fn fast_path_and_rule_form_agree(p in pkt()) {
        let bytes = build(&p);
        let dir = if p.inbound { Direction::Inbound } else { Direction::Outbound };
        let (a, b) = ROUTERS.with(|r| {
            let (fast, rules) = &mut *r.borrow_mut();
            (run(fast, dir, &bytes), run(rules, dir, &bytes))
        });
        prop_assert_eq!(a, b, "{:?}", p);
    }
}

/// The generator reaches every outcome the property compares.
#[test]
fn generated_packets_cover_every_outcome() {
    let (mut fast, _) = routers();
    let mut seen = std::collections::HashSet::new();
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    for _ in 0..3000 {
        let p = pkt().new_tree(&mut runner).unwrap().current();
        let dir = if p.inbound { Direction::Inbound } else { Direction::Outbound };
        seen.insert(run(&mut fast, dir, &build(&p)).0);
    }
    for want in ["forward", "drop", "reply tcp_rst"] {
        assert!(seen.contains(want), "no {want} among {seen:?}");
    }
}
