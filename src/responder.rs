//! The banner responder: op25b ends a blocked SMTP connection itself, as the
//! server the client dialled, with one SMTP reply line, then closes.
//!
//! smoltcp is the TCP endpoint, in any-IP mode: a listening socket accepts a
//! SYN to any address and answers from that address, so the client sees the
//! server it dialled; the outside server never sees the connection. Only
//! packets of blocked flows reach it (the router hands them over with
//! `Verdict::Terminate`). Like the router it is sans-I/O: packets in with
//! [`Responder::input`], packets out with [`Responder::transmit`], timers via
//! [`Responder::poll_at`] and [`Responder::poll`], time always passed in.
//!
//! Bounds: `sessions` sockets per blocked port, created once; when all are busy
//! smoltcp answers a SYN with an RST. A session that makes no progress for
//! `idle` is aborted. The in and out queues hold at most [`QUEUE`] packets.
//!
//! Bounded replies to a forged SYN: a session still in SYN-RECEIVED after
//! [`SYN_RECEIVED_LIFETIME`] listens again silently, without the RST an abort
//! would send. smoltcp retransmits a SYN-ACK after 1 s and again 2 s later, so
//! the lifetime (2.5 s) lets exactly one retransmission out: a client whose
//! ACK was lost gets a second chance instead of waiting for a greeting that
//! never comes, and a SYN with a forged source brings its victim at most two
//! SYN-ACKs (each about the size of a SYN), never an RST, for one reply token.
//! The banner itself goes only to a client that completed the handshake, which
//! a forger off the path cannot.
//!
//! [`Responder::input`] checks again, under the responder's own lock, what the
//! router checked before it: a segment whose session has ended in between, a
//! repeated SYN of a session in progress, and a SYN over the subscriber's share
//! (another worker may have added a session) are dropped, so smoltcp never
//! answers them with an RST outside the reply limit.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Checksum, ChecksumCapabilities, Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration as SmolDuration, Instant as SmolInstant};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpListenEndpoint};

use crate::packet::{PacketView, Transport};
use crate::policy::Op25b;

/// Most packets waiting in either direction.
pub const QUEUE: usize = 256;
/// How long a session waits for the client's ACK of its SYN-ACK.
pub const SYN_RECEIVED_LIFETIME: std::time::Duration = std::time::Duration::from_millis(2500);
/// Receive and send buffer of each session: the banner line and a little input.
const SOCKET_RX: usize = 512;
const SOCKET_TX: usize = 1024;

/// In-memory packet queues as a smoltcp device.
struct Queues {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
}

struct RxToken(Vec<u8>);
struct TxToken<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        if self.0.len() < QUEUE {
            self.0.push_back(buf);
        }
        r
    }
}

impl Device for Queues {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn capabilities(&self) -> DeviceCapabilities {
        // The packets come from the kernel of the subscriber side through the
        // TUN, often with checksums left to offload: do not verify on receive,
        // compute on transmit.
        let mut checksum = ChecksumCapabilities::default();
        checksum.ipv4 = Checksum::Tx;
        checksum.tcp = Checksum::Tx;
        checksum.udp = Checksum::Tx;
        checksum.icmpv4 = Checksum::Tx;
        checksum.icmpv6 = Checksum::Tx;
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = 1500;
        caps.checksum = checksum;
        caps
    }

    fn receive(&mut self, _now: SmolInstant) -> Option<(RxToken, TxToken<'_>)> {
        let packet = self.rx.pop_front()?;
        Some((RxToken(packet), TxToken(&mut self.tx)))
    }

    fn transmit(&mut self, _now: SmolInstant) -> Option<TxToken<'_>> {
        Some(TxToken(&mut self.tx))
    }
}

struct Slot {
    handle: SocketHandle,
    port: u16,
    sent: bool,
    /// When the session left the listening state: a session lives at most
    /// `idle` in all, so a client trickling segments cannot hold it.
    started: Option<Instant>,
}

struct Stack {
    iface: Interface,
    sockets: SocketSet<'static>,
    slots: Vec<Slot>,
}

/// The banner responder.
pub struct Responder {
    dev: Queues,
    stack: Option<Stack>,
    ports: Vec<u16>,
    sessions: usize,
    per_source: usize,
    idle: std::time::Duration,
    banner: Vec<u8>,
    epoch: Option<Instant>,
    /// When [`Responder::poll`] must run next, as of the last input, poll or
    /// expiry (kept so that asking costs no scan of the sockets), also
    /// readable without the responder's lock (see [`Deadline`]).
    deadline: Option<Instant>,
    shared_deadline: Arc<Deadline>,
    rsts_limited: u64,
}

/// The responder's next deadline, readable by every worker without taking
/// the responder's lock: microseconds after a base instant, `u64::MAX` for none.
#[derive(Debug)]
pub struct Deadline {
    base: Instant,
    micros: AtomicU64,
}

impl Deadline {
    fn new() -> Deadline {
        Deadline { base: Instant::now(), micros: AtomicU64::new(u64::MAX) }
    }

    fn store(&self, at: Option<Instant>) {
        // Rounded up: a timer never looks due before it is.
        let v = at.map_or(u64::MAX, |at| {
            let d = at.saturating_duration_since(self.base);
            (d.as_micros() as u64).saturating_add(u64::from(d.subsec_nanos() % 1000 != 0)).min(u64::MAX - 1)
        });
        self.micros.store(v, Ordering::Relaxed);
    }

    /// The next deadline, if any.
    pub fn load(&self) -> Option<Instant> {
        match self.micros.load(Ordering::Relaxed) {
            u64::MAX => None,
            v => Some(self.base + std::time::Duration::from_micros(v)),
        }
    }
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder").field("ports", &self.ports).field("sessions", &self.sessions).finish()
    }
}

impl Responder {
    /// A responder for the blocked ports of `op`; its sockets are made on first use.
    pub fn new(op: &Op25b) -> Responder {
        let mut banner = op.banner.text.clone().into_bytes();
        banner.extend_from_slice(b"\r\n");
        Responder {
            dev: Queues { rx: VecDeque::new(), tx: VecDeque::new() },
            stack: None,
            ports: op.ports.iter().collect(),
            sessions: op.banner.sessions,
            per_source: op.banner.per_source,
            idle: op.banner.idle,
            banner,
            epoch: None,
            deadline: None,
            shared_deadline: Arc::new(Deadline::new()),
            rsts_limited: 0,
        }
    }

    fn smol_now(&mut self, now: Instant) -> SmolInstant {
        let epoch = *self.epoch.get_or_insert(now);
        SmolInstant::from_micros(now.saturating_duration_since(epoch).as_micros() as i64)
    }

    fn ensure_stack(&mut self, now: SmolInstant) {
        if self.stack.is_none() {
            let mut config = Config::new(HardwareAddress::Ip);
            config.random_seed = std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), 0u8);
            let mut iface = Interface::new(config, &mut self.dev, now);
            // Any-IP answers from the dialled address; the /0 prefixes make every
            // client directly reachable, so no routes are needed.
            iface.set_any_ip(true);
            iface.update_ip_addrs(|addrs| {
                let _ = addrs.push(IpCidr::new(IpAddress::v4(192, 0, 2, 1), 0));
                let _ = addrs.push(IpCidr::new(IpAddress::v6(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1), 0));
            });
            let mut sockets = SocketSet::new(Vec::new());
            let mut slots = Vec::new();
            for &port in &self.ports {
                for _ in 0..self.sessions {
                    let mut s = tcp::Socket::new(
                        tcp::SocketBuffer::new(vec![0; SOCKET_RX]),
                        tcp::SocketBuffer::new(vec![0; SOCKET_TX]),
                    );
                    s.set_timeout(Some(SmolDuration::from_micros(self.idle.as_micros() as u64)));
                    // ACK the client's FIN at once: the session then ends in
                    // TIME-WAIT with nothing left to say (see `poll`).
                    s.set_ack_delay(None);
                    // Cannot fail: the port is not 0 (config) and the socket is new.
                    let _ = s.listen(IpListenEndpoint { addr: None, port });
                    slots.push(Slot { handle: sockets.add(s), port, sent: false, started: None });
                }
            }
            self.stack = Some(Stack { iface, sockets, slots });
        }
    }

    /// A packet of a blocked flow, from the subscriber.
    pub fn input(&mut self, now: Instant, packet: &[u8]) {
        let t = self.smol_now(now);
        self.ensure_stack(t);
        self.expire(now);
        let Ok(view) = PacketView::parse(packet) else { return };
        let wanted = if view.is_tcp_syn() {
            !self.owns(&view) && self.sessions_of(view.src) < self.per_source
        } else {
            self.owns(&view)
        };
        if wanted && self.dev.rx.len() < QUEUE {
            self.dev.rx.push_back(packet.to_vec());
        }
        self.poll(now);
    }

    /// How long a session may stay in SYN-RECEIVED: [`SYN_RECEIVED_LIFETIME`],
    /// or less when `banner_timeout` is shorter (smoltcp's own timeout would
    /// otherwise abort it first, with an RST).
    fn syn_received_limit(&self) -> std::time::Duration {
        // A millisecond early: smoltcp counts whole microseconds from its
        // epoch, so its timeout may fall just before `started + idle`.
        SYN_RECEIVED_LIFETIME.min(self.idle.saturating_sub(std::time::Duration::from_millis(1)))
    }

    /// Sessions still in SYN-RECEIVED after their limit listen again,
    /// silently: `listen` resets the socket and forgets the peer, so nothing
    /// is sent. Runs before smoltcp's timers, so a late poll cannot let a
    /// further retransmission or an RST out. The router calls it before it
    /// counts a subscriber's sessions.
    pub fn expire(&mut self, now: Instant) {
        let limit = self.syn_received_limit();
        let Some(stack) = self.stack.as_mut() else { return };
        let mut changed = false;
        for slot in &mut stack.slots {
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
            self.set_deadline(now);
        }
    }

    fn set_deadline(&mut self, now: Instant) {
        self.deadline = self.compute_deadline(now);
        self.shared_deadline.store(self.deadline);
    }

    /// The next deadline as the workers read it without the lock.
    pub fn shared_deadline(&self) -> Arc<Deadline> {
        Arc::clone(&self.shared_deadline)
    }

    /// Runs the TCP state machines and timers; call at [`Responder::poll_at`].
    pub fn poll(&mut self, now: Instant) {
        let t = self.smol_now(now);
        self.ensure_stack(t);
        self.expire(now);
        let Responder { dev, stack, banner, idle, .. } = self;
        let Some(stack) = stack.as_mut() else { return };
        for _ in 0..4 {
            stack.iface.poll(t, dev, &mut stack.sockets);
            let mut changed = false;
            for slot in &mut stack.slots {
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
        self.set_deadline(now);
    }

    /// The next packet for the subscriber, copied into `out`; its length.
    pub fn transmit(&mut self, out: &mut [u8]) -> Option<usize> {
        self.transmit_limited(out, |_| true)
    }

    /// Like [`Responder::transmit`], but an RST (smoltcp's answer to a segment
    /// it cannot place, or to a SYN when every session is busy) goes out only
    /// when `allow_rst` grants its destination a reply token; others are
    /// dropped and counted ([`Responder::rsts_limited`]). So nothing the
    /// responder sends unasked escapes the reply limit.
    pub fn transmit_limited(&mut self, out: &mut [u8], mut allow_rst: impl FnMut(IpAddr) -> bool) -> Option<usize> {
        loop {
            let p = self.dev.tx.pop_front()?;
            if let Ok(view) = PacketView::parse(&p) {
                if matches!(view.transport, Transport::Tcp { flags, .. } if flags & crate::packet::tcp_flags::RST != 0)
                    && !allow_rst(view.dst)
                {
                    self.rsts_limited += 1;
                    continue;
                }
            }
            let n = p.len().min(out.len());
            out[..n].copy_from_slice(&p[..n]);
            return Some(n);
        }
    }

    /// RSTs dropped by [`Responder::transmit_limited`] for want of a reply token.
    pub fn rsts_limited(&self) -> u64 {
        self.rsts_limited
    }

    /// When [`Responder::poll`] must run next (retransmissions, timeouts).
    pub fn poll_at(&self) -> Option<Instant> {
        self.deadline
    }

    fn compute_deadline(&mut self, now: Instant) -> Option<Instant> {
        let t = self.smol_now(now);
        let syn_limit = self.syn_received_limit();
        let epoch = self.epoch?;
        let stack = self.stack.as_mut()?;
        let smol = stack
            .iface
            .poll_at(t, &stack.sockets)
            .map(|at| epoch + std::time::Duration::from_micros(at.total_micros().max(0) as u64));
        let sockets = &stack.sockets;
        let lifetime = stack
            .slots
            .iter()
            .filter_map(|s| {
                let limit = match sockets.get::<tcp::Socket>(s.handle).state() {
                    tcp::State::Listen | tcp::State::Closed => return None,
                    tcp::State::SynReceived => syn_limit,
                    _ => self.idle,
                };
                s.started.map(|t| t + limit)
            })
            .min();
        smol.into_iter().chain(lifetime).min()
    }

    /// Whether `view` (from the subscriber) belongs to a session in progress.
    /// Only a SYN may start one; other segments of blocked flows that match no
    /// session are dropped by the router instead of being answered with an RST.
    pub fn owns(&mut self, view: &PacketView) -> bool {
        let (Some(stack), Transport::Tcp { src_port, dst_port, .. }) = (self.stack.as_mut(), view.transport) else {
            return false;
        };
        stack.slots.iter().any(|slot| {
            let s = stack.sockets.get::<tcp::Socket>(slot.handle);
            let local = s.local_endpoint().map(|e| (IpAddr::from(e.addr), e.port));
            let remote = s.remote_endpoint().map(|e| (IpAddr::from(e.addr), e.port));
            local == Some((view.dst, dst_port)) && remote == Some((view.src, src_port))
        })
    }

    /// Sessions in progress (past the SYN, not yet closed) with the subscriber
    /// `src` belongs to (its IPv4 address or IPv6 /64).
    pub fn sessions_of(&mut self, src: IpAddr) -> usize {
        let Some(stack) = self.stack.as_mut() else {
            return 0;
        };
        let key = crate::policy::ratelimit::subscriber_key(src);
        stack
            .slots
            .iter()
            .filter_map(|s| stack.sockets.get::<tcp::Socket>(s.handle).remote_endpoint())
            .filter(|e| crate::policy::ratelimit::subscriber_key(IpAddr::from(e.addr)) == key)
            .count()
    }

    /// Sessions between handshake and close.
    pub fn active(&mut self) -> usize {
        let Some(stack) = self.stack.as_mut() else {
            return 0;
        };
        stack
            .slots
            .iter()
            .filter(|s| {
                !matches!(stack.sockets.get::<tcp::Socket>(s.handle).state(), tcp::State::Listen | tcp::State::Closed)
            })
            .count()
    }

    /// The address a session answers from, for tests and logs.
    pub fn local_addresses(&mut self) -> Vec<IpAddr> {
        let Some(stack) = self.stack.as_mut() else {
            return Vec::new();
        };
        stack
            .slots
            .iter()
            .filter_map(|s| stack.sockets.get::<tcp::Socket>(s.handle).local_endpoint())
            .map(|e| IpAddr::from(e.addr))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::packet::{tcp_flags, PacketView, Transport};
    use etherparse::PacketBuilder;
    use std::time::Duration;

    fn responder(sessions: u32) -> Responder {
        let text = include_str!("../config/lab.toml").replacen(
            "action = \"reject\"",
            &format!("action = \"banner\"\nbanner_sessions = {sessions}"),
            1,
        );
        let cfg = Config::parse(std::path::Path::new("t.toml"), &text).unwrap();
        Responder::new(&cfg.policy.op25b)
    }

    fn segment(sport: u16, seq: u32, ack: Option<u32>, syn: bool) -> Vec<u8> {
        let b = PacketBuilder::ipv4([100, 64, 1, 10], [203, 0, 113, 25], 64).tcp(sport, 25, seq, 64240);
        let b = match (syn, ack) {
            (true, _) => b.syn(),
            (false, Some(a)) => b.ack(a),
            (false, None) => b,
        };
        let mut v = Vec::new();
        b.write(&mut v, &[]).unwrap();
        v
    }

    fn drain(r: &mut Responder) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = [0u8; 2048];
        while let Some(n) = r.transmit(&mut buf) {
            out.push(buf[..n].to_vec());
        }
        out
    }

    #[test]
    fn answers_as_the_dialled_server_with_the_banner_then_closes() {
        let mut r = responder(4);
        let t0 = Instant::now();
        r.input(t0, &segment(40000, 1000, None, true));
        let out = drain(&mut r);
        assert_eq!(out.len(), 1, "a SYN-ACK");
        let synack = PacketView::parse(&out[0]).unwrap();
        assert_eq!(synack.src.to_string(), "203.0.113.25", "answers from the dialled address");
        let Transport::Tcp { src_port, flags, seq, ack, .. } = synack.transport else { panic!() };
        assert_eq!(
            (src_port, flags & (tcp_flags::SYN | tcp_flags::ACK), ack),
            (25, tcp_flags::SYN | tcp_flags::ACK, 1001)
        );
        r.input(t0, &segment(40000, 1001, Some(seq.wrapping_add(1)), false));
        let out = drain(&mut r);
        let text: Vec<u8> = out
            .iter()
            .flat_map(|p| {
                let v = PacketView::parse(p).unwrap();
                let Transport::Tcp { header_len, .. } = v.transport else { panic!() };
                p[v.l4_offset + usize::from(header_len)..v.len].to_vec()
            })
            .collect();
        let line = String::from_utf8(text).unwrap();
        assert!(line.starts_with("554 5.7.1 Port 25 is blocked"), "{line:?}");
        assert!(line.ends_with("\r\n"));
        assert!(out.iter().any(|p| matches!(PacketView::parse(p).unwrap().transport, Transport::Tcp { flags, .. } if flags & tcp_flags::FIN != 0)), "closes");
        assert_eq!(r.active(), 1);
        assert!(r.poll_at().is_some(), "retransmission or timeout timer");
    }

    fn flags_of(p: &[u8]) -> u8 {
        match PacketView::parse(p).unwrap().transport {
            Transport::Tcp { flags, .. } => flags,
            _ => panic!("not TCP"),
        }
    }

    /// Runs the responder's own timers from `t` for `span`; what it sent.
    fn run_timers(r: &mut Responder, t: &mut Instant, span: Duration) -> Vec<Vec<u8>> {
        let end = *t + span;
        let mut sent = Vec::new();
        while let Some(at) = r.poll_at() {
            *t = at.max(*t + Duration::from_millis(1));
            if *t > end {
                break;
            }
            r.poll(*t);
            sent.extend(drain(r));
            // What the workers read without the lock: the same deadline,
            // rounded up to the microsecond.
            let (exact, shared) = (r.poll_at(), r.shared_deadline().load());
            assert_eq!(exact.is_some(), shared.is_some());
            if let (Some(e), Some(s)) = (exact, shared) {
                assert!(s >= e && s - e < Duration::from_micros(1), "{e:?} vs {s:?}");
            }
        }
        sent
    }

    #[test]
    fn a_forged_syn_gets_at_most_two_syn_acks_and_no_rst() {
        let mut r = responder(4);
        let t0 = Instant::now();
        r.input(t0, &segment(40000, 1000, None, true));
        assert_eq!(drain(&mut r).len(), 1, "one SYN-ACK");
        assert_eq!(r.active(), 1);
        // Nobody answers. Follow the responder's own timers for a minute: one
        // retransmission (for a client whose ACK was lost), then the session
        // listens again silently.
        let mut t = t0;
        let sent = run_timers(&mut r, &mut t, Duration::from_secs(60));
        let flags: Vec<u8> = sent.iter().map(|p| flags_of(p)).collect();
        assert_eq!(flags, [tcp_flags::SYN | tcp_flags::ACK], "one retransmitted SYN-ACK, then nothing");
        assert_eq!(r.active(), 0, "the session was given up");
        assert!(r.poll_at().is_none(), "no timer left");
        // The client's late ACK finds no session: dropped, not answered with an RST.
        r.input(t, &segment(40000, 1001, Some(1), false));
        assert!(drain(&mut r).is_empty());
        // The slot takes the next client.
        r.input(t, &segment(40001, 1, None, true));
        assert_eq!(drain(&mut r).len(), 1);
    }

    #[test]
    fn a_whole_session_closes_without_an_rst() {
        let mut r = responder(4);
        let t0 = Instant::now();
        r.input(t0, &segment(40000, 1000, None, true));
        let out = drain(&mut r);
        let Transport::Tcp { seq: isn, .. } = PacketView::parse(&out[0]).unwrap().transport else { panic!() };
        r.input(t0, &segment(40000, 1001, Some(isn.wrapping_add(1)), false));
        let out = drain(&mut r);
        let sent: usize = out
            .iter()
            .map(|p| {
                let v = PacketView::parse(p).unwrap();
                let Transport::Tcp { header_len, .. } = v.transport else { panic!() };
                v.len - v.l4_offset - usize::from(header_len)
            })
            .sum();
        assert!(out.iter().any(|p| flags_of(p) & tcp_flags::FIN != 0), "the banner, then FIN");
        // The client acknowledges the banner and the FIN, and closes too.
        let mut fin = Vec::new();
        PacketBuilder::ipv4([100, 64, 1, 10], [203, 0, 113, 25], 64)
            .tcp(40000, 25, 1001, 64240)
            .ack(isn.wrapping_add(1 + sent as u32 + 1))
            .fin()
            .write(&mut fin, &[])
            .unwrap();
        r.input(t0, &fin);
        let out = drain(&mut r);
        let flags: Vec<u8> = out.iter().map(|p| flags_of(p)).collect();
        assert_eq!(flags, [tcp_flags::ACK], "the client's FIN acknowledged, no RST");
        assert_eq!(r.active(), 0, "the slot listens again");
        assert!(r.poll_at().is_none());
    }

    #[test]
    fn rsts_go_out_only_with_a_reply_token() {
        let mut r = responder(1);
        let t0 = Instant::now();
        r.input(t0, &segment(40000, 1000, None, true));
        assert_eq!(drain(&mut r).len(), 1);
        // Every session busy: smoltcp answers another subscriber's SYN with an RST.
        let mut syn = Vec::new();
        PacketBuilder::ipv4([100, 64, 1, 11], [203, 0, 113, 25], 64)
            .tcp(5, 25, 1, 64240)
            .syn()
            .write(&mut syn, &[])
            .unwrap();
        r.input(t0, &syn);
        let mut buf = [0u8; 256];
        let mut asked = Vec::new();
        assert!(r
            .transmit_limited(&mut buf, |to| {
                asked.push(to);
                false
            })
            .is_none());
        assert_eq!(asked, ["100.64.1.11".parse::<IpAddr>().unwrap()]);
        assert_eq!(r.rsts_limited(), 1);
    }

    #[test]
    fn a_short_banner_timeout_sends_no_rst_to_a_forged_syn_either() {
        for timeout in [1u64, 2, 3] {
            let text = include_str!("../config/lab.toml").replacen(
                "action = \"reject\"",
                &format!("action = \"banner\"\nbanner_timeout = {timeout}"),
                1,
            );
            let cfg = Config::parse(std::path::Path::new("t.toml"), &text).unwrap();
            let mut r = Responder::new(&cfg.policy.op25b);
            let mut t = Instant::now();
            r.input(t, &segment(40000, 1000, None, true));
            assert_eq!(drain(&mut r).len(), 1);
            let flags: Vec<u8> =
                run_timers(&mut r, &mut t, Duration::from_secs(60)).iter().map(|p| flags_of(p)).collect();
            assert!(flags.len() <= 1, "timeout {timeout}: {flags:?}");
            assert!(flags.iter().all(|f| *f == tcp_flags::SYN | tcp_flags::ACK), "timeout {timeout}: {flags:?}");
            assert_eq!(r.active(), 0, "timeout {timeout}");
        }
    }

    #[test]
    fn a_syn_then_rst_frees_the_session_and_leaves_no_timer() {
        let mut r = responder(1);
        let t0 = Instant::now();
        r.input(t0, &segment(40000, 1000, None, true));
        assert_eq!(drain(&mut r).len(), 1);
        let mut rst = Vec::new();
        PacketBuilder::ipv4([100, 64, 1, 10], [203, 0, 113, 25], 64)
            .tcp(40000, 25, 1001, 0)
            .rst()
            .write(&mut rst, &[])
            .unwrap();
        r.input(t0, &rst);
        assert!(drain(&mut r).is_empty());
        assert_eq!(r.active(), 0);
        assert!(r.poll_at().is_none(), "no timer due for ever");
        // The next client gets a plain SYN-ACK from the same slot, no RST.
        let t = t0 + Duration::from_secs(30);
        r.input(t, &segment(40001, 1, None, true));
        let out = drain(&mut r);
        assert_eq!(out.iter().map(|p| flags_of(p)).collect::<Vec<_>>(), [tcp_flags::SYN | tcp_flags::ACK]);
    }

    #[test]
    fn a_repeated_syn_or_one_over_the_share_is_not_answered() {
        let mut r = responder(4);
        let t0 = Instant::now();
        r.input(t0, &segment(40000, 1000, None, true));
        assert_eq!(drain(&mut r).len(), 1);
        // The same SYN again (another listening socket would take it).
        r.input(t0, &segment(40000, 1000, None, true));
        assert!(drain(&mut r).is_empty());
        assert_eq!(r.active(), 1);
        // The share of one subscriber is 4 (default, at most banner_sessions).
        for port in 1..=3 {
            r.input(t0, &segment(port, 1, None, true));
        }
        assert_eq!(drain(&mut r).len(), 3);
        r.input(t0, &segment(4, 1, None, true));
        assert!(drain(&mut r).is_empty(), "over the share: left to the router (an RST with a token)");
        assert_eq!(r.sessions_of("100.64.1.10".parse().unwrap()), 4);
    }

    #[test]
    fn over_the_bound_a_syn_gets_rst_and_idle_sessions_time_out() {
        let mut r = responder(2);
        let t0 = Instant::now();
        let from = |last: u8, port: u16| {
            let mut v = Vec::new();
            PacketBuilder::ipv4([100, 64, 1, last], [203, 0, 113, 25], 64)
                .tcp(port, 25, 1, 64240)
                .syn()
                .write(&mut v, &[])
                .unwrap();
            v
        };
        for (last, port) in [(10, 1), (11, 2)] {
            r.input(t0, &from(last, port));
        }
        assert_eq!(drain(&mut r).len(), 2);
        r.input(t0, &from(12, 3));
        let out = drain(&mut r);
        assert_eq!(out.len(), 1);
        assert!(
            matches!(PacketView::parse(&out[0]).unwrap().transport, Transport::Tcp { flags, .. } if flags & tcp_flags::RST != 0)
        );
        assert_eq!(r.active(), 2);
        // Nobody completes the handshake: the sessions give up and listen again.
        let mut t = t0;
        for _ in 0..100 {
            t += Duration::from_secs(1);
            r.poll(t);
            drain(&mut r);
        }
        assert_eq!(r.active(), 0);
        r.input(t, &segment(4, 1, None, true));
        let out = drain(&mut r);
        assert!(
            matches!(PacketView::parse(&out[0]).unwrap().transport, Transport::Tcp { flags, .. } if flags & tcp_flags::SYN != 0)
        );
    }
}
