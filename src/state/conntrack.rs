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
//! Bounds: at most `max_flows` entries, allocated once on first use (the map
//! never grows past its initial capacity). Entries leave on RST, some seconds
//! after FIN (for the last ACKs), or after an idle timeout. When the table is
//! full, expired entries are swept; if none expired, the new connection is
//! refused (`Full`) and established flows keep working. Each subscriber (an
//! IPv4 address or an IPv6 /64) holds at most `per_source` entries
//! (`SourceFull` beyond, after the same sweep), so one subscriber cannot fill
//! the table; new entries are also rate limited per subscriber by the caller
//! (the reply limit).
//!
//! Costs: the sweep walks the whole table, at most once a second, when the
//! table is full or a subscriber is at its share. Memory, allocated on first
//! use for twice the bound (load at most one half): 109 bytes a flow slot and
//! 17 a subscriber slot, some 16 MB at the default 65,536 flows.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::subscriber_key;
use crate::packet::{tcp_flags, PacketView, Transport};

/// Idle timeout of a half-open flow (SYN sent, no ACK seen yet).
pub const SYN_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle timeout of an established flow (RFC 5321 4.5.3.2 lets SMTP wait 10 minutes).
pub const ESTABLISHED_TIMEOUT: Duration = Duration::from_secs(600);
/// Time a flow stays after FIN, for the final ACKs.
pub const CLOSING_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    SynSent,
    Established,
    Closing,
}

#[derive(Debug, Clone, Copy)]
struct Flow {
    original: SocketAddr,
    target: SocketAddr,
    state: State,
    last: Instant,
}

impl Flow {
    fn expired(&self, now: Instant) -> bool {
        let idle = now.saturating_duration_since(self.last);
        idle > match self.state {
            State::SynSent => SYN_TIMEOUT,
            State::Established => ESTABLISHED_TIMEOUT,
            State::Closing => CLOSING_TIMEOUT,
        }
    }

    /// A packet of the flow, from the subscriber (`from_relay` false) or the relay.
    /// Only the relay's SYN-ACK establishes a flow, and the subscriber's own
    /// packets do not keep a half-open flow alive: otherwise one subscriber
    /// could fill the table with flows the relay never accepted.
    fn update(&mut self, flags: u8, now: Instant, from_relay: bool) {
        if flags & (tcp_flags::FIN | tcp_flags::RST) != 0 {
            self.state = State::Closing;
            self.last = now;
        } else if self.state == State::SynSent {
            if from_relay && flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN | tcp_flags::ACK {
                self.state = State::Established;
                self.last = now;
            }
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
    /// The table is full of live flows.
    #[error("the flow table is full")]
    Full,
    /// The same subscriber port already has a redirected flow to another destination.
    #[error("the subscriber port is redirected for another destination")]
    Collision,
    /// The subscriber already holds its share of the table.
    #[error("the subscriber holds its share of the flow table")]
    SourceFull,
}

/// The redirect flow table.
#[derive(Debug)]
pub struct Conntrack {
    flows: HashMap<(IpAddr, u16), Flow>,
    max: usize,
    /// Entries per subscriber (see [`subscriber_key`]), expired ones included
    /// until they are swept.
    per_source: HashMap<u64, u32>,
    max_per_source: u32,
    /// When the full table was last swept for expired flows (at most once a second).
    last_sweep: Option<Instant>,
}

fn tcp_of(view: &PacketView) -> Option<(u16, u16, u8)> {
    match view.transport {
        Transport::Tcp { src_port, dst_port, flags, .. } => Some((src_port, dst_port, flags)),
        _ => None,
    }
}

impl Conntrack {
    /// An empty table for at most `max` flows, at most `per_source` of them
    /// from one subscriber.
    pub fn new(max: usize, per_source: usize) -> Conntrack {
        Conntrack {
            last_sweep: None,
            flows: HashMap::new(),
            max: max.max(1),
            per_source: HashMap::new(),
            max_per_source: per_source.clamp(1, u32::MAX as usize) as u32,
        }
    }

    /// Entries (live, or expired and not yet swept) of the subscriber `src` belongs to.
    pub fn flows_of(&self, src: IpAddr) -> usize {
        self.per_source.get(&subscriber_key(src)).map_or(0, |n| *n as usize)
    }

    /// Removes expired flows, at most once a second; true when it ran.
    fn sweep(&mut self, now: Instant) -> bool {
        let due = self.last_sweep.is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1));
        if due {
            let per_source = &mut self.per_source;
            self.flows.retain(|(src, _), f| {
                let keep = !f.expired(now);
                if !keep {
                    let k = subscriber_key(*src);
                    if let Some(n) = per_source.get_mut(&k) {
                        *n -= 1;
                        if *n == 0 {
                            per_source.remove(&k);
                        }
                    }
                }
                keep
            });
            self.last_sweep = Some(now);
        }
        due
    }

    /// Live and not yet swept flows.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// True when a packet from the subscriber (`view`) starts a new flow: a SYN
    /// without a live entry.
    pub fn is_new(&self, view: &PacketView, now: Instant) -> bool {
        let Some((sport, _, flags)) = tcp_of(view) else {
            return false;
        };
        let live = self.flows.get(&(view.src, sport)).is_some_and(|f| !f.expired(now));
        !live && flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN
    }

    /// A packet from the subscriber to a blocked destination: the relay address
    /// to send it to, creating the flow on a SYN.
    pub fn outbound(&mut self, view: &PacketView, target: SocketAddr, now: Instant) -> Result<SocketAddr, CtError> {
        let (sport, dport, flags) = tcp_of(view).ok_or(CtError::NoFlow)?;
        let key = (view.src, sport);
        let original = SocketAddr::new(view.dst, dport);
        let syn = flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN;
        if let Some(f) = self.flows.get_mut(&key) {
            if !f.expired(now) {
                if f.original != original {
                    // A retransmitted SYN after RST/FIN may reuse the port for a new
                    // destination once the old flow is closing.
                    if !(syn && f.state == State::Closing) {
                        return Err(CtError::Collision);
                    }
                } else {
                    f.update(flags, now, false);
                    return Ok(f.target);
                }
            }
        }
        if !syn {
            return Err(CtError::NoFlow);
        }
        if self.flows.capacity() == 0 {
            // The one allocation of the tables, on first use. Twice the bound
            // keeps the load at or below one half, so deletions never make a
            // map grow (it rehashes in place instead). There are never more
            // subscribers than flows.
            self.flows.reserve(2 * self.max);
            self.per_source.reserve(2 * self.max);
        }
        // Replacing an expired or closing entry of the same key keeps the counts.
        let replaces = self.flows.contains_key(&key);
        if !replaces {
            if self.flows_of(view.src) >= self.max_per_source as usize {
                self.sweep(now);
                if self.flows_of(view.src) >= self.max_per_source as usize {
                    return Err(CtError::SourceFull);
                }
            }
            if self.flows.len() >= self.max {
                self.sweep(now);
                if self.flows.len() >= self.max {
                    return Err(CtError::Full);
                }
            }
        }
        if self.flows.insert(key, Flow { original, target, state: State::SynSent, last: now }).is_none() {
            *self.per_source.entry(subscriber_key(view.src)).or_insert(0) += 1;
        }
        Ok(target)
    }

    /// A packet from the relay to a subscriber: the original destination to put
    /// back as its source, if it belongs to a redirected flow.
    pub fn inbound(&mut self, view: &PacketView, now: Instant) -> Option<SocketAddr> {
        let (sport, dport, flags) = tcp_of(view)?;
        let f = self.flows.get_mut(&(view.dst, dport))?;
        if f.expired(now) || f.target != SocketAddr::new(view.src, sport) {
            return None;
        }
        f.update(flags, now, true);
        Some(f.original)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::packets::tcp;
    use std::net::Ipv4Addr;

    fn view(buf: &mut Vec<u8>, src: ([u8; 4], u16), dst: ([u8; 4], u16), flags: &str) -> PacketView {
        let b = tcp(&Ipv4Addr::from(src.0).to_string(), src.1, &Ipv4Addr::from(dst.0).to_string(), dst.1).window(1000);
        *buf = match flags {
            "syn" => b.syn(),
            "fin" => b.ack(1).fin(),
            "rst" => b.rst(),
            _ => b.ack(1),
        }
        .build();
        PacketView::parse(buf).unwrap()
    }

    const C: [u8; 4] = [100, 64, 1, 10];
    const MX: [u8; 4] = [203, 0, 113, 25];
    const RELAY: &str = "198.51.100.25:25";

    #[test]
    fn a_connection_through_the_table() {
        let mut ct = Conntrack::new(8, 8);
        let relay: SocketAddr = RELAY.parse().unwrap();
        let t0 = Instant::now();
        let mut b = Vec::new();
        assert_eq!(ct.outbound(&view(&mut b, (C, 40000), (MX, 25), "ack"), relay, t0), Err(CtError::NoFlow));
        let syn = view(&mut b, (C, 40000), (MX, 25), "syn");
        assert!(ct.is_new(&syn, t0));
        assert_eq!(ct.outbound(&syn, relay, t0), Ok(relay));
        // The relay answers; the original destination comes back.
        let back = view(&mut b, ([198, 51, 100, 25], 25), (C, 40000), "ack");
        assert_eq!(ct.inbound(&back, t0), Some("203.0.113.25:25".parse().unwrap()));
        // Someone else pretending to be the relay for that flow gets nothing.
        assert_eq!(ct.inbound(&view(&mut b, ([198, 51, 100, 26], 25), (C, 40000), "ack"), t0), None);
        // Another destination from the same port collides.
        let other = view(&mut b, (C, 40000), ([203, 0, 113, 26], 25), "syn");
        assert_eq!(ct.outbound(&other, relay, t0), Err(CtError::Collision));
        // FIN closes; after the closing timeout the flow is gone.
        ct.outbound(&view(&mut b, (C, 40000), (MX, 25), "fin"), relay, t0).unwrap();
        let later = t0 + CLOSING_TIMEOUT + Duration::from_secs(1);
        assert_eq!(ct.inbound(&back_view(&mut b), later), None);
    }

    fn back_view(b: &mut Vec<u8>) -> PacketView {
        view(b, ([198, 51, 100, 25], 25), (C, 40000), "ack")
    }

    #[test]
    fn only_the_relay_establishes_a_flow() {
        let mut ct = Conntrack::new(4, 4);
        let relay: SocketAddr = RELAY.parse().unwrap();
        let t0 = Instant::now();
        let mut b = Vec::new();
        ct.outbound(&view(&mut b, (C, 1), (MX, 25), "syn"), relay, t0).unwrap();
        // The subscriber's own ACKs neither establish nor refresh a half-open flow.
        for s in 1..=40 {
            let _ = ct.outbound(&view(&mut b, (C, 1), (MX, 25), "ack"), relay, t0 + Duration::from_secs(s));
        }
        let later = t0 + SYN_TIMEOUT + Duration::from_secs(1);
        assert!(ct.is_new(&view(&mut b, (C, 1), (MX, 25), "syn"), later), "expired despite the ACKs");
        // With the relay's SYN-ACK it is established and lives on traffic.
        ct.outbound(&view(&mut b, (C, 2), (MX, 25), "syn"), relay, t0).unwrap();
        let synack = {
            b = tcp("198.51.100.25", 25, &Ipv4Addr::from(C).to_string(), 2).window(1000).syn().ack(1).build();
            PacketView::parse(&b).unwrap()
        };
        assert!(ct.inbound(&synack, t0).is_some());
        let keep = t0 + Duration::from_secs(100);
        assert!(ct.outbound(&view(&mut b, (C, 2), (MX, 25), "ack"), relay, keep).is_ok());
        assert!(!ct.is_new(&view(&mut b, (C, 2), (MX, 25), "syn"), keep + SYN_TIMEOUT));
    }

    #[test]
    fn full_table_refuses_new_flows_until_some_expire() {
        let mut ct = Conntrack::new(4, 8);
        let relay: SocketAddr = RELAY.parse().unwrap();
        let t0 = Instant::now();
        let mut b = Vec::new();
        for port in 0..4 {
            assert!(ct.outbound(&view(&mut b, (C, 1000 + port), (MX, 25), "syn"), relay, t0).is_ok());
        }
        let fifth = view(&mut b, (C, 2000), (MX, 25), "syn");
        assert_eq!(ct.outbound(&fifth, relay, t0), Err(CtError::Full));
        // Established flows still work while full.
        assert!(ct.outbound(&view(&mut b, (C, 1000), (MX, 25), "ack"), relay, t0).is_ok());
        // Half-open flows expire; then there is room.
        let later = t0 + SYN_TIMEOUT + Duration::from_secs(1);
        let fifth = view(&mut b, (C, 2000), (MX, 25), "syn");
        assert!(ct.outbound(&fifth, relay, later).is_ok());
        assert!(ct.len() <= 4);
    }

    #[test]
    fn one_subscriber_holds_at_most_its_share() {
        let mut ct = Conntrack::new(16, 3);
        let relay: SocketAddr = RELAY.parse().unwrap();
        let t0 = Instant::now();
        let mut b = Vec::new();
        for port in 0..3 {
            assert!(ct.outbound(&view(&mut b, (C, 1000 + port), (MX, 25), "syn"), relay, t0).is_ok());
        }
        let fourth = view(&mut b, (C, 2000), (MX, 25), "syn");
        assert_eq!(ct.outbound(&fourth, relay, t0), Err(CtError::SourceFull));
        // A retransmitted SYN of a flow it holds is not a new flow.
        assert!(ct.outbound(&view(&mut b, (C, 1000), (MX, 25), "syn"), relay, t0).is_ok());
        // Another subscriber is not affected.
        assert!(ct.outbound(&view(&mut b, ([100, 64, 1, 11], 2000), (MX, 25), "syn"), relay, t0).is_ok());
        assert_eq!((ct.flows_of(C.into()), ct.len()), (3, 4));
        // Once its half-open flows expire, the subscriber gets its share back.
        let later = t0 + SYN_TIMEOUT + Duration::from_secs(1);
        let fourth = view(&mut b, (C, 2000), (MX, 25), "syn");
        assert!(ct.outbound(&fourth, relay, later).is_ok());
        assert_eq!(ct.flows_of(C.into()), 1);
    }
}
