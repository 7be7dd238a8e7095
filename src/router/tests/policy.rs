//! OP25B decisions: what is blocked, what passes, and how.

use super::{
    assert_rst_for, parse, tcp4, tcp6, udp4, udp6, v4, DYN4, DYN6, MX4, MX6, PADN, RELAY4, RELAY6, STATIC4, STATIC6,
};
use crate::packet::checksum;
use crate::router::{Direction, DropReason, ReplyKind, Verdict};
use crate::testing::packets::{self, fragment6, with_ext6};
use crate::testing::PolicyBuilder;

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
    let hbh = with_ext6(&base, 0, PADN);
    let dst = with_ext6(&base, 60, PADN);
    let both = with_ext6(&with_ext6(&base, 60, PADN), 0, PADN);
    let atomic = fragment6(&base, 0, false, base.len() - 40);
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
        p = with_ext6(&p, 60, PADN);
    }
    assert!(matches!(t.out(&p).0, Verdict::Reply { .. }), "{MAX_EXT} headers are followed");
    let p = with_ext6(&p, 60, PADN);
    assert_eq!(t.out(&p).0, Verdict::Drop(DropReason::BadExtHeader));
    // Hop-by-hop anywhere but first.
    let p = with_ext6(&with_ext6(&tcp6(DYN6, MX6, 25, true, 64), 0, PADN), 60, PADN);
    assert_eq!(t.out(&p).0, Verdict::Drop(DropReason::BadExtHeader));
}

const MAX_EXT: usize = crate::packet::view::MAX_EXT_HEADERS;

// ---- fragments ------------------------------------------------------------------
