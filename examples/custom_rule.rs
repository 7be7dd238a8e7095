//! A rule written in Rust, added to a router without touching the core: at most
//! N new submission (port 587) connections per subscriber per minute.
//!
//! Run it with `cargo run --example custom_rule`; it feeds SYNs through a router
//! built from the lab config plus this rule and prints what happens.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use op25b::packet::PacketView;
use op25b::policy::{Place, Rule, RuleContext, RuleVerdict};
use op25b::testing::lab::{DYN4, MX4};
use op25b::testing::packets::syn;
use op25b::testing::{PolicyBuilder, TestRouter};
use op25b::{Direction, Verdict};

/// At most `max` SYNs to port 587 per source in each `window`.
pub struct SubmissionLimit {
    max: u32,
    window: Duration,
    /// Per-source (window start, count). Bounded: at `capacity` sources, expired
    /// windows are swept; if none expired, new sources are refused (fail closed).
    seen: Mutex<HashMap<IpAddr, (Instant, u32)>>,
    capacity: usize,
    /// What a connection over the limit gets (drop unless [`SubmissionLimit::rejecting`]).
    over: RuleVerdict,
}

impl SubmissionLimit {
    pub fn new(max: u32, window: Duration, capacity: usize) -> Self {
        SubmissionLimit {
            max,
            window,
            seen: Mutex::new(HashMap::with_capacity(capacity)),
            capacity,
            over: RuleVerdict::Drop,
        }
    }

    /// Answers connections over the limit with an RST (the client sees
    /// "connection refused" at once) instead of dropping them.
    pub fn rejecting(mut self) -> Self {
        self.over = RuleVerdict::Reject;
        self
    }
}

impl Rule for SubmissionLimit {
    fn name(&self) -> &str {
        "submission-per-minute"
    }

    fn evaluate(&self, p: &PacketView, cx: &RuleContext) -> RuleVerdict {
        if self.mismatch(p, cx).is_some() {
            return RuleVerdict::NoMatch;
        }
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= self.capacity && !seen.contains_key(&p.src) {
            let window = self.window;
            seen.retain(|_, (start, _)| cx.now.saturating_duration_since(*start) < window);
            if seen.len() >= self.capacity {
                return self.over;
            }
        }
        let entry = seen.entry(p.src).or_insert((cx.now, 0));
        if cx.now.saturating_duration_since(entry.0) >= self.window {
            *entry = (cx.now, 0);
        }
        entry.1 += 1;
        if entry.1 > self.max {
            self.over
        } else {
            RuleVerdict::Continue
        }
    }

    fn mismatch(&self, p: &PacketView, cx: &RuleContext) -> Option<&'static str> {
        if cx.direction != Direction::Outbound {
            Some("direction")
        } else if p.tcp_dst_port() != Some(587) {
            Some("dst_ports")
        } else if !p.is_tcp_syn() {
            Some("tcp_flags")
        } else {
            None
        }
    }

    fn describe(&self) -> String {
        format!("{}: outbound tcp dport 587 syn -> at most {} per {:?} per source", self.name(), self.max, self.window)
    }
}

/// Builds the router and runs the scenario; returns how many SYNs from one
/// subscriber passed in the first minute, and after it.
pub fn scenario() -> (usize, usize) {
    let mut config = PolicyBuilder::lab().config();
    config
        .policy
        .attach(&[(Place::Last, Arc::new(SubmissionLimit::new(3, Duration::from_secs(60), 10_000)))])
        .expect("unshared policy");
    let mut router = TestRouter::new(Arc::new(config.policy));
    let t0 = router.now;
    let mut send = |now: Instant, src: &str| {
        router.now = now;
        matches!(router.out(&syn(src, MX4, 587)).0, Verdict::Forward { .. })
    };
    let first = (0..10).filter(|i| send(t0 + Duration::from_secs(*i), DYN4)).count();
    // Another subscriber is not affected.
    assert!(send(t0, "100.64.1.11"));
    let later = (0..10).filter(|i| send(t0 + Duration::from_secs(61 + i), DYN4)).count();
    (first, later)
}

pub fn main() {
    let (first, later) = scenario();
    println!("port-587 SYNs from {DYN4} forwarded in the first minute: {first} of 10");
    println!("in the next minute: {later} of 10");
    assert_eq!((first, later), (3, 3));
}
