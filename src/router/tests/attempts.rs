//! Connection attempts: a retransmitted SYN is one attempt (events, abuse,
//! the `*_connections` counters); the packet counters count every SYN.

use std::sync::Arc;
use std::time::Duration;

use crate::router::{Direction, DropReason, ReplyKind, Verdict};
use crate::state::attempts::{RETRY_WINDOW, SLOTS};
use crate::testing::packets::tcp;
use crate::testing::{PolicyBuilder, TestRouter};

const DYN4: &str = "100.64.1.10";
const MX4: &str = "203.0.113.25";
const DYN6: &str = "2001:db8:100:1::10";
const MX6: &str = "2001:db8:203::25";

fn syn_from(src: &str, sport: u16, dst: &str) -> Vec<u8> {
    tcp(src, sport, dst, 25).syn().build()
}

fn router(action: &str) -> TestRouter {
    let mut t = PolicyBuilder::lab().unlimited_replies().action(action).router();
    t.router.note_blocks(true);
    t
}

/// Sends `pkt` outbound; whether the router noted a blocked attempt.
fn noted(t: &mut TestRouter, pkt: &[u8]) -> bool {
    let _ = t.out(pkt);
    t.router.take_block().is_some()
}

fn drop_index() -> usize {
    crate::stats::BLOCK_ACTIONS.iter().position(|a| *a == "drop").unwrap_or(usize::MAX)
}

#[test]
fn a_syn_and_its_retransmissions_are_one_attempt() {
    for (src, dst) in [(DYN4, MX4), (DYN6, MX6)] {
        let mut t = router("drop");
        let syn = syn_from(src, 40000, dst);
        assert!(noted(&mut t, &syn), "the first SYN is an attempt");
        // Linux's schedule: 1, 2, 4 s apart.
        for gap in [1, 2, 4] {
            t.advance(Duration::from_secs(gap));
            assert!(!noted(&mut t, &syn), "a retransmission {gap} s later is not noted again");
        }
        let s = t.stats();
        assert_eq!(s.op25b.blocked, 4, "every SYN is a blocked packet");
        assert_eq!(s.dropped(DropReason::Op25bBlocked), 4);
        assert_eq!(s.op25b.blocked_connections, 1, "one connection attempt");
        assert_eq!(s.op25b.blocked_connections_by_action[drop_index()], 1);
        let json = s.to_json();
        assert_eq!(json["counters"]["op25b_blocked_connections"], 1);
        assert_eq!(json["op25b_blocked_connections_by_action"]["drop"], 1);
        assert_eq!(json["counters"]["op25b_blocked"], 4);
    }
}

#[test]
fn a_new_source_port_is_a_new_attempt() {
    let mut t = router("drop");
    assert!(noted(&mut t, &syn_from(DYN4, 40000, MX4)));
    t.advance(Duration::from_secs(1));
    assert!(noted(&mut t, &syn_from(DYN4, 40001, MX4)), "a new connect() takes a new port");
    assert!(!noted(&mut t, &syn_from(DYN4, 40000, MX4)));
    assert!(noted(&mut t, &syn_from(DYN4, 40000, "203.0.113.26")), "another destination");
    assert_eq!(t.stats().op25b.blocked_connections, 3);
    assert_eq!(t.stats().op25b.blocked, 4);
}

#[test]
fn after_the_window_the_same_tuple_is_a_new_attempt() {
    let mut t = router("drop");
    let syn = syn_from(DYN4, 40000, MX4);
    assert!(noted(&mut t, &syn));
    t.advance(RETRY_WINDOW - Duration::from_millis(1));
    assert!(!noted(&mut t, &syn), "still within the window of the first SYN");
    t.advance(Duration::from_millis(1));
    assert!(noted(&mut t, &syn), "the window counts from the attempt's first SYN");
    assert_eq!(t.stats().op25b.blocked_connections, 2);
}

#[test]
fn answered_actions_count_attempts_too() {
    // An RST over the reply limit is not sent: the client retransmits.
    let mut t = PolicyBuilder::lab().op25b("reply_burst", 1).op25b("reply_rate", 1).router();
    t.router.note_blocks(true);
    let syn = syn_from(DYN4, 40000, MX4);
    let (v, _) = t.out(&syn);
    assert!(matches!(v, Verdict::Reply { kind: ReplyKind::TcpRst, .. }), "{v:?}");
    assert!(t.router.take_block().is_some());
    let (v, _) = t.out(&syn);
    assert_eq!(v, Verdict::Drop(DropReason::ReplyRateLimited), "each packet still meets the action");
    assert!(t.router.take_block().is_none());
    assert_eq!(t.stats().op25b.blocked, 2);
    assert_eq!(t.stats().op25b.blocked_connections, 1);
}

#[test]
fn monitor_counts_would_be_attempts_once() {
    let mut t = router("monitor");
    let syn = syn_from(DYN4, 40000, MX4);
    assert!(noted(&mut t, &syn));
    t.advance(Duration::from_secs(1));
    assert!(!noted(&mut t, &syn));
    assert!(noted(&mut t, &syn_from(DYN4, 40001, MX4)));
    let s = t.stats();
    assert_eq!((s.op25b.monitored, s.op25b.monitored_connections), (3, 2));
    assert_eq!(s.op25b.blocked_connections, 0);
    assert_eq!(s.to_json()["counters"]["op25b_monitored_connections"], 2);
}

#[test]
fn a_rule_that_drops_a_syn_notes_the_attempt_once() {
    let rule = "[[rule]]\nname = \"no-telnet\"\nprotocol = \"tcp\"\ndst_ports = [23]\naction = \"drop\"\n";
    let mut t = PolicyBuilder::lab().rules(rule).router();
    t.router.note_blocks(true);
    let syn = tcp(DYN4, 40000, MX4, 23).syn().build();
    assert!(noted(&mut t, &syn));
    t.advance(Duration::from_secs(1));
    assert!(!noted(&mut t, &syn));
    assert_eq!(t.stats().dropped(DropReason::RuleDrop), 2);
}

#[test]
fn a_reload_keeps_the_attempts_seen() {
    let mut t = router("drop");
    let syn = syn_from(DYN4, 40000, MX4);
    assert!(noted(&mut t, &syn));
    let old = Arc::clone(t.router.policy());
    let new = PolicyBuilder::lab().unlimited_replies().action("drop").op25b("ports", "[25, 2525]").policy();
    let (state, _) = t.router.state().carry_over(&old, &new);
    t.router.set_policy(new, Arc::new(state));
    t.advance(Duration::from_secs(1));
    assert!(!noted(&mut t, &syn), "retransmitted across the reload");
}

#[test]
fn a_flood_of_forged_tuples_stays_in_the_fixed_table() {
    let mut t = router("drop");
    t.router.note_blocks(false);
    let n = SLOTS + SLOTS / 2;
    for i in 0..n {
        // Forged sources, all in one dynamic /64 (none exempt).
        let src = format!("2001:db8:100:1::{:x}:{:x}", (i + 1) >> 16, (i + 1) & 0xffff);
        let _ = t.out(&syn_from(&src, 1024, MX6));
    }
    let attempts = t.router.state().attempts();
    assert_eq!(attempts.capacity(), SLOTS, "the table does not grow");
    assert!(attempts.occupied() <= SLOTS);
    let s = t.stats();
    assert_eq!(s.op25b.blocked, n as u64);
    // Distinct tuples are distinct attempts (but for a tag collision, 1 in 2^31 each).
    assert!(s.op25b.blocked_connections + 4 > n as u64, "{} of {n}", s.op25b.blocked_connections);
    // The table still works for the next attempt and its retransmission.
    t.router.note_blocks(true);
    let syn = syn_from(DYN4, 50000, MX4);
    assert!(noted(&mut t, &syn));
    assert!(!noted(&mut t, &syn));
}

#[test]
fn the_trace_says_a_retransmission_is_the_same_attempt() {
    let mut t = router("drop");
    let syn = syn_from(DYN4, 40000, MX4);
    let mut reply = vec![0u8; 2048];
    let (_, first) = t.router.handle_traced(t.now, Direction::Outbound, &mut syn.clone(), &mut reply);
    assert!(!first.steps.iter().any(|s| s.stage == "attempt"), "{first:?}");
    let (_, again) = t.router.handle_traced(t.now, Direction::Outbound, &mut syn.clone(), &mut reply);
    assert!(again.steps.iter().any(|s| s.stage == "attempt" && s.detail.contains("retransmission")), "{again:?}");
}
