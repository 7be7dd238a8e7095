//! ICMP errors, TTL, MTU and traffic to the router itself.

use std::net::{IpAddr, Ipv4Addr};

use etherparse::PacketBuilder;

use super::{assert_icmp, parse, tcp4, udp4, udp6, v4, DYN4, DYN6, MX4, MX6};
use crate::packet::{checksum, Transport};
use crate::router::{Direction, DropReason, ReplyKind, Verdict};
use crate::testing::packets::{self, fix_ipv4_checksum};
use crate::testing::PolicyBuilder;

#[test]
fn ttl_expiry_answers_time_exceeded_from_the_router() {
    let mut t = PolicyBuilder::lab().router();
    let p = udp4(DYN4, MX4, 33434, 32);
    let mut p1 = p.clone();
    p1[8] = 1;
    fix_ipv4_checksum(&mut p1);
    let (v, out) = t.out(&p1);
    assert!(matches!(v, Verdict::Reply { kind: ReplyKind::TimeExceeded, .. }), "{v:?}");
    let r = assert_icmp(&p1, &out, IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1)), 11, 0);
    assert_eq!(r.ttl, 64);
    // TTL 0 too.
    p1[8] = 0;
    fix_ipv4_checksum(&mut p1);
    assert!(matches!(t.out(&p1).0, Verdict::Reply { kind: ReplyKind::TimeExceeded, .. }));

    let mut p6 = udp6(DYN6, MX6, 33434, 32);
    p6[7] = 1;
    let (v, out) = t.out(&p6);
    assert!(matches!(v, Verdict::Reply { kind: ReplyKind::TimeExceeded, .. }));
    assert_icmp(&p6, &out, "2001:db8:100::1".parse().unwrap(), 3, 0);
    // Inbound expiry is answered towards the outside too.
    let mut pin = udp4(MX4, DYN4, 33434, 8);
    pin[8] = 1;
    fix_ipv4_checksum(&mut pin);
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
    fix_ipv4_checksum(&mut big);
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
