//! Scenario tests of the blocking actions (icmp, banner, redirect), IP25B and
//! the reply rate limit.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use etherparse::TcpHeaderSlice;

use crate::packet::{checksum, PacketView, Transport};
use crate::router::{Direction, DropReason, ReplyKind, Router, RxInfo, Verdict};
use crate::state::State;
use crate::testing::packets::{self, tcp_checksum_ok};
use crate::testing::PolicyBuilder;

const DYN4: [u8; 4] = [100, 64, 1, 10];
const STATIC4: [u8; 4] = [100, 64, 9, 10];
const MX4: [u8; 4] = [203, 0, 113, 25];
const RELAY4: [u8; 4] = [198, 51, 100, 25];
const DYN4_S: &str = "100.64.1.10";
const DYN6_S: &str = "2001:db8:100:1::10";
const MX4_S: &str = "203.0.113.25";
const MX6_S: &str = "2001:db8:203::25";

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
    // Table bound: two flows in. The first is unassured (its subscriber
    // never acknowledged a SYN-ACK): a third new one takes its place.
    assert!(matches!(
        run(&mut r, now, Direction::Outbound, &tcp(DYN4, 1, MX4, 25, "syn", &[])).0,
        Verdict::Forward { .. }
    ));
    assert!(matches!(
        run(&mut r, now, Direction::Outbound, &tcp(DYN4, 2, MX4, 25, "syn", &[])).0,
        Verdict::Forward { .. }
    ));
    assert_eq!(r.stats().op25b.redirect_evictions, 1);
    // Two assured flows fill it: a new one is refused.
    let mut r = router(redirect().op25b("max_flows", 2));
    for (src, mx) in [(DYN4_S, MX4_S), (DYN6_S, MX6_S)] {
        assert!(Conn::open(&mut r, now, src, 40000, mx, 1000).is_some());
    }
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

/// One redirected connection as its two ends see it: the subscriber at
/// `src`:`sport` dialling `mx`:25, the relay of its family answering.
struct Conn {
    src: &'static str,
    sport: u16,
    mx: &'static str,
    relay: &'static str,
    /// The relay's ISN; the client's is 7.
    isn: u32,
    /// Bytes each side sent so far.
    sent: (u32, u32),
}

impl Conn {
    /// The whole handshake through the router: SYN (to the relay), the
    /// relay's SYN-ACK (from the MX, as the client sees it), the client's
    /// ACK of it. `None` if any step is not forwarded as it should be.
    fn open(r: &mut Router, now: Instant, src: &'static str, sport: u16, mx: &'static str, isn: u32) -> Option<Conn> {
        let relay = if mx.contains(':') { "2001:db8:25::25" } else { "198.51.100.25" };
        let c = Conn { src, sport, mx, relay, isn, sent: (0, 0) };
        let syn = packets::tcp(src, sport, mx, 25).seq(7).syn().build();
        c.out(r, now, &syn)?;
        let synack = packets::tcp(relay, 25, src, sport).seq(isn).ack(8).syn().build();
        c.back(r, now, &synack)?;
        let ack = packets::tcp(src, sport, mx, 25).seq(8).ack(isn.wrapping_add(1)).build();
        c.out(r, now, &ack)?;
        Some(c)
    }

    /// An outbound packet of the connection: forwarded to the relay, checksum valid.
    fn out(&self, r: &mut Router, now: Instant, pkt: &[u8]) -> Option<()> {
        let (v, out) = run(r, now, Direction::Outbound, pkt);
        let ok = matches!(v, Verdict::Forward { .. })
            && PacketView::parse(&out).ok()?.dst == self.relay.parse::<IpAddr>().ok()?
            && tcp_checksum_ok(&out);
        ok.then_some(())
    }

    /// An inbound packet from the relay: forwarded with the MX as its source.
    fn back(&self, r: &mut Router, now: Instant, pkt: &[u8]) -> Option<()> {
        let (v, out) = run(r, now, Direction::Inbound, pkt);
        let ok = matches!(v, Verdict::Forward { .. })
            && PacketView::parse(&out).ok()?.src == self.mx.parse::<IpAddr>().ok()?
            && tcp_checksum_ok(&out);
        ok.then_some(())
    }

    /// Data both ways: a line from the client, the relay's answer.
    fn exchange(&mut self, r: &mut Router, now: Instant) -> Option<()> {
        let line = b"NOOP\r\n";
        let (c, s) = (8 + self.sent.0, self.isn.wrapping_add(1 + self.sent.1));
        self.out(r, now, &packets::tcp(self.src, self.sport, self.mx, 25).seq(c).ack(s).payload(line).build())?;
        self.sent.0 += line.len() as u32;
        let answer = b"250 2.0.0 OK\r\n";
        let c = 8 + self.sent.0;
        self.back(r, now, &packets::tcp(self.relay, 25, self.src, self.sport).seq(s).ack(c).payload(answer).build())?;
        self.sent.1 += answer.len() as u32;
        Some(())
    }
}

/// The forged-source flood of issue 12 at a small scale: one subscriber
/// forges ten times `max_flows` different sources (IPv4 addresses and IPv6
/// /64s inside the subscriber prefixes) sending SYNs to an outside port 25,
/// and the relay answers every one with a SYN-ACK (as with SYN cookies).
/// A connection established before the flood keeps working; new real
/// connections, IPv4 and IPv6, complete during the flood and right after.
#[test]
fn a_forged_source_flood_cannot_fill_the_flow_table() {
    const MAX: u32 = 64;
    let mut r = router(redirect().op25b("max_flows", MAX));
    let t0 = Instant::now();
    let mut established = Conn::open(&mut r, t0, DYN4_S, 40000, MX4_S, 5000).expect("before the flood");
    established.exchange(&mut r, t0).expect("data before the flood");
    let mut during = Vec::new();
    for i in 0..10 * MAX {
        let now = t0 + Duration::from_millis(u64::from(i));
        // A new forged source each time; the forger never sees the SYN-ACK.
        let (src, mx, relay) = if i % 2 == 0 {
            (std::net::Ipv4Addr::from(0x6450_0000 + i).to_string(), MX4_S, "198.51.100.25")
        } else {
            (format!("2001:db8:100:{:x}::1", 0x1000 + i), MX6_S, "2001:db8:25::25")
        };
        let syn = packets::tcp(&src, 40000, mx, 25).seq(i).syn().build();
        assert!(matches!(run(&mut r, now, Direction::Outbound, &syn).0, Verdict::Forward { .. }), "forged SYN {i}");
        let synack = packets::tcp(relay, 25, &src, 40000).seq(!i).ack(i + 1).syn().build();
        assert!(matches!(run(&mut r, now, Direction::Inbound, &synack).0, Verdict::Forward { .. }));
        if i % MAX == MAX / 2 {
            let (src, mx) = if during.len() % 2 == 0 { (DYN4_S, MX4_S) } else { (DYN6_S, MX6_S) };
            let c = Conn::open(&mut r, now, src, 41000 + i as u16, mx, 7 * i);
            during.push(c.unwrap_or_else(|| panic!("a real connection from {src} during the flood (SYN {i})")));
        }
        if i % 100 == 0 {
            established.exchange(&mut r, now).unwrap_or_else(|| panic!("the established flow at SYN {i}"));
        }
    }
    // Right after the flood: new connections of both families, and every
    // connection opened before or during it still carries data.
    let after = t0 + Duration::from_millis(u64::from(10 * MAX));
    for (src, mx) in [(DYN4_S, MX4_S), (DYN6_S, MX6_S)] {
        let mut c = Conn::open(&mut r, after, src, 42000, mx, 99).unwrap_or_else(|| panic!("{src} right after"));
        c.exchange(&mut r, after).expect("data right after");
    }
    established.exchange(&mut r, after).expect("the established flow after the flood");
    for c in &mut during {
        c.exchange(&mut r, after).unwrap_or_else(|| panic!("{}:{} opened during the flood", c.src, c.sport));
    }
    assert_eq!(during.len(), 10);
    let s = r.stats();
    assert_eq!(s.dropped(DropReason::ConntrackFull), 0, "{}", s.summary());
    assert_eq!(s.dropped(DropReason::ReplyRateLimited), 0, "{}", s.summary());
    // Every forged flow past the bound took the slot of an older forged one.
    let live_real = 1 + during.len() as u64 + 2;
    assert_eq!(s.op25b.redirect_evictions, u64::from(10 * MAX) + live_real - u64::from(MAX), "{}", s.summary());
}
