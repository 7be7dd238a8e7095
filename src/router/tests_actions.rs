//! Scenario tests of the blocking actions (icmp, banner, redirect), IP25B and
//! the reply rate limit.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use etherparse::TcpHeaderSlice;

use super::*;
use crate::packet::{checksum, Transport};
use crate::testing::packets::{self, tcp_checksum_ok};
use crate::testing::PolicyBuilder;

const DYN4: [u8; 4] = [100, 64, 1, 10];
const STATIC4: [u8; 4] = [100, 64, 9, 10];
const MX4: [u8; 4] = [203, 0, 113, 25];
const RELAY4: [u8; 4] = [198, 51, 100, 25];

/// The lab policy without the keys it sets to their defaults: tests set their own.
fn lab() -> PolicyBuilder {
    PolicyBuilder::lab().defaults()
}

fn router(b: PolicyBuilder) -> Router {
    Router::new(b.policy())
}

fn redirect() -> PolicyBuilder {
    lab().action("redirect").op25b("redirect_to", r#"["198.51.100.25:25", "[2001:db8:25::25]:25"]"#)
}

fn tcp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, flags: &str, payload: &[u8]) -> Vec<u8> {
    let (src, dst) = (std::net::Ipv4Addr::from(src).to_string(), std::net::Ipv4Addr::from(dst).to_string());
    let b = packets::tcp(&src, sport, &dst, dport).seq(100).payload(payload);
    match flags {
        "syn" => b.syn(),
        "synack" => b.syn().ack(101),
        "fin" => b.ack(1).fin(),
        _ => b.ack(1),
    }
    .build()
}

fn tcp6(src: &str, sport: u16, dst: &str, dport: u16, syn: bool) -> Vec<u8> {
    let b = packets::tcp(src, sport, dst, dport).seq(100).payload(b"data");
    if syn { b.syn() } else { b.ack(1) }.build()
}

fn run(r: &mut Router, now: Instant, dir: Direction, pkt: &[u8]) -> (Verdict, Vec<u8>) {
    let mut buf = pkt.to_vec();
    let mut reply = vec![0u8; 2048];
    let v = r.handle(now, dir, &mut buf, &mut reply, RxInfo::default());
    let out = match v {
        Verdict::Forward { len } => buf[..len].to_vec(),
        Verdict::Reply { len, .. } => reply[..len].to_vec(),
        _ => Vec::new(),
    };
    (v, out)
}

#[test]
fn icmp_action_answers_syn_with_prohibited() {
    let mut r = router(lab().action("icmp"));
    let now = Instant::now();
    let syn = tcp(DYN4, 40000, MX4, 25, "syn", &[]);
    let (v, out) = run(&mut r, now, Direction::Outbound, &syn);
    assert!(matches!(v, Verdict::Reply { kind: ReplyKind::Prohibited, .. }), "{v:?}");
    let icmp = PacketView::parse(&out).unwrap();
    assert_eq!(icmp.src.to_string(), "100.64.0.1");
    assert_eq!(icmp.dst.to_string(), "100.64.1.10");
    assert_eq!(icmp.transport, Transport::Icmp { icmp_type: 3, code: 13 });
    assert_eq!(&out[icmp.l4_offset + 8..icmp.l4_offset + 8 + syn.len()], &syn[..], "quotes the SYN");
    assert_eq!(checksum::sum(&out[icmp.l4_offset..]), 0xffff);
    let (v, _) = run(&mut r, now, Direction::Outbound, &tcp(DYN4, 40000, MX4, 25, "ack", &[]));
    assert_eq!(v, Verdict::Drop(DropReason::Op25bBlocked));
    let (v, out) =
        run(&mut r, now, Direction::Outbound, &tcp6("2001:db8:100:1::10", 40000, "2001:db8:203::25", 25, true));
    assert!(matches!(v, Verdict::Reply { kind: ReplyKind::Prohibited, .. }));
    assert_eq!(PacketView::parse(&out).unwrap().transport, Transport::Icmp { icmp_type: 1, code: 1 });
}

#[test]
fn reply_limit_bounds_answers_per_subscriber() {
    let mut r = router(lab().op25b("reply_rate", 5).op25b("reply_burst", 10));
    let t0 = Instant::now();
    let mut answered = 0;
    for port in 0..1000u16 {
        let (v, _) = run(&mut r, t0, Direction::Outbound, &tcp(DYN4, 10000 + port, MX4, 25, "syn", &[]));
        match v {
            Verdict::Reply { kind: ReplyKind::TcpRst, .. } => answered += 1,
            Verdict::Drop(DropReason::ReplyRateLimited) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(answered, 10, "the burst");
    // Another subscriber has its own bucket.
    let (v, _) = run(&mut r, t0, Direction::Outbound, &tcp([100, 64, 1, 11], 1, MX4, 25, "syn", &[]));
    assert!(matches!(v, Verdict::Reply { .. }));
    // Over ten seconds of flood: at most burst + rate x 10 answers in all.
    for ms in (0..10_000u64).step_by(10) {
        let now = t0 + Duration::from_millis(ms);
        if matches!(run(&mut r, now, Direction::Outbound, &tcp(DYN4, 1, MX4, 25, "syn", &[])).0, Verdict::Reply { .. })
        {
            answered += 1;
        }
    }
    assert!(answered <= 10 + 5 * 10, "{answered}");
    assert!(answered >= 5 * 9, "{answered}");
    // TTL expiry and echo replies spend the same tokens.
    let ping = packets::echo_request("100.64.1.10", "100.64.0.1", &[]);
    assert_eq!(
        run(&mut r, t0 + Duration::from_millis(9_999), Direction::Outbound, &ping).0,
        Verdict::Drop(DropReason::ReplyRateLimited)
    );
}

#[test]
fn ip25b_blocks_new_inbound_connections_to_dynamic_addresses() {
    let mut r = router(lab().op25b("block_inbound", true));
    let now = Instant::now();
    let (v, _) = run(&mut r, now, Direction::Inbound, &tcp(MX4, 40000, DYN4, 25, "syn", &[]));
    assert_eq!(v, Verdict::Drop(DropReason::Ip25bBlocked));
    // Static (exempt) addresses may run mail servers.
    assert!(matches!(
        run(&mut r, now, Direction::Inbound, &tcp(MX4, 40000, STATIC4, 25, "syn", &[])).0,
        Verdict::Forward { .. }
    ));
    // Other ports, and replies to the subscriber's own outbound connections, pass.
    assert!(matches!(
        run(&mut r, now, Direction::Inbound, &tcp(MX4, 40000, DYN4, 587, "syn", &[])).0,
        Verdict::Forward { .. }
    ));
    assert!(matches!(
        run(&mut r, now, Direction::Inbound, &tcp(RELAY4, 25, DYN4, 40000, "synack", &[])).0,
        Verdict::Forward { .. }
    ));
    // Off by default.
    let mut r = router(lab());
    assert!(matches!(
        run(&mut r, now, Direction::Inbound, &tcp(MX4, 40000, DYN4, 25, "syn", &[])).0,
        Verdict::Forward { .. }
    ));
}

#[test]
fn banner_action_hands_blocked_flows_to_the_responder() {
    let mut r = router(lab().action("banner"));
    let now = Instant::now();
    let syn = tcp(DYN4, 40000, MX4, 25, "syn", &[]);
    assert_eq!(run(&mut r, now, Direction::Outbound, &syn).0, Verdict::Terminate);
    // Segments of a flow with no session are not handed over (the responder
    // would answer them with RSTs outside the reply limit).
    let stray = tcp(DYN4, 40001, MX4, 25, "ack", b"EHLO x");
    assert_eq!(run(&mut r, now, Direction::Outbound, &stray).0, Verdict::Drop(DropReason::Op25bBlocked));
    // The responder took the SYN: the flow's other segments go to it.
    let ack = tcp(DYN4, 40000, MX4, 25, "ack", b"EHLO x");
    assert_eq!(run(&mut r, now, Direction::Outbound, &ack).0, Verdict::Terminate);
    let other = tcp(DYN4, 40000, MX4, 587, "syn", &[]);
    assert!(matches!(run(&mut r, now, Direction::Outbound, &other).0, Verdict::Forward { .. }));
    assert_eq!(r.stats().terminated(), 2);
}

#[test]
fn banner_sessions_per_subscriber_are_bounded() {
    let mut r = router(lab().action("banner").op25b("banner_sessions_per_source", 2));
    let now = Instant::now();
    let take = |r: &mut Router, src: [u8; 4], sport: u16| {
        let syn = tcp(src, sport, MX4, 25, "syn", &[]);
        run(r, now, Direction::Outbound, &syn)
    };
    for sport in [40000, 40001] {
        assert_eq!(take(&mut r, DYN4, sport).0, Verdict::Terminate);
    }
    // The third session of the same subscriber is refused at once, with an RST.
    let (v, rst) = take(&mut r, DYN4, 40002);
    assert!(matches!(v, Verdict::Reply { kind: ReplyKind::TcpRst, .. }), "{v:?}");
    let rst = TcpHeaderSlice::from_slice(&rst[20..]).unwrap();
    assert!(rst.rst() && rst.destination_port() == 40002);
    assert_eq!(r.stats().op25b.banner_source_full, 1);
    // A repeated SYN of a session it holds is dropped (smoltcp ignores it, and
    // another listening socket must not answer it).
    assert_eq!(take(&mut r, DYN4, 40000).0, Verdict::Drop(DropReason::Op25bBlocked));
    // Another subscriber is not affected.
    assert_eq!(take(&mut r, [100, 64, 1, 11], 40000).0, Verdict::Terminate);
    assert_eq!(r.state().responder().unwrap().sessions_of(IpAddr::from(DYN4)), 2);
}

#[test]
fn redirected_flows_per_subscriber_are_bounded() {
    let mut r = router(redirect().op25b("max_flows_per_source", 2));
    let now = Instant::now();
    for sport in [40000, 40001] {
        let syn = tcp(DYN4, sport, MX4, 25, "syn", &[]);
        assert!(matches!(run(&mut r, now, Direction::Outbound, &syn).0, Verdict::Forward { .. }));
    }
    let third = tcp(DYN4, 40002, MX4, 25, "syn", &[]);
    assert_eq!(run(&mut r, now, Direction::Outbound, &third).0, Verdict::Drop(DropReason::ConntrackSourceFull));
    let other = tcp([100, 64, 1, 11], 40002, MX4, 25, "syn", &[]);
    assert!(matches!(run(&mut r, now, Direction::Outbound, &other).0, Verdict::Forward { .. }));
}

#[test]
fn redirect_rewrites_both_ways_with_valid_checksums() {
    let mut r = router(redirect());
    let now = Instant::now();
    let syn = tcp(DYN4, 40000, MX4, 25, "syn", &[]);
    let (v, out) = run(&mut r, now, Direction::Outbound, &syn);
    assert!(matches!(v, Verdict::Forward { .. }), "{v:?}");
    let fwd = PacketView::parse(&out).expect("valid IPv4 header checksum");
    assert_eq!((fwd.src.to_string(), fwd.dst.to_string()), ("100.64.1.10".into(), "198.51.100.25".into()));
    assert_eq!(fwd.ttl, 63);
    assert!(tcp_checksum_ok(&out));
    // The relay answers the client's real address; the client sees the MX.
    let (v, back) = run(&mut r, now, Direction::Inbound, &tcp(RELAY4, 25, DYN4, 40000, "synack", &[]));
    assert!(matches!(v, Verdict::Forward { .. }));
    let b = PacketView::parse(&back).unwrap();
    assert_eq!(b.src.to_string(), "203.0.113.25");
    assert!(matches!(b.transport, Transport::Tcp { src_port: 25, dst_port: 40000, .. }));
    assert!(tcp_checksum_ok(&back));
    // Data and FIN follow the flow.
    let (_, data) = run(&mut r, now, Direction::Outbound, &tcp(DYN4, 40000, MX4, 25, "ack", b"MAIL FROM:<a@b>\r\n"));
    assert_eq!(PacketView::parse(&data).unwrap().dst.to_string(), "198.51.100.25");
    assert!(tcp_checksum_ok(&data));
    assert!(matches!(
        run(&mut r, now, Direction::Outbound, &tcp(DYN4, 40000, MX4, 25, "fin", &[])).0,
        Verdict::Forward { .. }
    ));
    // A segment of no redirected flow is dropped, not redirected.
    assert_eq!(
        run(&mut r, now, Direction::Outbound, &tcp(DYN4, 40001, MX4, 25, "ack", &[])).0,
        Verdict::Drop(DropReason::Op25bBlocked)
    );
    // The relay's own traffic that is no redirected flow passes unchanged.
    let (_, plain) = run(&mut r, now, Direction::Inbound, &tcp(RELAY4, 25, DYN4, 50000, "ack", &[]));
    assert_eq!(PacketView::parse(&plain).unwrap().src.to_string(), "198.51.100.25");
    assert_eq!(r.stats().op25b.redirected, 3);
}

#[test]
fn redirect_ipv6_and_limits() {
    let mut r = router(redirect().op25b("max_flows", 2));
    let now = Instant::now();
    let (v, out) =
        run(&mut r, now, Direction::Outbound, &tcp6("2001:db8:100:1::10", 40000, "2001:db8:203::25", 25, true));
    assert!(matches!(v, Verdict::Forward { .. }));
    assert_eq!(PacketView::parse(&out).unwrap().dst.to_string(), "2001:db8:25::25");
    assert!(tcp_checksum_ok(&out));
    let back = tcp6("2001:db8:25::25", 25, "2001:db8:100:1::10", 40000, false);
    let (_, b) = run(&mut r, now, Direction::Inbound, &back);
    assert_eq!(PacketView::parse(&b).unwrap().src.to_string(), "2001:db8:203::25");
    assert!(tcp_checksum_ok(&b));
    // Table bound: two flows in, the third new one is refused.
    assert!(matches!(
        run(&mut r, now, Direction::Outbound, &tcp(DYN4, 1, MX4, 25, "syn", &[])).0,
        Verdict::Forward { .. }
    ));
    assert_eq!(
        run(&mut r, now, Direction::Outbound, &tcp(DYN4, 2, MX4, 25, "syn", &[])).0,
        Verdict::Drop(DropReason::ConntrackFull)
    );
    // The same port to another destination at once collides.
    let mut r = router(redirect());
    assert!(matches!(
        run(&mut r, now, Direction::Outbound, &tcp(DYN4, 7, MX4, 25, "syn", &[])).0,
        Verdict::Forward { .. }
    ));
    assert_eq!(
        run(&mut r, now, Direction::Outbound, &tcp(DYN4, 7, [203, 0, 113, 26], 25, "syn", &[])).0,
        Verdict::Drop(DropReason::RedirectCollision)
    );
}

#[test]
fn redirect_updates_partial_checksums_in_partial_form() {
    let mut r = router(redirect());
    let now = Instant::now();
    let mut syn = tcp(DYN4, 40000, MX4, 25, "syn", b"x");
    let v0 = PacketView::parse(&syn).unwrap();
    // Put the partial form in the field: the folded pseudo-header sum.
    let pseudo = |src: [u8; 4], dst: [u8; 4], len: u16| {
        let mut p = Vec::new();
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(&[0, 6]);
        p.extend_from_slice(&len.to_be_bytes());
        checksum::sum(&p)
    };
    let l4_len = (v0.len - v0.l4_offset) as u16;
    syn[v0.l4_offset + 16..v0.l4_offset + 18].copy_from_slice(&pseudo(DYN4, MX4, l4_len).to_be_bytes());
    let mut buf = syn.clone();
    let mut reply = vec![0u8; 2048];
    let rx = RxInfo { gso_size: None, csum_partial: true };
    assert!(matches!(r.handle(now, Direction::Outbound, &mut buf, &mut reply, rx), Verdict::Forward { .. }));
    let field = u16::from_be_bytes([buf[v0.l4_offset + 16], buf[v0.l4_offset + 17]]);
    assert_eq!(field, pseudo(DYN4, RELAY4, l4_len));
}

#[test]
fn offline_a_banner_syn_is_reported_as_terminate_and_the_rest_as_blocked() {
    // check --packet and replay have no responder (nobody to send its answers to).
    let policy = lab().action("banner").policy();
    let mut r = Router::with_state(policy.clone(), std::sync::Arc::new(State::offline(&policy)));
    let now = Instant::now();
    let syn = tcp(DYN4, 40000, MX4, 25, "syn", &[]);
    for _ in 0..3 {
        assert_eq!(run(&mut r, now, Direction::Outbound, &syn).0, Verdict::Terminate, "no sessions to count");
    }
    let ack = tcp(DYN4, 40000, MX4, 25, "ack", b"EHLO x");
    assert_eq!(run(&mut r, now, Direction::Outbound, &ack).0, Verdict::Drop(DropReason::Op25bBlocked));
    let s = r.stats();
    assert_eq!((s.terminated(), s.op25b.blocked, s.op25b.banner_source_full), (3, 4, 0));
}

#[test]
fn a_state_built_for_another_policy_is_not_used() {
    let rule = "[[rule]]\nname = \"limit\"\nprotocol = \"udp\"\naction = \"rate-limit\"\nrate = 1\nburst = 1\n";
    let with_rule = lab().rules(rule).policy();
    let other = lab().policy();
    assert!(State::new(&with_rule).fits(&with_rule));
    assert!(!State::new(&other).fits(&with_rule), "no buckets for the rate-limit rule");
    assert!(!State::new(&with_rule).fits(&other));
    // The router falls back to fresh state: the rule still limits.
    let mut r = Router::with_state(with_rule, std::sync::Arc::new(State::new(&other)));
    let now = Instant::now();
    let udp = packets::udp("100.64.1.10", 40000, "203.0.113.25", 53, b"q");
    assert!(matches!(run(&mut r, now, Direction::Outbound, &udp).0, Verdict::Forward { .. }));
    assert_eq!(run(&mut r, now, Direction::Outbound, &udp).0, Verdict::Drop(DropReason::RateLimited));
}
