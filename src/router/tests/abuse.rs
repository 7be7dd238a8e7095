//! The quarantine stage and `action = "monitor"`.

use std::time::{Duration, Instant};

use crate::router::{Direction, DropReason, ReplyKind, Router, Verdict};
use crate::state::abuse::parse_subscriber;
use crate::testing::packets::{self, syn, udp};
use crate::testing::PolicyBuilder;

const DYN4: &str = "100.64.1.10";
const OTHER4: &str = "100.64.1.11";
const WEB4: &str = "203.0.113.80";
const MX4: &str = "203.0.113.25";
const RELAY4: &str = "198.51.100.25";

fn quarantine(r: &Router, who: &str, now: Instant, for_: Duration) {
    let key = parse_subscriber(who).unwrap();
    r.state().quarantine().start(key, now + for_).unwrap();
}

fn is_rst(v: Verdict) -> bool {
    matches!(v, Verdict::Reply { kind: ReplyKind::TcpRst, .. })
}

fn kind(v: Verdict) -> &'static str {
    v.name()
}

#[test]
fn a_quarantined_subscriber_reaches_only_its_walled_garden() {
    let mut t = PolicyBuilder::lab().unlimited_replies().abuse("window", "\"60s\"").router();
    quarantine(&t.router, DYN4, t.now, Duration::from_secs(60));
    // Outside the garden: TCP gets an RST, UDP and ICMP are dropped.
    let (v, _) = t.out(&syn(DYN4, WEB4, 80));
    assert!(is_rst(v), "{v:?}");
    let (v, _) = t.out(&udp(DYN4, 40000, WEB4, 443, b"x"));
    assert_eq!(v, Verdict::Drop(DropReason::Quarantined));
    let (v, _) = t.out(&packets::echo_request(DYN4, WEB4, &[0; 8]));
    assert_eq!(v, Verdict::Drop(DropReason::Quarantined));
    // The default garden: DNS, submission, the relays.
    for (pkt, what) in [
        (udp(DYN4, 40000, "192.0.2.53", 53, b"q"), "udp/53"),
        (syn(DYN4, "192.0.2.53", 53), "tcp/53"),
        (syn(DYN4, MX4, 587), "tcp/587"),
        (syn(DYN4, MX4, 465), "tcp/465"),
        (syn(DYN4, RELAY4, 25), "@relays"),
        (syn(DYN4, RELAY4, 80), "@relays, any port"),
    ] {
        let (v, _) = t.out(&pkt);
        assert_eq!(kind(v), "forward", "{what}: {v:?}");
    }
    // Port 25 outside stays OP25B's (its answer, its counters, its tracking).
    let (v, _) = t.out(&syn(DYN4, MX4, 25));
    assert!(is_rst(v), "{v:?}");
    assert_eq!(t.router.stats().op25b.blocked, 1);
    // Another subscriber is untouched, and so are inbound packets to the quarantined one.
    let (v, _) = t.out(&syn(OTHER4, WEB4, 80));
    assert_eq!(kind(v), "forward");
    let (v, _) = t.inb(&udp(WEB4, 443, DYN4, 40000, b"x"));
    assert_eq!(kind(v), "forward");
    let s = t.router.stats();
    assert_eq!(s.abuse.refused, 3, "RST to 80, UDP, ICMP");
    assert_eq!(s.dropped(DropReason::Quarantined), 2);
    // The quarantine ends at its deadline.
    t.advance(Duration::from_secs(60));
    let (v, _) = t.out(&syn(DYN4, WEB4, 80));
    assert_eq!(kind(v), "forward");
}

#[test]
fn the_garden_is_the_configured_one_and_a_subscriber_is_an_ipv6_64() {
    let b = PolicyBuilder::lab()
        .unlimited_replies()
        .abuse("quarantine_allow", r#"["tcp/8000-8080", "icmp", "192.0.2.0/24"]"#);
    let mut t = b.router();
    quarantine(&t.router, DYN4, t.now, Duration::from_secs(60));
    quarantine(&t.router, "2001:db8:100:1::/64", t.now, Duration::from_secs(60));
    let (v, _) = t.out(&syn(DYN4, WEB4, 8080));
    assert_eq!(kind(v), "forward");
    let (v, _) = t.out(&packets::echo_request(DYN4, WEB4, &[0; 8]));
    assert_eq!(kind(v), "forward");
    let (v, _) = t.out(&udp(DYN4, 1, "192.0.2.9", 9999, b"x"));
    assert_eq!(kind(v), "forward", "a destination prefix, any port");
    let (v, _) = t.out(&udp(DYN4, 1, "198.51.100.53", 53, b"q"));
    assert_eq!(v, Verdict::Drop(DropReason::Quarantined), "DNS is not in this garden");
    // Any address of the /64.
    let (v, _) = t.out(&syn("2001:db8:100:1::99", "2001:db8:203::80", 80));
    assert!(is_rst(v), "{v:?}");
    let (v, _) = t.out(&syn("2001:db8:100:2::99", "2001:db8:203::80", 80));
    assert_eq!(kind(v), "forward", "another /64");
}

#[test]
fn quarantine_rsts_spend_reply_tokens() {
    let mut t = PolicyBuilder::lab().op25b("reply_rate", 1).op25b("reply_burst", 2).abuse("track", 16).router();
    quarantine(&t.router, DYN4, t.now, Duration::from_secs(60));
    let verdicts: Vec<Verdict> = (0..5).map(|i| t.out(&syn(DYN4, WEB4, 8000 + i)).0).collect();
    assert_eq!(verdicts.iter().filter(|v| is_rst(**v)).count(), 2);
    assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Drop(DropReason::ReplyRateLimited)).count(), 3);
}

#[test]
fn monitor_forwards_would_be_blocks_and_notes_them() {
    let mut t = PolicyBuilder::lab().action("monitor").router();
    t.router.note_blocks(true);
    let (v, _) = t.out(&syn(DYN4, MX4, 25));
    assert_eq!(kind(v), "forward");
    let b = t.router.take_block().expect("a would-be block is noted");
    assert_eq!((b.action.name(), b.reply.name(), b.rule), ("monitor", "none", None));
    assert_eq!(b.dst, format!("{MX4}:25").parse().unwrap());
    // The flow's other segments pass too, counted; nothing is noted for them.
    let ack = packets::tcp(DYN4, 40000, MX4, 25).ack(1).payload(b"EHLO x\r\n").build();
    let (v, _) = t.out(&ack);
    assert_eq!(kind(v), "forward");
    assert!(t.router.take_block().is_none());
    // Exempt, relays and other ports are not would-be blocks.
    let _ = t.out(&syn("100.64.9.10", MX4, 25));
    let _ = t.out(&syn(DYN4, RELAY4, 25));
    let _ = t.out(&syn(DYN4, MX4, 587));
    let s = t.router.stats();
    assert_eq!((s.op25b.monitored, s.op25b.blocked), (2, 0));
    assert_eq!(s.forwarded(Direction::Outbound), 5);
}

#[test]
fn check_traces_show_the_would_be_verdict_and_the_quarantine() {
    let mut t = PolicyBuilder::lab().action("monitor").router();
    let mut pkt = syn(DYN4, MX4, 25);
    let mut reply = vec![0; 2048];
    let (v, trace) = t.router.handle_traced(t.now, Direction::Outbound, &mut pkt, &mut reply);
    assert_eq!(kind(v), "forward");
    let op = trace.steps.iter().find(|s| s.stage == "op25b").unwrap();
    assert!(op.detail.contains("action monitor: would be blocked, forwarded"), "{}", op.detail);
    quarantine(&t.router, DYN4, t.now, Duration::from_secs(1));
    let mut pkt = syn(DYN4, WEB4, 80);
    let (_, trace) = t.router.handle_traced(t.now, Direction::Outbound, &mut pkt, &mut reply);
    let q = trace.steps.iter().find(|s| s.stage == "quarantine").unwrap();
    assert!(q.detail.starts_with("refused (TCP RST)"), "{}", q.detail);
}
