//! Tests of decapsulation over packets built by `packet::encap` and by hand.

use super::*;
use crate::packet::encap::{encapsulate, Options};
use etherparse::PacketBuilder;
use std::net::IpAddr;

// Packet makers of our own: the packet module's tests build with etherparse
// alone (nothing above the module, such as `testing`, may be imported).

fn ip(src: &str, dst: &str) -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
    match (src.parse().unwrap(), dst.parse().unwrap()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed versions"),
    }
}

fn syn_with(src: &str, dst: &str, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    ip(src, dst).tcp(1234, dport, 1, 64240).syn().write(&mut out, payload).unwrap();
    out
}

fn syn(src: &str, dst: &str, dport: u16) -> Vec<u8> {
    syn_with(src, dst, dport, &[])
}

fn udp(src: &str, sport: u16, dst: &str, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    ip(src, dst).udp(sport, dport).write(&mut out, payload).unwrap();
    out
}

fn echo_request(src: &str, dst: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    ip(src, dst).icmpv4_echo_request(1, 1).write(&mut out, payload).unwrap();
    out
}

/// An IPv4 fragment of `whole` (20-byte header): payload bytes `[from, to)`.
fn fragment4(whole: &[u8], from: usize, to: usize, more: bool) -> Vec<u8> {
    let mut p = whole[..20].to_vec();
    p.extend_from_slice(&whole[20 + from..20 + to]);
    let len = p.len() as u16;
    p[2..4].copy_from_slice(&len.to_be_bytes());
    let off = (from / 8) as u16 | if more { 0x2000 } else { 0 };
    p[6..8].copy_from_slice(&off.to_be_bytes());
    p[10..12].copy_from_slice(&[0, 0]);
    let sum = !crate::packet::checksum::sum(&p[..20]);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p
}

fn inner_of(pkt: &[u8]) -> (TunnelKind, Result<Option<PacketView>, TunnelError>) {
    let view = PacketView::parse(pkt).expect("outer parses");
    let (kind, found) = decapsulate(&view, &pkt[..view.len]).expect("a tunnel");
    (kind, found.map(|at| at.map(|at| PacketView::parse_inner(&pkt[at..view.len], false).expect("inner parses"))))
}

fn wrap(kind: TunnelKind, src: &str, dst: &str, inner: &[u8], o: Options) -> Vec<u8> {
    encapsulate(kind, src.parse().unwrap(), dst.parse().unwrap(), 64, inner, &o).unwrap()
}

#[test]
fn every_kind_gives_the_inner_syn() {
    let in4 = syn("10.0.0.1", "203.0.113.25", 25);
    let in6 = syn("2001:db8:1::1", "2001:db8:203::25", 25);
    let plain = Options::default();
    let cases: Vec<(TunnelKind, &str, &str, &[u8], Options)> = vec![
        (TunnelKind::Ipip, "100.64.1.10", "198.51.100.1", &in4, plain),
        (TunnelKind::SixIn4, "100.64.1.10", "198.51.100.1", &in6, plain),
        (TunnelKind::FourIn6, "2001:db8:100::10", "2001:db8:5::1", &in4, plain),
        (TunnelKind::SixIn6, "2001:db8:100::10", "2001:db8:5::1", &in6, plain),
        (TunnelKind::Gre, "100.64.1.10", "198.51.100.1", &in4, plain),
        (TunnelKind::Gre, "100.64.1.10", "198.51.100.1", &in6, Options { gre_extras: true, ..plain }),
        (TunnelKind::Gre, "2001:db8:100::10", "2001:db8:5::1", &in4, Options { gre_ethernet: true, ..plain }),
        (
            TunnelKind::Gre,
            "100.64.1.10",
            "198.51.100.1",
            &in4,
            Options { gre_ethernet: true, gre_extras: true, vlan: true, ..plain },
        ),
        (TunnelKind::Teredo, "100.64.1.10", "198.51.100.1", &in6, plain),
        (TunnelKind::Teredo, "100.64.1.10", "198.51.100.1", &in6, Options { teredo_indicators: true, ..plain }),
        (TunnelKind::Vxlan, "100.64.1.10", "198.51.100.1", &in4, plain),
        (TunnelKind::Vxlan, "2001:db8:100::10", "2001:db8:5::1", &in6, Options { vlan: true, ..plain }),
        (TunnelKind::Geneve, "100.64.1.10", "198.51.100.1", &in4, plain),
        (TunnelKind::Geneve, "100.64.1.10", "198.51.100.1", &in6, Options { geneve_options: 12, vlan: true, ..plain }),
    ];
    for (kind, src, dst, inner, o) in cases {
        let pkt = wrap(kind, src, dst, inner, o);
        let (got, view) = inner_of(&pkt);
        assert_eq!(got, kind, "{kind} {o:?}");
        let view = view.unwrap_or_else(|e| panic!("{kind} {o:?}: {e}")).expect("an IP packet inside");
        assert!(view.is_tcp_syn(), "{kind} {o:?}");
        assert_eq!(view.tcp_dst_port(), Some(25));
        assert_eq!(view, PacketView::parse(inner).unwrap(), "{kind} {o:?}");
    }
}

#[test]
fn plain_packets_are_no_tunnels() {
    for pkt in [
        syn("100.64.1.10", "203.0.113.25", 25),
        udp("100.64.1.10", 5000, "192.0.2.53", 53, b"x"),
        udp("2001:db8:100::10", 5000, "2001:db8::53", 53, b"x"),
        echo_request("100.64.1.10", "192.0.2.1", b"x"),
    ] {
        let view = PacketView::parse(&pkt).unwrap();
        assert!(!may_be_tunnel(&view));
        assert_eq!(decapsulate(&view, &pkt), None);
    }
}

/// A tunnel packet with `body` as the payload of IP protocol `proto`, or of UDP to `port`.
fn raw(proto_or_port: (u8, u16), body: &[u8]) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ipv4([100, 64, 1, 10], [198, 51, 100, 1], 64);
    let mut out = Vec::new();
    match proto_or_port {
        (17, port) => b.udp(40000, port).write(&mut out, body).unwrap(),
        (p, _) => b.write(&mut out, etherparse::IpNumber(p), body).unwrap(),
    }
    out
}

#[test]
fn malformed_tunnels_are_named() {
    let in4 = syn("10.0.0.1", "203.0.113.25", 25);
    let in6 = syn("2001:db8:1::1", "2001:db8:203::25", 25);
    let with = |head: &[u8], inner: &[u8]| [head, inner].concat();
    let cases: Vec<(&str, Vec<u8>, TunnelError)> = vec![
        ("GRE of 3 bytes", raw((47, 0), &[0, 0, 8]), TunnelError::Truncated),
        ("GRE key flag without the key", raw((47, 0), &[0x20, 0, 8, 0, 1]), TunnelError::Truncated),
        ("GRE with routing", raw((47, 0), &with(&[0x40, 0, 8, 0], &in4)), TunnelError::BadHeader),
        ("GRE version 2", raw((47, 0), &with(&[0, 2, 8, 0], &in4)), TunnelError::BadHeader),
        ("GRE IPv4 type, IPv6 inside", raw((47, 0), &with(&[0, 0, 8, 0], &in6)), TunnelError::BadInner),
        ("GRE nothing after the header", raw((47, 0), &[0, 0, 8, 0]), TunnelError::Truncated),
        ("6in4 carrying IPv4", raw((41, 0), &in4), TunnelError::BadInner),
        ("Teredo carrying IPv4", raw((17, 3544), &in4), TunnelError::BadHeader),
        ("Teredo auth indicator cut", raw((17, 3544), &[0, 1, 200, 200, 0]), TunnelError::Truncated),
        ("Teredo empty", raw((17, 3544), &[]), TunnelError::Truncated),
        ("VXLAN of 7 bytes", raw((17, 4789), &[8, 0, 0, 0, 0, 0, 1]), TunnelError::Truncated),
        ("VXLAN without I flag", raw((17, 4789), &[0; 30]), TunnelError::BadHeader),
        ("VXLAN short Ethernet", raw((17, 4789), &[8, 0, 0, 0, 0, 0, 1, 0, 2, 2]), TunnelError::Truncated),
        ("Geneve version 1", raw((17, 6081), &with(&[0x40, 0, 8, 0, 0, 0, 1, 0], &in4)), TunnelError::BadHeader),
        ("Geneve options past the end", raw((17, 6081), &[0x3f, 0, 0x65, 0x58, 0, 0, 1, 0]), TunnelError::Truncated),
    ];
    for (what, pkt, want) in cases {
        let view = PacketView::parse(&pkt).unwrap();
        let (_, found) = decapsulate(&view, &pkt).unwrap_or_else(|| panic!("{what}: not seen as a tunnel"));
        assert_eq!(found, Err(want), "{what}");
    }
    // Two VLAN tags.
    let mut eth = vec![8, 0, 0, 0, 0, 0, 1, 0];
    eth.extend_from_slice(&[2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x88, 0xa8, 0, 1, 0x81, 0, 0, 2, 8, 0]);
    eth.extend_from_slice(&in4);
    let pkt = raw((17, 4789), &eth);
    let view = PacketView::parse(&pkt).unwrap();
    assert_eq!(decapsulate(&view, &pkt).map(|d| d.1), Some(Err(TunnelError::BadHeader)));
}

#[test]
fn tunnels_without_ip_inside_are_tunnels_with_nothing_to_judge() {
    // ARP in VXLAN, PPTP's GRE version 1, MPLS in GRE.
    let mut arp = vec![8, 0, 0, 0, 0, 0, 1, 0];
    arp.extend_from_slice(&[0xff; 6]);
    arp.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06]);
    arp.extend_from_slice(&[0; 28]);
    for (pkt, kind) in [
        (raw((17, 4789), &arp), TunnelKind::Vxlan),
        (raw((47, 0), &[0x30, 0x01, 0x88, 0x0b, 0, 4, 0, 1, 0, 0, 0, 1, 0xff, 3, 0, 0x21]), TunnelKind::Gre),
        (raw((47, 0), &[0, 0, 0x88, 0x47, 0, 0, 0x11, 0x40]), TunnelKind::Gre),
    ] {
        let view = PacketView::parse(&pkt).unwrap();
        assert_eq!(decapsulate(&view, &pkt), Some((kind, Ok(None))));
    }
}

#[test]
fn a_later_fragment_is_no_tunnel_and_a_first_is_read_cut() {
    let inner = syn_with("10.0.0.1", "203.0.113.25", 25, &[7; 400]);
    let pkt = wrap(TunnelKind::Gre, "100.64.1.10", "198.51.100.1", &inner, Options::default());
    let first = fragment4(&pkt, 0, 96, true);
    let later = fragment4(&pkt, 96, pkt.len() - 20, false);
    let view = PacketView::parse(&later).unwrap();
    assert_eq!(decapsulate(&view, &later), None);
    let view = PacketView::parse(&first).unwrap();
    let (_, at) = decapsulate(&view, &first).unwrap();
    let at = at.unwrap().unwrap();
    assert_eq!(PacketView::parse_inner(&first[at..view.len], false), Err(crate::packet::ParseError::BadTotalLen));
    let cut = PacketView::parse_inner(&first[at..view.len], true).unwrap();
    assert_eq!(cut.tcp_dst_port(), Some(25));
    // Cut inside the inner TCP header: a tiny fragment.
    let first = fragment4(&pkt, 0, 40, true);
    let view = PacketView::parse(&first).unwrap();
    let (_, at) = decapsulate(&view, &first).unwrap();
    let at = at.unwrap().unwrap();
    assert_eq!(PacketView::parse_inner(&first[at..view.len], true), Err(crate::packet::ParseError::TinyFragment));
}

#[test]
fn names_round_trip() {
    for k in TunnelKind::ALL {
        assert_eq!(TunnelKind::from_name(k.name()), Some(k));
        assert_eq!(TunnelKind::ALL[k.index()], k);
    }
    assert_eq!(TunnelKind::from_name("sit"), None);
}
