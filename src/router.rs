//! The router core: sans-I/O, no clock reads, no allocation per packet.
//!
//! [`Router::handle`] takes the time, the direction and the packet bytes, and
//! returns a [`Verdict`]: forward the (rewritten) packet, send back a reply it
//! built into the caller's buffer, or drop it for a reason. Every verdict bumps
//! exactly one counter in [`Counters`].
//!
//! Order of checks: parse -> martians -> anti-spoofing -> fragment sanity ->
//! addressed to the router -> TTL -> OP25B -> MTU -> forward (TTL-1).

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::packet::{self, reply, Fragment, IcmpError, PacketView, ParseError};
use crate::policy::{Action, Decision, Policy};

/// Which way a packet travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the subscriber side to the upstream side.
    Outbound,
    /// From the upstream side to the subscriber side.
    Inbound,
}

impl Direction {
    /// Both directions, in counter order.
    pub const ALL: [Direction; 2] = [Direction::Outbound, Direction::Inbound];

    fn index(self) -> usize {
        self as usize
    }

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

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
        /// TCP fragment at offset 1, which could rewrite the TCP flags (RFC 1858).
        FragmentOverlap => "fragment_overlap",
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

/// What to do with a packet.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send `buf[..len]` (already rewritten) out of the other device.
    Forward {
        /// Length of the packet to send.
        len: usize,
    },
    /// Send `reply[..len]` back out of the device the packet came from.
    Reply {
        /// Length of the reply.
        len: usize,
        /// What the reply is.
        kind: ReplyKind,
    },
    /// Discard the packet.
    Drop(DropReason),
}

/// A monotonically increasing counter with a single writer (the worker that owns
/// the router) and any number of readers. The writer's increment is a plain
/// load + store, not a locked read-modify-write, which keeps it off the
/// fast path's cost.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
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
    /// Packets the OP25B fast path blocked (answered or dropped).
    pub op25b_blocked: Counter,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            forwarded: Default::default(),
            forwarded_bytes: Default::default(),
            dropped: std::array::from_fn(|_| Counter::default()),
            replies: Default::default(),
            op25b_blocked: Counter::default(),
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

/// The router: a policy plus counters. One per worker; the policy is shared.
#[derive(Debug)]
pub struct Router {
    policy: Arc<Policy>,
    counters: Arc<Counters>,
}

impl Router {
    /// A router enforcing `policy`, with fresh counters.
    pub fn new(policy: Arc<Policy>) -> Router {
        Router {
            policy,
            counters: Arc::default(),
        }
    }

    /// The counters, shareable with a reader.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Handles one packet that arrived travelling in `dir`. `buf` holds exactly
    /// the bytes read from the device and may be rewritten in place; `reply`
    /// receives a reply packet (1280 bytes are always enough).
    pub fn handle(
        &mut self,
        now: Instant,
        dir: Direction,
        buf: &mut [u8],
        reply: &mut [u8],
    ) -> Verdict {
        let verdict = self.decide(now, dir, buf, reply);
        let c = &self.counters;
        match verdict {
            Verdict::Forward { len } => {
                c.forwarded[dir.index()].add(1);
                c.forwarded_bytes[dir.index()].add(len as u64);
            }
            Verdict::Reply { kind, .. } => c.replies[kind as usize].add(1),
            Verdict::Drop(reason) => c.dropped[reason as usize].add(1),
        }
        verdict
    }

    fn decide(
        &mut self,
        _now: Instant,
        dir: Direction,
        buf: &mut [u8],
        reply: &mut [u8],
    ) -> Verdict {
        let view = match PacketView::parse(buf) {
            Ok(v) => v,
            Err(e) => return Verdict::Drop(e.into()),
        };
        let policy = &*self.policy;

        if is_martian(view.src, view.dst) {
            return Verdict::Drop(DropReason::Martian);
        }
        let from_subscriber_space = policy.subscriber_prefixes.contains(view.src);
        if from_subscriber_space != (dir == Direction::Outbound) {
            return Verdict::Drop(DropReason::Spoofed);
        }
        if view.protocol == packet::proto::TCP && view.fragment == (Fragment::Later { offset: 1 }) {
            return Verdict::Drop(DropReason::FragmentOverlap);
        }

        let own = self.own_address(view.dst);
        if own == Some(view.dst) {
            return match reply::echo_reply(&view, buf, reply) {
                Some(len) => Verdict::Reply {
                    len,
                    kind: ReplyKind::EchoReply,
                },
                None => Verdict::Drop(DropReason::Local),
            };
        }

        if view.ttl <= 1 {
            return self.icmp(
                IcmpError::TimeExceeded,
                &view,
                buf,
                reply,
                ReplyKind::TimeExceeded,
                DropReason::TtlExpired,
            );
        }

        if dir == Direction::Outbound {
            let decision = policy.op25b.judge(&view);
            if decision == Decision::Block {
                self.counters.op25b_blocked.add(1);
                if policy.op25b.action == Action::Reject && view.is_tcp_syn() {
                    if let Some(len) = reply::tcp_rst(&view, reply) {
                        return Verdict::Reply {
                            len,
                            kind: ReplyKind::TcpRst,
                        };
                    }
                }
                return Verdict::Drop(DropReason::Op25bBlocked);
            }
        }

        let mtu = policy.egress_mtu(dir);
        if view.len > usize::from(mtu) {
            if !view.dont_fragment {
                return Verdict::Drop(DropReason::TooBig);
            }
            return self.icmp(
                IcmpError::TooBig { mtu },
                &view,
                buf,
                reply,
                ReplyKind::TooBig,
                DropReason::TooBig,
            );
        }

        packet::decrement_ttl(&view, buf);
        Verdict::Forward { len: view.len }
    }

    /// The router's address of the same family as `addr`.
    fn own_address(&self, addr: IpAddr) -> Option<IpAddr> {
        match addr {
            IpAddr::V4(_) => self.policy.address_v4.map(IpAddr::V4),
            IpAddr::V6(_) => self.policy.address_v6.map(IpAddr::V6),
        }
    }

    fn icmp(
        &self,
        err: IcmpError,
        view: &PacketView,
        buf: &[u8],
        reply: &mut [u8],
        kind: ReplyKind,
        otherwise: DropReason,
    ) -> Verdict {
        let built = self
            .own_address(view.src)
            .and_then(|from| reply::icmp_error(err, view, buf, from, reply));
        match built {
            Some(len) => Verdict::Reply { len, kind },
            None => Verdict::Drop(otherwise),
        }
    }
}

/// Addresses a router never forwards from or to (RFC 1812 5.3.7, RFC 4291 2.5.6).
fn is_martian(src: IpAddr, dst: IpAddr) -> bool {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            !reply::is_unicast_host(src)
                || s.is_link_local()
                || d.is_unspecified()
                || d.is_loopback()
                || d.is_link_local()
                || d.is_multicast()
                || d.is_broadcast()
                || d.octets()[0] == 0
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            !reply::is_unicast_host(src)
                || s.is_unicast_link_local()
                || d.is_unspecified()
                || d.is_loopback()
                || d.is_unicast_link_local()
                || d.to_ipv4_mapped().is_some()
                // Multicast beyond link scope is never routed by this router.
                || d.is_multicast()
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests;
