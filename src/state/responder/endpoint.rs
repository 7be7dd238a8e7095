//! The responder's TCP endpoint: smoltcp's interface and sockets, the
//! sessions' lifetimes, and the transmit ring. Always used under the
//! [`super::Responder`]'s lock.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration as SmolDuration, Instant as SmolInstant};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpListenEndpoint};

use super::link::{Link, TxRing};
use super::SYN_RECEIVED_LIFETIME;
use crate::packet::{tcp_flags, PacketView, Transport};
use crate::policy::{Banner, PortSet};
use crate::state::subscriber_key;

/// Receive and send buffer of each session: the banner line and a little input.
const SOCKET_RX: usize = 512;
const SOCKET_TX: usize = 1024;

/// One socket and what the responder knows of its session.
struct Session {
    handle: SocketHandle,
    port: u16,
    sent: bool,
    /// When the session left the listening state: a session lives at most
    /// `idle` in all, so a client trickling segments cannot hold it.
    started: Option<Instant>,
}

/// What exists once the first segment arrived.
struct Stack {
    iface: Interface,
    sockets: SocketSet<'static>,
    sessions: Vec<Session>,
    tx: TxRing,
}

pub(super) struct Endpoint {
    stack: Option<Stack>,
    ports: Vec<u16>,
    sessions: usize,
    per_source: usize,
    idle: Duration,
    banner: Vec<u8>,
    epoch: Option<Instant>,
    /// When `poll` must run next, as of the last input, poll or expiry.
    deadline: Option<Instant>,
    pub(super) rsts_limited: u64,
    /// Sessions in SYN-RECEIVED given up for a new SYN (see [`Endpoint::make_room`]).
    pub(super) syn_evictions: u64,
}

impl Endpoint {
    pub(super) fn new(ports: &PortSet, banner: &Banner) -> Endpoint {
        let mut line = banner.text.clone().into_bytes();
        line.extend_from_slice(b"\r\n");
        Endpoint {
            stack: None,
            ports: ports.iter().collect(),
            sessions: banner.sessions,
            per_source: banner.per_source,
            idle: banner.idle,
            banner: line,
            epoch: None,
            deadline: None,
            rsts_limited: 0,
            syn_evictions: 0,
        }
    }

    pub(super) fn per_source(&self) -> usize {
        self.per_source
    }

    pub(super) fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    pub(super) fn ring_overflows(&self) -> u64 {
        self.stack.as_ref().map_or(0, |s| s.tx.overflows)
    }

    fn smol_now(&mut self, now: Instant) -> SmolInstant {
        let epoch = *self.epoch.get_or_insert(now);
        SmolInstant::from_micros(now.saturating_duration_since(epoch).as_micros() as i64)
    }

    fn stack(&mut self, now: SmolInstant) -> &mut Stack {
        let Endpoint { stack, ports, sessions, idle, .. } = self;
        stack.get_or_insert_with(|| {
            let mut tx = TxRing::new();
            let mut config = Config::new(HardwareAddress::Ip);
            config.random_seed = std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), 0u8);
            let mut iface = Interface::new(config, &mut Link { rx: None, tx: &mut tx }, now);
            // Any-IP answers from the dialled address; the /0 prefixes make every
            // client directly reachable, so no routes are needed.
            iface.set_any_ip(true);
            iface.update_ip_addrs(|addrs| {
                let _ = addrs.push(IpCidr::new(IpAddress::v4(192, 0, 2, 1), 0));
                let _ = addrs.push(IpCidr::new(IpAddress::v6(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1), 0));
            });
            let mut sockets = SocketSet::new(Vec::new());
            let mut list = Vec::new();
            for &port in ports.iter() {
                for _ in 0..*sessions {
                    let mut s = tcp::Socket::new(
                        tcp::SocketBuffer::new(vec![0; SOCKET_RX]),
                        tcp::SocketBuffer::new(vec![0; SOCKET_TX]),
                    );
                    s.set_timeout(Some(SmolDuration::from_micros(idle.as_micros() as u64)));
                    // ACK the client's FIN at once: the session then ends in
                    // TIME-WAIT with nothing left to say (see `run`).
                    s.set_ack_delay(None);
                    // Cannot fail: the port is not 0 (config) and the socket is new.
                    let _ = s.listen(IpListenEndpoint { addr: None, port });
                    list.push(Session { handle: sockets.add(s), port, sent: false, started: None });
                }
            }
            Stack { iface, sockets, sessions: list, tx }
        })
    }

    /// How long a session may stay in SYN-RECEIVED: [`SYN_RECEIVED_LIFETIME`],
    /// or less when `banner_timeout` is shorter (smoltcp's own timeout would
    /// otherwise abort it first, with an RST).
    fn syn_received_limit(&self) -> Duration {
        // A millisecond early: smoltcp counts whole microseconds from its
        // epoch, so its timeout may fall just before `started + idle`.
        SYN_RECEIVED_LIFETIME.min(self.idle.saturating_sub(Duration::from_millis(1)))
    }

    /// Sessions still in SYN-RECEIVED after their limit listen again,
    /// silently: `listen` resets the socket and forgets the peer, so nothing
    /// is sent. Runs before smoltcp's timers, so a late poll cannot let a
    /// further retransmission or an RST out, and before a subscriber's
    /// sessions are counted.
    pub(super) fn expire(&mut self, now: Instant) {
        let limit = self.syn_received_limit();
        let Some(stack) = self.stack.as_mut() else { return };
        let mut changed = false;
        for slot in &mut stack.sessions {
            let s = stack.sockets.get_mut::<tcp::Socket>(slot.handle);
            if s.state() == tcp::State::SynReceived
                && now.saturating_duration_since(*slot.started.get_or_insert(now)) >= limit
            {
                s.abort();
                let _ = s.listen(IpListenEndpoint { addr: None, port: slot.port });
                slot.sent = false;
                slot.started = None;
                changed = true;
            }
        }
        if changed {
            self.deadline = self.compute_deadline(now);
        }
    }

    /// Before a new SYN to `port`: when no session of the port listens,
    /// the oldest one still in SYN-RECEIVED listens again, silently, so the
    /// SYN finds a socket (early drop, as for the redirect flow table). A
    /// SYN with a forged source never gets past SYN-RECEIVED, so a flood of
    /// them takes only each other's sessions; a session whose client
    /// completed the handshake is never taken, and with every session past
    /// the handshake smoltcp answers the SYN with an RST (a reply token).
    pub(super) fn make_room(&mut self, port: u16) {
        let Some(stack) = self.stack.as_mut() else { return };
        let mut oldest: Option<(usize, Option<Instant>)> = None;
        for (k, slot) in stack.sessions.iter().enumerate().filter(|(_, s)| s.port == port) {
            match stack.sockets.get::<tcp::Socket>(slot.handle).state() {
                tcp::State::Listen | tcp::State::Closed => return,
                tcp::State::SynReceived if oldest.is_none_or(|(_, t)| slot.started < t) => {
                    oldest = Some((k, slot.started));
                }
                _ => {}
            }
        }
        let Some((k, _)) = oldest else { return };
        let slot = &mut stack.sessions[k];
        let s = stack.sockets.get_mut::<tcp::Socket>(slot.handle);
        // As in `expire`: `listen` resets the socket, so the abort sends nothing.
        s.abort();
        let _ = s.listen(IpListenEndpoint { addr: None, port });
        slot.sent = false;
        slot.started = None;
        self.syn_evictions += 1;
    }

    /// Hands one admitted segment to smoltcp and runs the sessions.
    pub(super) fn input(&mut self, now: Instant, packet: &[u8]) {
        self.run(now, Some(packet));
    }

    /// Runs the TCP state machines and timers.
    pub(super) fn poll(&mut self, now: Instant) {
        self.expire(now);
        self.run(now, None);
    }

    fn run(&mut self, now: Instant, mut rx: Option<&[u8]>) {
        let t = self.smol_now(now);
        self.stack(t);
        let Endpoint { stack, banner, idle, .. } = self;
        let Some(stack) = stack.as_mut() else { return };
        for _ in 0..4 {
            let mut link = Link { rx: rx.take(), tx: &mut stack.tx };
            stack.iface.poll(t, &mut link, &mut stack.sockets);
            let mut changed = false;
            for slot in &mut stack.sessions {
                let s = stack.sockets.get_mut::<tcp::Socket>(slot.handle);
                let live = !matches!(s.state(), tcp::State::Listen | tcp::State::Closed);
                if live && now.saturating_duration_since(*slot.started.get_or_insert(now)) >= *idle {
                    s.abort();
                    changed = true;
                    continue;
                }
                match s.state() {
                    tcp::State::Established | tcp::State::CloseWait if !slot.sent => {
                        let _ = s.send_slice(banner);
                        s.close();
                        slot.sent = true;
                        changed = true;
                    }
                    tcp::State::TimeWait => {
                        // Both FINs are sent and acknowledged: listen again
                        // silently (an abort would send an RST for nothing).
                        s.abort();
                        let _ = s.listen(IpListenEndpoint { addr: None, port: slot.port });
                        slot.sent = false;
                        slot.started = None;
                        changed = true;
                    }
                    tcp::State::Closed => {
                        let _ = s.listen(IpListenEndpoint { addr: None, port: slot.port });
                        slot.sent = false;
                        slot.started = None;
                    }
                    // An RST in SYN-RECEIVED sends smoltcp's socket straight
                    // back to LISTEN, past the Closed arm: forget the session
                    // here too, or its lifetime would stay due for ever.
                    tcp::State::Listen => {
                        slot.sent = false;
                        slot.started = None;
                    }
                    _ => {}
                }
            }
            if !changed {
                break;
            }
        }
        self.deadline = self.compute_deadline(now);
    }

    /// The next packet to send, copied into `out`; RSTs only with a token.
    pub(super) fn transmit(&mut self, out: &mut [u8], allow_reply: &mut impl FnMut(IpAddr) -> bool) -> Option<usize> {
        let stack = self.stack.as_mut()?;
        loop {
            let p = stack.tx.front()?;
            let rst_to = PacketView::parse(p).ok().and_then(|v| match v.transport {
                Transport::Tcp { flags, .. } if flags & tcp_flags::RST != 0 => Some(v.dst),
                _ => None,
            });
            if rst_to.is_some_and(|to| !allow_reply(to)) {
                self.rsts_limited += 1;
                stack.tx.pop();
                continue;
            }
            let n = p.len().min(out.len());
            out[..n].copy_from_slice(&p[..n]);
            stack.tx.pop();
            return Some(n);
        }
    }

    fn compute_deadline(&mut self, now: Instant) -> Option<Instant> {
        let t = self.smol_now(now);
        let syn_limit = self.syn_received_limit();
        let epoch = self.epoch?;
        let idle = self.idle;
        let stack = self.stack.as_mut()?;
        let smol = stack
            .iface
            .poll_at(t, &stack.sockets)
            .map(|at| epoch + Duration::from_micros(at.total_micros().max(0) as u64));
        let sockets = &stack.sockets;
        let lifetime = stack
            .sessions
            .iter()
            .filter_map(|s| {
                let limit = match sockets.get::<tcp::Socket>(s.handle).state() {
                    tcp::State::Listen | tcp::State::Closed => return None,
                    tcp::State::SynReceived => syn_limit,
                    _ => idle,
                };
                s.started.map(|t| t + limit)
            })
            .min();
        smol.into_iter().chain(lifetime).min()
    }

    /// Whether `view` (from the subscriber) belongs to a session in progress.
    pub(super) fn owns(&self, view: &PacketView) -> bool {
        let (Some(stack), Transport::Tcp { src_port, dst_port, .. }) = (self.stack.as_ref(), view.transport) else {
            return false;
        };
        stack.sessions.iter().any(|slot| {
            let s = stack.sockets.get::<tcp::Socket>(slot.handle);
            let local = s.local_endpoint().map(|e| (IpAddr::from(e.addr), e.port));
            let remote = s.remote_endpoint().map(|e| (IpAddr::from(e.addr), e.port));
            local == Some((view.dst, dst_port)) && remote == Some((view.src, src_port))
        })
    }

    /// Sessions in progress (past the SYN, not yet closed) of the subscriber
    /// `src` belongs to (its IPv4 address or IPv6 /64).
    pub(super) fn sessions_of(&self, src: IpAddr) -> usize {
        let Some(stack) = self.stack.as_ref() else {
            return 0;
        };
        let key = subscriber_key(src);
        stack
            .sessions
            .iter()
            .filter_map(|s| stack.sockets.get::<tcp::Socket>(s.handle).remote_endpoint())
            .filter(|e| subscriber_key(IpAddr::from(e.addr)) == key)
            .count()
    }

    /// Sessions between handshake and close.
    pub(super) fn active(&self) -> usize {
        let Some(stack) = self.stack.as_ref() else {
            return 0;
        };
        stack
            .sessions
            .iter()
            .filter(|s| {
                !matches!(stack.sockets.get::<tcp::Socket>(s.handle).state(), tcp::State::Listen | tcp::State::Closed)
            })
            .count()
    }
}
