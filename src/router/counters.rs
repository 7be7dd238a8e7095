//! Counters: drop reasons, reply kinds, and the per-router counters that
//! every verdict bumps exactly once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::Direction;
use crate::packet::ParseError;

macro_rules! reasons {
    ($(#[$m:meta])* pub enum $name:ident { $($(#[$vm:meta])* $v:ident => $s:literal,)* }) => {
        $(#[$m])*
        pub enum $name { $($(#[$vm])* $v,)* }
        impl $name {
            /// Every variant, in counter order.
            pub const ALL: &'static [$name] = &[$($name::$v,)*];
            /// Number of variants.
            pub const COUNT: usize = $name::ALL.len();
            /// Stable snake_case name, used for counters and logs.
            pub fn name(self) -> &'static str {
                match self { $($name::$v => $s,)* }
            }
        }
    };
}

reasons! {
    /// Why a packet was dropped. Each reason is one counter.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum DropReason {
        /// Shorter than its headers.
        Truncated => "truncated",
        /// IP version neither 4 nor 6.
        BadVersion => "bad_version",
        /// IPv4 IHL or TCP data offset below 5.
        BadHeaderLen => "bad_header_len",
        /// Total / payload length beyond the buffer or below the header.
        BadTotalLen => "bad_total_len",
        /// Wrong IPv4 header checksum.
        BadChecksum => "bad_checksum",
        /// Malformed or too long IPv6 extension-header chain.
        BadExtHeader => "bad_ext_header",
        /// First fragment too short for the TCP header (RFC 1858, RFC 7112).
        TinyFragment => "tiny_fragment",
        /// Later fragment within the first 128 bytes, which could rewrite the
        /// first fragment's transport header (RFC 1858).
        FragmentOverlap => "fragment_overlap",
        /// Source-routed packet (IPv4 LSRR/SSRR, IPv6 routing header with
        /// segments left): its real destination is not the one judged.
        SourceRouted => "source_routed",
        /// Source not allowed on the side it arrived from (BCP 38).
        Spoofed => "spoofed",
        /// Source or destination that is never routed (loopback, multicast source,
        /// link-local, unspecified, ...).
        Martian => "martian",
        /// TTL / hop limit expired where no ICMP error may be sent.
        TtlExpired => "ttl_expired",
        /// Larger than the egress MTU where no ICMP error may be sent, or IPv4
        /// without DF (the router does not fragment).
        TooBig => "too_big",
        /// Blocked by OP25B and not answered.
        Op25bBlocked => "op25b_blocked",
        /// Addressed to the router itself and not an echo request.
        Local => "local",
        /// A new inbound connection to a blocked port of a dynamic address (IP25B).
        Ip25bBlocked => "ip25b_blocked",
        /// A reply (RST, ICMP, echo reply, banner session, redirect) over the
        /// per-address reply limit.
        ReplyRateLimited => "reply_rate_limited",
        /// A new redirected connection while the flow table is full.
        ConntrackFull => "conntrack_full",
        /// A new redirected connection from a subscriber that holds its share
        /// of the flow table (`max_flows_per_source`).
        ConntrackSourceFull => "conntrack_source_full",
        /// A redirected connection reusing a subscriber port that is redirected
        /// for another destination.
        RedirectCollision => "redirect_collision",
        /// Dropped by a rule.
        RuleDrop => "rule_drop",
        /// Rejected by a rule where no reply may be sent.
        RuleReject => "rule_reject",
        /// Over a rule's rate limit.
        RateLimited => "rate_limited",
    }
}

reasons! {
    /// The replies the router builds. Each kind is one counter.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum ReplyKind {
        /// TCP RST for a blocked SYN.
        TcpRst => "tcp_rst",
        /// ICMP / ICMPv6 time exceeded.
        TimeExceeded => "time_exceeded",
        /// ICMP fragmentation needed / ICMPv6 packet too big.
        TooBig => "too_big",
        /// Echo reply from the router's own address.
        EchoReply => "echo_reply",
        /// ICMP / ICMPv6 administratively prohibited, for a rule's reject.
        Prohibited => "prohibited",
    }
}

impl From<ParseError> for DropReason {
    fn from(e: ParseError) -> DropReason {
        match e {
            ParseError::Truncated => DropReason::Truncated,
            ParseError::BadVersion => DropReason::BadVersion,
            ParseError::BadHeaderLen => DropReason::BadHeaderLen,
            ParseError::BadTotalLen => DropReason::BadTotalLen,
            ParseError::BadChecksum => DropReason::BadChecksum,
            ParseError::BadExtHeader => DropReason::BadExtHeader,
            ParseError::TinyFragment => DropReason::TinyFragment,
        }
    }
}

/// A monotonically increasing counter with a single writer (the worker that owns
/// the router) and any number of readers. The writer's increment is a plain
/// load + store, not a locked read-modify-write, which keeps it off the
/// fast path's cost.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub(crate) fn add(&self, n: u64) {
        self.0.store(self.0.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counters of one router (one worker).
#[derive(Debug)]
pub struct Counters {
    /// Packets forwarded, by direction.
    pub forwarded: [Counter; 2],
    /// Bytes forwarded, by direction.
    pub forwarded_bytes: [Counter; 2],
    /// Drops, by [`DropReason`].
    pub dropped: [Counter; DropReason::COUNT],
    /// Replies sent, by [`ReplyKind`].
    pub replies: [Counter; ReplyKind::COUNT],
    /// Packets the OP25B fast path blocked (answered, dropped, redirected or terminated).
    pub op25b_blocked: Counter,
    /// Packets of blocked flows rewritten towards the relay (redirect).
    pub redirected: Counter,
    /// Packets handed to the banner responder.
    pub terminated: Counter,
    /// Banner SYNs refused because their subscriber holds its share of the
    /// sessions (`banner_sessions_per_source`); each is also counted by its
    /// verdict (an RST reply, or a drop over the reply limit).
    pub banner_source_full: Counter,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            forwarded: Default::default(),
            forwarded_bytes: Default::default(),
            dropped: std::array::from_fn(|_| Counter::default()),
            replies: Default::default(),
            op25b_blocked: Counter::default(),
            redirected: Counter::default(),
            terminated: Counter::default(),
            banner_source_full: Counter::default(),
        }
    }
}

impl Counters {
    /// Packets forwarded in `dir`.
    pub fn forwarded(&self, dir: Direction) -> u64 {
        self.forwarded[dir.index()].get()
    }

    /// Drops for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize].get()
    }

    /// Replies of `kind`.
    pub fn replies(&self, kind: ReplyKind) -> u64 {
        self.replies[kind as usize].get()
    }

    /// A snapshot as (name, value) pairs with non-zero values, for logs.
    pub fn summary(all: &[Arc<Counters>]) -> Vec<(String, u64)> {
        let sum = |f: &dyn Fn(&Counters) -> u64| all.iter().map(|c| f(c)).sum::<u64>();
        let mut out = Vec::new();
        for d in Direction::ALL {
            out.push((format!("forwarded_{}", d.name()), sum(&|c| c.forwarded(d))));
        }
        out.push(("op25b_blocked".to_string(), sum(&|c| c.op25b_blocked.get())));
        out.push(("op25b_redirected".to_string(), sum(&|c| c.redirected.get())));
        out.push(("op25b_terminated".to_string(), sum(&|c| c.terminated.get())));
        out.push(("op25b_banner_source_full".to_string(), sum(&|c| c.banner_source_full.get())));
        for k in ReplyKind::ALL {
            out.push((format!("reply_{}", k.name()), sum(&|c| c.replies(*k))));
        }
        for r in DropReason::ALL {
            out.push((format!("drop_{}", r.name()), sum(&|c| c.dropped(*r))));
        }
        out.retain(|(_, v)| *v > 0);
        out
    }
}
