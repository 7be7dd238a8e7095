//! The rule pipeline through the public API: config rules and their actions,
//! per-rule counters, and the index agreeing with an evaluation in rule order.

use std::time::{Duration, Instant};

use op25b::packet::{PacketView, Transport};
use op25b::policy::{Limit, RuleContext, RuleHooks};
use op25b::testing::lab::{DYN4, MX4};
use op25b::testing::packets::{tcp as tcp_packet, udp as udp_packet};
use op25b::testing::{PolicyBuilder, TestRouter};
use op25b::{Direction, DropReason, ReplyKind, Verdict};

fn router(rules: &str) -> TestRouter {
    PolicyBuilder::lab().named("rules.toml").rules(rules).router()
}

/// A TCP SYN, or an ACK, from `src:sport` to `dst:dport`.
fn tcp(src: &str, dst: &str, sport: u16, dport: u16, syn: bool) -> Vec<u8> {
    let b = tcp_packet(src, sport, dst, dport);
    if syn { b.syn() } else { b.ack(1) }.build()
}

/// A UDP datagram of 3 bytes from port 40000 (either IP version).
fn udp(src: &str, dst: &str, dport: u16) -> Vec<u8> {
    udp_packet(src, 40000, dst, dport, &[1, 2, 3])
}

const SUB: &str = DYN4;
const LABNET: &str = "192.0.2.23";

const RULES: &str = concat!(
    include_str!("fixtures/rules_head.toml"),
    r#"
[[rule]]
name = "count-mail"
protocol = "tcp"
dst_ports = ["@mail_ports"]
action = "count"

[[rule]]
name = "udp-lab"
protocol = "udp"
dst = ["@lab_nets"]
action = "reject"

[[rule]]
name = "allow-dns"
protocol = "udp"
dst_ports = [53]
action = "accept"

[[rule]]
name = "drop-udp"
protocol = "udp"
action = "drop"
"#
);

#[test]
fn reject_answers_tcp_with_rst_and_udp_with_icmp_prohibited() {
    let mut r = router(RULES);
    let (v, out) = r.out(&tcp(SUB, LABNET, 40000, 23, true));
    assert!(matches!(v, Verdict::Reply { kind: ReplyKind::TcpRst, .. }), "{v:?}");
    let rst = PacketView::parse(&out).unwrap();
    assert_eq!(rst.src.to_string(), "192.0.2.23");
    // Port range.
    let (v, _) = r.out(&tcp(SUB, LABNET, 40000, 6005, true));
    assert!(matches!(v, Verdict::Reply { kind: ReplyKind::TcpRst, .. }));
    // Not a SYN: the flags field fails, later rules see it; nothing final: forward.
    assert!(matches!(r.out(&tcp(SUB, LABNET, 40000, 23, false)).0, Verdict::Forward { .. }));
    // UDP into the lab nets: ICMP administratively prohibited from the router.
    let (v, out) = r.out(&udp(SUB, LABNET, 9));
    assert!(matches!(v, Verdict::Reply { kind: ReplyKind::Prohibited, .. }), "{v:?}");
    let icmp = PacketView::parse(&out).unwrap();
    assert_eq!(icmp.src.to_string(), "100.64.0.1");
    assert_eq!(icmp.transport, Transport::Icmp { icmp_type: 3, code: 13 });
    let (v, out) = r.out(&udp("2001:db8:100::10", "2001:db8:ff::1", 9));
    assert!(matches!(v, Verdict::Reply { kind: ReplyKind::Prohibited, .. }));
    assert_eq!(PacketView::parse(&out).unwrap().transport, Transport::Icmp { icmp_type: 1, code: 1 });
}

#[test]
fn accept_stops_the_pipeline_drop_drops_count_counts() {
    let mut r = router(RULES);
    assert!(matches!(r.out(&udp(SUB, "203.0.113.53", 53)).0, Verdict::Forward { .. }));
    assert_eq!(r.out(&udp(SUB, "203.0.113.53", 54)).0, Verdict::Drop(DropReason::RuleDrop));
    for port in [465, 587] {
        assert!(matches!(r.out(&tcp(SUB, MX4, 40000, port, true)).0, Verdict::Forward { .. }));
    }
    // Inbound traffic from port 25 does not match dst_ports; to port 25 it does.
    assert!(matches!(r.inb(&tcp(MX4, SUB, 40000, 25, true)).0, Verdict::Forward { .. }));
    let stats = r.stats();
    let rule = |n: &str| stats.rule(n).unwrap_or_else(|| panic!("no counters for rule {n}: {stats:?}"));
    assert_eq!(rule("count-mail").packets, 3);
    assert_eq!(rule("count-mail").bytes, 3 * 40);
    assert_eq!(rule("allow-dns").packets, 1);
    assert_eq!(rule("drop-udp").packets, 1);
    assert_eq!(stats.dropped(DropReason::RuleDrop), 1);
}

#[test]
fn op25b_fast_path_runs_before_the_rules() {
    let mut r = router(RULES);
    let (v, _) = r.out(&tcp(SUB, MX4, 40000, 25, true));
    assert!(matches!(v, Verdict::Reply { kind: ReplyKind::TcpRst, .. }));
    let count = r.stats().rule("count-mail").expect("count-mail's counters").packets;
    assert_eq!(count, 0, "a blocked SYN never reaches the rules");
}

#[test]
fn rate_limit_is_per_source_and_refills() {
    let mut r = router(
        r#"
[[rule]]
name = "limit-587"
direction = "outbound"
protocol = "tcp"
dst_ports = [587]
tcp_flags = "syn"
action = "rate-limit"
rate = 2
burst = 3
"#,
    );
    let syn = tcp(SUB, MX4, 40000, 587, true);
    let passed = (0..10).filter(|_| matches!(r.out(&syn).0, Verdict::Forward { .. })).count();
    assert_eq!(passed, 3, "burst");
    assert_eq!(r.stats().dropped(DropReason::RateLimited), 7);
    // Another subscriber has its own bucket.
    let other = tcp("100.64.1.11", MX4, 40000, 587, true);
    assert!(matches!(r.out(&other).0, Verdict::Forward { .. }));
    // Half a second later: one more token (rate 2/s).
    r.advance(Duration::from_millis(500));
    let passed = (0..10).filter(|_| matches!(r.out(&syn).0, Verdict::Forward { .. })).count();
    assert_eq!(passed, 1);
    // Non-SYN segments of established connections are not limited.
    let ack = tcp(SUB, MX4, 40000, 587, false);
    assert!(matches!(r.out(&ack).0, Verdict::Forward { .. }));
}

#[test]
fn traced_decision_names_the_rules_and_failing_fields() {
    let mut r = router(RULES);
    let mut buf = udp(SUB, "203.0.113.53", 54);
    let mut reply = vec![0u8; 2048];
    let (v, trace) = r.router.handle_traced(r.now, Direction::Outbound, &mut buf, &mut reply);
    assert_eq!(v, Verdict::Drop(DropReason::RuleDrop));
    let lines: Vec<String> = trace.steps.iter().map(|s| format!("{}: {}", s.stage, s.detail)).collect();
    let text = lines.join("\n");
    assert!(text.contains("anti-spoofing: pass"), "{text}");
    assert!(text.contains("op25b: pass: no TCP header"), "{text}");
    assert!(text.contains("#1 no-telnet: no match (protocol)"), "{text}");
    assert!(text.contains("#3 udp-lab: no match (dst)"), "{text}");
    assert!(text.contains("#4 allow-dns: no match (dst_ports)"), "{text}");
    assert!(text.contains("#5 drop-udp: match -> drop"), "{text}");
}

/// Records which rules matched; every rate limit has a token.
#[derive(Default)]
struct Matched<const TRACE: bool>(Vec<usize>);

impl<const T: bool> RuleHooks for Matched<T> {
    const TRACE: bool = T;

    fn matched(&mut self, index: usize, _bytes: usize) {
        self.0.push(index);
    }

    fn allow(&mut self, _index: usize, _limit: Limit, _packet: &PacketView, _now: Instant) -> bool {
        true
    }
}

/// A deterministic generator of random rules and packets: the bit-vector
/// index (the ordinary evaluation) must pick the same deciding rule, and count
/// the same matched rules, as the tracing evaluation, which walks every rule
/// in order without the index.
#[test]
fn index_agrees_with_linear_scan() {
    let mut x: u64 = 0x853c49e6748fea9b;
    let mut rnd = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let (mut finals, mut total) = (0, 0);
    let mut deciders = std::collections::HashSet::new();
    for round in 0..20 {
        let mut text = String::new();
        let nrules = 1 + rnd(150);
        for i in 0..nrules {
            text.push_str(&format!("[[rule]]\nname = \"r{i}\"\n"));
            match rnd(3) {
                0 => text.push_str("direction = \"outbound\"\n"),
                1 => text.push_str("direction = \"inbound\"\n"),
                _ => {}
            }
            let proto = ["tcp", "udp", "any"][rnd(3) as usize];
            text.push_str(&format!("protocol = \"{proto}\"\n"));
            if rnd(2) == 0 {
                let len = 8 + rnd(25);
                let a = std::net::Ipv4Addr::from(
                    ((100u32 << 24) | (64 << 16) | (rnd(4) as u32) << 8) & !((1u64 << (32 - len)) - 1) as u32,
                );
                text.push_str(&format!("src = [\"{a}/{len}\"]\n"));
            }
            if rnd(2) == 0 {
                let a = rnd(4) as u8;
                text.push_str(&format!(
                    "dst = [\"203.0.113.{}/30\", \"2001:db8:203::/{}\"]\n",
                    a * 4,
                    48 + rnd(2) * 16
                ));
            }
            if rnd(2) == 0 {
                let lo = 1 + rnd(30);
                text.push_str(&format!("dst_ports = [{}, \"{}-{}\"]\n", 1 + rnd(30), lo, lo + rnd(5)));
            }
            if rnd(4) == 0 {
                text.push_str(&format!("src_ports = [{}]\n", 40000 + rnd(3)));
            }
            if proto == "tcp" && rnd(3) == 0 {
                text.push_str("tcp_flags = \"syn\"\n");
            }
            let action = ["accept", "drop", "reject", "count"][rnd(4) as usize];
            text.push_str(&format!("action = \"{action}\"\n\n"));
        }
        let policy = PolicyBuilder::lab().named("gen.toml").rules(&text).policy();
        let rules = &policy.rules;
        assert_eq!(rules.len() as u64, nrules);
        let now = Instant::now();
        for _ in 0..2000 {
            let src = format!("100.64.{}.{}", rnd(4), rnd(256));
            let dst = format!("203.0.113.{}", rnd(16));
            let sport = 40000 + rnd(3) as u16;
            let dport = 1 + rnd(40) as u16;
            let pkt = match rnd(3) {
                0 => tcp(&src, &dst, sport, dport, rnd(2) == 0),
                1 => udp(&src, &dst, dport),
                _ => udp("2001:db8:100::10", &format!("2001:db8:203::{:x}", rnd(4)), dport),
            };
            let view = PacketView::parse(&pkt).unwrap();
            let dir = if rnd(2) == 0 { Direction::Outbound } else { Direction::Inbound };
            let cx = RuleContext { direction: dir, now, tunnel: None };
            let (mut indexed, mut in_order) = (Matched::<false>::default(), Matched::<true>::default());
            let fast = rules.evaluate(&view, &cx, &mut indexed);
            let slow = rules.evaluate(&view, &cx, &mut in_order);
            assert_eq!(fast, slow, "round {round}, packet {view:?} {dir:?}\n{text}");
            assert_eq!(indexed.0, in_order.0, "matched rules, round {round}, packet {view:?} {dir:?}\n{text}");
            assert!(fast.is_none_or(|(v, _)| v.is_final()), "{fast:?}");
            assert!(fast.is_none_or(|(_, i)| indexed.0.last() == Some(&i)), "the decider is the last match");
            finals += usize::from(fast.is_some());
            deciders.insert((round, fast.map(|(_, i)| i)));
            total += 1;
        }
    }
    // The generator must exercise both outcomes to mean anything.
    assert!(finals > total / 20 && finals < total * 99 / 100, "{finals} final of {total}");
    assert!(deciders.len() > 100, "only {} distinct deciding rules", deciders.len());
}
