//! A blocked connection attempt as the router saw it ([`Block`]): what an
//! event of it says, and what abuse handling counts of it
//! ([`Block::attempt`]), both written once here.

use std::net::SocketAddr;
use std::time::Instant;

use super::{ReplyKind, Verdict};
use crate::packet::TunnelKind;
use crate::policy::Action;
use crate::state::abuse::Attempt;

/// What blocked a connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BlockAction {
    /// OP25B's action (reject, drop, icmp, banner, redirect; monitor for a
    /// would-be block).
    Op25b(Action),
    /// A rule's `drop`.
    RuleDrop,
    /// A rule's `reject`.
    RuleReject,
    /// A rule's `rate-limit`, over its limit.
    RateLimit,
}

impl BlockAction {
    /// The name events give it: the config's spelling of the action.
    pub fn name(self) -> &'static str {
        match self {
            BlockAction::Op25b(a) => a.name(),
            BlockAction::RuleDrop => "drop",
            BlockAction::RuleReject => "reject",
            BlockAction::RateLimit => "rate-limit",
        }
    }

    /// A would-be block of `action = "monitor"`: the packet went on.
    pub fn is_monitor(self) -> bool {
        self == BlockAction::Op25b(Action::Monitor)
    }
}

/// What the subscriber of a blocked attempt got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BlockReply {
    /// A TCP RST.
    TcpRst,
    /// ICMP / ICMPv6 administratively prohibited.
    Icmp,
    /// The banner responder took it.
    Banner,
    /// It went on to the redirect target.
    Redirect,
    /// Nothing (a drop, or monitor's would-be block).
    None,
}

impl BlockReply {
    /// What a blocked SYN's verdict gave the subscriber.
    pub fn of(verdict: Verdict) -> BlockReply {
        match verdict {
            Verdict::Reply { kind: ReplyKind::TcpRst, .. } => BlockReply::TcpRst,
            Verdict::Reply { kind: ReplyKind::Prohibited, .. } => BlockReply::Icmp,
            Verdict::Terminate => BlockReply::Banner,
            Verdict::Forward { .. } => BlockReply::Redirect,
            _ => BlockReply::None,
        }
    }

    /// The name events give it.
    pub fn name(self) -> &'static str {
        match self {
            BlockReply::TcpRst => "tcp_rst",
            BlockReply::Icmp => "icmp",
            BlockReply::Banner => "banner",
            BlockReply::Redirect => "redirect",
            BlockReply::None => "none",
        }
    }
}

/// A blocked packet found inside a tunnel, as events name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Tunnelled {
    /// The outermost encapsulation.
    pub kind: TunnelKind,
    /// How deep the blocked packet sat (1: inside one tunnel).
    pub depth: u8,
    /// The outer packet's destination (the tunnel's far end).
    pub outer_dst: std::net::IpAddr,
    /// The inner packet's source.
    pub inner_src: SocketAddr,
}

/// A blocked connection attempt (a SYN that OP25B or a rule blocked), as
/// the router saw it: what an event of it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Block {
    /// The subscriber's end.
    pub src: SocketAddr,
    /// The end it dialled.
    pub dst: SocketAddr,
    /// What blocked it: OP25B's action or the rule's.
    pub action: BlockAction,
    /// The rule that blocked it, by index in the policy; `None` for OP25B.
    pub rule: Option<u16>,
    /// What the subscriber got.
    pub reply: BlockReply,
    /// Found inside a tunnel: then `src` is the tunnel's source (the
    /// subscriber, port 0) and `dst` the inner packet's destination.
    pub tunnel: Option<Tunnelled>,
}

impl Block {
    /// The attempt abuse handling counts for this block at `at`: OP25B's
    /// blocks and `monitor`'s would-be blocks; `None` for a rule's.
    pub fn attempt(&self, at: Instant) -> Option<Attempt> {
        if self.rule.is_some() {
            return None;
        }
        Some(Attempt { at, src: self.src.ip(), dst: self.dst.ip(), monitor: self.action.is_monitor() })
    }
}
