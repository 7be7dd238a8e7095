//! The tunnel stage: packets inside IP in IP, GRE, Teredo, VXLAN and Geneve
//! meet OP25B and IP25B.

use crate::packet::encap::{encapsulate, Options};
use crate::packet::{PacketView, TunnelKind};
use crate::router::{Direction, DropReason, ReplyKind, Verdict};
use crate::testing::packets::{fragment4, tcp, udp};
use crate::testing::PolicyBuilder;

const DYN4: &str = "100.64.1.10";
const DYN6: &str = "2001:db8:100:1::10";
const EXEMPT4: &str = "100.64.9.10";
const FAR4: &str = "198.51.100.1";
const FAR6: &str = "2001:db8:5::1";
const MX4: &str = "203.0.113.25";
const MX6: &str = "2001:db8:203::25";
const RELAY4: &str = "198.51.100.25";

fn wrap(kind: TunnelKind, src: &str, dst: &str, inner: &[u8]) -> Vec<u8> {
    wrap_with(kind, src, dst, inner, Options::default())
}

fn wrap_with(kind: TunnelKind, src: &str, dst: &str, inner: &[u8], o: Options) -> Vec<u8> {
    encapsulate(kind, src.parse().unwrap(), dst.parse().unwrap(), 64, inner, &o).unwrap()
}

/// For each kind, an outer pair of addresses and the inner family it carries.
fn cases() -> Vec<(TunnelKind, &'static str, &'static str, bool, Options)> {
    let o = Options::default();
    vec![
        (TunnelKind::Ipip, DYN4, FAR4, false, o),
        (TunnelKind::SixIn4, DYN4, FAR4, true, o),
        (TunnelKind::FourIn6, DYN6, FAR6, false, o),
        (TunnelKind::SixIn6, DYN6, FAR6, true, o),
        (TunnelKind::Gre, DYN4, FAR4, false, o),
        (TunnelKind::Gre, DYN6, FAR6, true, Options { gre_extras: true, ..o }),
        (TunnelKind::Gre, DYN4, FAR4, true, Options { gre_ethernet: true, vlan: true, ..o }),
        (TunnelKind::Teredo, DYN4, FAR4, true, Options { teredo_indicators: true, ..o }),
        (TunnelKind::Vxlan, DYN4, FAR4, false, Options { vlan: true, ..o }),
        (TunnelKind::Vxlan, DYN6, FAR6, true, o),
        (TunnelKind::Geneve, DYN4, FAR4, true, Options { geneve_options: 8, ..o }),
        (TunnelKind::Geneve, DYN6, FAR6, false, o),
    ]
}

fn inner_syn(v6: bool, dport: u16) -> Vec<u8> {
    if v6 {
        tcp("2001:db8:1::1", 1234, MX6, dport).syn().build()
    } else {
        tcp("10.0.0.1", 1234, MX4, dport).syn().build()
    }
}

#[test]
fn port_25_inside_every_kind_is_blocked_and_587_passes() {
    let mut t = PolicyBuilder::lab().router();
    let mut blocked = [0u64; TunnelKind::COUNT];
    let mut seen = [0u64; TunnelKind::COUNT];
    for (kind, src, dst, v6, o) in cases() {
        let (v, _) = t.out(&wrap_with(kind, src, dst, &inner_syn(v6, 25), o));
        assert_eq!(v, Verdict::Drop(DropReason::TunnelBlocked), "{kind} {o:?}");
        let (v, _) = t.out(&wrap_with(kind, src, dst, &inner_syn(v6, 587), o));
        assert!(matches!(v, Verdict::Forward { .. }), "{kind} {o:?}: {v:?}");
        blocked[kind.index()] += 1;
        seen[kind.index()] += 2;
    }
    let s = t.stats();
    assert_eq!(s.tunnels.blocked, blocked);
    assert_eq!(s.tunnels.packets, seen);
    assert_eq!(s.dropped(DropReason::TunnelBlocked), blocked.iter().sum::<u64>());
    assert_eq!(s.op25b.blocked, 0, "the fast path's own counter counts packets outside tunnels");
}

#[test]
fn the_relay_exempt_sources_and_static_customers_pass() {
    let mut t = PolicyBuilder::lab().op25b("dynamic", crate::testing::list(&["100.64.0.0/16"])).router();
    let to_relay = tcp("10.0.0.1", 1234, RELAY4, 25).syn().build();
    for (what, pkt) in [
        ("to the relay", wrap(TunnelKind::Gre, DYN4, FAR4, &to_relay)),
        ("from an exempt source", wrap(TunnelKind::Gre, EXEMPT4, FAR4, &inner_syn(false, 25))),
        ("from a static customer", wrap(TunnelKind::Vxlan, "100.65.0.10", FAR4, &inner_syn(false, 25))),
        ("inner UDP to 25", wrap(TunnelKind::Ipip, DYN4, FAR4, &udp("10.0.0.1", 1, MX4, 25, b"x"))),
    ] {
        let (v, _) = t.out(&pkt);
        assert!(matches!(v, Verdict::Forward { .. }), "{what}: {v:?}");
    }
    assert_eq!(t.stats().tunnels.packets[TunnelKind::Gre.index()], 2);
}

#[test]
fn actions_become_drop_or_icmp_or_monitor() {
    let pkt = wrap(TunnelKind::Gre, DYN4, FAR4, &inner_syn(false, 25));
    for action in ["reject", "drop", "banner"] {
        let mut t = PolicyBuilder::lab().action(action).router();
        let (v, _) = t.out(&pkt);
        assert_eq!(v, Verdict::Drop(DropReason::TunnelBlocked), "{action}");
    }
    let mut t =
        PolicyBuilder::lab().action("redirect").op25b("redirect_to", crate::testing::list(&["198.51.100.25:25"]));
    let (v, _) = t.router().out(&pkt);
    assert_eq!(v, Verdict::Drop(DropReason::TunnelBlocked), "redirect");
    t = PolicyBuilder::lab().action("icmp");
    let mut r = t.router();
    let (v, reply) = r.out(&pkt);
    assert!(matches!(v, Verdict::Reply { kind: ReplyKind::Prohibited, .. }), "{v:?}");
    let view = PacketView::parse(&reply).unwrap();
    assert_eq!(view.dst.to_string(), DYN4, "answered to the outer source");
    assert!(matches!(view.transport, crate::packet::Transport::Icmp { icmp_type: 3, code: 13 }));
    // Not a SYN inside: dropped even with icmp.
    let ack = wrap(TunnelKind::Gre, DYN4, FAR4, &tcp("10.0.0.1", 1234, MX4, 25).ack(1).build());
    assert_eq!(r.out(&ack).0, Verdict::Drop(DropReason::TunnelBlocked));
    let mut r = PolicyBuilder::lab().action("monitor").router();
    assert!(matches!(r.out(&pkt).0, Verdict::Forward { .. }));
    assert_eq!(r.stats().op25b.monitored, 1);
    assert_eq!(r.stats().tunnels.blocked, [0; TunnelKind::COUNT]);
}

#[test]
fn nested_tunnels_are_judged_to_the_depth_and_deeper_is_dropped() {
    let mut t = PolicyBuilder::lab().router();
    let inner = inner_syn(false, 25);
    let d1 = wrap(TunnelKind::Ipip, "10.1.0.1", "10.2.0.1", &inner);
    let d2 = wrap(TunnelKind::Vxlan, "10.3.0.1", "10.4.0.1", &d1);
    let d3 = wrap(TunnelKind::Gre, DYN4, FAR4, &d2);
    assert_eq!(t.out(&d3).0, Verdict::Drop(DropReason::TunnelBlocked));
    let ok = wrap(
        TunnelKind::Gre,
        DYN4,
        FAR4,
        &wrap(
            TunnelKind::Vxlan,
            "10.3.0.1",
            "10.4.0.1",
            &wrap(TunnelKind::Ipip, "10.1.0.1", "10.2.0.1", &inner_syn(false, 587)),
        ),
    );
    assert!(matches!(t.out(&ok).0, Verdict::Forward { .. }));
    let d4 = wrap(TunnelKind::Gre, DYN4, FAR4, &wrap(TunnelKind::Ipip, "10.5.0.1", "10.6.0.1", &d2));
    assert_eq!(t.out(&d4).0, Verdict::Drop(DropReason::TunnelTooDeep));
    // Four deep with an innocent packet inside: dropped all the same.
    let d4 = wrap(TunnelKind::Gre, DYN4, FAR4, &wrap(TunnelKind::Ipip, "10.5.0.1", "10.6.0.1", &ok[24..]));
    assert_eq!(t.out(&d4).0, Verdict::Drop(DropReason::TunnelTooDeep));
    assert_eq!(t.stats().tunnels.packets[TunnelKind::Gre.index()], 4);
}

#[test]
fn fragments_must_hold_the_inner_headers() {
    let mut t = PolicyBuilder::lab().router();
    let inner = tcp("10.0.0.1", 1234, MX4, 25).syn().payload(&[0; 600]).build();
    let whole = wrap(TunnelKind::Gre, DYN4, FAR4, &inner);
    // The first fragment holds the inner TCP header: judged and blocked.
    assert_eq!(t.out(&fragment4(&whole, 0, 200, true)).0, Verdict::Drop(DropReason::TunnelBlocked));
    // It does not: a tiny fragment.
    assert_eq!(t.out(&fragment4(&whole, 0, 32, true)).0, Verdict::Drop(DropReason::TinyFragment));
    let vx = wrap(TunnelKind::Vxlan, DYN4, FAR4, &inner);
    assert_eq!(t.out(&fragment4(&vx, 0, 24, true)).0, Verdict::Drop(DropReason::TinyFragment));
    // Later fragments carry no headers: forwarded, as outside tunnels.
    assert!(matches!(t.out(&fragment4(&whole, 200, 400, true)).0, Verdict::Forward { .. }));
    // 587 in a first fragment passes.
    let ok = wrap(TunnelKind::Gre, DYN4, FAR4, &tcp("10.0.0.1", 1234, MX4, 587).syn().payload(&[0; 600]).build());
    assert!(matches!(t.out(&fragment4(&ok, 0, 200, true)).0, Verdict::Forward { .. }));
    // An inner later fragment overlapping the inner TCP header.
    let inner_frag = fragment4(&inner, 8, 100, false);
    let pkt = wrap(TunnelKind::Ipip, DYN4, FAR4, &inner_frag);
    assert_eq!(t.out(&pkt).0, Verdict::Drop(DropReason::FragmentOverlap));
}

#[test]
fn malformed_tunnels_of_dynamic_addresses_are_dropped() {
    let mut t = PolicyBuilder::lab().router();
    let inner = inner_syn(false, 25);
    let raw = |proto: u8, body: &[u8]| {
        let mut out = Vec::new();
        etherparse::PacketBuilder::ipv4([100, 64, 1, 10], [198, 51, 100, 1], 64)
            .write(&mut out, etherparse::IpNumber(proto), body)
            .unwrap();
        out
    };
    let mut bad_checksum = inner.clone();
    bad_checksum[10] ^= 0xff;
    for (what, pkt) in [
        ("short GRE header", raw(47, &[0, 0, 8])),
        ("GRE with routing", raw(47, &[&[0x40, 0, 8, 0][..], &inner].concat())),
        ("bad Teredo", udp(DYN4, 3544, FAR4, 3544, &inner)),
        ("truncated VXLAN", udp(DYN4, 40000, FAR4, 4789, &[8, 0, 0, 0, 0, 0])),
        ("inner IPv4 bad checksum", raw(4, &bad_checksum)),
        ("inner truncated", raw(4, &inner[..30])),
    ] {
        assert_eq!(t.out(&pkt).0, Verdict::Drop(DropReason::TunnelMalformed), "{what}");
    }
    // A static customer's malformed tunnel is not inspected.
    let from_static = udp("100.64.9.10", 40000, FAR4, 4789, &[8, 0, 0, 0, 0, 0]);
    assert!(matches!(t.out(&from_static).0, Verdict::Forward { .. }));
}

#[test]
fn tunnels_block_drops_all_but_the_endpoints_and_forward_inspects_nothing() {
    let mut t = PolicyBuilder::lab()
        .op25b("tunnels", "\"block\"")
        .op25b("tunnel_endpoints", crate::testing::list(&["198.51.100.0/28"]))
        .router();
    let web = tcp("10.0.0.1", 1234, MX4, 443).syn().build();
    assert_eq!(t.out(&wrap(TunnelKind::Gre, DYN4, "203.0.113.7", &web)).0, Verdict::Drop(DropReason::TunnelBlocked));
    assert!(matches!(t.out(&wrap(TunnelKind::Gre, DYN4, FAR4, &web)).0, Verdict::Forward { .. }));
    // To an endpoint, still inspected.
    assert_eq!(
        t.out(&wrap(TunnelKind::Gre, DYN4, FAR4, &inner_syn(false, 25))).0,
        Verdict::Drop(DropReason::TunnelBlocked)
    );
    // Inbound from elsewhere to a dynamic address.
    assert_eq!(t.inb(&wrap(TunnelKind::Gre, "203.0.113.7", DYN4, &web)).0, Verdict::Drop(DropReason::TunnelBlocked));
    assert!(matches!(t.out(&wrap(TunnelKind::Gre, EXEMPT4, "203.0.113.7", &web)).0, Verdict::Forward { .. }));

    let mut t = PolicyBuilder::lab().op25b("tunnels", "\"forward\"").router();
    assert!(matches!(t.out(&wrap(TunnelKind::Gre, DYN4, FAR4, &inner_syn(false, 25))).0, Verdict::Forward { .. }));
    assert!(matches!(t.out(&udp(DYN4, 40000, FAR4, 4789, &[8, 0])).0, Verdict::Forward { .. }));
    assert_eq!(t.stats().tunnels.packets[TunnelKind::Gre.index()], 1);
}

#[test]
fn ip25b_sees_inside_inbound_tunnels() {
    let mut t = PolicyBuilder::lab().op25b("block_inbound", true).router();
    let to_sub = tcp("203.0.113.7", 1234, "10.0.0.1", 25).syn().build();
    let (v, _) = t.inb(&wrap(TunnelKind::Gre, FAR4, DYN4, &to_sub));
    assert_eq!(v, Verdict::Drop(DropReason::TunnelBlocked));
    let (v, _) = t.inb(&wrap(TunnelKind::Gre, FAR4, EXEMPT4, &to_sub));
    assert!(matches!(v, Verdict::Forward { .. }), "{v:?}");
    let reply = tcp("203.0.113.7", 25, "10.0.0.1", 1234).syn().ack(1).build();
    assert!(matches!(t.inb(&wrap(TunnelKind::Gre, FAR4, DYN4, &reply)).0, Verdict::Forward { .. }));
    // Without block_inbound nothing inbound is blocked.
    let mut t = PolicyBuilder::lab().router();
    assert!(matches!(t.inb(&wrap(TunnelKind::Gre, FAR4, DYN4, &to_sub)).0, Verdict::Forward { .. }));
}

#[test]
fn rules_match_on_the_tunnel_kind_of_the_outer_packet() {
    let rules = r#"
[[rule]]
name = "no-vxlan"
tunnel = "vxlan"
action = "drop"

[[rule]]
name = "tunnels"
tunnel = "any"
action = "count"

[[rule]]
name = "plain"
tunnel = "none"
protocol = "udp"
action = "count"
"#;
    let mut t = PolicyBuilder::lab().rules(rules).router();
    let web = tcp("10.0.0.1", 1234, MX4, 443).syn().build();
    assert_eq!(t.out(&wrap(TunnelKind::Vxlan, DYN4, FAR4, &web)).0, Verdict::Drop(DropReason::RuleDrop));
    assert!(matches!(t.out(&wrap(TunnelKind::Gre, DYN4, FAR4, &web)).0, Verdict::Forward { .. }));
    assert!(matches!(t.out(&udp(DYN4, 5000, FAR4, 53, b"x")).0, Verdict::Forward { .. }));
    let s = t.stats();
    assert_eq!(s.rule("no-vxlan").unwrap().packets, 1);
    assert_eq!(s.rule("tunnels").unwrap().packets, 1);
    assert_eq!(s.rule("plain").unwrap().packets, 1);
}

#[test]
fn trace_and_block_note_name_the_tunnel_and_the_inner_ends() {
    let mut t = PolicyBuilder::lab().router();
    t.router.note_blocks(true);
    let mut pkt = wrap(TunnelKind::Gre, DYN4, FAR4, &inner_syn(false, 25));
    let mut reply = vec![0u8; 1500];
    let (v, trace) = t.router.handle_traced(t.now, Direction::Outbound, &mut pkt, &mut reply);
    assert_eq!(v, Verdict::Drop(DropReason::TunnelBlocked));
    let text: Vec<String> = trace.steps.iter().map(|s| format!("{}: {}", s.stage, s.detail)).collect();
    assert!(
        text.iter().any(|l| l.starts_with("tunnel: gre (depth 1) carries tcp 10.0.0.1:1234 -> 203.0.113.25:25")),
        "{text:#?}"
    );
    assert!(text.iter().any(|l| l.starts_with("op25b: inside gre: block")), "{text:#?}");
    let b = t.router.take_block().expect("noted");
    assert_eq!(b.src.ip().to_string(), DYN4);
    assert_eq!(b.dst.to_string(), "203.0.113.25:25");
    let tun = b.tunnel.expect("tunnel named");
    assert_eq!((tun.kind, tun.depth, tun.inner_src.to_string()), (TunnelKind::Gre, 1, "10.0.0.1:1234".to_string()));
}

#[test]
fn outer_checksums_do_not_change_the_decision() {
    let mut t = PolicyBuilder::lab().router();
    // GRE with its checksum present and wrong (the builder writes zero).
    let o = Options { gre_extras: true, ..Options::default() };
    let gre = wrap_with(TunnelKind::Gre, DYN4, FAR4, &inner_syn(false, 25), o);
    assert_eq!(t.out(&gre).0, Verdict::Drop(DropReason::TunnelBlocked));
    // VXLAN and Teredo with a wrong UDP checksum, and with none (zero).
    for (kind, v6) in [(TunnelKind::Vxlan, false), (TunnelKind::Teredo, true)] {
        for sum in [[0xde, 0xad], [0, 0]] {
            let mut pkt = wrap(kind, DYN4, FAR4, &inner_syn(v6, 25));
            pkt[26..28].copy_from_slice(&sum);
            assert_eq!(t.out(&pkt).0, Verdict::Drop(DropReason::TunnelBlocked), "{kind} checksum {sum:?}");
        }
    }
}

#[test]
fn ipv6_outer_fragments_must_hold_the_inner_headers() {
    use crate::testing::packets::fragment6;
    let mut t = PolicyBuilder::lab().router();
    let inner = tcp("10.0.0.1", 1234, MX4, 25).syn().payload(&[0; 600]).build();
    let whole = wrap(TunnelKind::Gre, DYN6, FAR6, &inner);
    // GRE 4 + inner IPv4 20 + TCP 20 = 44 bytes after the fragment header.
    assert_eq!(t.out(&fragment6(&whole, 0, true, 48)).0, Verdict::Drop(DropReason::TunnelBlocked));
    assert_eq!(t.out(&fragment6(&whole, 0, true, 40)).0, Verdict::Drop(DropReason::TinyFragment));
    let vx = wrap(TunnelKind::Vxlan, DYN6, FAR6, &inner);
    // UDP 8 + VXLAN 8 + Ethernet 14 + IPv4 20 + TCP 20 = 70.
    assert_eq!(t.out(&fragment6(&vx, 0, true, 72)).0, Verdict::Drop(DropReason::TunnelBlocked));
    assert_eq!(t.out(&fragment6(&vx, 0, true, 64)).0, Verdict::Drop(DropReason::TinyFragment));
}
