//! The router core: sans-I/O, no clock reads, no allocation per packet.
//!
//! [`Router::handle`] takes the time, the direction and the packet bytes, and
//! returns a [`Verdict`]: forward the (rewritten) packet, send back a reply it
//! built into the caller's buffer, hand it to the banner responder, or drop it
//! for a reason. Every verdict bumps exactly one counter of its direction.
//!
//! A packet passes the stages in order, each in its own file and each either
//! deciding (`ControlFlow::Break(verdict)`) or passing it on:
//!
//! ```text
//! sanity   parse, martians, anti-spoofing (BCP 38), fragments, source routing
//! local    addressed to the router (echo), TTL / hop limit expired
//!          and tunnels (a packet with no TCP header, router/tunnel.rs): IP
//!          in IP, GRE, Teredo, VXLAN, Geneve of a dynamic address, the
//!          packets inside meet OP25B / IP25B (one look for non-tunnels)
//! op25b    outbound: the fast path and its action (reject, drop, icmp,
//!          banner, redirect, monitor); inbound: IP25B and the reverse of a redirect
//!          then the quarantine: outbound from a subscriber in quarantine,
//!          only its walled garden passes (one atomic load while nobody is in
//!          quarantine); after OP25B, so its port-25 attempts stay OP25B's
//! rules    the rule pipeline, first final verdict wins
//! forward  egress MTU, TTL - 1 (RFC 1624)
//! ```
//!
//! The router reads the immutable [`Policy`] and changes only the runtime
//! [`State`] (reply buckets, flows, banner sessions, rule buckets) and its
//! own counters. A trace ([`Router::handle_traced`]) comes from the same
//! evaluation with a recording `Tracer`.

use std::net::IpAddr;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Instant;

use crate::packet::{reply, IcmpError, PacketView};
use crate::policy::Policy;
use crate::state::State;
use crate::stats::{Counters, RuleCounters, Stats};

pub use crate::packet::Direction;
pub use crate::stats::{DropReason, ReplyKind};
pub(crate) use trace::describe_view;
pub(crate) use trace::{NoTrace, Tracer};
pub use trace::{Trace, TraceStep};

mod block;
mod forward;
mod local;
mod op25b;
mod quarantine;
mod rules;
mod sanity;
mod trace;
mod tunnel;

pub(crate) use block::{Block, BlockAction, BlockReply, Tunnelled};

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
#[non_exhaustive]
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
    /// The banner responder took the packet (the `banner` action): send what
    /// [`State::poll_transmit`] gives back to the subscriber side.
    Terminate,
}

impl Verdict {
    /// Its name as the tools and events report it: `forward`, `drop`,
    /// `reply` or `terminate`.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Forward { .. } => "forward",
            Verdict::Drop(_) => "drop",
            Verdict::Reply { .. } => "reply",
            Verdict::Terminate => "terminate",
        }
    }

    /// Why a packet was not forwarded, by name: the drop reason, the reply
    /// kind, or `banner`; `None` when it was forwarded.
    pub fn reason(self) -> Option<&'static str> {
        match self {
            Verdict::Forward { .. } => None,
            Verdict::Drop(r) => Some(r.name()),
            Verdict::Reply { kind, .. } => Some(kind.name()),
            Verdict::Terminate => Some("banner"),
        }
    }
}

/// One packet on its way through the stages.
struct Packet<'a> {
    now: Instant,
    dir: Direction,
    buf: &'a mut [u8],
    reply: &'a mut [u8],
    rx: RxInfo,
    view: PacketView,
    /// The outermost encapsulation, once the tunnel stage found one.
    tunnel: Option<crate::packet::TunnelKind>,
}

/// The router of one worker direction: the policy and state in force and
/// its own counters (one writer: this router).
#[derive(Debug)]
pub struct Router {
    policy: Arc<Policy>,
    state: Arc<State>,
    /// The state's quarantine set, one pointer closer (every outbound packet looks).
    quarantine: Arc<crate::state::abuse::Quarantine>,
    counters: Arc<Counters>,
    /// The same block as `counters.rules`, without its lock.
    rule_counters: Arc<RuleCounters>,
    /// The last blocked connection attempt, until the data plane takes it.
    block: std::cell::Cell<Option<Block>>,
    /// Whether blocked attempts are noted (events are on).
    note_blocks: bool,
}

impl Router {
    /// A router enforcing `policy` with fresh state (tests, examples; the
    /// data plane shares one state among its workers and the offline tools
    /// use `State::offline`: [`Router::with_state`]).
    pub fn new(policy: Arc<Policy>) -> Router {
        let state = Arc::new(State::new(&policy));
        Router::with_state(policy, state)
    }

    /// A router enforcing `policy` with `state` (built for that policy; if
    /// not, fresh state is used), and fresh counters.
    pub fn with_state(policy: Arc<Policy>, state: Arc<State>) -> Router {
        let mut r = Router {
            quarantine: Arc::clone(state.quarantine()),
            state: Arc::clone(&state),
            policy: Arc::clone(&policy),
            counters: Arc::default(),
            rule_counters: Arc::default(),
            block: std::cell::Cell::new(None),
            note_blocks: false,
        };
        r.set_policy(policy, state);
        r
    }

    /// Notes blocked connection attempts for [`Router::take_block`] (off by
    /// default: it costs a blocked SYN about 100 instructions).
    #[doc(hidden)]
    pub fn note_blocks(&mut self, on: bool) {
        self.note_blocks = on;
    }

    /// The connection attempt the last packets blocked, if any (taken once).
    #[doc(hidden)]
    #[inline]
    pub fn take_block(&self) -> Option<Block> {
        self.block.take()
    }

    /// The name of rule `index` of the policy in force.
    pub fn rule_name(&self, index: u16) -> Option<Arc<str>> {
        self.rule_counters.names.get(usize::from(index)).cloned()
    }

    /// The two ends of a TCP packet, for [`Router::note_block`], when blocks are noted.
    #[inline]
    fn ends(&self, view: &PacketView) -> Option<(std::net::SocketAddr, std::net::SocketAddr)> {
        if !self.note_blocks {
            return None;
        }
        let (sport, dport) = (view.tcp_src_port()?, view.tcp_dst_port()?);
        Some((std::net::SocketAddr::new(view.src, sport), std::net::SocketAddr::new(view.dst, dport)))
    }

    /// Whether `p`, a blocked (or would-be blocked) SYN, starts a connection
    /// attempt rather than retransmitting one (the state's table of attempts,
    /// consulted only here: never on the forwarding path).
    #[inline]
    fn first_attempt<T: Tracer>(&self, p: &Packet<'_>, t: &mut T) -> bool {
        let first = self.state.first_attempt(&p.view, p.now);
        if !first {
            t.note("attempt", || {
                format!(
                    "a retransmission of a SYN seen less than {} s ago: the same connection attempt, not counted again",
                    crate::state::attempts::RETRY_WINDOW.as_secs()
                )
            });
        }
        first
    }

    /// Notes a blocked SYN between `ends` for the data plane's events;
    /// `reply` is what the subscriber got ([`reply_name`]).
    #[cold]
    fn note_block(
        &self,
        ends: Option<(std::net::SocketAddr, std::net::SocketAddr)>,
        action: BlockAction,
        rule: Option<usize>,
        reply: BlockReply,
    ) {
        let Some((src, dst)) = ends else { return };
        let rule = rule.and_then(|i| u16::try_from(i).ok());
        self.block.set(Some(Block { src, dst, action, rule, reply, tunnel: None }));
    }

    /// Notes a SYN blocked inside a tunnel.
    #[cold]
    fn note_tunnel_block(
        &self,
        src: std::net::SocketAddr,
        dst: std::net::SocketAddr,
        tunnel: Tunnelled,
        action: BlockAction,
        reply: BlockReply,
    ) {
        self.block.set(Some(Block { src, dst, action, rule: None, reply, tunnel: Some(tunnel) }));
    }

    /// The counters, shareable with a reader (the data plane sums them).
    pub(crate) fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// A snapshot of this router's counters.
    pub fn stats(&self) -> Stats {
        let mut s = Stats::default();
        self.counters.add_to(&mut s);
        s.responder = self.state.responder_stats();
        s
    }

    /// The policy in force.
    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    /// The state in force.
    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// Puts another policy and its state in force (a config reload). The
    /// counters go on; per-rule counters carry over by rule name. A state
    /// built for another policy would apply one rule's buckets to another:
    /// it is replaced by fresh state, with a warning.
    pub fn set_policy(&mut self, policy: Arc<Policy>, state: Arc<State>) {
        let state = if state.fits(&policy) {
            state
        } else {
            tracing::warn!("router given state built for another policy; using fresh state");
            Arc::new(State::new(&policy))
        };
        let names = policy.rules.rules().iter().map(|r| Arc::from(r.name())).collect();
        let rules = Arc::new(RuleCounters::carried(names, &self.rule_counters));
        *self.counters.rules.lock().unwrap_or_else(|e| e.into_inner()) = Arc::clone(&rules);
        self.rule_counters = rules;
        self.policy = policy;
        self.quarantine = Arc::clone(state.quarantine());
        self.state = state;
    }

    /// Handles one packet that arrived travelling in `dir`. `buf` holds exactly
    /// the bytes read from the device and may be rewritten in place; `reply`
    /// receives a reply packet: 1280 bytes hold every reply but an echo reply,
    /// which is the size of its request (a smaller buffer drops larger pings).
    /// `rx` is what an offload-enabled device said of the packet (a GSO
    /// super-packet is judged on its headers, the MTU per segment).
    pub fn handle(&mut self, now: Instant, dir: Direction, buf: &mut [u8], reply: &mut [u8], rx: RxInfo) -> Verdict {
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
        let c = &self.counters.dirs[dir.index()];
        c.received.add(1);
        match verdict {
            Verdict::Forward { len } => {
                c.forwarded.add(1);
                c.forwarded_bytes.add(len as u64);
            }
            Verdict::Reply { kind, .. } => c.replies[kind as usize].add(1),
            Verdict::Drop(reason) => c.dropped[reason as usize].add(1),
            Verdict::Terminate => c.terminated.add(1),
        }
    }

    #[inline]
    fn decide<T: Tracer>(
        &mut self,
        now: Instant,
        dir: Direction,
        buf: &mut [u8],
        reply: &mut [u8],
        rx: RxInfo,
        t: &mut T,
    ) -> Verdict {
        let mut p = Packet { now, dir, buf, reply, rx, view: PacketView::EMPTY, tunnel: None };
        if let Err(e) = PacketView::parse_into(p.buf, &mut p.view) {
            return sanity::malformed(e, t);
        }
        t.note("parse", || describe_view(&p.view));
        match self.stages(&mut p, t) {
            ControlFlow::Break(v) => v,
            ControlFlow::Continue(()) => self.forward(&mut p, t),
        }
    }

    /// The stages that may decide before the packet is forwarded.
    #[inline]
    fn stages<T: Tracer>(&mut self, p: &mut Packet<'_>, t: &mut T) -> ControlFlow<Verdict> {
        self.sanity(p, t)?;
        self.local(p, t)?;
        self.op25b(p, t)?;
        self.rules(p, t)
    }

    /// Whether `addr` is one of the router's own addresses.
    #[inline]
    fn is_own(&self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(a) => self.policy.address_v4 == Some(a),
            IpAddr::V6(a) => self.policy.address_v6 == Some(a),
        }
    }

    /// The router's address of the same family as `addr`.
    #[inline]
    fn own_address(&self, addr: IpAddr) -> Option<IpAddr> {
        match addr {
            IpAddr::V4(_) => self.policy.address_v4.map(IpAddr::V4),
            IpAddr::V6(_) => self.policy.address_v6.map(IpAddr::V6),
        }
    }

    /// An ICMP error about `p` from the router's address, if one may be sent.
    fn icmp(&self, p: &mut Packet<'_>, err: IcmpError, kind: ReplyKind, otherwise: DropReason) -> Verdict {
        let Some(from) = self.own_address(p.view.src) else {
            return Verdict::Drop(otherwise);
        };
        // Spend a token only on a reply that may be sent at all.
        if !reply::icmp_allowed(&p.view) {
            return Verdict::Drop(otherwise);
        }
        let (view, buf) = (&p.view, &*p.buf);
        self.answer(p.now, view, kind, |out| reply::icmp_error(err, view, buf, from, out), p.reply, otherwise)
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
        if !self.state.allow_reply(view.src, now) {
            return Verdict::Drop(DropReason::ReplyRateLimited);
        }
        match build(reply) {
            Some(len) => Verdict::Reply { len, kind },
            None => Verdict::Drop(otherwise),
        }
    }

    /// An RST answering `p` (a TCP segment), if the reply limit allows.
    fn rst(&self, p: &mut Packet<'_>, otherwise: DropReason) -> Verdict {
        let view = &p.view;
        self.answer(p.now, view, ReplyKind::TcpRst, |out| reply::tcp_rst(view, out), p.reply, otherwise)
    }
}

#[cfg(test)]
mod tests;
