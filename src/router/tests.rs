//! Scenario tests of the router core over byte-array packets: every branch of
//! the policy, both IP versions, fragments, malformed input, TTL and MTU.

use std::net::{IpAddr, Ipv4Addr};

use etherparse::{PacketBuilder, TcpHeaderSlice};

use super::*;
use crate::packet::{checksum, tcp_flags, IpVersion, Transport};
use crate::testing::{packets, PolicyBuilder};

const DYN4: [u8; 4] = [100, 64, 1, 10];
const STATIC4: [u8; 4] = [100, 64, 9, 10];
const MX4: [u8; 4] = [203, 0, 113, 25];
const RELAY4: [u8; 4] = [198, 51, 100, 25];
const DYN6: &str = "2001:db8:100:1::10";
const STATIC6: &str = "2001:db8:100:9::10";
const MX6: &str = "2001:db8:203::25";
const RELAY6: &str = "2001:db8:25::25";

fn v4(a: [u8; 4]) -> String {
    Ipv4Addr::from(a).to_string()
}

fn tcp4(src: [u8; 4], dst: [u8; 4], dport: u16, syn: bool, ttl: u8) -> Vec<u8> {
    tcp6(&v4(src), &v4(dst), dport, syn, ttl)
}

/// A SYN or an ACK (either family, despite the name) from port 40000.
fn tcp6(src: &str, dst: &str, dport: u16, syn: bool, ttl: u8) -> Vec<u8> {
    let b = packets::tcp(src, 40000, dst, dport).seq(1000).ttl(ttl);
    if syn { b.syn() } else { b.ack(5000) }.build()
}

fn udp4(src: [u8; 4], dst: [u8; 4], dport: u16, payload: usize) -> Vec<u8> {
    udp6(&v4(src), &v4(dst), dport, payload)
}

fn udp6(src: &str, dst: &str, dport: u16, payload: usize) -> Vec<u8> {
    packets::udp(src, 40000, dst, dport, &vec![0x55; payload])
}

use packets::{fix_ipv4_checksum as fix_v4_checksum, fragment4 as frag4, fragment6 as frag6, with_ext6 as ext6};

const PADN: [u8; 6] = [1, 4, 0, 0, 0, 0];

fn parse(p: &[u8]) -> PacketView {
    PacketView::parse(p).expect("router output parses")
}

/// Checks the reply is a well-formed RST answering a SYN of `syn`.
fn assert_rst_for(syn: &[u8], reply: &[u8]) {
    let q = parse(syn);
    let r = parse(reply);
    assert_eq!((r.src, r.dst), (q.dst, q.src), "RST comes from the dialled address");
    let Transport::Tcp { src_port, dst_port, flags, seq, ack, .. } = r.transport else { panic!("not TCP") };
    let Transport::Tcp { src_port: qs, dst_port: qd, seq: qseq, .. } = q.transport else { unreachable!() };
    assert_eq!((src_port, dst_port), (qd, qs));
    assert_eq!(flags, tcp_flags::RST | tcp_flags::ACK);
    assert_eq!(seq, 0);
    assert_eq!(ack, qseq.wrapping_add(1));
    let tcp = TcpHeaderSlice::from_slice(&reply[r.l4_offset..]).unwrap();
    let want = match (r.src, r.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => tcp.calc_checksum_ipv4_raw(s.octets(), d.octets(), &[]).unwrap(),
        (IpAddr::V6(s), IpAddr::V6(d)) => tcp.calc_checksum_ipv6_raw(s.octets(), d.octets(), &[]).unwrap(),
        _ => unreachable!(),
    };
    assert_eq!(tcp.checksum(), want, "RST checksum");
    assert!(reply.len() <= syn.len(), "reply no larger than the trigger");
}

/// Checks an ICMP error: from `from`, to the trigger's source, type/code, quoting it.
fn assert_icmp(trigger: &[u8], reply: &[u8], from: IpAddr, icmp_type: u8, code: u8) -> PacketView {
    let q = parse(trigger);
    let r = parse(reply);
    assert_eq!(r.src, from);
    assert_eq!(r.dst, q.src);
    assert_eq!(r.transport, Transport::Icmp { icmp_type, code });
    let body = &reply[r.l4_offset..r.len];
    assert_eq!(&body[8..8 + 28], &trigger[..28], "quotes the offending packet");
    match r.version {
        IpVersion::V4 => assert_eq!(checksum::sum(body), 0xffff, "ICMP checksum"),
        IpVersion::V6 => {
            let (IpAddr::V6(s), IpAddr::V6(d)) = (r.src, r.dst) else { unreachable!() };
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&(body.len() as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 58]);
            pseudo.extend_from_slice(body);
            assert_eq!(checksum::sum(&pseudo), 0xffff, "ICMPv6 checksum");
        }
    }
    r
}

// ---- forwarding -------------------------------------------------------------

#[test]
fn forwards_and_decrements_ttl_with_valid_checksum() {
    let mut t = PolicyBuilder::lab().router();
    let p = tcp4(DYN4, MX4, 587, true, 64);
    let (v, out) = t.out(&p);
    assert_eq!(v, Verdict::Forward { len: p.len() });
    assert_eq!(out[8], 63);
    assert_eq!(checksum::sum(&out[..20]), 0xffff);
    assert_eq!(&out[12..], &p[12..], "only TTL and checksum change");

    let p6 = tcp6(DYN6, MX6, 587, true, 64);
    let (v, out) = t.out(&p6);
    assert_eq!(v, Verdict::Forward { len: p6.len() });
    assert_eq!(out[7], 63);
    assert_eq!(t.stats().forwarded(Direction::Outbound), 2);
}

#[test]
fn submission_ports_other_ports_and_udp_pass() {
    let mut t = PolicyBuilder::lab().router();
    for port in [587, 465, 80, 2525, 24, 26] {
        assert!(matches!(t.out(&tcp4(DYN4, MX4, port, true, 64)).0, Verdict::Forward { .. }), "{port}");
        assert!(matches!(t.out(&tcp6(DYN6, MX6, port, true, 64)).0, Verdict::Forward { .. }), "{port}");
    }
    assert!(matches!(t.out(&udp4(DYN4, MX4, 25, 10)).0, Verdict::Forward { .. }));
    assert!(matches!(t.out(&udp6(DYN6, MX6, 25, 10)).0, Verdict::Forward { .. }));
    assert_eq!(t.stats().op25b.blocked, 0);
}

#[test]
fn inbound_traffic_to_port_25_passes() {
    let mut t = PolicyBuilder::lab().router();
    let p = tcp4(MX4, DYN4, 25, true, 64);
    assert!(matches!(t.send(Direction::Inbound, &p).0, Verdict::Forward { .. }));
    let p = tcp6(MX6, DYN6, 25, true, 64);
    assert!(matches!(t.send(Direction::Inbound, &p).0, Verdict::Forward { .. }));
    assert_eq!(t.stats().forwarded(Direction::Inbound), 2);
}

// ---- the OP25B fast path ------------------------------------------------------

#[test]
fn blocked_syn_gets_rst_v4_and_v6() {
    let mut t = PolicyBuilder::lab().router();
    let p = tcp4(DYN4, MX4, 25, true, 64);
    let (v, out) = t.out(&p);
    assert!(matches!(v, Verdict::Reply { kind: ReplyKind::TcpRst, .. }), "{v:?}");
    assert_rst_for(&p, &out);
    let p6 = tcp6(DYN6, MX6, 25, true, 64);
    let (v, out) = t.out(&p6);
    assert!(matches!(v, Verdict::Reply { kind: ReplyKind::TcpRst, .. }), "{v:?}");
    assert_rst_for(&p6, &out);
    assert_eq!(t.stats().op25b.blocked, 2);
    assert_eq!(t.stats().replies(ReplyKind::TcpRst), 2);
}

#[test]
fn blocked_non_syn_segments_are_dropped() {
    let mut t = PolicyBuilder::lab().router();
    assert_eq!(t.out(&tcp4(DYN4, MX4, 25, false, 64)).0, Verdict::Drop(DropReason::Op25bBlocked));
    assert_eq!(t.out(&tcp6(DYN6, MX6, 25, false, 64)).0, Verdict::Drop(DropReason::Op25bBlocked));
    // An RST to port 25 is dropped, never answered.
    let rst = packets::tcp(&v4(DYN4), 40000, &v4(MX4), 25).window(0).rst().build();
    assert_eq!(t.out(&rst).0, Verdict::Drop(DropReason::Op25bBlocked));
}

#[test]
fn drop_action_is_silent() {
    let mut t = PolicyBuilder::lab().action("drop").router();
    assert_eq!(t.out(&tcp4(DYN4, MX4, 25, true, 64)).0, Verdict::Drop(DropReason::Op25bBlocked));
    assert_eq!(t.out(&tcp6(DYN6, MX6, 25, true, 64)).0, Verdict::Drop(DropReason::Op25bBlocked));
    assert_eq!(t.stats().replies(ReplyKind::TcpRst), 0);
}

#[test]
fn exempt_sources_and_relays_pass() {
    let mut t = PolicyBuilder::lab().router();
    for p in [
        tcp4(STATIC4, MX4, 25, true, 64),
        tcp4(DYN4, RELAY4, 25, true, 64),
        tcp6(STATIC6, MX6, 25, true, 64),
        tcp6(DYN6, RELAY6, 25, true, 64),
    ] {
        assert!(matches!(t.out(&p).0, Verdict::Forward { .. }), "{:?}", parse(&p));
    }
    // A relay's neighbour is not a relay.
    assert!(matches!(t.out(&tcp4(DYN4, [198, 51, 100, 26], 25, true, 64)).0, Verdict::Reply { .. }));
}

#[test]
fn sources_outside_the_dynamic_pools_pass() {
    let mut t = PolicyBuilder::lab().op25b("dynamic", r#"["100.64.0.0/16", "2001:db8:100::/48"]"#).router();
    assert!(matches!(t.out(&tcp4([100, 65, 0, 1], MX4, 25, true, 64)).0, Verdict::Forward { .. }));
    assert!(matches!(t.out(&tcp4([100, 64, 0, 9], MX4, 25, true, 64)).0, Verdict::Reply { .. }));
}

#[test]
fn extra_blocked_ports() {
    let mut t = PolicyBuilder::lab().op25b("ports", "[25, 2525]").router();
    assert!(matches!(t.out(&tcp4(DYN4, MX4, 2525, true, 64)).0, Verdict::Reply { kind: ReplyKind::TcpRst, .. }));
    assert!(matches!(t.out(&tcp4(DYN4, MX4, 587, true, 64)).0, Verdict::Forward { .. }));
}

#[test]
fn ipv6_extension_headers_do_not_hide_tcp() {
    let mut t = PolicyBuilder::lab().router();
    let base = tcp6(DYN6, MX6, 25, true, 64);
    let hbh = ext6(&base, 0, PADN);
    let dst = ext6(&base, 60, PADN);
    let both = ext6(&ext6(&base, 60, PADN), 0, PADN);
    let atomic = frag6(&base, 0, false, base.len() - 40);
    for p in [hbh, dst, both, atomic] {
        let (v, out) = t.out(&p);
        assert!(matches!(v, Verdict::Reply { kind: ReplyKind::TcpRst, .. }), "{v:?}");
        assert_rst_for(&p, &out);
    }
}

#[test]
fn ipv6_chain_limits() {
    let mut t = PolicyBuilder::lab().router();
    let mut p = tcp6(DYN6, MX6, 25, true, 64);
    for _ in 0..MAX_EXT {
        p = ext6(&p, 60, PADN);
    }
    assert!(matches!(t.out(&p).0, Verdict::Reply { .. }), "{MAX_EXT} headers are followed");
    let p = ext6(&p, 60, PADN);
    assert_eq!(t.out(&p).0, Verdict::Drop(DropReason::BadExtHeader));
    // Hop-by-hop anywhere but first.
    let p = ext6(&ext6(&tcp6(DYN6, MX6, 25, true, 64), 0, PADN), 60, PADN);
    assert_eq!(t.out(&p).0, Verdict::Drop(DropReason::BadExtHeader));
}

const MAX_EXT: usize = crate::packet::view::MAX_EXT_HEADERS;

// ---- fragments ------------------------------------------------------------------

fn syn_with_data4(dport: u16) -> Vec<u8> {
    let mut v = packets::tcp(&v4(DYN4), 40000, &v4(MX4), dport).seq(7).window(1000).syn().payload(&[0xaa; 300]).build();
    v[6] = 0; // clear DF so fragmenting is legal
    fix_v4_checksum(&mut v);
    v
}

#[test]
fn ipv4_first_fragment_is_judged_on_its_tcp_header() {
    let mut t = PolicyBuilder::lab().router();
    let whole = syn_with_data4(25);
    let first = frag4(&whole, 0, 24, true);
    let (v, out) = t.out(&first);
    assert!(matches!(v, Verdict::Reply { kind: ReplyKind::TcpRst, .. }), "{v:?}");
    assert!(matches!(parse(&out).transport, Transport::Tcp { src_port: 25, dst_port: 40000, .. }));
    let ok = frag4(&syn_with_data4(587), 0, 24, true);
    assert!(matches!(t.out(&ok).0, Verdict::Forward { .. }));
}

#[test]
fn ipv4_tiny_and_overlapping_fragments_are_dropped() {
    let mut t = PolicyBuilder::lab().router();
    let whole = syn_with_data4(587);
    // 8 bytes of TCP header in the first fragment: ports readable, flags not.
    assert_eq!(t.out(&frag4(&whole, 0, 8, true)).0, Verdict::Drop(DropReason::TinyFragment));
    assert_eq!(t.out(&frag4(&whole, 0, 16, true)).0, Verdict::Drop(DropReason::TinyFragment));
    // Offset 1 (8 bytes) could overwrite the flags of the first fragment.
    assert_eq!(t.out(&frag4(&whole, 8, 40, true)).0, Verdict::Drop(DropReason::FragmentOverlap));
    assert_eq!(t.stats().dropped(DropReason::TinyFragment), 2);
}

#[test]
fn later_fragments_pass_without_their_first() {
    let mut t = PolicyBuilder::lab().router();
    let whole = syn_with_data4(25);
    let later = frag4(&whole, 128, 320, false);
    assert!(matches!(t.out(&later).0, Verdict::Forward { .. }));
    let p6 = frag6(&tcp6(DYN6, MX6, 25, true, 64), 16, false, 16);
    assert!(matches!(t.out(&p6).0, Verdict::Forward { .. }));
}

#[test]
fn later_fragments_near_the_start_are_dropped_whatever_the_protocol() {
    let mut t = PolicyBuilder::lab().router();
    let whole = syn_with_data4(25);
    for from in [8, 16, 64, 120] {
        assert_eq!(
            t.out(&frag4(&whole, from, from + 64, true)).0,
            Verdict::Drop(DropReason::FragmentOverlap),
            "{from}"
        );
    }
    // The protocol field of a later fragment proves nothing (AH, or a lie).
    let mut udp_labelled = frag4(&whole, 8, 72, true);
    udp_labelled[9] = 17;
    fix_v4_checksum(&mut udp_labelled);
    assert_eq!(t.out(&udp_labelled).0, Verdict::Drop(DropReason::FragmentOverlap));
    let mut v6 = frag6(&tcp6(DYN6, MX6, 25, true, 64), 1, true, 8);
    v6[40] = 17; // the fragment header's next header
    assert_eq!(t.out(&v6).0, Verdict::Drop(DropReason::FragmentOverlap));
}

#[test]
fn first_fragments_must_hold_udp_and_icmp_headers_too() {
    let mut t = PolicyBuilder::lab().router();
    let udp = udp6(DYN6, MX6, 53, 40);
    // Fragment header + 4 bytes of UDP header.
    assert_eq!(t.out(&frag6(&udp, 0, true, 4)).0, Verdict::Drop(DropReason::TinyFragment));
    assert!(matches!(t.out(&frag6(&udp, 0, true, 8)).0, Verdict::Forward { .. }));
}

#[test]
fn source_routed_packets_are_dropped() {
    let mut t = PolicyBuilder::lab().router();
    // IPv6 routing header (type 4, segment routing) with one segment left,
    // pretending to go to the relay.
    let base = tcp6(DYN6, RELAY6, 25, true, 64);
    let routed = ext6(&base, 43, [4, 1, 0, 0, 0, 0]);
    assert_eq!(t.out(&routed).0, Verdict::Drop(DropReason::SourceRouted));
    // Segments left 0: the routing is done; judged normally (the relay is reachable).
    let done = ext6(&base, 43, [4, 0, 0, 0, 0, 0]);
    assert!(matches!(t.out(&done).0, Verdict::Forward { .. }));
    // IPv4 loose source route option (type 131) via the relay.
    let p = tcp4(DYN4, RELAY4, 25, true, 64);
    let mut lsrr = p[..20].to_vec();
    lsrr[0] = 0x47; // IHL 7: 8 bytes of options
    lsrr.extend_from_slice(&[131, 7, 4, 203, 0, 113, 25, 1]);
    lsrr.extend_from_slice(&p[20..]);
    let len = lsrr.len() as u16;
    lsrr[2..4].copy_from_slice(&len.to_be_bytes());
    fix_v4_checksum(&mut lsrr);
    assert_eq!(t.out(&lsrr).0, Verdict::Drop(DropReason::SourceRouted));
    // Malformed options make a bad header.
    lsrr[21] = 40;
    fix_v4_checksum(&mut lsrr);
    assert_eq!(t.out(&lsrr).0, Verdict::Drop(DropReason::BadHeaderLen));
}

#[test]
fn subscribers_cannot_send_as_the_router() {
    let mut t = PolicyBuilder::lab().router();
    assert_eq!(t.out(&tcp4([100, 64, 0, 1], MX4, 587, true, 64)).0, Verdict::Drop(DropReason::Spoofed));
    assert_eq!(t.out(&tcp6("2001:db8:100::1", MX6, 587, true, 64)).0, Verdict::Drop(DropReason::Spoofed));
}

#[test]
fn ipv6_fragments() {
    let mut t = PolicyBuilder::lab().router();
    let base = tcp6(DYN6, MX6, 25, true, 64);
    // First fragment holding the whole TCP header: judged and answered.
    let first = frag6(&base, 0, true, 20);
    assert!(matches!(t.out(&first).0, Verdict::Reply { kind: ReplyKind::TcpRst, .. }));
    // First fragment without the whole TCP header (RFC 7112): dropped.
    assert_eq!(t.out(&frag6(&base, 0, true, 12)).0, Verdict::Drop(DropReason::TinyFragment));
    // Offset 1 TCP fragment: dropped.
    assert_eq!(t.out(&frag6(&base, 1, true, 8)).0, Verdict::Drop(DropReason::FragmentOverlap));
    // Two fragment headers: dropped.
    let twice = frag6(&frag6(&base, 0, true, 20), 0, true, 28);
    assert_eq!(t.out(&twice).0, Verdict::Drop(DropReason::BadExtHeader));
}

// ---- anti-spoofing and martians --------------------------------------------------

#[test]
fn spoofed_sources_are_dropped_both_ways() {
    let mut t = PolicyBuilder::lab().router();
    // A subscriber borrowing an address outside its prefixes.
    assert_eq!(t.out(&tcp4([192, 0, 2, 66], MX4, 25, true, 64)).0, Verdict::Drop(DropReason::Spoofed));
    assert_eq!(t.out(&tcp4([192, 0, 2, 66], MX4, 587, true, 64)).0, Verdict::Drop(DropReason::Spoofed));
    assert_eq!(t.out(&tcp6("2001:db8:ff::66", MX6, 587, true, 64)).0, Verdict::Drop(DropReason::Spoofed));
    // The outside claiming a subscriber's address.
    let p = tcp4(STATIC4, DYN4, 80, true, 64);
    assert_eq!(t.send(Direction::Inbound, &p).0, Verdict::Drop(DropReason::Spoofed));
    assert_eq!(t.stats().dropped(DropReason::Spoofed), 4);
}

#[test]
fn martians_are_dropped() {
    let mut t = PolicyBuilder::lab().subscriber("prefixes", r#"["0.0.0.0/0", "::/0"]"#).router();
    for p in [
        tcp4([127, 0, 0, 1], MX4, 80, true, 64),
        tcp4(DYN4, [127, 0, 0, 1], 80, true, 64),
        tcp4([224, 0, 0, 1], MX4, 80, true, 64),
        tcp4(DYN4, [224, 0, 0, 5], 80, true, 64),
        tcp4(DYN4, [255, 255, 255, 255], 80, true, 64),
        tcp4([169, 254, 1, 1], MX4, 80, true, 64),
        tcp4([0, 0, 0, 0], MX4, 80, true, 64),
        tcp6("fe80::1", MX6, 80, true, 64),
        tcp6(DYN6, "ff02::1", 80, true, 64),
        tcp6("::1", MX6, 80, true, 64),
        tcp6(DYN6, "::ffff:203.0.113.25", 80, true, 64),
    ] {
        assert_eq!(t.out(&p).0, Verdict::Drop(DropReason::Martian), "{:?}", parse(&p));
    }
}

// ---- TTL, MTU, local ----------------------------------------------------------

#[test]
fn ttl_expiry_answers_time_exceeded_from_the_router() {
    let mut t = PolicyBuilder::lab().router();
    let p = udp4(DYN4, MX4, 33434, 32);
    let mut p1 = p.clone();
    p1[8] = 1;
    fix_v4_checksum(&mut p1);
    let (v, out) = t.out(&p1);
    assert!(matches!(v, Verdict::Reply { kind: ReplyKind::TimeExceeded, .. }), "{v:?}");
    let r = assert_icmp(&p1, &out, IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1)), 11, 0);
    assert_eq!(r.ttl, 64);
    // TTL 0 too.
    p1[8] = 0;
    fix_v4_checksum(&mut p1);
    assert!(matches!(t.out(&p1).0, Verdict::Reply { kind: ReplyKind::TimeExceeded, .. }));

    let mut p6 = udp6(DYN6, MX6, 33434, 32);
    p6[7] = 1;
    let (v, out) = t.out(&p6);
    assert!(matches!(v, Verdict::Reply { kind: ReplyKind::TimeExceeded, .. }));
    assert_icmp(&p6, &out, "2001:db8:100::1".parse().unwrap(), 3, 0);
    // Inbound expiry is answered towards the outside too.
    let mut pin = udp4(MX4, DYN4, 33434, 8);
    pin[8] = 1;
    fix_v4_checksum(&mut pin);
    assert!(matches!(t.send(Direction::Inbound, &pin).0, Verdict::Reply { kind: ReplyKind::TimeExceeded, .. }));
}

#[test]
fn blocked_syn_with_ttl_1_gets_time_exceeded_not_rst() {
    // TTL is checked before the policy: the packet never reaches the policy point.
    let mut t = PolicyBuilder::lab().router();
    let (v, _) = t.out(&tcp4(DYN4, MX4, 25, true, 1));
    assert!(matches!(v, Verdict::Reply { kind: ReplyKind::TimeExceeded, .. }));
}

#[test]
fn no_icmp_error_about_icmp_errors_or_without_an_address() {
    let mut t = PolicyBuilder::lab().router();
    // An ICMP time-exceeded message with TTL 1.
    let mut err = Vec::new();
    PacketBuilder::ipv4(DYN4, MX4, 1)
        .icmpv4(etherparse::Icmpv4Type::TimeExceeded(etherparse::icmpv4::TimeExceededCode::TtlExceededInTransit))
        .write(&mut err, &[0; 28])
        .unwrap();
    assert_eq!(t.out(&err).0, Verdict::Drop(DropReason::TtlExpired));
    // No IPv6 router address configured: expiry is a counted drop.
    let mut t = PolicyBuilder::lab().router_key("addresses", r#"["100.64.0.1"]"#).router();
    let mut p6 = udp6(DYN6, MX6, 33434, 8);
    p6[7] = 1;
    assert_eq!(t.out(&p6).0, Verdict::Drop(DropReason::TtlExpired));
}

#[test]
fn mtu_exceeded() {
    let mut t = PolicyBuilder::lab().upstream("mtu", 1400).router();
    let mut big = udp4(DYN4, MX4, 9, 1450 - 28);
    assert_eq!(big.len(), 1450);
    let (v, out) = t.out(&big);
    assert!(matches!(v, Verdict::Reply { kind: ReplyKind::TooBig, .. }), "{v:?}");
    assert_icmp(&big, &out, IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1)), 3, 4);
    let r = parse(&out);
    assert_eq!(u16::from_be_bytes([out[r.l4_offset + 6], out[r.l4_offset + 7]]), 1400);
    assert!(out.len() <= 576);
    // Without DF: dropped and counted.
    big[6] = 0;
    fix_v4_checksum(&mut big);
    assert_eq!(t.out(&big).0, Verdict::Drop(DropReason::TooBig));
    // Exactly the MTU passes.
    assert!(matches!(t.out(&udp4(DYN4, MX4, 9, 1400 - 28)).0, Verdict::Forward { .. }));

    let big6 = udp6(DYN6, MX6, 9, 1450 - 48);
    let (v, out) = t.out(&big6);
    assert!(matches!(v, Verdict::Reply { kind: ReplyKind::TooBig, .. }));
    assert_icmp(&big6, &out, "2001:db8:100::1".parse().unwrap(), 2, 0);
    let r = parse(&out);
    assert_eq!(&out[r.l4_offset + 4..r.l4_offset + 8], &1400u32.to_be_bytes());
    assert!(out.len() <= 1280);
    // Inbound uses the subscriber MTU (1500): passes.
    assert!(matches!(t.send(Direction::Inbound, &udp4(MX4, DYN4, 9, 1450 - 28)).0, Verdict::Forward { .. }));
}

#[test]
fn router_answers_ping_and_drops_other_local_traffic() {
    let mut t = PolicyBuilder::lab().router();
    let p = packets::echo_request(&v4(DYN4), "100.64.0.1", b"hello");
    let (v, out) = t.out(&p);
    assert!(matches!(v, Verdict::Reply { kind: ReplyKind::EchoReply, .. }));
    let r = parse(&out);
    assert_eq!(r.transport, Transport::Icmp { icmp_type: 0, code: 0 });
    assert_eq!(out.len(), p.len());
    assert_eq!(checksum::sum(&out[r.l4_offset..]), 0xffff);
    assert_eq!(&out[r.l4_offset + 4..], &p[r.l4_offset + 4..], "same id, seq and data");

    let p6 = packets::echo_request(DYN6, "2001:db8:100::1", b"hi");
    let (v, out) = t.out(&p6);
    assert!(matches!(v, Verdict::Reply { kind: ReplyKind::EchoReply, .. }));
    assert_eq!(parse(&out).transport, Transport::Icmp { icmp_type: 129, code: 0 });

    assert_eq!(t.out(&tcp4(DYN4, [100, 64, 0, 1], 22, true, 64)).0, Verdict::Drop(DropReason::Local));
}

// ---- malformed input -----------------------------------------------------------

#[test]
fn malformed_packets_are_dropped_by_reason() {
    let mut t = PolicyBuilder::lab().router();
    let good = tcp4(DYN4, MX4, 587, true, 64);
    let good6 = tcp6(DYN6, MX6, 587, true, 64);
    let mut cases: Vec<(Vec<u8>, DropReason)> = vec![
        (vec![], DropReason::Truncated),
        (good[..10].to_vec(), DropReason::Truncated),
        (good6[..30].to_vec(), DropReason::Truncated),
        (good[..30].to_vec(), DropReason::BadTotalLen),
        (good6[..50].to_vec(), DropReason::BadTotalLen),
    ];
    let mut v5 = good.clone();
    v5[0] = 0x55;
    cases.push((v5, DropReason::BadVersion));
    let mut ihl = good.clone();
    ihl[0] = 0x44;
    cases.push((ihl, DropReason::BadHeaderLen));
    let mut sum = good.clone();
    sum[11] ^= 0xff;
    cases.push((sum, DropReason::BadChecksum));
    let mut short_total = good.clone();
    short_total[2..4].copy_from_slice(&10u16.to_be_bytes());
    fix_v4_checksum(&mut short_total);
    cases.push((short_total, DropReason::BadTotalLen));
    let mut doff = good.clone();
    doff[32] = 0x40; // TCP data offset 4
    cases.push((doff, DropReason::BadHeaderLen));
    let mut cut_tcp = good.clone();
    cut_tcp.truncate(30);
    cut_tcp[2..4].copy_from_slice(&30u16.to_be_bytes());
    fix_v4_checksum(&mut cut_tcp);
    cases.push((cut_tcp, DropReason::Truncated));
    let mut bad_ext = ext6(&good6, 60, PADN);
    bad_ext[41] = 200; // extension length beyond the packet
    cases.push((bad_ext, DropReason::BadExtHeader));
    for (p, want) in cases {
        assert_eq!(t.out(&p).0, Verdict::Drop(want), "{p:02x?}");
    }
    assert_eq!(t.stats().dropped(DropReason::BadChecksum), 1);
}

#[test]
fn trailing_bytes_beyond_total_length_are_not_forwarded() {
    let mut t = PolicyBuilder::lab().router();
    let mut p = tcp4(DYN4, MX4, 587, true, 64);
    let len = p.len();
    p.extend_from_slice(&[0xee; 6]);
    assert_eq!(t.out(&p).0, Verdict::Forward { len });
}

#[test]
fn no_panic_on_random_or_mutated_input() {
    let mut t = PolicyBuilder::lab().router();
    let mut x: u64 = 0x2545f4914f6cdd1d;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let seeds = [
        tcp4(DYN4, MX4, 25, true, 64),
        tcp6(DYN6, MX6, 25, true, 2),
        ext6(&frag6(&tcp6(DYN6, MX6, 25, true, 64), 0, true, 20), 0, PADN),
        frag4(&syn_with_data4(25), 0, 24, true),
        udp4(DYN4, MX4, 53, 40),
    ];
    let mut verdicts = 0usize;
    for i in 0..200_000 {
        let mut p = if i % 4 == 0 {
            (0..(rnd() % 128) as usize).map(|_| rnd() as u8).collect()
        } else {
            seeds[i % seeds.len()].clone()
        };
        for _ in 0..(rnd() % 4) {
            if !p.is_empty() {
                let at = (rnd() as usize) % p.len();
                p[at] = rnd() as u8;
            }
        }
        if rnd() % 8 == 0 {
            p.truncate((rnd() as usize) % (p.len() + 1));
        }
        let dir = if rnd() % 2 == 0 { Direction::Outbound } else { Direction::Inbound };
        let mut reply = [0u8; 1280];
        let mut buf = p.clone();
        match t.router.handle(t.now, dir, &mut buf, &mut reply, RxInfo::default()) {
            Verdict::Reply { len, .. } => {
                assert!(len <= p.len().max(40) + 48, "reply {len} for a {}-byte trigger", p.len());
                PacketView::parse(&reply[..len]).expect("replies parse");
            }
            Verdict::Forward { len } => assert!(len <= p.len()),
            Verdict::Drop(_) | Verdict::Terminate => {}
        }
        verdicts += 1;
    }
    let c = t.stats();
    let total: u64 = Direction::ALL.iter().map(|d| c.forwarded(*d)).sum::<u64>()
        + DropReason::ALL.iter().map(|r| c.dropped(*r)).sum::<u64>()
        + ReplyKind::ALL.iter().map(|k| c.replies(*k)).sum::<u64>()
        + c.terminated();
    assert_eq!(total, verdicts as u64, "every verdict is counted exactly once");
}

#[test]
fn gso_super_packets_are_judged_on_headers_and_checked_per_segment() {
    let mut t = PolicyBuilder::lab().router();
    // A 60,000-byte TCP super-packet to 587, cut into 1448-byte segments.
    let big = packets::tcp(&v4(DYN4), 40000, &v4(MX4), 587).window(1000).ack(1).payload(&[0; 60_000]).build();
    let gso = RxInfo { gso_size: Some(1448), csum_partial: true };
    let (v, out) = t.send_rx(Direction::Outbound, &big, gso);
    assert_eq!(v, Verdict::Forward { len: big.len() });
    assert_eq!(out[8], 63);
    // Segments larger than the egress MTU get "too big" with the MTU.
    let mut t = PolicyBuilder::lab().upstream("mtu", 1400).router();
    let v = t.send_rx(Direction::Outbound, &big, gso).0;
    assert!(matches!(v, Verdict::Reply { kind: ReplyKind::TooBig, .. }), "{v:?}");
    // The same super-packet to port 25 is blocked like any segment of the flow.
    let mut t = PolicyBuilder::lab().router();
    let to25 = packets::tcp(&v4(DYN4), 40000, &v4(MX4), 25).window(1000).ack(1).payload(&[0; 60_000]).build();
    let v = t.send_rx(Direction::Outbound, &to25, gso).0;
    assert_eq!(v, Verdict::Drop(DropReason::Op25bBlocked));
}
