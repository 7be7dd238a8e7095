//! The rule pipeline's building blocks: the public [`Rule`] trait and
//! [`ConfigRule`], the rule type the config file's `[[rule]]` tables compile to.
//!
//! A rule sees the packet parsed once ([`PacketView`]) and a small
//! [`RuleContext`] (direction, time), and answers with a [`RuleVerdict`]: no
//! match, matched-and-continue, or a final verdict. Rules take `&self`
//! because one pipeline serves every worker: a rule of your own with state
//! keeps it behind its own lock or atomics. Config rules keep none: their
//! rate-limit buckets live in the router's state and reach them through the
//! pipeline's [`super::RuleHooks`].

use std::fmt::{self, Write as _};
use std::time::Instant;

use super::{Limit, PortSet, PrefixSet};
use crate::packet::{protocol_name, tcp_flags, Direction, PacketView, Transport, TunnelKind};

/// What a rule decided about a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RuleVerdict {
    /// The rule does not apply; go on with the next.
    NoMatch,
    /// The rule applies (its counters count the packet) but decides nothing.
    Continue,
    /// Final: forward the packet (skipping the remaining rules).
    Accept,
    /// Final: drop the packet silently.
    Drop,
    /// Final: drop the packet and tell the sender (TCP RST or ICMP prohibited).
    Reject,
    /// Final: drop the packet because a rate limit is exceeded.
    Limited,
}

impl RuleVerdict {
    /// True for the verdicts that end the pipeline.
    pub fn is_final(self) -> bool {
        !matches!(self, RuleVerdict::NoMatch | RuleVerdict::Continue)
    }
}

/// What a rule may know besides the packet.
#[derive(Debug, Clone, Copy)]
pub struct RuleContext {
    /// Which way the packet travels.
    pub direction: Direction,
    /// The time the router was given with the packet (never read from a clock).
    pub now: Instant,
    /// The packet's outermost encapsulation, when it is a tunnel (rules see
    /// the outer packet, the one forwarded).
    pub tunnel: Option<TunnelKind>,
}

/// A rule's `tunnel` field: which packets it applies to by encapsulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelMatch {
    /// Any tunnel.
    Any,
    /// Packets that are no tunnel.
    None,
    /// Tunnels of this kind (the outermost encapsulation).
    Kind(TunnelKind),
}

impl TunnelMatch {
    /// Parses a config value: `any`, `none` or a kind's name.
    pub fn parse(s: &str) -> Option<TunnelMatch> {
        match s {
            "any" => Some(TunnelMatch::Any),
            "none" => Some(TunnelMatch::None),
            k => TunnelKind::from_name(k).map(TunnelMatch::Kind),
        }
    }

    #[inline]
    fn matches(self, tunnel: Option<TunnelKind>) -> bool {
        match self {
            TunnelMatch::Any => tunnel.is_some(),
            TunnelMatch::None => tunnel.is_none(),
            TunnelMatch::Kind(k) => tunnel == Some(k),
        }
    }

    /// The config's spelling.
    pub fn name(self) -> &'static str {
        match self {
            TunnelMatch::Any => "any",
            TunnelMatch::None => "none",
            TunnelMatch::Kind(k) => k.name(),
        }
    }
}

/// A packet filter rule given in code. Implement it to add a rule in Rust
/// without touching the core ([`super::Policy::attach`]); see
/// `examples/custom_rule.rs`. The config's own rules are kinds of
/// [`super::RuleKind`].
pub trait Rule: Send + Sync {
    /// A short name, used in traces and counters.
    fn name(&self) -> &str;

    /// Judges one packet.
    fn evaluate(&self, packet: &PacketView, cx: &RuleContext) -> RuleVerdict;

    /// For traces: the first field on which `packet` fails to match, if the rule
    /// can tell. `None` means it matches (or the rule does not say).
    fn mismatch(&self, _packet: &PacketView, _cx: &RuleContext) -> Option<&'static str> {
        None
    }

    /// A one-line description for `op25b check`.
    fn describe(&self) -> String {
        self.name().to_string()
    }
}

/// What a config rule does when it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RuleAction {
    /// Forward, skipping later rules.
    Accept,
    /// Drop silently.
    Drop,
    /// Drop and answer: TCP RST, ICMP / ICMPv6 administratively prohibited.
    Reject,
    /// Count and continue.
    Count,
    /// Per-source token bucket: continue while under the limit, drop above it.
    RateLimit(Limit),
}

impl fmt::Display for RuleAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleAction::Accept => f.write_str("accept"),
            RuleAction::Drop => f.write_str("drop"),
            RuleAction::Reject => f.write_str("reject"),
            RuleAction::Count => f.write_str("count"),
            RuleAction::RateLimit(l) => {
                write!(f, "rate-limit {}/s burst {} per source", l.rate, l.burst)
            }
        }
    }
}

/// Which TCP flags a rule asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagMatch {
    /// SYN set and ACK clear: a new connection.
    Syn,
    /// SYN and ACK set.
    SynAck,
    /// ACK set.
    Ack,
    /// RST set.
    Rst,
    /// FIN set.
    Fin,
}

impl FlagMatch {
    /// Parses a config value.
    pub fn parse(s: &str) -> Option<FlagMatch> {
        Some(match s {
            "syn" => FlagMatch::Syn,
            "syn-ack" | "synack" => FlagMatch::SynAck,
            "ack" => FlagMatch::Ack,
            "rst" => FlagMatch::Rst,
            "fin" => FlagMatch::Fin,
            _ => return None,
        })
    }

    fn matches(self, flags: u8) -> bool {
        let syn_ack = tcp_flags::SYN | tcp_flags::ACK;
        match self {
            FlagMatch::Syn => flags & syn_ack == tcp_flags::SYN,
            FlagMatch::SynAck => flags & syn_ack == syn_ack,
            FlagMatch::Ack => flags & tcp_flags::ACK != 0,
            FlagMatch::Rst => flags & tcp_flags::RST != 0,
            FlagMatch::Fin => flags & tcp_flags::FIN != 0,
        }
    }

    /// The config's spelling: `syn`, `syn-ack`, `ack`, `rst`, `fin`.
    pub fn name(self) -> &'static str {
        match self {
            FlagMatch::Syn => "syn",
            FlagMatch::SynAck => "syn-ack",
            FlagMatch::Ack => "ack",
            FlagMatch::Rst => "rst",
            FlagMatch::Fin => "fin",
        }
    }
}

/// A rule from the config file: every field given must match (omitted = any).
#[derive(Debug)]
pub struct ConfigRule {
    /// Name (unique in the file).
    pub name: String,
    /// Direction, or any.
    pub direction: Option<Direction>,
    /// IP protocol number, or any.
    pub protocol: Option<u8>,
    /// Source prefixes.
    pub src: Option<PrefixSet>,
    /// Destination prefixes.
    pub dst: Option<PrefixSet>,
    /// Source ports (TCP / UDP).
    pub src_ports: Option<PortSet>,
    /// Destination ports (TCP / UDP).
    pub dst_ports: Option<PortSet>,
    /// TCP flags.
    pub tcp_flags: Option<FlagMatch>,
    /// Encapsulation (tunnel or not), or any packet.
    pub tunnel: Option<TunnelMatch>,
    /// What to do on a match.
    pub action: RuleAction,
}

impl ConfigRule {
    /// A rule with every field "any" and the given action.
    pub(crate) fn new(name: impl Into<String>, action: RuleAction) -> ConfigRule {
        ConfigRule {
            name: name.into(),
            direction: None,
            protocol: None,
            src: None,
            dst: None,
            src_ports: None,
            dst_ports: None,
            tcp_flags: None,
            tunnel: None,
            action,
        }
    }

    /// The verdict of a packet that matched every field; `allow` takes a
    /// token of a rate-limit rule's bucket for the packet's source.
    #[inline]
    pub(crate) fn verdict(&self, allow: impl FnOnce(Limit) -> bool) -> RuleVerdict {
        match self.action {
            RuleAction::Accept => RuleVerdict::Accept,
            RuleAction::Drop => RuleVerdict::Drop,
            RuleAction::Reject => RuleVerdict::Reject,
            RuleAction::Count => RuleVerdict::Continue,
            RuleAction::RateLimit(limit) if allow(limit) => RuleVerdict::Continue,
            RuleAction::RateLimit(_) => RuleVerdict::Limited,
        }
    }

    /// The first field that does not match, or `None` when all match.
    #[inline]
    pub(crate) fn first_mismatch(&self, p: &PacketView, cx: &RuleContext) -> Option<&'static str> {
        if self.direction.is_some_and(|d| d != cx.direction) {
            return Some("direction");
        }
        if self.protocol.is_some_and(|want| want != p.protocol) {
            return Some("protocol");
        }
        if self.src.as_ref().is_some_and(|s| !s.contains(p.src)) {
            return Some("src");
        }
        if self.dst.as_ref().is_some_and(|s| !s.contains(p.dst)) {
            return Some("dst");
        }
        let ports = ports_of(p);
        if let Some(set) = &self.src_ports {
            if !ports.is_some_and(|(sp, _)| set.contains(sp)) {
                return Some("src_ports");
            }
        }
        if let Some(set) = &self.dst_ports {
            if !ports.is_some_and(|(_, dp)| set.contains(dp)) {
                return Some("dst_ports");
            }
        }
        if let Some(want) = self.tcp_flags {
            match p.transport {
                Transport::Tcp { flags, .. } if want.matches(flags) => {}
                _ => return Some("tcp_flags"),
            }
        }
        if self.tunnel.is_some_and(|t| !t.matches(cx.tunnel)) {
            return Some("tunnel");
        }
        None
    }
}

/// Source and destination port of a TCP or UDP packet whose header was read.
#[inline]
pub fn ports_of(p: &PacketView) -> Option<(u16, u16)> {
    match p.transport {
        Transport::Tcp { src_port, dst_port, .. } | Transport::Udp { src_port, dst_port } => Some((src_port, dst_port)),
        _ => None,
    }
}

impl Rule for ConfigRule {
    fn name(&self) -> &str {
        &self.name
    }

    /// On its own, outside a pipeline, a rate-limit rule has no buckets and
    /// never limits; in the pipeline the router's state holds them.
    #[inline]
    fn evaluate(&self, p: &PacketView, cx: &RuleContext) -> RuleVerdict {
        if self.first_mismatch(p, cx).is_some() {
            return RuleVerdict::NoMatch;
        }
        self.verdict(|_| true)
    }

    fn mismatch(&self, p: &PacketView, cx: &RuleContext) -> Option<&'static str> {
        self.first_mismatch(p, cx)
    }

    fn describe(&self) -> String {
        let mut s = format!("{}:", self.name);
        if let Some(d) = self.direction {
            let _ = write!(s, " {}", d.name());
        }
        let _ = write!(s, " {}", self.protocol.map_or("any".to_string(), protocol_name));
        let set = |ps: &PrefixSet| {
            let n: Vec<String> = ps.nets().iter().take(4).map(|n| n.to_string()).collect();
            if ps.len() > 4 {
                format!("{} (+{} more)", n.join(","), ps.len() - 4)
            } else {
                n.join(",")
            }
        };
        let ports = |ps: &PortSet| ranges_text(ps);
        if let Some(p) = &self.src {
            let _ = write!(s, " src {}", set(p));
        }
        if let Some(p) = &self.src_ports {
            let _ = write!(s, " sport {}", ports(p));
        }
        if let Some(p) = &self.dst {
            let _ = write!(s, " dst {}", set(p));
        }
        if let Some(p) = &self.dst_ports {
            let _ = write!(s, " dport {}", ports(p));
        }
        if let Some(f) = self.tcp_flags {
            let _ = write!(s, " flags {}", f.name());
        }
        if let Some(t) = self.tunnel {
            let _ = write!(s, " tunnel {}", t.name());
        }
        let _ = write!(s, " -> {}", self.action);
        s
    }
}

/// "25,465,6000-6010" for a port set.
pub fn ranges_text(ps: &PortSet) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut it = ps.iter().peekable();
    while let Some(start) = it.next() {
        let mut end = start;
        while it.peek() == Some(&(end.wrapping_add(1))) && end != u16::MAX {
            end = it.next().unwrap_or(end);
        }
        out.push(if start == end { start.to_string() } else { format!("{start}-{end}") });
    }
    out.join(",")
}

/// A config placeholder, `[[rule]] name = "x" plugin = "x"`: where a rule
/// given in code ([`crate::policy::Policy`] through the library's entry point)
/// sits among the config's rules. Without one in its place (`op25b check`,
/// `replay`), it matches nothing.
#[derive(Debug)]
pub struct PluginSlot {
    /// The rule's name in the config.
    pub name: String,
    /// The name of the rule given in code.
    pub plugin: String,
}

impl PluginSlot {
    /// A one-line description for `op25b check`.
    pub fn describe(&self) -> String {
        format!("{}: plugin {:?} (a rule given in code; matches nothing without it)", self.name, self.plugin)
    }
}
