//! Fragments, source routes, spoofed sources and martians.

use super::{parse, syn_with_data4, tcp4, tcp6, udp6, DYN4, DYN6, MX4, MX6, RELAY4, RELAY6, STATIC4};
use crate::packet::Transport;
use crate::router::{Direction, DropReason, ReplyKind, Verdict};
use crate::testing::packets::{fix_ipv4_checksum, fragment4, fragment6, with_ext6};
use crate::testing::PolicyBuilder;

#[test]
fn ipv4_first_fragment_is_judged_on_its_tcp_header() {
    let mut t = PolicyBuilder::lab().router();
    let whole = syn_with_data4(25);
    let first = fragment4(&whole, 0, 24, true);
    let (v, out) = t.out(&first);
    assert!(matches!(v, Verdict::Reply { kind: ReplyKind::TcpRst, .. }), "{v:?}");
    assert!(matches!(parse(&out).transport, Transport::Tcp { src_port: 25, dst_port: 40000, .. }));
    let ok = fragment4(&syn_with_data4(587), 0, 24, true);
    assert!(matches!(t.out(&ok).0, Verdict::Forward { .. }));
}

#[test]
fn ipv4_tiny_and_overlapping_fragments_are_dropped() {
    let mut t = PolicyBuilder::lab().router();
    let whole = syn_with_data4(587);
    // 8 bytes of TCP header in the first fragment: ports readable, flags not.
    assert_eq!(t.out(&fragment4(&whole, 0, 8, true)).0, Verdict::Drop(DropReason::TinyFragment));
    assert_eq!(t.out(&fragment4(&whole, 0, 16, true)).0, Verdict::Drop(DropReason::TinyFragment));
    // Offset 1 (8 bytes) could overwrite the flags of the first fragment.
    assert_eq!(t.out(&fragment4(&whole, 8, 40, true)).0, Verdict::Drop(DropReason::FragmentOverlap));
    assert_eq!(t.stats().dropped(DropReason::TinyFragment), 2);
}

#[test]
fn later_fragments_pass_without_their_first() {
    let mut t = PolicyBuilder::lab().router();
    let whole = syn_with_data4(25);
    let later = fragment4(&whole, 128, 320, false);
    assert!(matches!(t.out(&later).0, Verdict::Forward { .. }));
    let p6 = fragment6(&tcp6(DYN6, MX6, 25, true, 64), 16, false, 16);
    assert!(matches!(t.out(&p6).0, Verdict::Forward { .. }));
}

#[test]
fn later_fragments_near_the_start_are_dropped_whatever_the_protocol() {
    let mut t = PolicyBuilder::lab().router();
    let whole = syn_with_data4(25);
    for from in [8, 16, 64, 120] {
        assert_eq!(
            t.out(&fragment4(&whole, from, from + 64, true)).0,
            Verdict::Drop(DropReason::FragmentOverlap),
            "{from}"
        );
    }
    // The protocol field of a later fragment proves nothing (AH, or a lie).
    let mut udp_labelled = fragment4(&whole, 8, 72, true);
    udp_labelled[9] = 17;
    fix_ipv4_checksum(&mut udp_labelled);
    assert_eq!(t.out(&udp_labelled).0, Verdict::Drop(DropReason::FragmentOverlap));
    let mut v6 = fragment6(&tcp6(DYN6, MX6, 25, true, 64), 1, true, 8);
    v6[40] = 17; // the fragment header's next header
    assert_eq!(t.out(&v6).0, Verdict::Drop(DropReason::FragmentOverlap));
}

#[test]
fn first_fragments_must_hold_udp_and_icmp_headers_too() {
    let mut t = PolicyBuilder::lab().router();
    let udp = udp6(DYN6, MX6, 53, 40);
    // Fragment header + 4 bytes of UDP header.
    assert_eq!(t.out(&fragment6(&udp, 0, true, 4)).0, Verdict::Drop(DropReason::TinyFragment));
    assert!(matches!(t.out(&fragment6(&udp, 0, true, 8)).0, Verdict::Forward { .. }));
}

#[test]
fn source_routed_packets_are_dropped() {
    let mut t = PolicyBuilder::lab().router();
    // IPv6 routing header (type 4, segment routing) with one segment left,
    // pretending to go to the relay.
    let base = tcp6(DYN6, RELAY6, 25, true, 64);
    let routed = with_ext6(&base, 43, [4, 1, 0, 0, 0, 0]);
    assert_eq!(t.out(&routed).0, Verdict::Drop(DropReason::SourceRouted));
    // Segments left 0: the routing is done; judged normally (the relay is reachable).
    let done = with_ext6(&base, 43, [4, 0, 0, 0, 0, 0]);
    assert!(matches!(t.out(&done).0, Verdict::Forward { .. }));
    // IPv4 loose source route option (type 131) via the relay.
    let p = tcp4(DYN4, RELAY4, 25, true, 64);
    let mut lsrr = p[..20].to_vec();
    lsrr[0] = 0x47; // IHL 7: 8 bytes of options
    lsrr.extend_from_slice(&[131, 7, 4, 203, 0, 113, 25, 1]);
    lsrr.extend_from_slice(&p[20..]);
    let len = lsrr.len() as u16;
    lsrr[2..4].copy_from_slice(&len.to_be_bytes());
    fix_ipv4_checksum(&mut lsrr);
    assert_eq!(t.out(&lsrr).0, Verdict::Drop(DropReason::SourceRouted));
    // Malformed options make a bad header.
    lsrr[21] = 40;
    fix_ipv4_checksum(&mut lsrr);
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
    let first = fragment6(&base, 0, true, 20);
    assert!(matches!(t.out(&first).0, Verdict::Reply { kind: ReplyKind::TcpRst, .. }));
    // First fragment without the whole TCP header (RFC 7112): dropped.
    assert_eq!(t.out(&fragment6(&base, 0, true, 12)).0, Verdict::Drop(DropReason::TinyFragment));
    // Offset 1 TCP fragment: dropped.
    assert_eq!(t.out(&fragment6(&base, 1, true, 8)).0, Verdict::Drop(DropReason::FragmentOverlap));
    // Two fragment headers: dropped.
    let twice = fragment6(&fragment6(&base, 0, true, 20), 0, true, 28);
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
