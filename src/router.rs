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

use crate::packet::{self, reply, Fragment, IcmpError, PacketView, Transport};
use crate::policy::pipeline::Outcome;
use crate::policy::{Action, Decision, Policy, RuleContext, RuleVerdict};

mod counters;
mod trace;

pub use counters::{Counter, Counters, DropReason, ReplyKind};
use trace::verdict_text;
pub use trace::{describe_view, NoTrace, Trace, TraceStep, Tracer};

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
