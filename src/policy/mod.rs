//! Policy: the compiled tables the router consults. Built once from the config
//! (see `config`), then shared read-only by every worker.

pub mod conntrack;
pub mod op25b;
pub mod pipeline;
pub mod ports;
pub mod prefix;
pub mod ratelimit;
pub mod rules;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use conntrack::Conntrack;
use ratelimit::{Limit, RateLimiter};

pub use op25b::{Action, Banner, Decision, Op25b};
pub use pipeline::Pipeline;
pub use ports::PortSet;
pub use prefix::PrefixSet;
pub use rules::{ConfigRule, Rule, RuleAction, RuleContext, RuleVerdict};

use crate::router::Direction;

/// Everything the router needs to judge and forward packets.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The router's IPv4 address: source of its ICMP errors, answers ping.
    pub address_v4: Option<Ipv4Addr>,
    /// The router's IPv6 address.
    pub address_v6: Option<Ipv6Addr>,
    /// Sources allowed on the subscriber side (BCP 38).
    pub subscriber_prefixes: PrefixSet,
    /// MTU of the subscriber-side device.
    pub subscriber_mtu: u16,
    /// MTU of the upstream device.
    pub upstream_mtu: u16,
    /// The OP25B fast path.
    pub op25b: Op25b,
    /// The rules evaluated after the fast path.
    pub rules: Arc<Pipeline>,
    /// Per-address limit on the packets the router originates (RSTs, ICMP
    /// errors, echo replies, banner sessions, new redirected flows).
    pub reply_limit: Limit,
    /// Most flows the redirect action tracks.
    pub max_flows: usize,
    /// Most redirected flows of one subscriber (an IPv4 address or an IPv6 /64).
    pub max_flows_per_source: usize,
    /// State shared by every router built from this policy.
    pub runtime: Arc<Runtime>,
}

/// Mutable state shared by the routers (workers) of one policy. Locked only on
/// the rare paths: building a reply, and packets of redirected flows. Each part
/// is shared on its own, so a config reload can carry some parts over and
/// start others afresh (see [`crate::reload`]).
#[derive(Debug, Clone)]
pub struct Runtime {
    /// Token buckets for router-originated packets, per destination address.
    pub replies: Arc<Mutex<RateLimiter>>,
    /// The redirect flow table.
    pub conntrack: Arc<Mutex<Conntrack>>,
    /// The banner responder, when the action is `banner`.
    pub responder: Option<Arc<Mutex<crate::responder::Responder>>>,
    /// The responder's next deadline, readable without its lock.
    pub responder_deadline: Option<Arc<crate::responder::Deadline>>,
}

impl Runtime {
    /// Fresh state for the given limits.
    pub fn new(op25b: &Op25b, reply_limit: Limit, max_flows: usize, max_flows_per_source: usize) -> Runtime {
        let responder = (op25b.action == Action::Banner).then(|| crate::responder::Responder::new(op25b));
        Runtime {
            replies: Arc::new(Mutex::new(RateLimiter::new(reply_limit))),
            conntrack: Arc::new(Mutex::new(Conntrack::new(max_flows, max_flows_per_source))),
            responder_deadline: responder.as_ref().map(|r| r.shared_deadline()),
            responder: responder.map(|r| Arc::new(Mutex::new(r))),
        }
    }

    /// The banner responder, locked, if there is one.
    pub fn responder(&self) -> Option<std::sync::MutexGuard<'_, crate::responder::Responder>> {
        self.responder.as_ref().map(|r| r.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Takes a reply token for `to`; false when over the limit.
    pub fn allow_reply(&self, to: IpAddr, now: Instant) -> bool {
        // A poisoned lock only means a worker panicked mid-update; the table is valid.
        self.replies.lock().unwrap_or_else(|e| e.into_inner()).allow(to, now)
    }

    /// The flow table, locked.
    pub fn conntrack(&self) -> std::sync::MutexGuard<'_, Conntrack> {
        self.conntrack.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The policy's rules are in use by a router and cannot change in place.
#[derive(Debug, thiserror::Error)]
#[error("the policy's rules are shared with a running router; add rules before building routers")]
pub struct RulesShared;

impl Policy {
    /// Appends a rule after the config's rules (for Rust users with their own
    /// [`Rule`] types; see `examples/custom_rule.rs`).
    pub fn push_rule(&mut self, rule: Box<dyn Rule>) -> Result<(), RulesShared> {
        let old = std::mem::take(&mut self.rules);
        let mut rules = match Arc::try_unwrap(old) {
            Ok(p) => p.into_rules(),
            Err(shared) => {
                self.rules = shared;
                return Err(RulesShared);
            }
        };
        rules.push(rule);
        self.rules = Arc::new(Pipeline::new(rules));
        Ok(())
    }

    /// The MTU of the device a packet travelling in `dir` leaves through.
    #[inline]
    pub fn egress_mtu(&self, dir: Direction) -> u16 {
        match dir {
            Direction::Outbound => self.upstream_mtu,
            Direction::Inbound => self.subscriber_mtu,
        }
    }
}
