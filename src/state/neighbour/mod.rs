//! Neighbours on an Ethernet upstream link: ARP (IPv4) and NDP (IPv6),
//! sans I/O. The device edge hands it the ARP and neighbour-discovery frames
//! it receives ([`Neighbours::handle_frame`]), asks it for the MAC of each
//! outgoing packet's next hop ([`Neighbours::lookup`]) and drains what it
//! has to send ([`Neighbours::poll_transmit`]) after each batch and at
//! [`Neighbours::poll_timeout`]. Time is an argument; nothing reads a clock.
//!
//! Invariants:
//! - It answers requests and solicitations for its own addresses, and
//!   creates no entry from them: the table learns only what it asked for.
//!   A reply or advertisement is taken only for an entry that is waiting for
//!   one (incomplete, or being re-probed); any other is counted and ignored,
//!   so forged floods from the link can neither fill the table nor move a
//!   resolved gateway.
//! - At most [`CAPACITY`] entries; the gateways are created at start and
//!   never evicted; other on-link next hops take the remaining places, the
//!   least recently used leaving first.
//! - At most [`HELD_PER_HOP`] packets wait per unresolved next hop, copied
//!   into buffers allocated at start. When a next hop stays silent after
//!   [`Timers::probes`] probes, its packets come back as unreachable (the
//!   edge answers each sender with ICMP host unreachable).
//! - Entries expire: a resolved entry is re-probed after `reachable` and
//!   keeps its MAC while the probe runs; a failed re-probe clears it.

mod table;
pub mod wire;

#[cfg(test)]
mod tests;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ipnet::{Ipv4Net, Ipv6Net};

pub use table::Neighbours;
pub use wire::Mac;

/// Most entries in the table, gateways included.
pub const CAPACITY: usize = 64;
/// Most packets waiting for one next hop.
pub const HELD_PER_HOP: usize = 4;
/// Most packets waiting in all (buffers allocated at start).
pub const HELD_TOTAL: usize = 64;
/// Capacity of each held-packet buffer; a longer packet grows its buffer
/// (the slow path of an unresolved next hop only).
pub const HELD_BUFFER: usize = 2048;

/// What the neighbour table knows of the link at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkConfig {
    /// The interface's MAC address.
    pub mac: Mac,
    /// Own IPv4 addresses with their on-link prefixes.
    pub v4: Vec<Ipv4Net>,
    /// Own IPv6 addresses with their on-link prefixes (the EUI-64
    /// link-local address of `mac` is always added).
    pub v6: Vec<Ipv6Net>,
    /// Next hops for everything not on-link: at most one per family is used
    /// (the first).
    pub gateways: Vec<IpAddr>,
}

/// The timers of resolution (RFC 4861 10 defaults).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timers {
    /// How long an answer is trusted before the entry is re-probed.
    pub reachable: Duration,
    /// Time between two probes.
    pub retrans: Duration,
    /// Unanswered probes after which a next hop is unreachable.
    pub probes: u8,
}

impl Default for Timers {
    fn default() -> Self {
        Timers { reachable: Duration::from_secs(30), retrans: Duration::from_secs(1), probes: 3 }
    }
}

/// The answer for one outgoing packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Send it to this MAC.
    Mac(Mac),
    /// Held until the next hop answers (a probe is under way).
    Held,
    /// Dropped: the next hop already holds [`HELD_PER_HOP`] packets, all
    /// buffers are in use, or the table is full of gateways and waiting hops.
    Dropped,
    /// No gateway of that family and not on-link.
    NoRoute,
}

/// What [`Neighbours::handle_frame`] did with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handled {
    /// Not ARP and not a neighbour solicitation/advertisement: the router's.
    NotNeighbour,
    /// Taken (answered, learnt or ignored and counted).
    Consumed,
}

/// What [`Neighbours::poll_transmit`] wrote into the caller's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transmit {
    /// An Ethernet frame of this length: send it on the link.
    Frame(usize),
    /// A held IP packet (no Ethernet header) of this length whose next hop
    /// never answered: answer its sender with ICMP host unreachable.
    Unreachable(usize),
}

/// The table's counters (one figure per event; nothing else counts them).
pub use crate::stats::NeighbourStats;

/// The gateways' MACs as the table last resolved them, one word per family
/// (`VALID | mac`, or 0 while unresolved), written by the table under its
/// lock whenever a gateway's MAC changes and read without it.
#[derive(Debug, Default)]
struct Published([AtomicU64; 2]);

/// Set in a published word that holds a MAC.
const VALID: u64 = 1 << 48;

impl Published {
    fn set(&self, v6: bool, mac: Option<Mac>) {
        let word = mac.map_or(0, |m| {
            let mut b = [0u8; 8];
            b[2..].copy_from_slice(&m);
            VALID | u64::from_be_bytes(b)
        });
        self.0[usize::from(v6)].store(word, Ordering::Release);
    }

    fn get(&self, v6: bool) -> Option<Mac> {
        let word = self.0[usize::from(v6)].load(Ordering::Acquire);
        if word & VALID == 0 {
            return None;
        }
        let b = word.to_be_bytes();
        Some([b[2], b[3], b[4], b[5], b[6], b[7]])
    }
}

/// What a device queue needs to address a packet to a resolved gateway
/// without taking the table's lock or reading the clock: the on-link
/// prefixes (fixed at start) and the gateways' MACs the table publishes
/// ([`Neighbours::fast_path`]). A packet it has no MAC for (on-link, or its
/// gateway unresolved) takes [`Neighbours::lookup`].
///
/// The table keeps its timers for the gateways either way: a resolved
/// gateway is re-probed when its reachable time ends whether or not packets
/// went through this path, and keeps its published MAC while the probe runs,
/// as `lookup` does.
#[derive(Debug, Clone)]
pub struct FastPath {
    /// The on-link prefixes as (network, mask), those of [`Own::on_link`].
    v4: Arc<[(u32, u32)]>,
    v6: Arc<[(u128, u128)]>,
    gateways: Arc<Published>,
}

impl FastPath {
    fn new(own: &Own, gateways: Arc<Published>) -> FastPath {
        let v4 = own.v4.iter().filter(|n| n.prefix_len() < 32);
        let v6 = own.v6.iter().filter(|n| n.prefix_len() < 128);
        FastPath {
            v4: v4.map(|n| (u32::from(n.network()), u32::from(n.netmask()))).collect(),
            v6: v6.map(|n| (u128::from(n.network()), u128::from(n.netmask()))).collect(),
            gateways,
        }
    }

    /// The MAC of the gateway that takes a packet to `dst`, when `dst` is off-link
    /// and the gateway of its family is resolved.
    #[inline]
    pub fn gateway_mac(&self, dst: IpAddr) -> Option<Mac> {
        let on_link = match dst {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.v4.iter().any(|&(net, mask)| a & mask == net)
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                self.v6.iter().any(|&(net, mask)| a & mask == net)
            }
        };
        if on_link {
            return None;
        }
        self.gateways.get(dst.is_ipv6())
    }
}

/// Own addresses, as the table answers for them.
#[derive(Clone, Debug)]
struct Own {
    mac: Mac,
    v4: Vec<Ipv4Net>,
    v6: Vec<Ipv6Net>,
}

impl Own {
    fn new(cfg: &LinkConfig) -> Own {
        let mut v6 = cfg.v6.clone();
        let ll = wire::link_local(cfg.mac);
        if !v6.iter().any(|n| n.addr() == ll) {
            // Unwrap-free: a /64 is always a valid prefix length.
            v6.push(Ipv6Net::new(ll, 64).unwrap_or_else(|_| Ipv6Net::from(ll)));
        }
        Own { mac: cfg.mac, v4: cfg.v4.clone(), v6 }
    }

    fn is_v4(&self, ip: Ipv4Addr) -> bool {
        self.v4.iter().any(|n| n.addr() == ip)
    }

    fn is_v6(&self, ip: Ipv6Addr) -> bool {
        self.v6.iter().any(|n| n.addr() == ip)
    }

    /// The source for a probe of `target`: an own address of the same
    /// prefix, else the first one (link-local for a link-local target).
    fn v4_for(&self, target: Ipv4Addr) -> Option<Ipv4Addr> {
        let on = self.v4.iter().find(|n| n.contains(&target));
        on.or(self.v4.first()).map(|n| n.addr())
    }

    fn v6_for(&self, target: Ipv6Addr) -> Option<Ipv6Addr> {
        let link_local = (target.segments()[0] & 0xffc0) == 0xfe80;
        let on = self.v6.iter().find(|n| {
            let ll = (n.addr().segments()[0] & 0xffc0) == 0xfe80;
            if link_local {
                ll
            } else {
                !ll && n.contains(&target)
            }
        });
        on.or(self.v6.first()).map(|n| n.addr())
    }

    fn on_link(&self, dst: IpAddr) -> bool {
        match dst {
            IpAddr::V4(a) => self.v4.iter().any(|n| n.prefix_len() < 32 && n.contains(&a)),
            IpAddr::V6(a) => self.v6.iter().any(|n| n.prefix_len() < 128 && n.contains(&a)),
        }
    }
}
