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

use crate::packet::{self, reply, Fragment, IcmpError, PacketView, ParseError, Transport};
use crate::policy::pipeline::Outcome;
use crate::policy::rules::protocol_name;
use crate::policy::{Action, Decision, Policy, RuleContext, RuleVerdict};

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
        let verdict = self.decide(now, dir, buf, reply, None, &mut NoTrace);
        self.count(dir, verdict);
        verdict
    }

    /// Like [`Router::handle`] for a GSO super-packet from an offload-enabled
    /// device: `buf` holds up to 64 KiB that the kernel will cut into segments
    /// of `gso_size` payload bytes. Everything is judged on the headers, which
    /// every segment shares; only the MTU check uses the segment size.
    pub fn handle_gso(
        &mut self,
        now: Instant,
        dir: Direction,
        buf: &mut [u8],
        reply: &mut [u8],
        gso_size: u16,
    ) -> Verdict {
        let verdict = self.decide(now, dir, buf, reply, Some(gso_size), &mut NoTrace);
        self.count(dir, verdict);
        verdict
    }

    /// Like [`Router::handle`], and also records each step of the decision
    /// (for `op25b check --packet` and `replay`).
    pub fn handle_traced(
        &mut self,
        now: Instant,
        dir: Direction,
        buf: &mut [u8],
        reply: &mut [u8],
    ) -> (Verdict, Trace) {
        let mut trace = Trace::default();
        let verdict = self.decide(now, dir, buf, reply, None, &mut trace);
        self.count(dir, verdict);
        (verdict, trace)
    }

    #[inline]
    fn count(&self, dir: Direction, verdict: Verdict) {
        let c = &self.counters;
        match verdict {
            Verdict::Forward { len } => {
                c.forwarded[dir.index()].add(1);
                c.forwarded_bytes[dir.index()].add(len as u64);
            }
            Verdict::Reply { kind, .. } => c.replies[kind as usize].add(1),
            Verdict::Drop(reason) => c.dropped[reason as usize].add(1),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn decide<T: Tracer>(
        &mut self,
        now: Instant,
        dir: Direction,
        buf: &mut [u8],
        reply: &mut [u8],
        gso_size: Option<u16>,
        t: &mut T,
    ) -> Verdict {
        let view = match PacketView::parse(buf) {
            Ok(v) => v,
            Err(e) => {
                t.note("parse", || format!("malformed: {e}"));
                return Verdict::Drop(e.into());
            }
        };
        t.note("parse", || describe_view(&view));
        let policy = &*self.policy;

        if is_martian(view.src, view.dst) {
            t.note("sanity", || {
                "martian address (loopback, multicast, link-local, unspecified ...)".into()
            });
            return Verdict::Drop(DropReason::Martian);
        }
        let from_subscriber_space = policy.subscriber_prefixes.contains(view.src);
        if from_subscriber_space != (dir == Direction::Outbound) {
            t.note("anti-spoofing", || match dir {
                Direction::Outbound => {
                    format!("drop: source {} is outside subscriber.prefixes", view.src)
                }
                Direction::Inbound => format!(
                    "drop: source {} from upstream claims a subscriber prefix",
                    view.src
                ),
            });
            return Verdict::Drop(DropReason::Spoofed);
        }
        t.note("anti-spoofing", || match dir {
            Direction::Outbound => format!("pass: source {} is in subscriber.prefixes", view.src),
            Direction::Inbound => format!("pass: source {} is not a subscriber address", view.src),
        });
        if view.protocol == packet::proto::TCP && view.fragment == (Fragment::Later { offset: 1 }) {
            t.note("fragments", || {
                "drop: TCP fragment at offset 1 (RFC 1858)".into()
            });
            return Verdict::Drop(DropReason::FragmentOverlap);
        }

        let own = self.own_address(view.dst);
        if own == Some(view.dst) {
            t.note("local", || "addressed to the router".into());
            return match reply::echo_reply(&view, buf, reply) {
                Some(len) => Verdict::Reply {
                    len,
                    kind: ReplyKind::EchoReply,
                },
                None => Verdict::Drop(DropReason::Local),
            };
        }

        if view.ttl <= 1 {
            t.note("ttl", || format!("expired (ttl {})", view.ttl));
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
            t.note("op25b", || decision.describe().to_string());
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
        } else {
            t.note("op25b", || {
                "pass: inbound traffic is not subject to OP25B".into()
            });
        }

        if !policy.rules.is_empty() {
            let cx = RuleContext {
                direction: dir,
                now,
            };
            let outcome = if T::ON {
                self.trace_rules(&view, &cx, t)
            } else {
                policy.rules.evaluate(&view, &cx)
            };
            match outcome.verdict {
                RuleVerdict::NoMatch | RuleVerdict::Continue | RuleVerdict::Accept => {}
                RuleVerdict::Drop => return Verdict::Drop(DropReason::RuleDrop),
                RuleVerdict::Limited => return Verdict::Drop(DropReason::RateLimited),
                RuleVerdict::Reject => {
                    let built = if view.protocol == packet::proto::TCP {
                        reply::tcp_rst(&view, reply).map(|len| Verdict::Reply {
                            len,
                            kind: ReplyKind::TcpRst,
                        })
                    } else {
                        self.own_address(view.src)
                            .and_then(|from| {
                                reply::icmp_error(IcmpError::Prohibited, &view, buf, from, reply)
                            })
                            .map(|len| Verdict::Reply {
                                len,
                                kind: ReplyKind::Prohibited,
                            })
                    };
                    return built.unwrap_or(Verdict::Drop(DropReason::RuleReject));
                }
            }
        }

        let mtu = policy.egress_mtu(dir);
        // What goes on the wire: the packet, or one segment of a super-packet.
        let wire_len = match (gso_size, view.transport) {
            (Some(g), Transport::Tcp { header_len, .. }) => {
                view.l4_offset + usize::from(header_len) + usize::from(g)
            }
            (Some(g), Transport::Udp { .. }) => view.l4_offset + 8 + usize::from(g),
            _ => view.len,
        };
        if wire_len > usize::from(mtu) {
            t.note("mtu", || {
                format!("{} bytes exceed the egress MTU {mtu}", view.len)
            });
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

    /// The rules stage of a trace: every rule in order, without the index, with
    /// the field each one failed on.
    fn trace_rules<T: Tracer>(&self, view: &PacketView, cx: &RuleContext, t: &mut T) -> Outcome {
        let rules = &self.policy.rules;
        for (i, slot) in rules.slots().iter().enumerate() {
            let r = &slot.rule;
            if let Some(field) = r.mismatch(view, cx) {
                t.note("rule", || {
                    format!("#{} {}: no match ({field})", i + 1, r.name())
                });
                continue;
            }
            let v = r.evaluate(view, cx);
            t.note("rule", || {
                format!("#{} {}: {}", i + 1, r.name(), verdict_text(v))
            });
            if v.is_final() {
                return Outcome {
                    verdict: v,
                    rule: Some(i),
                };
            }
        }
        t.note("rules", || "no final verdict: default forward".into());
        Outcome {
            verdict: RuleVerdict::Continue,
            rule: None,
        }
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

/// Collects the steps of a decision; the fast path uses [`NoTrace`], which
/// compiles to nothing.
pub trait Tracer {
    /// Whether steps are recorded (lets the caller pick the explaining path).
    const ON: bool;
    /// Records one step; `detail` is only called when recording.
    fn note(&mut self, stage: &'static str, detail: impl FnOnce() -> String);
}

/// The tracer that records nothing.
#[derive(Debug, Default)]
pub struct NoTrace;

impl Tracer for NoTrace {
    const ON: bool = false;
    #[inline(always)]
    fn note(&mut self, _stage: &'static str, _detail: impl FnOnce() -> String) {}
}

/// One step of a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceStep {
    /// The stage: parse, anti-spoofing, op25b, rule, ...
    pub stage: &'static str,
    /// What happened there.
    pub detail: String,
}

/// The steps of one decision, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trace {
    /// The steps.
    pub steps: Vec<TraceStep>,
}

impl Tracer for Trace {
    const ON: bool = true;
    fn note(&mut self, stage: &'static str, detail: impl FnOnce() -> String) {
        self.steps.push(TraceStep {
            stage,
            detail: detail(),
        });
    }
}

fn verdict_text(v: RuleVerdict) -> &'static str {
    match v {
        RuleVerdict::NoMatch => "no match",
        RuleVerdict::Continue => "match, continue",
        RuleVerdict::Accept => "match -> accept",
        RuleVerdict::Drop => "match -> drop",
        RuleVerdict::Reject => "match -> reject",
        RuleVerdict::Limited => "match -> over the rate limit, drop",
    }
}

/// One line describing a parsed packet, for traces.
pub fn describe_view(v: &PacketView) -> String {
    let (sp, dp, extra) = match v.transport {
        Transport::Tcp {
            src_port,
            dst_port,
            flags,
            ..
        } => {
            let names = [
                (0x02, "syn"),
                (0x10, "ack"),
                (0x04, "rst"),
                (0x01, "fin"),
                (0x08, "psh"),
            ];
            let f: Vec<&str> = names
                .iter()
                .filter(|(b, _)| flags & b != 0)
                .map(|(_, n)| *n)
                .collect();
            (
                Some(src_port),
                Some(dst_port),
                format!(" [{}]", f.join(",")),
            )
        }
        Transport::Udp { src_port, dst_port } => (Some(src_port), Some(dst_port), String::new()),
        Transport::Icmp { icmp_type, code } => {
            (None, None, format!(" type {icmp_type} code {code}"))
        }
        Transport::None => (None, None, String::new()),
    };
    let ep = |a: IpAddr, p: Option<u16>| match (a, p) {
        (IpAddr::V6(a), Some(p)) => format!("[{a}]:{p}"),
        (a, Some(p)) => format!("{a}:{p}"),
        (a, None) => a.to_string(),
    };
    let frag = match v.fragment {
        Fragment::Whole => "",
        Fragment::First => " first-fragment",
        Fragment::Later { .. } => " later-fragment",
    };
    format!(
        "{} {} -> {}{} ttl {} len {}{frag}",
        protocol_name(v.protocol),
        ep(v.src, sp),
        ep(v.dst, dp),
        extra,
        v.ttl,
        v.len
    )
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
