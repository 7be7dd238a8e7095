//! Stage 3, OP25B. Outbound: the fast path judges the packet and a blocked
//! one meets the configured action (reject, drop, icmp, banner, redirect).
//! Inbound: IP25B, and the reverse rewrite of redirected flows. A packet
//! without a TCP header may be a tunnel: the tunnel stage (tunnel.rs) judges
//! what it carries, before the quarantine (outbound) and IP25B (inbound).

use std::ops::ControlFlow;

use super::{BlockAction, BlockReply, DropReason, Packet, ReplyKind, Router, Tracer, Verdict};
use crate::packet::nat::{self, End};
use crate::packet::{Direction, Fragment, IcmpError, Transport};
use crate::policy::{Action, Decision};
use crate::state::conntrack::CtError;
use crate::state::responder::Admission;

const BLOCKED: Verdict = Verdict::Drop(DropReason::Op25bBlocked);

impl Router {
    #[inline]
    pub(super) fn op25b<T: Tracer>(&self, p: &mut Packet<'_>, t: &mut T) -> ControlFlow<Verdict> {
        let op = &self.policy.op25b;
        if p.dir == Direction::Inbound {
            return self.inbound(p, t);
        }
        let decision = op.judge(&p.view);
        t.note("op25b", || match decision {
            Decision::Block if op.action == Action::Monitor => {
                format!("{} -> action monitor: would be blocked, forwarded", decision.describe())
            }
            Decision::Block => format!("{} -> action {}", decision.describe(), op.action),
            _ => decision.describe().to_string(),
        });
        if decision != Decision::Block {
            if decision == Decision::PassNotTcp {
                // No TCP header: perhaps a tunnel, whose packets inside are judged.
                self.tunnels(p, t)?;
            }
            return self.quarantine(p, t);
        }
        if op.action == Action::Monitor {
            self.monitor(p, t);
            return self.quarantine(p, t);
        }
        self.counters.op25b_blocked[op.action.index()].add(1);
        let syn = p.view.is_tcp_syn();
        // A connection attempt is its first SYN: retransmissions are answered
        // alike but neither counted as connections nor noted again.
        let first = syn && self.blocked_syn(p, t);
        // The ends as dialled, before a redirect rewrites them.
        let ends = if first { self.ends(&p.view) } else { None };
        let verdict = match op.action {
            Action::Reject if syn => self.rst(p, DropReason::Op25bBlocked),
            Action::Icmp if syn => self.icmp(p, IcmpError::Prohibited, ReplyKind::Prohibited, DropReason::Op25bBlocked),
            Action::Banner => self.banner(p),
            Action::Redirect => match self.redirect(p) {
                ControlFlow::Continue(()) => {
                    t.note("redirect", || format!("sent to {}:{}", p.view.dst, p.view.tcp_dst_port().unwrap_or(0)));
                    if ends.is_some() {
                        self.note_block(ends, BlockAction::Op25b(Action::Redirect), None, BlockReply::Redirect);
                    }
                    return ControlFlow::Continue(());
                }
                ControlFlow::Break(v) => v,
            },
            _ => BLOCKED,
        };
        if ends.is_some() {
            self.note_block(ends, BlockAction::Op25b(op.action), None, BlockReply::of(verdict));
        }
        ControlFlow::Break(verdict)
    }

    /// A blocked SYN: true (and counted) when it starts a connection attempt.
    /// Out of line: the forwarding path that shares `op25b` pays nothing for it.
    #[inline(never)]
    fn blocked_syn<T: Tracer>(&self, p: &Packet<'_>, t: &mut T) -> bool {
        let first = self.first_attempt(p, t);
        if first {
            self.counters.op25b_blocked_connections[self.policy.op25b.action.index()].add(1);
        }
        first
    }

    /// `monitor`: the packet goes on as if OP25B were off; it is counted, and
    /// a SYN that starts a connection attempt is counted as one and noted as
    /// a would-be block (events, abuse tracking).
    #[inline(never)]
    fn monitor<T: Tracer>(&self, p: &Packet<'_>, t: &mut T) {
        self.counters.monitored.add(1);
        if p.view.is_tcp_syn() && self.first_attempt(p, t) {
            self.counters.monitored_connections.add(1);
            let ends = self.ends(&p.view);
            if ends.is_some() {
                self.note_block(ends, BlockAction::Op25b(Action::Monitor), None, BlockReply::None);
            }
        }
    }

    /// Inbound: IP25B, and the relay's side of a redirected flow.
    fn inbound<T: Tracer>(&self, p: &mut Packet<'_>, t: &mut T) -> ControlFlow<Verdict> {
        let op = &self.policy.op25b;
        self.tunnels(p, t)?;
        if op.blocks_inbound(&p.view) {
            t.note("ip25b", || "drop: new inbound connection to a blocked port of a dynamic address".into());
            return ControlFlow::Break(Verdict::Drop(DropReason::Ip25bBlocked));
        }
        if op.action == Action::Redirect && self.unredirect(p) {
            t.note("redirect", || format!("reply from the relay, source restored to {}", p.view.src));
        } else {
            t.note("op25b", || "pass: inbound traffic is not subject to OP25B".into());
        }
        ControlFlow::Continue(())
    }

    /// The banner action: the responder takes the segment (a new session
    /// spends a reply token like an RST would) or it is answered or dropped here.
    fn banner(&self, p: &mut Packet<'_>) -> Verdict {
        if p.view.fragment != Fragment::Whole {
            return BLOCKED;
        }
        let now = p.now;
        let Some(responder) = self.state.responder() else {
            // Offline (`check`, `replay`): no responder to hand the SYN to;
            // report what the data plane would do with it.
            if !p.view.is_tcp_syn() {
                return BLOCKED;
            }
            if !self.state.allow_reply(p.view.src, now) {
                return Verdict::Drop(DropReason::ReplyRateLimited);
            }
            return Verdict::Terminate;
        };
        match responder.segment(now, &p.view, &p.buf[..p.view.len], |to| self.state.allow_reply(to, now)) {
            Admission::Accepted => Verdict::Terminate,
            Admission::NotOwned => BLOCKED,
            Admission::RateLimited => Verdict::Drop(DropReason::ReplyRateLimited),
            Admission::SourceFull => {
                // Its share of the sessions is taken: refused like a SYN over
                // the global bound, with an RST (a reply token).
                self.counters.banner_source_full.add(1);
                self.rst(p, DropReason::Op25bBlocked)
            }
        }
    }

    /// Destination NAT of a blocked flow to the relay; `Continue` when the
    /// packet was rewritten and goes on to be forwarded.
    fn redirect(&self, p: &mut Packet<'_>) -> ControlFlow<Verdict> {
        let drop = |r| ControlFlow::Break(Verdict::Drop(r));
        let Some(target) = self.policy.op25b.redirect_target(p.view.dst) else { return drop(DropReason::Op25bBlocked) };
        if p.view.fragment != Fragment::Whole {
            return drop(DropReason::Op25bBlocked);
        }
        let to = {
            let mut ct = self.state.flows();
            if ct.is_new(&p.view, p.now) && !self.state.allow_reply(p.view.src, p.now) {
                return drop(DropReason::ReplyRateLimited);
            }
            match ct.outbound(&p.view, target, p.now) {
                Ok(r) => {
                    if r.evicted {
                        self.counters.redirect_evictions.add(1);
                    }
                    r.to
                }
                Err(CtError::Full) => return drop(DropReason::ConntrackFull),
                Err(CtError::SourceFull) => return drop(DropReason::ConntrackSourceFull),
                Err(CtError::Collision) => return drop(DropReason::RedirectCollision),
                Err(CtError::NoFlow) => return drop(DropReason::Op25bBlocked),
            }
        };
        if !nat::rewrite(p.buf, &p.view, End::Destination, to, p.rx.csum_partial) {
            return drop(DropReason::Op25bBlocked);
        }
        p.view.dst = to.ip();
        if let Transport::Tcp { dst_port, .. } = &mut p.view.transport {
            *dst_port = to.port();
        }
        self.counters.redirected.add(1);
        ControlFlow::Continue(())
    }

    /// A packet from a redirect target: if it belongs to a redirected flow, put
    /// the original destination back as its source. True when rewritten.
    fn unredirect(&self, p: &mut Packet<'_>) -> bool {
        let op = &self.policy.op25b;
        let from_target = match (p.view.transport, op.redirect_target(p.view.src)) {
            (Transport::Tcp { src_port, .. }, Some(t)) => t.ip() == p.view.src && t.port() == src_port,
            _ => false,
        };
        if !from_target {
            return false;
        }
        let Some(original) = self.state.flows().inbound(&p.view, p.now) else {
            return false;
        };
        if !nat::rewrite(p.buf, &p.view, End::Source, original, p.rx.csum_partial) {
            return false;
        }
        p.view.src = original.ip();
        if let Transport::Tcp { src_port, .. } = &mut p.view.transport {
            *src_port = original.port();
        }
        true
    }
}
