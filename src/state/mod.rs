//! Runtime state: what changes while packets pass, apart from the immutable
//! [`Policy`] tables. Owned by the data plane (one `State` per policy in
//! force, shared by its workers) and held by each worker's router next to
//! the policy it belongs to.
//!
//! - reply buckets: the per-destination limit on every packet the router
//!   originates (`state::ratelimit`);
//! - the redirect flow table (`state::conntrack`);
//! - the banner responder's sessions (`state::responder`);
//! - the buckets of config rate-limit rules;
//! - the subscribers in quarantine (`state::abuse`), which every reload keeps;
//! - the blocked connection attempts seen lately (`state::attempts`), so that a
//!   retransmitted SYN is one attempt; every reload keeps them too.
//!
//! Each part sits behind its own lock, taken only on the paths that need it
//! (a reply, a packet of a blocked flow, a rate-limit rule's match), and is
//! shared through its own `Arc`, so a reload can carry some parts over and
//! start others afresh ([`State::carry_over`]).

internal!(abuse);
pub(crate) mod attempts;
pub(crate) mod conntrack;
internal!(neighbour);
pub(crate) mod program;
pub(crate) mod ratelimit;
pub(crate) mod responder;

use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::policy::{Action, Limit, Policy, RuleAction, RuleKind, RuleVerdict};
use crate::stats::ResponderStats;
use abuse::Quarantine;
use attempts::Attempts;
use conntrack::Conntrack;
use program::{Fault, Instance};
use ratelimit::RateLimiter;
use responder::Responder;

/// The unit a subscriber is limited by: an IPv4 address, or an IPv6 /64 (a
/// subscriber usually holds a whole /64 or more, and per-address limits would
/// give it 2^64 of them). In 64 bits: the /64 prefix, or the IPv4 address
/// under 0xffff_ffff as the top half. IPv6 addresses starting with 0xff are
/// multicast, which the router drops as a source, so the two never meet.
pub(crate) fn subscriber_key(addr: IpAddr) -> u64 {
    match addr {
        IpAddr::V4(a) => 0xffff_ffff_0000_0000 | u64::from(u32::from(a)),
        IpAddr::V6(a) => (u128::from(a) >> 64) as u64,
    }
}

/// Most subscribers in quarantine at once.
pub(crate) const MAX_QUARANTINED: usize = 65_536;

/// The buckets of one rate-limit rule.
#[derive(Debug)]
struct RuleBuckets {
    name: String,
    limit: Limit,
    table: Mutex<RateLimiter>,
}

/// The runtime state of one policy.
#[derive(Debug)]
pub struct State {
    replies: Arc<Mutex<RateLimiter>>,
    flows: Arc<Mutex<Conntrack>>,
    responder: Option<Arc<Responder>>,
    /// By rule index; `None` for rules that are not config rate limits.
    rule_buckets: Box<[Option<Arc<RuleBuckets>>]>,
    /// Subscribers in quarantine (`[abuse]`): always carried over a reload.
    quarantine: Arc<Quarantine>,
    /// By rule index; `None` for rules that are not program rules.
    programs: Box<[Option<Arc<ProgramSlot>>]>,
    /// Blocked connection attempts seen lately: always carried over a reload.
    attempts: Arc<Attempts>,
}

/// The live instance of one program rule (its memory and map).
#[derive(Debug)]
struct ProgramSlot {
    name: String,
    digest: u64,
    /// `None` when it could not be instantiated: every call is then a fault.
    instance: Option<Mutex<Instance>>,
}

/// The parts of the running state a reload carried over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kept {
    /// The reply rate limiter's buckets (same `reply_rate` and `reply_burst`).
    pub reply_buckets: bool,
    /// The redirect flow table (still `redirect`, same targets and bounds).
    pub flows: bool,
    /// The banner responder and its sessions (still `banner`, same ports and settings).
    pub sessions: bool,
    /// Rate-limit rules whose buckets carried over (same name and limit).
    pub rule_buckets: usize,
    /// Program rules whose instance (memory and map) carried over (same
    /// name, same program and map size).
    pub programs: usize,
}

impl From<&Kept> for crate::stats::KeptStats {
    fn from(k: &Kept) -> Self {
        crate::stats::KeptStats {
            reply_buckets: k.reply_buckets.into(),
            flows: k.flows.into(),
            sessions: k.sessions.into(),
            rule_buckets: k.rule_buckets as u64,
            programs: k.programs as u64,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means a worker panicked mid-update; every table
    // here is valid between any two of its operations.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn rule_buckets(policy: &Policy) -> Box<[Option<Arc<RuleBuckets>>]> {
    policy
        .rules
        .rules()
        .iter()
        .map(|r| match r {
            RuleKind::Config(c) => match c.action {
                RuleAction::RateLimit(limit) => Some(Arc::new(RuleBuckets {
                    name: r.name().to_string(),
                    limit,
                    table: Mutex::new(RateLimiter::new(limit)),
                })),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn programs(policy: &Policy) -> Box<[Option<Arc<ProgramSlot>>]> {
    policy
        .rules
        .rules()
        .iter()
        .map(|r| {
            let RuleKind::Program(p) = r else { return None };
            let instance = Instance::new(&p.program).ok().map(Mutex::new);
            Some(Arc::new(ProgramSlot { name: r.name().to_string(), digest: p.program.digest, instance }))
        })
        .collect()
}

impl State {
    /// Fresh state for `policy`.
    pub fn new(policy: &Policy) -> State {
        let op = &policy.op25b;
        State {
            replies: Arc::new(Mutex::new(RateLimiter::new(policy.reply_limit))),
            flows: Arc::new(Mutex::new(Conntrack::new(policy.max_flows, policy.max_flows_per_source))),
            responder: (op.action == Action::Banner).then(|| Arc::new(Responder::new(&op.ports, &op.banner))),
            rule_buckets: rule_buckets(policy),
            quarantine: Arc::new(Quarantine::new(MAX_QUARANTINED)),
            programs: programs(policy),
            attempts: Arc::new(Attempts::new()),
        }
    }

    /// State for the offline tools (`check --packet`, `replay`): no banner
    /// responder, as there is no device to send its answers to. A blocked
    /// SYN is then reported as what the data plane does with it (handed to
    /// the responder), and the flow's other segments as blocked.
    pub(crate) fn offline(policy: &Policy) -> State {
        State { responder: None, ..State::new(policy) }
    }

    /// Whether this state was built for `policy`'s rules (the rate-limit
    /// buckets are found by rule position).
    pub(crate) fn fits(&self, policy: &Policy) -> bool {
        let rules = policy.rules.rules();
        rules.len() == self.rule_buckets.len()
            && rules.len() == self.programs.len()
            && rules.iter().zip(self.programs.iter()).all(|(r, s)| match (r, s) {
                (RuleKind::Program(p), Some(s)) => s.name == r.name() && s.digest == p.program.digest,
                (RuleKind::Program(_), None) | (_, Some(_)) => false,
                _ => true,
            })
            && rules.iter().zip(self.rule_buckets.iter()).all(|(r, b)| {
                let limit = match r {
                    RuleKind::Config(c) => match c.action {
                        RuleAction::RateLimit(limit) => Some(limit),
                        _ => None,
                    },
                    _ => None,
                };
                match (limit, b) {
                    (Some(limit), Some(b)) => b.limit == limit && b.name == r.name(),
                    (Some(_), None) | (None, Some(_)) => false,
                    (None, None) => true,
                }
            })
    }

    /// The state for `new`, which replaces `old` (whose state this is): each
    /// part carries over while the settings it was built for hold, and
    /// starts afresh otherwise.
    pub fn carry_over(&self, old: &Policy, new: &Policy) -> (State, Kept) {
        let mut state = State::new(new);
        // Quarantines outlive any policy: they end by time or by `op25b release`.
        state.quarantine = Arc::clone(&self.quarantine);
        // A SYN retransmitted across a reload is still the same attempt.
        state.attempts = Arc::clone(&self.attempts);
        let (x, y) = (&old.op25b, &new.op25b);
        let kept_replies = old.reply_limit == new.reply_limit;
        let kept_flows = x.action == Action::Redirect
            && y.action == Action::Redirect
            && x.redirect_v4 == y.redirect_v4
            && x.redirect_v6 == y.redirect_v6
            && old.max_flows == new.max_flows
            && old.max_flows_per_source == new.max_flows_per_source;
        let kept_sessions =
            x.action == Action::Banner && y.action == Action::Banner && x.ports == y.ports && x.banner == y.banner;
        if kept_replies {
            state.replies = Arc::clone(&self.replies);
        }
        if kept_flows {
            state.flows = Arc::clone(&self.flows);
        }
        if kept_sessions {
            state.responder.clone_from(&self.responder);
        }
        let mut rules = 0;
        for slot in state.rule_buckets.iter_mut().flatten() {
            let same = self.rule_buckets.iter().flatten().find(|b| b.name == slot.name && b.limit == slot.limit);
            if let Some(b) = same {
                *slot = Arc::clone(b);
                rules += 1;
            }
        }
        let mut programs = 0;
        for slot in state.programs.iter_mut().flatten() {
            let same = self.programs.iter().flatten().find(|s| s.name == slot.name && s.digest == slot.digest);
            if let Some(s) = same {
                *slot = Arc::clone(s);
                programs += 1;
            }
        }
        let kept = Kept {
            reply_buckets: kept_replies,
            flows: kept_flows,
            sessions: kept_sessions,
            rule_buckets: rules,
            programs,
        };
        (state, kept)
    }

    /// Runs program rule `index` on `packet`; `None` when the rule has no
    /// instance (not a program rule, or one that could not be instantiated).
    pub(crate) fn run_program(
        &self,
        index: usize,
        packet: &[u8],
        direction: i32,
        subscriber: u64,
        now: Instant,
    ) -> Option<Result<RuleVerdict, Fault>> {
        let slot = self.programs.get(index)?.as_ref()?;
        let Some(instance) = &slot.instance else { return Some(Err(Fault::Trap)) };
        Some(lock(instance).run(packet, direction, subscriber, now))
    }

    /// Entries in the map of program rule `index` (for tests and traces).
    #[doc(hidden)]
    pub fn program_map_len(&self, index: usize) -> Option<usize> {
        let slot = self.programs.get(index)?.as_ref()?;
        Some(lock(slot.instance.as_ref()?).map_len())
    }

    /// Takes a reply token for `to`; false when over the limit.
    #[inline]
    pub(crate) fn allow_reply(&self, to: IpAddr, now: Instant) -> bool {
        lock(&self.replies).allow(to, now)
    }

    /// Takes a token of rate-limit rule `index` for `src`; true when the
    /// rule has no buckets (not a config rate-limit rule).
    pub(crate) fn allow_rule(&self, index: usize, src: IpAddr, now: Instant) -> bool {
        match self.rule_buckets.get(index) {
            Some(Some(b)) => lock(&b.table).allow(src, now),
            _ => true,
        }
    }

    /// The redirect flow table, locked.
    pub(crate) fn flows(&self) -> MutexGuard<'_, Conntrack> {
        lock(&self.flows)
    }

    /// The subscribers in quarantine.
    #[doc(hidden)]
    pub fn quarantine(&self) -> &Arc<Quarantine> {
        &self.quarantine
    }

    /// Notes a blocked (or, with `monitor`, would-be blocked) SYN: true when
    /// it starts a connection attempt, false when it retransmits one
    /// ([`attempts::RETRY_WINDOW`]).
    #[inline]
    pub(crate) fn first_attempt(&self, view: &crate::packet::PacketView, now: Instant) -> bool {
        match view.transport {
            crate::packet::Transport::Tcp { src_port, dst_port, seq, .. } => {
                self.attempts.first((view.src, src_port), (view.dst, dst_port), seq, now)
            }
            _ => true,
        }
    }

    /// The blocked connection attempts seen lately.
    #[doc(hidden)]
    pub fn attempts(&self) -> &Attempts {
        &self.attempts
    }

    /// The banner responder, with `action = "banner"`.
    #[doc(hidden)]
    pub fn responder(&self) -> Option<&Responder> {
        self.responder.as_deref()
    }

    /// The next packet the banner responder has for the subscriber side,
    /// copied into `out`; RSTs only with a reply token for their destination.
    pub fn poll_transmit(&self, now: Instant, out: &mut [u8]) -> Option<usize> {
        self.responder.as_ref()?.poll_transmit(out, |to| self.allow_reply(to, now))
    }

    /// When [`State::handle_timeout`] must run next, if ever (no lock).
    #[inline]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.responder.as_ref().and_then(|r| r.poll_timeout())
    }

    /// Runs the banner sessions' timers due at `now`.
    pub fn handle_timeout(&self, now: Instant) {
        if let Some(r) = &self.responder {
            r.handle_timeout(now);
        }
    }

    /// The responder's figures.
    pub(crate) fn responder_stats(&self) -> ResponderStats {
        let mut s = ResponderStats::default();
        if let Some(r) = &self.responder {
            s.sessions = r.active() as u64;
            s.rsts_limited = r.rsts_limited();
            s.ring_overflows = r.ring_overflows();
            s.syn_evictions = r.syn_evictions();
        }
        s
    }

    /// Whether two states share the part named (for reload tests).
    #[cfg(test)]
    pub(crate) fn shares(&self, other: &State) -> (bool, bool, bool) {
        let responders = match (&self.responder, &other.responder) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        (Arc::ptr_eq(&self.replies, &other.replies), Arc::ptr_eq(&self.flows, &other.flows), responders)
    }
}
