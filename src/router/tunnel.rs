//! Tunnels, between local and OP25B: the packets inside a tunnel of a
//! dynamic address meet OP25B (outbound) and IP25B (inbound) as if the
//! subscriber had sent or received them.
//!
//! The outer packet is what is forwarded or refused; decapsulation
//! ([`crate::packet::tunnel`]) only finds the inner packets, up to
//! [`MAX_TUNNEL_DEPTH`] deep, in the same buffer. The subscriber cannot be
//! answered inside the tunnel: a blocked inner packet drops the outer one, or
//! (`action = "icmp"`, a SYN inside) answers its source with ICMP
//! administratively prohibited. `monitor` forwards and counts. Only tunnels
//! of an address OP25B applies to (dynamic, not exempt) are inspected;
//! every tunnel is counted by kind. Non-tunnels pay one look at the protocol.

use std::net::SocketAddr;
use std::ops::ControlFlow;

use super::sanity::MIN_LATER_FRAGMENT_OFFSET;
use super::{BlockAction, BlockReply, DropReason, Packet, ReplyKind, Router, Tracer, Tunnelled, Verdict};
use crate::packet::tunnel::{self, TunnelError};
use crate::packet::{Direction, Fragment, IcmpError, PacketView, TunnelKind, MAX_TUNNEL_DEPTH};
use crate::policy::{Action, Decision, TunnelMode};

impl Router {
    /// The tunnel stage; a packet that is no tunnel leaves after one look.
    #[inline]
    pub(super) fn tunnels<T: Tracer>(&self, p: &mut Packet<'_>, t: &mut T) -> ControlFlow<Verdict> {
        if !tunnel::may_be_tunnel(&p.view) {
            return ControlFlow::Continue(());
        }
        self.tunnel(p, t)
    }

    #[inline(never)]
    fn tunnel<T: Tracer>(&self, p: &mut Packet<'_>, t: &mut T) -> ControlFlow<Verdict> {
        let len = p.view.len.min(p.buf.len());
        let Some((kind, first)) = tunnel::decapsulate(&p.view, &p.buf[..len]) else {
            return ControlFlow::Continue(());
        };
        p.tunnel = Some(kind);
        self.counters.tunnel_packets[kind.index()].add(1);
        let op = &self.policy.op25b;
        let (subscriber, far) = match p.dir {
            Direction::Outbound => (p.view.src, p.view.dst),
            Direction::Inbound => (p.view.dst, p.view.src),
        };
        if op.tunnels == TunnelMode::Forward {
            t.note("tunnel", || format!("{kind}: forwarded uninspected (tunnels = \"forward\")"));
            return ControlFlow::Continue(());
        }
        if !op.applies_to(subscriber) {
            t.note("tunnel", || format!("{kind}: not inspected, {subscriber} is not a dynamic, non-exempt address"));
            return ControlFlow::Continue(());
        }
        if op.tunnels == TunnelMode::Block && !op.tunnel_endpoints.contains(far) {
            t.note("tunnel", || format!("{kind}: drop, tunnels = \"block\" and {far} is not in tunnel_endpoints"));
            self.counters.tunnel_blocked[kind.index()].add(1);
            return ControlFlow::Break(Verdict::Drop(DropReason::TunnelBlocked));
        }
        self.inspect(p, kind, first, t)
    }

    /// Judges every packet inside, outermost first.
    fn inspect<T: Tracer>(
        &self,
        p: &mut Packet<'_>,
        kind: TunnelKind,
        first: Result<Option<usize>, TunnelError>,
        t: &mut T,
    ) -> ControlFlow<Verdict> {
        let drop = |reason| ControlFlow::Break(Verdict::Drop(reason));
        let len = p.view.len.min(p.buf.len());
        // A first fragment holds only the start of what it carries.
        let cut = p.view.fragment == Fragment::First;
        let (mut base, mut layer, mut layer_kind) = (0usize, first, kind);
        for depth in 1..=MAX_TUNNEL_DEPTH {
            let at = match layer {
                Ok(Some(at)) => base + at,
                Ok(None) => {
                    t.note("tunnel", || format!("{layer_kind}: carries no IP packet, nothing to judge"));
                    return ControlFlow::Continue(());
                }
                Err(e) => {
                    t.note("tunnel", || format!("{layer_kind}: drop, {e}"));
                    let truncated = e == TunnelError::Truncated && cut;
                    return drop(if truncated { DropReason::TinyFragment } else { DropReason::TunnelMalformed });
                }
            };
            let inner = match PacketView::parse_inner(&p.buf[at..len], cut) {
                Ok(v) => v,
                Err(e) => {
                    t.note("tunnel", || format!("{layer_kind}: drop, inner packet: {e}"));
                    return drop(if cut { DropReason::TinyFragment } else { DropReason::TunnelMalformed });
                }
            };
            t.note("tunnel", || format!("{layer_kind} (depth {depth}) carries {}", super::describe_view(&inner)));
            if matches!(inner.fragment, Fragment::Later { offset } if offset < MIN_LATER_FRAGMENT_OFFSET) {
                t.note("tunnel", || "drop: inner later fragment inside the first 128 bytes".into());
                return drop(DropReason::FragmentOverlap);
            }
            if inner.source_routed {
                t.note("tunnel", || "drop: inner packet source routed".into());
                return drop(DropReason::SourceRouted);
            }
            self.judge_inner(p, kind, depth, &inner, t)?;
            match tunnel::decapsulate(&inner, &p.buf[at..len]) {
                None => return ControlFlow::Continue(()),
                Some((k, next)) => {
                    (base, layer, layer_kind) = (at, next, k);
                }
            }
        }
        t.note("tunnel", || format!("drop: tunnels nested deeper than {MAX_TUNNEL_DEPTH}"));
        drop(DropReason::TunnelTooDeep)
    }

    /// OP25B or IP25B for one inner packet.
    fn judge_inner<T: Tracer>(
        &self,
        p: &mut Packet<'_>,
        kind: TunnelKind,
        depth: usize,
        inner: &PacketView,
        t: &mut T,
    ) -> ControlFlow<Verdict> {
        let op = &self.policy.op25b;
        if p.dir == Direction::Inbound {
            if op.blocks_inbound_inner(inner) {
                t.note("ip25b", || "drop: new connection inside a tunnel to a dynamic address".into());
                self.counters.tunnel_blocked[kind.index()].add(1);
                return ControlFlow::Break(Verdict::Drop(DropReason::TunnelBlocked));
            }
            return ControlFlow::Continue(());
        }
        let decision = op.judge_inner(inner);
        t.note("op25b", || match decision {
            Decision::Block => format!("inside {kind}: {} -> {}", decision.describe(), tunnelled_action(op.action)),
            _ => format!("inside {kind}: {}", decision.describe()),
        });
        if decision != Decision::Block {
            return ControlFlow::Continue(());
        }
        self.block_inner(p, kind, depth, inner)
    }

    /// OP25B's action on a blocked inner packet (kept out of line: the
    /// packets that pass, most tunnels, do not carry its code).
    #[cold]
    #[inline(never)]
    fn block_inner(
        &self,
        p: &mut Packet<'_>,
        kind: TunnelKind,
        depth: usize,
        inner: &PacketView,
    ) -> ControlFlow<Verdict> {
        let op = &self.policy.op25b;
        let syn = inner.is_tcp_syn();
        let ends = if syn { self.ends(inner) } else { None };
        let (outer_src, outer_dst) = (p.view.src, p.view.dst);
        let note = |action: BlockAction, reply: BlockReply| {
            let Some((inner_src, dst)) = ends else { return };
            let depth = u8::try_from(depth).unwrap_or(u8::MAX);
            let tunnel = Tunnelled { kind, depth, outer_dst, inner_src };
            self.note_tunnel_block(SocketAddr::new(outer_src, 0), dst, tunnel, action, reply);
        };
        if op.action == Action::Monitor {
            self.counters.monitored.add(1);
            note(BlockAction::Op25b(Action::Monitor), BlockReply::None);
            return ControlFlow::Continue(());
        }
        self.counters.tunnel_blocked[kind.index()].add(1);
        let verdict = if op.action == Action::Icmp && syn {
            self.icmp(p, IcmpError::Prohibited, ReplyKind::Prohibited, DropReason::TunnelBlocked)
        } else {
            Verdict::Drop(DropReason::TunnelBlocked)
        };
        note(BlockAction::Op25b(op.action), BlockReply::of(verdict));
        ControlFlow::Break(verdict)
    }
}

/// What an OP25B action becomes for a packet inside a tunnel.
fn tunnelled_action(a: Action) -> &'static str {
    match a {
        Action::Icmp => "action icmp: the outer packet answered with ICMP prohibited (a SYN), else dropped",
        Action::Monitor => "action monitor: would be blocked, forwarded",
        _ => "the outer packet dropped (nobody can be answered inside a tunnel)",
    }
}
