//! Policy: the compiled tables the router consults. Built from the config
//! (see `config`), immutable, shared by every worker and swapped whole on a
//! reload. What changes per packet (buckets, flows, sessions) is not here but
//! in [`crate::state`].

pub(crate) mod attach;
pub(crate) mod kind;
pub(crate) mod op25b;
pub(crate) mod pipeline;
pub(crate) mod ports;
pub(crate) mod prefix;
pub(crate) mod program;
pub(crate) mod quarantine;
pub(crate) mod rules;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

pub use attach::{AttachError, Place};
pub use kind::RuleKind;
pub use op25b::{Action, Banner, Decision, Op25b, TunnelMode};
pub use pipeline::{Pipeline, RuleHooks, RuleStep};
pub use ports::PortSet;
pub use prefix::PrefixSet;
pub use program::{OnError, Program, ProgramError, ProgramRule};
pub use quarantine::QuarantineAllow;
pub use rules::{ConfigRule, PluginSlot, Rule, RuleAction, RuleContext, RuleVerdict};

use crate::packet::Direction;

/// A token-bucket limit: `rate` tokens per second, at most `burst` saved up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Tokens per second (> 0).
    pub rate: u32,
    /// Bucket size (>= 1).
    pub burst: u32,
}

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
    /// What a subscriber in quarantine may still reach (`abuse.quarantine_allow`).
    pub quarantine_allow: QuarantineAllow,
}

impl Policy {
    /// The MTU of the device a packet travelling in `dir` leaves through.
    #[inline]
    pub fn egress_mtu(&self, dir: Direction) -> u16 {
        match dir {
            Direction::Outbound => self.upstream_mtu,
            Direction::Inbound => self.subscriber_mtu,
        }
    }
}
