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
//! No amplification: a SYN gets one SYN-ACK and nothing more until the client
//! answers it. A session still in SYN-RECEIVED after [`SYN_RECEIVED_LIFETIME`]
//! (less than smoltcp's first retransmission timeout, 1 s) listens again
//! silently, without the RST an abort would send. So a SYN with a forged source
//! brings its victim one SYN-ACK, never retransmissions or an RST, and holds a
//! session for under a second. A real client whose SYN-ACK was lost retransmits
//! its SYN and gets a fresh session. The banner itself goes only to a client
//! that completed the handshake, which a forger off the path cannot.

use std::collections::VecDeque;
use std::net::IpAddr;
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
pub const SYN_RECEIVED_LIFETIME: std::time::Duration = std::time::Duration::from_millis(800);
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
    idle: std::time::Duration,
    banner: Vec<u8>,
    epoch: Option<Instant>,
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
            idle: op.banner.idle,
            banner,
            epoch: None,
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
        if self.dev.rx.len() < QUEUE {
            self.dev.rx.push_back(packet.to_vec());
        }
        self.poll(now);
    }

    /// Runs the TCP state machines and timers; call at [`Responder::poll_at`].
    pub fn poll(&mut self, now: Instant) {
        let t = self.smol_now(now);
        self.ensure_stack(t);
        let Responder { dev, stack, banner, idle, .. } = self;
        let Some(stack) = stack.as_mut() else { return };
        // Before smoltcp's timers run: an unanswered SYN-ACK is never
        // retransmitted, and the session listens again without an RST.
        for slot in &mut stack.slots {
            let s = stack.sockets.get_mut::<tcp::Socket>(slot.handle);
            if s.state() == tcp::State::SynReceived
                && now.saturating_duration_since(*slot.started.get_or_insert(now)) >= SYN_RECEIVED_LIFETIME
            {
                // listen() resets the socket and forgets the peer, so nothing is sent.
                s.abort();
                let _ = s.listen(IpListenEndpoint { addr: None, port: slot.port });
                slot.sent = false;
                slot.started = None;
            }
        }
        for _ in 0..4 {
            stack.iface.poll(t, dev, &mut stack.sockets);
            let mut changed = false;
            for slot in &mut stack.slots {
                let s = stack.sockets.get_mut::<tcp::Socket>(slot.handle);
                let live = !matches!(s.state(), tcp::State::Listen | tcp::State::Closed);
                if live && now.saturating_duration_since(*slot.started.get_or_insert(now)) > *idle {
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
                        s.abort();
                        changed = true;
                    }
                    tcp::State::Closed => {
                        let _ = s.listen(IpListenEndpoint { addr: None, port: slot.port });
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
    }

    /// The next packet for the subscriber, copied into `out`; its length.
    pub fn transmit(&mut self, out: &mut [u8]) -> Option<usize> {
        let p = self.dev.tx.pop_front()?;
        let n = p.len().min(out.len());
        out[..n].copy_from_slice(&p[..n]);
        Some(n)
    }

    /// When [`Responder::poll`] must run next (retransmissions, timeouts).
    pub fn poll_at(&mut self, now: Instant) -> Option<Instant> {
        let t = self.smol_now(now);
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
                    tcp::State::SynReceived => SYN_RECEIVED_LIFETIME,
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
        assert!(r.poll_at(t0).is_some(), "retransmission or timeout timer");
    }

    #[test]
    fn a_forged_syn_gets_one_syn_ack_and_nothing_after() {
        let mut r = responder(4);
        let t0 = Instant::now();
        r.input(t0, &segment(40000, 1000, None, true));
        assert_eq!(drain(&mut r).len(), 1, "one SYN-ACK");
        assert_eq!(r.active(), 1);
        // Nobody answers the SYN-ACK. Follow the responder's own timers for a
        // minute: no retransmission and no RST goes out, and the session
        // listens again before smoltcp's first retransmission timeout.
        let mut t = t0;
        let mut sent = Vec::new();
        for _ in 0..1000 {
            let Some(at) = r.poll_at(t) else { break };
            t = at.max(t + Duration::from_millis(1));
            if t > t0 + Duration::from_secs(60) {
                break;
            }
            r.poll(t);
            sent.extend(drain(&mut r));
        }
        assert!(sent.is_empty(), "{} packets after the SYN-ACK", sent.len());
        assert_eq!(r.active(), 0, "the session was given up");
        assert!(r.poll_at(t).is_none(), "no timer left");
        // The slot takes the next client.
        r.input(t, &segment(40001, 1, None, true));
        assert_eq!(drain(&mut r).len(), 1);
    }

    #[test]
    fn over_the_bound_a_syn_gets_rst_and_idle_sessions_time_out() {
        let mut r = responder(2);
        let t0 = Instant::now();
        for port in 1..=2 {
            r.input(t0, &segment(port, 1, None, true));
        }
        assert_eq!(drain(&mut r).len(), 2);
        r.input(t0, &segment(3, 1, None, true));
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
