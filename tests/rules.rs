//! The rule pipeline through the public API: config rules and their actions,
//! per-rule counters, and the index agreeing with a linear scan.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etherparse::PacketBuilder;
use op25b::packet::PacketView;
use op25b::policy::{RuleContext, RuleVerdict};
use op25b::{Config, Direction, DropReason, ReplyKind, Router, Verdict};

const LAB: &str = include_str!("../config/lab.toml");

fn router(rules: &str) -> Router {
    let cfg = Config::parse(Path::new("rules.toml"), &format!("{LAB}\n{rules}")).expect("config");
    Router::new(Arc::new(cfg.policy))
}

fn tcp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, syn: bool) -> Vec<u8> {
    let b = PacketBuilder::ipv4(src, dst, 64).tcp(sport, dport, 1, 1000);
    let b = if syn { b.syn() } else { b.ack(1) };
    let mut v = Vec::new();
    b.write(&mut v, &[]).unwrap();
    v
}

fn udp(src: [u8; 4], dst: [u8; 4], dport: u16) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ipv4(src, dst, 64).udp(40000, dport).write(&mut v, &[1, 2, 3]).unwrap();
    v
}

fn udp6(src: &str, dst: &str, dport: u16) -> Vec<u8> {
    let s: std::net::Ipv6Addr = src.parse().unwrap();
    let d: std::net::Ipv6Addr = dst.parse().unwrap();
    let mut v = Vec::new();
    PacketBuilder::ipv6(s.octets(), d.octets(), 64).udp(40000, dport).write(&mut v, &[1, 2, 3]).unwrap();
    v
}

fn send(r: &mut Router, dir: Direction, pkt: &[u8]) -> (Verdict, Vec<u8>) {
    send_at(r, Instant::now(), dir, pkt)
}

fn send_at(r: &mut Router, now: Instant, dir: Direction, pkt: &[u8]) -> (Verdict, Vec<u8>) {
    let mut buf = pkt.to_vec();
    let mut reply = vec![0u8; 2048];
    let v = r.handle(now, dir, &mut buf, &mut reply);
    let out = match v {
        Verdict::Reply { len, .. } => reply[..len].to_vec(),
        _ => Vec::new(),
    };
    (v, out)
}

const SUB: [u8; 4] = [100, 64, 1, 10];
const LABNET: [u8; 4] = [192, 0, 2, 23];

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
    let (v, out) = send(&mut r, Direction::Outbound, &tcp(SUB, LABNET, 40000, 23, true));
    assert!(matches!(v, Verdict::Reply { kind: ReplyKind::TcpRst, .. }), "{v:?}");
    let rst = PacketView::parse(&out).unwrap();
    assert_eq!(rst.src.to_string(), "192.0.2.23");
    // Port range.
    let (v, _) = send(&mut r, Direction::Outbound, &tcp(SUB, LABNET, 40000, 6005, true));
    assert!(matches!(v, Verdict::Reply { kind: ReplyKind::TcpRst, .. }));
    // Not a SYN: the flags field fails, later rules see it; nothing final: forward.
    assert!(matches!(
        send(&mut r, Direction::Outbound, &tcp(SUB, LABNET, 40000, 23, false)).0,
        Verdict::Forward { .. }
    ));
    // UDP into the lab nets: ICMP administratively prohibited from the router.
    let (v, out) = send(&mut r, Direction::Outbound, &udp(SUB, LABNET, 9));
    assert!(matches!(v, Verdict::Reply { kind: ReplyKind::Prohibited, .. }), "{v:?}");
    let icmp = PacketView::parse(&out).unwrap();
    assert_eq!(icmp.src.to_string(), "100.64.0.1");
    assert_eq!(icmp.transport, op25b::packet::Transport::Icmp { icmp_type: 3, code: 13 });
    let (v, out) = send(&mut r, Direction::Outbound, &udp6("2001:db8:100::10", "2001:db8:ff::1", 9));
    assert!(matches!(v, Verdict::Reply { kind: ReplyKind::Prohibited, .. }));
    assert_eq!(PacketView::parse(&out).unwrap().transport, op25b::packet::Transport::Icmp { icmp_type: 1, code: 1 });
}

#[test]
fn accept_stops_the_pipeline_drop_drops_count_counts() {
    let mut r = router(RULES);
    assert!(matches!(send(&mut r, Direction::Outbound, &udp(SUB, [203, 0, 113, 53], 53)).0, Verdict::Forward { .. }));
    assert_eq!(
        send(&mut r, Direction::Outbound, &udp(SUB, [203, 0, 113, 53], 54)).0,
        Verdict::Drop(DropReason::RuleDrop)
    );
    for port in [465, 587] {
        assert!(matches!(
            send(&mut r, Direction::Outbound, &tcp(SUB, [203, 0, 113, 25], 40000, port, true)).0,
            Verdict::Forward { .. }
        ));
    }
    // Inbound traffic from port 25 does not match dst_ports; to port 25 it does.
    assert!(matches!(
        send(&mut r, Direction::Inbound, &tcp([203, 0, 113, 25], SUB, 40000, 25, true)).0,
        Verdict::Forward { .. }
    ));
    let slots = r.policy().rules.slots();
    let by_name = |n: &str| slots.iter().find(|s| s.rule.name() == n).unwrap();
    assert_eq!(by_name("count-mail").packets.load(Ordering::Relaxed), 3);
    assert_eq!(by_name("count-mail").bytes.load(Ordering::Relaxed), 3 * 40);
    assert_eq!(by_name("allow-dns").packets.load(Ordering::Relaxed), 1);
    assert_eq!(by_name("drop-udp").packets.load(Ordering::Relaxed), 1);
    assert_eq!(r.counters().dropped(DropReason::RuleDrop), 1);
}

#[test]
fn op25b_fast_path_runs_before_the_rules() {
    let mut r = router(RULES);
    let (v, _) = send(&mut r, Direction::Outbound, &tcp(SUB, [203, 0, 113, 25], 40000, 25, true));
    assert!(matches!(v, Verdict::Reply { kind: ReplyKind::TcpRst, .. }));
    let count = r
        .policy()
        .rules
        .slots()
        .iter()
        .find(|s| s.rule.name() == "count-mail")
        .unwrap()
        .packets
        .load(Ordering::Relaxed);
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
    let t0 = Instant::now();
    let syn = tcp(SUB, [203, 0, 113, 25], 40000, 587, true);
    let passed =
        (0..10).filter(|_| matches!(send_at(&mut r, t0, Direction::Outbound, &syn).0, Verdict::Forward { .. })).count();
    assert_eq!(passed, 3, "burst");
    assert_eq!(r.counters().dropped(DropReason::RateLimited), 7);
    // Another subscriber has its own bucket.
    let other = tcp([100, 64, 1, 11], [203, 0, 113, 25], 40000, 587, true);
    assert!(matches!(send_at(&mut r, t0, Direction::Outbound, &other).0, Verdict::Forward { .. }));
    // Half a second later: one more token (rate 2/s).
    let t1 = t0 + Duration::from_millis(500);
    let passed =
        (0..10).filter(|_| matches!(send_at(&mut r, t1, Direction::Outbound, &syn).0, Verdict::Forward { .. })).count();
    assert_eq!(passed, 1);
    // Non-SYN segments of established connections are not limited.
    let ack = tcp(SUB, [203, 0, 113, 25], 40000, 587, false);
    assert!(matches!(send_at(&mut r, t1, Direction::Outbound, &ack).0, Verdict::Forward { .. }));
}

#[test]
fn traced_decision_names_the_rules_and_failing_fields() {
    let mut r = router(RULES);
    let mut buf = udp(SUB, [203, 0, 113, 53], 54);
    let mut reply = vec![0u8; 2048];
    let (v, trace) = r.handle_traced(Instant::now(), Direction::Outbound, &mut buf, &mut reply);
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

/// A deterministic generator of random rules and packets: the bit-vector index
/// must pick the same deciding rule as a plain scan of the rules in order.
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
        let cfg = Config::parse(Path::new("gen.toml"), &format!("{LAB}\n{text}")).expect("generated config");
        let rules = cfg.policy.rules.clone();
        for _ in 0..2000 {
            let src = [100, 64, rnd(4) as u8, rnd(256) as u8];
            let dst = [203, 0, 113, rnd(16) as u8];
            let sport = 40000 + rnd(3) as u16;
            let dport = 1 + rnd(40) as u16;
            let pkt = match rnd(3) {
                0 => tcp(src, dst, sport, dport, rnd(2) == 0),
                1 => udp(src, dst, dport),
                _ => udp6("2001:db8:100::10", &format!("2001:db8:203::{:x}", rnd(4)), dport),
            };
            let view = PacketView::parse(&pkt).unwrap();
            let dir = if rnd(2) == 0 { Direction::Outbound } else { Direction::Inbound };
            let cx = RuleContext { direction: dir, now: Instant::now() };
            let fast = rules.evaluate(&view, &cx);
            let slow = rules.evaluate_linear(&view, &cx);
            assert_eq!(fast, slow, "round {round}, packet {view:?} {dir:?}\n{text}");
            assert!(fast.verdict != RuleVerdict::NoMatch);
            finals += usize::from(fast.verdict.is_final());
            deciders.insert((round, fast.rule));
            total += 1;
        }
    }
    // The generator must exercise both outcomes to mean anything.
    assert!(finals > total / 20 && finals < total * 99 / 100, "{finals} final of {total}");
    assert!(deciders.len() > 100, "only {} distinct deciding rules", deciders.len());
}
