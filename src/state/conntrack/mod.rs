//! The flow table of the redirect action: which subscriber connections were
//! sent to the relay, and where they were originally going.
//!
//! Keyed by the subscriber's address and port. The relay sees the subscriber's
//! real source, so on the relay's side the connection is (subscriber address,
//! subscriber port, relay address, relay port); replies from the relay are found
//! by the subscriber's end, and the one original destination per key is what
//! makes the reverse rewrite unambiguous. A subscriber reusing the same source
//! port for two redirected destinations at once would give the relay two
//! identical connections: the second SYN is refused (`Collision`).
//!
//! Assured flows, as in Linux conntrack: a subscriber's SYN makes an
//! unassured flow; the relay's SYN-ACK records the relay's initial sequence
//! number (ISN); the flow becomes assured only when the subscriber
//! acknowledges that SYN-ACK (an ACK of ISN + 1), which proves it received
//! it. A SYN with a forged source never gets there: the SYN-ACK goes to the
//! forged address, and guessing the ISN is a 1 in 2^32 chance per packet.
//! Unassured flows live briefly ([`SYN_TIMEOUT`] unanswered,
//! [`SYN_RECEIVED_TIMEOUT`] after the relay's SYN-ACK, [`CLOSING_TIMEOUT`]
//! after FIN or RST), and when the table is full a new SYN takes the slot of
//! the oldest unassured flow (early drop) instead of being refused. Assured
//! flows leave only by their own FIN, RST or idle timeout, never for a new
//! flow: a flood of forged SYNs evicts only half-open flows, and a real
//! connection survives it when its handshake completes before as many newer
//! SYNs arrive as the table has unassured slots.
//!
//! Bounds: at most `max_flows` entries. Entries leave on eviction, some
//! seconds after FIN or RST (for the last ACKs), or after their idle timeout;
//! when the table is full, expired entries are swept, then the oldest
//! unassured flow is evicted; only a table full of assured flows refuses a
//! new connection (`Full`). Each subscriber (an IPv4 address or an IPv6 /64)
//! holds at most `per_source` entries (`SourceFull` beyond, after the same
//! sweep), so one subscriber cannot fill the table with assured flows; new
//! entries are also rate limited per subscriber by the caller (the reply
//! limit).
//!
//! Layout and costs: the flows live in a slab of `max_flows` slots, found
//! through an index (key to slot) and counted per subscriber in a second
//! map; all three are allocated once, on first use, and never grow (the
//! maps are reserved for twice the bound, so the load stays at or below one
//! half and deletions rehash in place instead of growing them). The
//! unassured flows are linked through their slots in creation order, so
//! assuring, removing and finding the one to evict take constant time; the
//! sweep walks the slab, at most once a second, when the table is full or a
//! subscriber is at its share. Memory, measured with
//! `examples/redirect_flood.rs` (a flood of forged SYNs past the bound):
//! 15 MiB of resident memory at the default 65,536 flows, whatever the flood.

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use ahash::RandomState;

use super::subscriber_key;
use crate::packet::{tcp_flags, PacketView, Transport};

/// Idle timeout of a flow whose SYN the relay has not answered yet.
pub const SYN_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle timeout of a flow the relay answered with a SYN-ACK that the
/// subscriber has not acknowledged yet (unassured); the relay's retransmitted
/// SYN-ACKs renew it.
pub const SYN_RECEIVED_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle timeout of an assured flow (RFC 5321 4.5.3.2 lets SMTP wait 10 minutes).
pub const ESTABLISHED_TIMEOUT: Duration = Duration::from_secs(600);
/// Time a flow stays after FIN or RST, for the final ACKs.
pub const CLOSING_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A slot on the free list.
    Free,
    /// The subscriber's SYN went to the relay; no answer yet.
    SynSent,
    /// The relay answered with a SYN-ACK; the subscriber's ACK of it is awaited.
    SynReceived,
    /// The subscriber acknowledged the relay's SYN-ACK.
    Established,
    /// FIN or RST seen, from either side.
    Closing,
}

/// No slot: the end of a list.
const NIL: u32 = u32::MAX;

/// The subscriber's end of a redirected connection.
type Key = (IpAddr, u16);

#[derive(Debug, Clone, Copy)]
struct Flow {
    last: Instant,
    src: IpAddr,
    sport: u16,
    original: IpAddr,
    original_port: u16,
    /// The relay's ISN from its first SYN-ACK and from its latest: a relay
    /// using SYN cookies may answer a retransmitted SYN with another ISN,
    /// and the client acknowledges whichever it received first.
    isn_first: u32,
    isn_last: u32,
    state: State,
    /// The subscriber completed the handshake (see the module doc). Kept
    /// through Closing: only unassured flows are ever evicted.
    assured: bool,
    /// Neighbours in the list of unassured flows (oldest first), or the
    /// next free slot in `next`; [`NIL`] at the ends.
    prev: u32,
    next: u32,
}

impl Flow {
    fn expired(&self, now: Instant) -> bool {
        let idle = now.saturating_duration_since(self.last);
        idle > match self.state {
            State::Free => return true,
            State::SynSent => SYN_TIMEOUT,
            State::SynReceived => SYN_RECEIVED_TIMEOUT,
            State::Established => ESTABLISHED_TIMEOUT,
            State::Closing => CLOSING_TIMEOUT,
        }
    }

    /// A packet of the flow from the subscriber; true when it assured the
    /// flow. Only its ACK of the relay's SYN-ACK assures it, and its own
    /// packets do not keep a half-open flow alive: otherwise one subscriber
    /// could hold flows the relay never accepted.
    fn on_subscriber(&mut self, flags: u8, ack: u32, now: Instant) -> bool {
        let assures = self.state == State::SynReceived
            && flags & (tcp_flags::SYN | tcp_flags::ACK | tcp_flags::RST) == tcp_flags::ACK
            && (ack == self.isn_first.wrapping_add(1) || ack == self.isn_last.wrapping_add(1));
        if assures {
            self.state = State::Established;
            self.assured = true;
        }
        if flags & (tcp_flags::FIN | tcp_flags::RST) != 0 {
            self.state = State::Closing;
            self.last = now;
        } else if self.state == State::Established {
            self.last = now;
        }
        assures
    }

    /// A packet of the flow from the relay: its SYN-ACK (and retransmissions
    /// of it, which renew a half-open flow) gives the ISN to be acknowledged.
    fn on_relay(&mut self, flags: u8, seq: u32, now: Instant) {
        let syn_ack = flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN | tcp_flags::ACK;
        if flags & (tcp_flags::FIN | tcp_flags::RST) != 0 {
            self.state = State::Closing;
            self.last = now;
        } else if self.state == State::SynSent && syn_ack {
            self.state = State::SynReceived;
            (self.isn_first, self.isn_last) = (seq, seq);
            self.last = now;
        } else if self.state == State::SynReceived && syn_ack {
            self.isn_last = seq;
            self.last = now;
        } else if self.state == State::Established {
            self.last = now;
        }
    }
}

/// Why an outbound packet of a blocked flow cannot be redirected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CtError {
    /// Not a SYN and no flow: not part of a redirected connection.
    #[error("not a SYN and no redirected flow")]
    NoFlow,
    /// The table is full of live assured flows.
    #[error("the flow table is full")]
    Full,
    /// The same subscriber port already has a redirected flow to another destination.
    #[error("the subscriber port is redirected for another destination")]
    Collision,
    /// The subscriber already holds its share of the table.
    #[error("the subscriber holds its share of the flow table")]
    SourceFull,
}

/// Where an outbound packet of a blocked flow goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Redirect {
    /// The relay.
    pub to: SocketAddr,
    /// The packet's SYN took the slot of an unassured flow (early drop).
    pub evicted: bool,
}

/// The redirect flow table.
#[derive(Debug)]
pub struct Conntrack {
    /// The flows; at most `max` slots, the free ones linked from `free`.
    slots: Vec<Flow>,
    /// Key to slot, for every live (or expired, not yet swept) flow.
    index: HashMap<Key, u32, RandomState>,
    max: usize,
    /// Entries per subscriber (see [`subscriber_key`]), expired ones included
    /// until they are swept.
    per_source: HashMap<u64, u32, RandomState>,
    max_per_source: u32,
    free: u32,
    /// The list of unassured flows: its oldest and newest slot.
    oldest: u32,
    newest: u32,
    /// When the full table was last swept for expired flows (at most once a second).
    last_sweep: Option<Instant>,
}

impl Conntrack {
    /// An empty table for at most `max` flows, at most `per_source` of them
    /// from one subscriber.
    pub fn new(max: usize, per_source: usize) -> Conntrack {
        Conntrack {
            slots: Vec::new(),
            index: HashMap::with_hasher(RandomState::new()),
            max: max.clamp(1, NIL as usize),
            per_source: HashMap::with_hasher(RandomState::new()),
            max_per_source: per_source.clamp(1, u32::MAX as usize) as u32,
            free: NIL,
            oldest: NIL,
            newest: NIL,
            last_sweep: None,
        }
    }

    /// Entries (live, or expired and not yet swept) of the subscriber `src` belongs to.
    pub fn flows_of(&self, src: IpAddr) -> usize {
        self.per_source.get(&subscriber_key(src)).map_or(0, |n| *n as usize)
    }

    /// Live and not yet swept flows.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether the flow of the subscriber's end `src`:`sport` is assured;
    /// `None` without a flow.
    #[cfg(test)]
    pub fn assured(&self, src: IpAddr, sport: u16) -> Option<bool> {
        self.index.get(&(src, sport)).map(|&i| self.slots[i as usize].assured)
    }

    /// True when a packet from the subscriber (`view`) starts a new flow: a SYN
    /// without a live entry.
    pub fn is_new(&self, view: &PacketView, now: Instant) -> bool {
        let Transport::Tcp { src_port, flags, .. } = view.transport else {
            return false;
        };
        let live = self.index.get(&(view.src, src_port)).is_some_and(|&i| !self.slots[i as usize].expired(now));
        !live && flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN
    }

    /// A packet from the subscriber to a blocked destination: the relay
    /// address to send it to (`target`), creating the flow on a SYN.
    pub fn outbound(&mut self, view: &PacketView, target: SocketAddr, now: Instant) -> Result<Redirect, CtError> {
        let Transport::Tcp { src_port, dst_port, flags, ack, .. } = view.transport else {
            return Err(CtError::NoFlow);
        };
        let key = (view.src, src_port);
        let syn = flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN;
        let mut existing = None;
        if let Some(&i) = self.index.get(&key) {
            let f = &mut self.slots[i as usize];
            if !f.expired(now) {
                if (f.original, f.original_port) != (view.dst, dst_port) {
                    // A retransmitted SYN after RST/FIN may reuse the port for a new
                    // destination once the old flow is closing.
                    if !(syn && f.state == State::Closing) {
                        return Err(CtError::Collision);
                    }
                } else {
                    if f.on_subscriber(flags, ack, now) {
                        self.unlink(i);
                    }
                    return Ok(Redirect { to: target, evicted: false });
                }
            }
            existing = Some(i);
        }
        if !syn {
            return Err(CtError::NoFlow);
        }
        if self.slots.capacity() == 0 {
            // The one allocation of the table, on first use. Twice the bound
            // keeps the maps' load at or below one half, so deletions never
            // make them grow (they rehash in place instead). There are never
            // more subscribers than flows.
            self.slots.reserve_exact(self.max);
            self.index.reserve(2 * self.max);
            self.per_source.reserve(2 * self.max);
        }
        let mut evicted = false;
        let flow = Flow {
            last: now,
            src: view.src,
            sport: src_port,
            original: view.dst,
            original_port: dst_port,
            isn_first: 0,
            isn_last: 0,
            state: State::SynSent,
            assured: false,
            prev: NIL,
            next: NIL,
        };
        let i = match existing {
            // Replacing an expired or closing entry of the same key keeps the
            // counts; the new flow is unassured and the newest.
            Some(i) => {
                if !self.slots[i as usize].assured {
                    self.unlink(i);
                }
                self.slots[i as usize] = flow;
                i
            }
            None => {
                if self.flows_of(view.src) >= self.max_per_source as usize {
                    self.sweep(now);
                    if self.flows_of(view.src) >= self.max_per_source as usize {
                        return Err(CtError::SourceFull);
                    }
                }
                if self.index.len() >= self.max {
                    self.sweep(now);
                    if self.index.len() >= self.max {
                        // Early drop: the oldest unassured flow makes room;
                        // with none, the table is full of assured flows.
                        if self.oldest == NIL {
                            return Err(CtError::Full);
                        }
                        self.remove(self.oldest);
                        evicted = true;
                    }
                }
                let i = self.place(flow);
                self.index.insert(key, i);
                *self.per_source.entry(subscriber_key(view.src)).or_insert(0) += 1;
                i
            }
        };
        self.push_newest(i);
        Ok(Redirect { to: target, evicted })
    }

    /// A packet from the relay to a subscriber: the original destination to put
    /// back as its source, if it belongs to a redirected flow. The caller has
    /// checked that it comes from the redirect target of its family (the
    /// table keeps none: there is one target per family, and a reload that
    /// changes them starts a new table).
    pub fn inbound(&mut self, view: &PacketView, now: Instant) -> Option<SocketAddr> {
        let Transport::Tcp { dst_port, flags, seq, .. } = view.transport else {
            return None;
        };
        let i = *self.index.get(&(view.dst, dst_port))?;
        let f = &mut self.slots[i as usize];
        if f.expired(now) {
            return None;
        }
        f.on_relay(flags, seq, now);
        Some(SocketAddr::new(f.original, f.original_port))
    }

    /// Puts `flow` in a free slot (the table has room: fewer than `max` live
    /// flows, so either a slot is on the free list or the slab has not
    /// reached `max` slots).
    fn place(&mut self, flow: Flow) -> u32 {
        if self.free == NIL {
            self.slots.push(flow);
            (self.slots.len() - 1) as u32
        } else {
            let i = self.free;
            self.free = self.slots[i as usize].next;
            self.slots[i as usize] = flow;
            i
        }
    }

    /// Removes the live flow in slot `i`.
    fn remove(&mut self, i: u32) {
        let f = self.slots[i as usize];
        if !f.assured {
            self.unlink(i);
        }
        self.index.remove(&(f.src, f.sport));
        let k = subscriber_key(f.src);
        if let Some(n) = self.per_source.get_mut(&k) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&k);
            }
        }
        let slot = &mut self.slots[i as usize];
        slot.state = State::Free;
        slot.next = self.free;
        self.free = i;
    }

    /// Appends slot `i` to the list of unassured flows as its newest.
    fn push_newest(&mut self, i: u32) {
        let newest = self.newest;
        let f = &mut self.slots[i as usize];
        (f.prev, f.next) = (newest, NIL);
        match newest {
            NIL => self.oldest = i,
            n => self.slots[n as usize].next = i,
        }
        self.newest = i;
    }

    /// Takes slot `i` out of the list of unassured flows.
    fn unlink(&mut self, i: u32) {
        let f = &mut self.slots[i as usize];
        let (prev, next) = (f.prev, f.next);
        (f.prev, f.next) = (NIL, NIL);
        match prev {
            NIL => self.oldest = next,
            p => self.slots[p as usize].next = next,
        }
        match next {
            NIL => self.newest = prev,
            n => self.slots[n as usize].prev = prev,
        }
    }

    /// Removes expired flows, at most once a second; true when it ran.
    fn sweep(&mut self, now: Instant) -> bool {
        let due = self.last_sweep.is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1));
        if due {
            for i in 0..self.slots.len() {
                let f = &self.slots[i];
                if f.state != State::Free && f.expired(now) {
                    self.remove(i as u32);
                }
            }
            self.last_sweep = Some(now);
        }
        due
    }
}
