//! The neighbour table: entries, held packets, timers and the send queue.
//! The rules it keeps are in the module's documentation (`super`).

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Instant;

use smoltcp::wire::{ArpOperation, EthernetProtocol};

use super::wire::{self, Mac, Message, BROADCAST, ETH_HEADER_LEN};
use super::{
    FastPath, Handled, LinkConfig, Lookup, NeighbourStats, Own, Published, Timers, Transmit, CAPACITY, HELD_BUFFER,
    HELD_PER_HOP, HELD_TOTAL,
};

/// Most frames waiting in the send queue; past it answers are dropped (and
/// a flood of requests costs at most this much memory).
const OUT_CAPACITY: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Never answered: packets are held.
    Incomplete,
    /// Answered; `deadline` is when to re-probe.
    Reachable,
    /// Answered once, being re-probed: the old MAC is still used.
    Probe,
}

#[derive(Debug)]
struct Entry {
    ip: IpAddr,
    mac: Option<Mac>,
    phase: Phase,
    /// Incomplete/Probe: the next probe; Reachable: the end of trust.
    deadline: Instant,
    /// Probes sent in the current phase.
    probes: u8,
    gateway: bool,
    used: Instant,
    /// Indexes into the buffer pool, oldest first.
    held: [u16; HELD_PER_HOP],
    held_len: u8,
}

/// Something to send, written out by `poll_transmit`.
#[derive(Clone, Copy, Debug)]
enum Out {
    Probe(IpAddr),
    ArpReply { to: (Mac, Ipv4Addr), own: Ipv4Addr },
    Advert { target: Ipv6Addr, to: (Mac, Ipv6Addr) },
    Release { buf: u16, mac: Mac },
    Unreachable { buf: u16 },
}

/// The neighbour table of one Ethernet link (see the module documentation).
#[derive(Debug)]
pub struct Neighbours {
    own: Own,
    /// The gateways' MACs for [`FastPath`].
    published: Arc<Published>,
    timers: Timers,
    /// Gateways first (they never move), then on-link next hops.
    entries: Vec<Entry>,
    gateways: usize,
    pool: Vec<Vec<u8>>,
    free: Vec<u16>,
    out: VecDeque<Out>,
    stats: NeighbourStats,
}

impl Neighbours {
    /// A table for `cfg`, probing its gateways from `now` on.
    pub fn new(cfg: &LinkConfig, timers: Timers, now: Instant) -> Neighbours {
        let mut n = Neighbours {
            own: Own::new(cfg),
            published: Arc::new(Published::default()),
            timers,
            entries: Vec::with_capacity(CAPACITY),
            gateways: 0,
            pool: (0..HELD_TOTAL).map(|_| Vec::with_capacity(HELD_BUFFER)).collect(),
            free: (0..HELD_TOTAL as u16).rev().collect(),
            out: VecDeque::with_capacity(OUT_CAPACITY),
            stats: NeighbourStats::default(),
        };
        let mut seen = [false; 2];
        for gw in &cfg.gateways {
            let family = usize::from(gw.is_ipv6());
            if !seen[family] && n.entries.len() < CAPACITY {
                seen[family] = true;
                n.entries.push(Entry::new(*gw, true, now));
                n.gateways += 1;
                let at = n.entries.len() - 1;
                n.probe(at, now);
            }
        }
        n
    }

    /// A lock-free way to the resolved gateways' MACs, for each queue of the device.
    pub fn fast_path(&self) -> FastPath {
        FastPath::new(&self.own, Arc::clone(&self.published))
    }

    /// Whether [`Neighbours::poll_transmit`] has something to write.
    pub fn wants_transmit(&self) -> bool {
        !self.out.is_empty()
    }

    /// The counters so far.
    pub fn stats(&self) -> NeighbourStats {
        NeighbourStats { entries: self.entries.len() as u64, ..self.stats }
    }

    /// Entries in the table, gateways included.
    #[cfg(any(test, feature = "testing"))]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table has no entry (no gateway and no on-link next hop).
    #[cfg(any(test, feature = "testing"))]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The MAC known for `ip`, if an entry has one.
    #[cfg(test)]
    pub fn known(&self, ip: IpAddr) -> Option<Mac> {
        self.entries.iter().find(|e| e.ip == ip).and_then(|e| e.mac)
    }

    /// The next hop of a packet to `dst`: `dst` itself when on-link, else the gateway of its family.
    pub fn next_hop(&self, dst: IpAddr) -> Option<IpAddr> {
        if self.own.on_link(dst) {
            return Some(dst);
        }
        self.entries[..self.gateways].iter().find(|e| e.ip.is_ipv6() == dst.is_ipv6()).map(|e| e.ip)
    }

    /// Where to send `packet` (an IP packet to `dst`): a MAC, or held until
    /// its next hop answers, or dropped.
    pub fn lookup(&mut self, now: Instant, dst: IpAddr, packet: &[u8]) -> Lookup {
        let Some(hop) = self.next_hop(dst) else {
            return Lookup::NoRoute;
        };
        let at = match self.entries.iter().position(|e| e.ip == hop) {
            Some(at) => at,
            None => match self.insert(hop, now) {
                Some(at) => at,
                None => {
                    self.stats.held_dropped += 1;
                    return Lookup::Dropped;
                }
            },
        };
        let e = &mut self.entries[at];
        e.used = now;
        match (e.phase, e.mac) {
            (Phase::Reachable, Some(mac)) => {
                if now >= e.deadline {
                    e.phase = Phase::Probe;
                    e.probes = 0;
                    self.stats.reprobes += 1;
                    self.probe(at, now);
                }
                Lookup::Mac(mac)
            }
            (Phase::Probe, Some(mac)) => Lookup::Mac(mac),
            _ => self.hold(at, packet),
        }
    }

    /// Takes an ARP or neighbour-discovery frame received on the link.
    pub fn handle_frame(&mut self, now: Instant, frame: &[u8]) -> Handled {
        let msg = match wire::parse(frame) {
            Ok(None) => return Handled::NotNeighbour,
            Ok(Some(msg)) => msg,
            Err(_) => {
                self.stats.malformed += 1;
                return Handled::Consumed;
            }
        };
        match msg {
            Message::ArpRequest { sender_mac, sender_ip, target } => {
                if self.own.is_v4(target) {
                    self.answer(Out::ArpReply { to: (sender_mac, sender_ip), own: target });
                } else {
                    self.stats.not_ours += 1;
                }
            }
            Message::Solicit { src, src_mac, target } => {
                if self.own.is_v6(target) {
                    self.answer(Out::Advert { target, to: (src_mac, src) });
                } else {
                    self.stats.not_ours += 1;
                }
            }
            Message::ArpReply { sender_mac, sender_ip } => self.learn(now, IpAddr::V4(sender_ip), sender_mac, true),
            Message::Advert { target, mac, solicited } => self.learn(now, IpAddr::V6(target), mac, solicited),
        }
        Handled::Consumed
    }

    /// When [`Neighbours::handle_timeout`] next has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.entries.iter().map(|e| e.deadline).min()
    }

    /// Sends due probes, gives up on silent next hops, expires old entries.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut at = 0;
        while at < self.entries.len() {
            let e = &self.entries[at];
            if now < e.deadline {
                at += 1;
                continue;
            }
            match e.phase {
                Phase::Reachable if e.gateway || e.used + self.timers.reachable > now => {
                    self.entries[at].phase = Phase::Probe;
                    self.entries[at].probes = 0;
                    self.stats.reprobes += 1;
                    self.probe(at, now);
                }
                // Not used for a whole reachable time: forgotten.
                Phase::Reachable => {
                    self.stats.expired += 1;
                    self.remove(at);
                    continue;
                }
                _ if e.probes < self.timers.probes => self.probe(at, now),
                _ => {
                    self.stats.failed += 1;
                    self.give_up(at);
                    if self.entries[at].gateway {
                        // A gateway is never forgotten: start again, from scratch.
                        let e = &mut self.entries[at];
                        self.published.set(e.ip.is_ipv6(), None);
                        e.mac = None;
                        e.phase = Phase::Incomplete;
                        e.probes = 0;
                        self.probe(at, now);
                    } else {
                        self.remove(at);
                        continue;
                    }
                }
            }
            at += 1;
        }
    }

    /// Writes the next frame to send (or unreachable packet) into `buf`.
    /// Items that do not fit `buf` are dropped (counted as held_dropped).
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        while let Some(item) = self.out.pop_front() {
            if let Some(t) = self.write(item, buf) {
                return Some(t);
            }
            self.stats.held_dropped += 1;
        }
        None
    }

    fn write(&mut self, item: Out, buf: &mut [u8]) -> Option<Transmit> {
        let mac = self.own.mac;
        let len = match item {
            Out::Probe(IpAddr::V4(target)) => {
                let src = self.own.v4_for(target).unwrap_or(Ipv4Addr::UNSPECIFIED);
                wire::arp(buf, ArpOperation::Request, (mac, src), ([0; 6], target), BROADCAST)
            }
            Out::Probe(IpAddr::V6(target)) => {
                let src = self.own.v6_for(target).unwrap_or_else(|| wire::link_local(mac));
                wire::solicit(buf, (mac, src), target)
            }
            Out::ArpReply { to, own } => wire::arp(buf, ArpOperation::Reply, (mac, own), to, to.0),
            Out::Advert { target, to } => wire::advert(buf, mac, target, to),
            Out::Release { buf: i, mac: dst } => {
                let len = self.release(i, |pkt| {
                    let ethertype =
                        if pkt.first()? >> 4 == 6 { EthernetProtocol::Ipv6 } else { EthernetProtocol::Ipv4 };
                    let total = ETH_HEADER_LEN + pkt.len();
                    wire::write_eth(buf.get_mut(..total)?, mac, dst, ethertype)?;
                    buf[ETH_HEADER_LEN..total].copy_from_slice(pkt);
                    Some(total)
                });
                return len.map(Transmit::Frame);
            }
            Out::Unreachable { buf: i } => {
                let len = self.release(i, |pkt| {
                    buf.get_mut(..pkt.len())?.copy_from_slice(pkt);
                    Some(pkt.len())
                });
                return len.map(Transmit::Unreachable);
            }
        };
        len.map(Transmit::Frame)
    }

    /// Hands buffer `i` to `f` and returns it to the pool.
    fn release(&mut self, i: u16, f: impl FnOnce(&[u8]) -> Option<usize>) -> Option<usize> {
        let r = f(&self.pool[usize::from(i)]);
        self.pool[usize::from(i)].clear();
        self.free.push(i);
        r
    }

    fn answer(&mut self, item: Out) {
        if self.push(item) {
            self.stats.answered += 1;
        }
    }

    fn push(&mut self, item: Out) -> bool {
        if self.out.len() >= OUT_CAPACITY {
            return false;
        }
        self.out.push_back(item);
        true
    }

    /// An answer for `ip`: taken only when its entry waits for one.
    fn learn(&mut self, now: Instant, ip: IpAddr, mac: Mac, solicited: bool) {
        let waiting = self.entries.iter().position(|e| e.ip == ip && e.phase != Phase::Reachable);
        let (Some(at), true) = (waiting, solicited) else {
            self.stats.unsolicited += 1;
            return;
        };
        let e = &mut self.entries[at];
        if e.gateway {
            self.published.set(ip.is_ipv6(), Some(mac));
        }
        e.mac = Some(mac);
        e.phase = Phase::Reachable;
        e.deadline = now + self.timers.reachable;
        e.probes = 0;
        self.stats.resolved += 1;
        let n = usize::from(e.held_len);
        e.held_len = 0;
        let held = e.held;
        for buf in &held[..n] {
            if !self.push(Out::Release { buf: *buf, mac }) {
                self.stats.held_dropped += 1;
                self.pool[usize::from(*buf)].clear();
                self.free.push(*buf);
            }
        }
    }

    fn probe(&mut self, at: usize, now: Instant) {
        let e = &mut self.entries[at];
        e.probes = e.probes.saturating_add(1);
        e.deadline = now + self.timers.retrans;
        let ip = e.ip;
        if self.push(Out::Probe(ip)) {
            self.stats.probes += 1;
        }
    }

    fn hold(&mut self, at: usize, packet: &[u8]) -> Lookup {
        let e = &mut self.entries[at];
        if usize::from(e.held_len) >= HELD_PER_HOP {
            self.stats.held_dropped += 1;
            return Lookup::Dropped;
        }
        let Some(buf) = self.free.pop() else {
            self.stats.held_dropped += 1;
            return Lookup::Dropped;
        };
        self.pool[usize::from(buf)].extend_from_slice(packet);
        e.held[usize::from(e.held_len)] = buf;
        e.held_len += 1;
        self.stats.held += 1;
        Lookup::Held
    }

    /// A new incomplete entry for `ip`, evicting the least recently used
    /// on-link entry when full; `None` when every place is a gateway.
    fn insert(&mut self, ip: IpAddr, now: Instant) -> Option<usize> {
        let at = if self.entries.len() < CAPACITY {
            self.entries.push(Entry::new(ip, false, now));
            self.entries.len() - 1
        } else {
            self.stats.table_full += 1;
            let (at, _) = self.entries.iter().enumerate().skip(self.gateways).min_by_key(|(_, e)| e.used)?;
            self.drop_held(at);
            self.stats.evicted += 1;
            self.entries[at] = Entry::new(ip, false, now);
            at
        };
        self.probe(at, now);
        Some(at)
    }

    /// Returns the held packets of entry `at` as unreachable.
    fn give_up(&mut self, at: usize) {
        let e = &mut self.entries[at];
        let n = usize::from(e.held_len);
        e.held_len = 0;
        let held = e.held;
        for buf in &held[..n] {
            if self.push(Out::Unreachable { buf: *buf }) {
                self.stats.unreachable += 1;
            } else {
                self.stats.held_dropped += 1;
                self.pool[usize::from(*buf)].clear();
                self.free.push(*buf);
            }
        }
    }

    fn drop_held(&mut self, at: usize) {
        let e = &mut self.entries[at];
        let n = usize::from(e.held_len);
        e.held_len = 0;
        self.stats.held_dropped += n as u64;
        let held = e.held;
        for buf in &held[..n] {
            self.pool[usize::from(*buf)].clear();
            self.free.push(*buf);
        }
    }

    /// Removes an on-link entry (never a gateway: they sit before `gateways`).
    fn remove(&mut self, at: usize) {
        debug_assert!(at >= self.gateways);
        self.drop_held(at);
        self.entries.swap_remove(at);
    }
}

impl Entry {
    fn new(ip: IpAddr, gateway: bool, now: Instant) -> Entry {
        Entry {
            ip,
            mac: None,
            phase: Phase::Incomplete,
            deadline: now,
            probes: 0,
            gateway,
            used: now,
            held: [0; HELD_PER_HOP],
            held_len: 0,
        }
    }
}
