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
use std::sync::Arc;
use std::time::Instant;

use crate::packet::nat::{self, End};
use crate::packet::{self, reply, Fragment, IcmpError, PacketView, Transport};
use crate::policy::conntrack::CtError;
use crate::policy::pipeline::Outcome;
use crate::policy::{Action, Decision, Policy, RuleContext, RuleVerdict};

mod counters;
mod trace;

pub use counters::{Counter, Counters, DropReason, ReplyKind};
use trace::verdict_text;
pub use trace::{describe_view, NoTrace, Trace, TraceStep, Tracer};

/// Later fragments must start at least this many 8-byte units in. A real
/// fragmenter never cuts a first fragment this short (IPv6 needs 1280-byte
/// links, IPv4 links below 148 bytes do not exist), while a later fragment this
/// close to the start could overwrite the transport header of the first: up to
/// 60 bytes of TCP header behind up to 68 bytes of AH (RFC 1858, RFC 3128).
pub const MIN_LATER_FRAGMENT_OFFSET: u16 = 16;

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

    pub(crate) fn index(self) -> usize {
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

/// What the device said about a packet it handed over with offload.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RxInfo {
    /// Segment payload size of a GSO super-packet (`None` for a plain packet).
    pub gso_size: Option<u16>,
    /// The transport checksum is partial (the kernel completes it on the way
    /// out): address rewrites must update it in the partial form.
    pub csum_partial: bool,
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
    /// Hand the packet to the banner responder (the `banner` action): it is
    /// part of a blocked connection that op25b terminates itself.
    Terminate,
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
        Router { policy, counters: Arc::default() }
    }

    /// The counters, shareable with a reader.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The policy in force, shared.
    pub fn policy_arc(&self) -> &Arc<Policy> {
        &self.policy
    }

    /// Puts another policy in force (a config reload); the counters go on.
    pub fn set_policy(&mut self, policy: Arc<Policy>) {
        self.policy = policy;
    }

    /// Handles one packet that arrived travelling in `dir`. `buf` holds exactly
    /// the bytes read from the device and may be rewritten in place; `reply`
    /// receives a reply packet: 1280 bytes hold every reply but an echo reply,
    /// which is the size of its request (a smaller buffer drops larger pings).
    pub fn handle(&mut self, now: Instant, dir: Direction, buf: &mut [u8], reply: &mut [u8]) -> Verdict {
        self.handle_offloaded(now, dir, buf, reply, RxInfo::default())
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
        let rx = RxInfo { gso_size: Some(gso_size), csum_partial: true };
        self.handle_offloaded(now, dir, buf, reply, rx)
    }

    /// Like [`Router::handle`] for a packet read from an offload-enabled
    /// device, with what its virtio-net header says ([`RxInfo`]).
    pub fn handle_offloaded(
        &mut self,
        now: Instant,
        dir: Direction,
        buf: &mut [u8],
        reply: &mut [u8],
        rx: RxInfo,
    ) -> Verdict {
        let verdict = self.decide(now, dir, buf, reply, rx, &mut NoTrace);
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
        let verdict = self.decide(now, dir, buf, reply, RxInfo::default(), &mut trace);
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
            Verdict::Terminate => c.terminated.add(1),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn decide<T: Tracer>(
        &mut self,
        now: Instant,
        dir: Direction,
        buf: &mut [u8],
        reply: &mut [u8],
        rx: RxInfo,
        t: &mut T,
    ) -> Verdict {
        let mut view = match PacketView::parse(buf) {
            Ok(v) => v,
            Err(e) => {
                t.note("parse", || format!("malformed: {e}"));
                return Verdict::Drop(e.into());
            }
        };
        t.note("parse", || describe_view(&view));
        let policy = &*self.policy;

        if is_martian(view.src, view.dst) {
            t.note("sanity", || "martian address (loopback, multicast, link-local, unspecified ...)".into());
            return Verdict::Drop(DropReason::Martian);
        }
        let from_subscriber_space = policy.subscriber_prefixes.contains(view.src);
        if from_subscriber_space != (dir == Direction::Outbound) {
            t.note("anti-spoofing", || match dir {
                Direction::Outbound => {
                    format!("drop: source {} is outside subscriber.prefixes", view.src)
                }
                Direction::Inbound => format!("drop: source {} from upstream claims a subscriber prefix", view.src),
            });
            return Verdict::Drop(DropReason::Spoofed);
        }
        t.note("anti-spoofing", || match dir {
            Direction::Outbound => format!("pass: source {} is in subscriber.prefixes", view.src),
            Direction::Inbound => format!("pass: source {} is not a subscriber address", view.src),
        });
        if matches!(view.fragment, Fragment::Later { offset } if offset < MIN_LATER_FRAGMENT_OFFSET) {
            t.note("fragments", || {
                "drop: later fragment inside the first 128 bytes (could overwrite the transport header, RFC 1858)"
                    .into()
            });
            return Verdict::Drop(DropReason::FragmentOverlap);
        }
        if view.source_routed {
            t.note("source route", || {
                "drop: source routing (IPv4 LSRR/SSRR, IPv6 routing header with segments left)".into()
            });
            return Verdict::Drop(DropReason::SourceRouted);
        }
        if self.own_address(view.src) == Some(view.src) {
            t.note("anti-spoofing", || "drop: source is the router's own address".into());
            return Verdict::Drop(DropReason::Spoofed);
        }

        let own = self.own_address(view.dst);
        if own == Some(view.dst) {
            t.note("local", || "addressed to the router".into());
            if !reply::echo_allowed(&view) {
                return Verdict::Drop(DropReason::Local);
            }
            let v = view;
            return self.answer(
                now,
                &v,
                ReplyKind::EchoReply,
                |out| reply::echo_reply(&v, buf, out),
                reply,
                DropReason::Local,
            );
        }

        if view.ttl <= 1 {
            t.note("ttl", || format!("expired (ttl {})", view.ttl));
            return self.icmp(
                now,
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
            t.note("op25b", || match decision {
                Decision::Block => {
                    format!("{} -> action {}", decision.describe(), policy.op25b.action)
                }
                _ => decision.describe().to_string(),
            });
            if decision == Decision::Block {
                self.counters.op25b_blocked.add(1);
                match self.blocked(now, &mut view, buf, reply, rx) {
                    Some(verdict) => return verdict,
                    None => t.note("redirect", || format!("sent to {}:{}", view.dst, view.tcp_dst_port().unwrap_or(0))),
                }
            }
        } else {
            if policy.op25b.blocks_inbound(&view) {
                t.note("ip25b", || "drop: new inbound connection to a blocked port of a dynamic address".into());
                return Verdict::Drop(DropReason::Ip25bBlocked);
            }
            if policy.op25b.action == Action::Redirect && self.unredirect(now, &mut view, buf, rx) {
                t.note("redirect", || format!("reply from the relay, source restored to {}", view.src));
            } else {
                t.note("op25b", || "pass: inbound traffic is not subject to OP25B".into());
            }
        }

        if !policy.rules.is_empty() {
            let cx = RuleContext { direction: dir, now };
            let outcome = if T::ON { self.trace_rules(&view, &cx, t) } else { policy.rules.evaluate(&view, &cx) };
            match outcome.verdict {
                RuleVerdict::NoMatch | RuleVerdict::Continue | RuleVerdict::Accept => {}
                RuleVerdict::Drop => return Verdict::Drop(DropReason::RuleDrop),
                RuleVerdict::Limited => return Verdict::Drop(DropReason::RateLimited),
                RuleVerdict::Reject => {
                    let v = view;
                    let tcp = v.protocol == packet::proto::TCP;
                    let answerable = if tcp { reply::rst_allowed(&v) } else { reply::icmp_allowed(&v) };
                    if !answerable {
                        return Verdict::Drop(DropReason::RuleReject);
                    }
                    if tcp {
                        return self.answer(
                            now,
                            &v,
                            ReplyKind::TcpRst,
                            |out| reply::tcp_rst(&v, out),
                            reply,
                            DropReason::RuleReject,
                        );
                    }
                    return self.icmp(
                        now,
                        IcmpError::Prohibited,
                        &v,
                        buf,
                        reply,
                        ReplyKind::Prohibited,
                        DropReason::RuleReject,
                    );
                }
            }
        }

        let mtu = policy.egress_mtu(dir);
        // What goes on the wire: the packet, or one segment of a super-packet.
        let wire_len = match (rx.gso_size, view.transport) {
            (Some(g), Transport::Tcp { header_len, .. }) => view.l4_offset + usize::from(header_len) + usize::from(g),
            (Some(g), Transport::Udp { .. }) => view.l4_offset + 8 + usize::from(g),
            _ => view.len,
        };
        if wire_len > usize::from(mtu) {
            t.note("mtu", || format!("{} bytes exceed the egress MTU {mtu}", view.len));
            if !view.dont_fragment {
                return Verdict::Drop(DropReason::TooBig);
            }
            return self.icmp(now, IcmpError::TooBig { mtu }, &view, buf, reply, ReplyKind::TooBig, DropReason::TooBig);
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
                t.note("rule", || format!("#{} {}: no match ({field})", i + 1, r.name()));
                continue;
            }
            let v = r.evaluate(view, cx);
            t.note("rule", || format!("#{} {}: {}", i + 1, r.name(), verdict_text(v)));
            if v.is_final() {
                return Outcome { verdict: v, rule: Some(i) };
            }
        }
        t.note("rules", || "no final verdict: default forward".into());
        Outcome { verdict: RuleVerdict::Continue, rule: None }
    }

    /// The router's address of the same family as `addr`.
    fn own_address(&self, addr: IpAddr) -> Option<IpAddr> {
        match addr {
            IpAddr::V4(_) => self.policy.address_v4.map(IpAddr::V4),
            IpAddr::V6(_) => self.policy.address_v6.map(IpAddr::V6),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn icmp(
        &self,
        now: Instant,
        err: IcmpError,
        view: &PacketView,
        buf: &[u8],
        reply: &mut [u8],
        kind: ReplyKind,
        otherwise: DropReason,
    ) -> Verdict {
        let Some(from) = self.own_address(view.src) else {
            return Verdict::Drop(otherwise);
        };
        // Spend a token only on a reply that may be sent at all.
        if !reply::icmp_allowed(view) {
            return Verdict::Drop(otherwise);
        }
        self.answer(now, view, kind, |out| reply::icmp_error(err, view, buf, from, out), reply, otherwise)
    }

    /// Builds a reply to `view`'s source if the reply limit allows.
    fn answer(
        &self,
        now: Instant,
        view: &PacketView,
        kind: ReplyKind,
        build: impl FnOnce(&mut [u8]) -> Option<usize>,
        reply: &mut [u8],
        otherwise: DropReason,
    ) -> Verdict {
        if !self.policy.runtime.allow_reply(view.src, now) {
            return Verdict::Drop(DropReason::ReplyRateLimited);
        }
        match build(reply) {
            Some(len) => Verdict::Reply { len, kind },
            None => Verdict::Drop(otherwise),
        }
    }

    /// A packet the OP25B fast path blocked: the action's verdict, or `None`
    /// when it was redirected (rewritten in place) and goes on to be forwarded.
    fn blocked(
        &self,
        now: Instant,
        view: &mut PacketView,
        buf: &mut [u8],
        reply: &mut [u8],
        rx: RxInfo,
    ) -> Option<Verdict> {
        let op = &self.policy.op25b;
        let blocked = Verdict::Drop(DropReason::Op25bBlocked);
        let syn = view.is_tcp_syn();
        let view_ro = *view;
        Some(match op.action {
            Action::Drop => blocked,
            Action::Reject if syn => self.answer(
                now,
                &view_ro,
                ReplyKind::TcpRst,
                |out| reply::tcp_rst(&view_ro, out),
                reply,
                DropReason::Op25bBlocked,
            ),
            Action::Icmp if syn => match self.own_address(view.src) {
                Some(from) => self.answer(
                    now,
                    &view_ro,
                    ReplyKind::Prohibited,
                    |out| reply::icmp_error(IcmpError::Prohibited, &view_ro, buf, from, out),
                    reply,
                    DropReason::Op25bBlocked,
                ),
                None => blocked,
            },
            Action::Reject | Action::Icmp => blocked,
            // Banner sessions are terminated by the data plane's responder,
            // which sees these packets through `Verdict::Terminate`.
            Action::Banner => return Some(self.terminate(now, &view_ro, reply)),
            Action::Redirect => return self.redirect(now, view, buf, rx),
        })
    }

    /// The banner action: hand the packet to the responder. A new session
    /// (a SYN) spends a reply token like an RST would.
    fn terminate(&self, now: Instant, view: &PacketView, reply: &mut [u8]) -> Verdict {
        if view.fragment != Fragment::Whole {
            return Verdict::Drop(DropReason::Op25bBlocked);
        }
        if view.is_tcp_syn() {
            let (owned, held) = self.policy.runtime.responder().map_or((false, 0), |mut r| {
                // Sessions past their SYN-RECEIVED limit must not count.
                r.expire(now);
                (r.owns(view), r.sessions_of(view.src))
            });
            if owned {
                // A repeated SYN of a session in progress: smoltcp ignores a
                // SYN past LISTEN, but another listening socket would take it
                // and answer, outside the reply limit and the subscriber's share.
                return Verdict::Drop(DropReason::Op25bBlocked);
            }
            if held >= self.policy.op25b.banner.per_source {
                // Its share of the sessions is taken: refused like a SYN over
                // the global bound, with an RST (a reply token).
                self.counters.banner_source_full.add(1);
                let rst = |o: &mut [u8]| reply::tcp_rst(view, o);
                return self.answer(now, view, ReplyKind::TcpRst, rst, reply, DropReason::Op25bBlocked);
            }
            if !self.policy.runtime.allow_reply(view.src, now) {
                return Verdict::Drop(DropReason::ReplyRateLimited);
            }
        } else if !self.policy.runtime.responder().is_some_and(|mut r| r.owns(view)) {
            // (A session that expires between this check and the responder's
            // input is caught there: `input` expires and checks again.)
            // Not part of a session: answering it (smoltcp would send an RST)
            // would be a reply outside the rate limit.
            return Verdict::Drop(DropReason::Op25bBlocked);
        }
        Verdict::Terminate
    }

    /// Destination NAT of a blocked flow to the relay.
    fn redirect(&self, now: Instant, view: &mut PacketView, buf: &mut [u8], rx: RxInfo) -> Option<Verdict> {
        let Some(target) = self.policy.op25b.redirect_target(view.dst) else {
            return Some(Verdict::Drop(DropReason::Op25bBlocked));
        };
        if view.fragment != Fragment::Whole {
            return Some(Verdict::Drop(DropReason::Op25bBlocked));
        }
        let runtime = &self.policy.runtime;
        let mut ct = runtime.conntrack();
        if ct.is_new(view, now) && !runtime.allow_reply(view.src, now) {
            return Some(Verdict::Drop(DropReason::ReplyRateLimited));
        }
        match ct.outbound(view, target, now) {
            Ok(to) => {
                drop(ct);
                if !nat::rewrite(buf, view, End::Destination, to, rx.csum_partial) {
                    return Some(Verdict::Drop(DropReason::Op25bBlocked));
                }
                view.dst = to.ip();
                if let Transport::Tcp { dst_port, .. } = &mut view.transport {
                    *dst_port = to.port();
                }
                self.counters.redirected.add(1);
                None
            }
            Err(CtError::NoFlow) => Some(Verdict::Drop(DropReason::Op25bBlocked)),
            Err(CtError::Full) => Some(Verdict::Drop(DropReason::ConntrackFull)),
            Err(CtError::SourceFull) => Some(Verdict::Drop(DropReason::ConntrackSourceFull)),
            Err(CtError::Collision) => Some(Verdict::Drop(DropReason::RedirectCollision)),
        }
    }

    /// A packet from a redirect target: if it belongs to a redirected flow, put
    /// the original destination back as its source. True when rewritten.
    fn unredirect(&self, now: Instant, view: &mut PacketView, buf: &mut [u8], rx: RxInfo) -> bool {
        let op = &self.policy.op25b;
        let from_target = match (view.transport, op.redirect_target(view.src)) {
            (Transport::Tcp { src_port, .. }, Some(t)) => t.ip() == view.src && t.port() == src_port,
            _ => false,
        };
        if !from_target {
            return false;
        }
        let Some(original) = self.policy.runtime.conntrack().inbound(view, now) else {
            return false;
        };
        if !nat::rewrite(buf, view, End::Source, original, rx.csum_partial) {
            return false;
        }
        view.src = original.ip();
        if let Transport::Tcp { src_port, .. } = &mut view.transport {
            *src_port = original.port();
        }
        true
    }
}

/// Addresses a router never forwards from or to (RFC 1812 5.3.7, RFC 4291 2.5.6).
#[inline]
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

#[cfg(test)]
mod tests_actions;
