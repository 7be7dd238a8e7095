//! Connection attempts: which blocked SYNs are retransmissions of one
//! already seen. A client whose SYN goes unanswered (`action = "drop"`, a
//! reply over the reply limit) sends it again with the same 4-tuple, six
//! times by default (`tcp_syn_retries`): Linux since 6.5 after 1, 2, 3, 4, 5
//! and 7 s (`tcp_syn_linear_timeouts` = 4), before that after 1, 3, 7, 15,
//! 31 and 63 s. Seven packets, one connection attempt. Events, abuse tracking and the
//! `*_connections` counters count attempts; the packet counters go on
//! counting packets. A retransmission carries its SYN's sequence number;
//! a new `connect()` that happens to reuse the source port (the kernel may
//! hand it out again at once after a refused attempt: no TIME_WAIT) starts
//! from a new one, so the sequence number is part of what identifies an
//! attempt.
//!
//! The table is fixed-size ([`SLOTS`] atomic words, allocated once) and
//! consulted only on the blocked path (and `monitor`'s would-be blocks):
//! the forwarding path never touches it, and nothing allocates. A 4-tuple
//! and its SYN's sequence number hash (aHash, keyed per process so nobody
//! can aim at a slot) to one
//! slot, which holds a 31-bit tag of the hash and when the attempt started
//! (whole seconds, wrapping after 136 years). No lock: workers load and store the word; two
//! workers racing on one tuple at the same instant at worst count it twice.
//!
//! Bounded by construction: a flood of forged tuples only overwrites
//! slots, and the retransmission of an attempt whose slot was taken counts
//! as one more attempt (what every SYN counted before); two tuples whose
//! slot and tag agree (1 in 2^31 per overwrite) would count one attempt
//! too few.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ahash::RandomState;

/// Slots in the table (a power of two): 512 KiB. A fuzz build
/// (`cfg(fuzzing)`) builds a State per input of a few packets: 64 slots
/// there, the same code.
#[cfg(not(fuzzing))]
pub const SLOTS: usize = 65_536;
/// Slots in the table of a fuzz build.
#[cfg(fuzzing)]
pub const SLOTS: usize = 64;

/// How long after an attempt's first SYN a SYN of the same 4-tuple is one
/// of its retransmissions. The slowest default schedule, Linux's before 6.5,
/// sends the last of six retransmissions 63 s after the first SYN; its
/// retransmission timer may fire up to an eighth late (timer-wheel
/// granularity), which 75 s covers. Linux since 6.5 (7 s), macOS (35 s) and
/// Windows (9 s) end well within it. A new `connect()` takes a new source
/// port, and so counts anew at once; one reusing the port counts anew after
/// the window.
pub const RETRY_WINDOW: Duration = Duration::from_secs(75);

const WINDOW_SECS: i64 = RETRY_WINDOW.as_secs() as i64;

/// Recently seen blocked connection attempts, by 4-tuple.
#[derive(Debug)]
pub struct Attempts {
    hasher: RandomState,
    /// The clock's origin, the first `now` the table is given (no clock
    /// reads here): slot times are whole seconds since then.
    epoch: OnceLock<Instant>,
    slots: Box<[AtomicU64]>,
}

impl Default for Attempts {
    fn default() -> Attempts {
        Attempts::new()
    }
}

impl Attempts {
    /// An empty table.
    pub fn new() -> Attempts {
        Attempts {
            hasher: RandomState::new(),
            epoch: OnceLock::new(),
            slots: std::iter::repeat_with(AtomicU64::default).take(SLOTS).collect(),
        }
    }

    /// Notes a SYN from `src` to `dst` with sequence number `seq` at `now`:
    /// true when it starts a connection attempt, false when it is a
    /// retransmission of one that started less than [`RETRY_WINDOW`] before.
    #[inline(always)]
    pub fn first(&self, (src, sport): (IpAddr, u16), (dst, dport): (IpAddr, u16), seq: u32, now: Instant) -> bool {
        let ports_seq = u64::from(sport) << 48 | u64::from(dport) << 32 | u64::from(seq);
        let h = self.hasher.hash_one((wide(src), wide(dst), ports_seq));
        let slot = &self.slots[h as usize & (SLOTS - 1)];
        // The tag comes from bits the index does not use; never 0 (an empty slot).
        let tag = (h >> 32) | 1;
        // A worker's `now` a little before the first one counts as the first.
        let since = now.saturating_duration_since(*self.epoch.get_or_init(|| now));
        let secs = since.as_secs() as u32;
        let old = slot.load(Ordering::Relaxed);
        if old >> 32 == tag {
            // Workers' clocks may interleave slightly out of order: the
            // distance either way, in wrapping seconds (so the window is
            // RETRY_WINDOW give or take a second).
            let age = i64::from(secs.wrapping_sub(old as u32) as i32);
            if age.abs() < WINDOW_SECS {
                return false;
            }
        }
        slot.store(tag << 32 | u64::from(secs), Ordering::Relaxed);
        true
    }

    /// Slots in use (tests: the table never grows).
    pub fn occupied(&self) -> usize {
        self.slots.iter().filter(|s| s.load(Ordering::Relaxed) != 0).count()
    }

    /// The table's size in slots.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }
}

/// An address as 128 bits (IPv4 as IPv4-mapped IPv6): three words to hash
/// for a tuple rather than an enum and two byte arrays each.
#[inline]
fn wide(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
        IpAddr::V6(a) => u128::from(a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(100, 64, 1, 10));
    const MX: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 25));
    const SEQ: u32 = 0x1234_5678;

    #[test]
    fn retransmissions_within_the_window_are_one_attempt() {
        let t0 = Instant::now();
        let a = Attempts::new();
        assert!(a.first((A, 40000), (MX, 25), SEQ, t0));
        for s in [1, 3, 7, 15, 31, 63, 74] {
            assert!(!a.first((A, 40000), (MX, 25), SEQ, t0 + Duration::from_secs(s)), "retransmission at {s} s");
        }
        assert!(a.first((A, 40000), (MX, 25), SEQ, t0 + RETRY_WINDOW), "the window is over");
        assert!(!a.first((A, 40000), (MX, 25), SEQ, t0 + RETRY_WINDOW + Duration::from_secs(1)));
    }

    #[test]
    fn another_port_or_destination_is_another_attempt() {
        let t0 = Instant::now();
        let a = Attempts::new();
        assert!(a.first((A, 40000), (MX, 25), SEQ, t0));
        assert!(a.first((A, 40001), (MX, 25), SEQ, t0));
        assert!(a.first((A, 40000), (MX, 587), SEQ, t0));
        let other: IpAddr = "203.0.113.26".parse().unwrap_or(MX);
        assert!(a.first((A, 40000), (other, 25), SEQ, t0));
        assert!(!a.first((A, 40001), (MX, 25), SEQ, t0));
    }

    #[test]
    fn a_new_connect_on_the_same_port_is_another_attempt() {
        let t0 = Instant::now();
        let a = Attempts::new();
        assert!(a.first((A, 40000), (MX, 25), SEQ, t0));
        // Refused at once, the kernel may give the next connect() the same
        // port: its SYN starts from another sequence number.
        let t1 = t0 + Duration::from_millis(2);
        assert!(a.first((A, 40000), (MX, 25), SEQ ^ 0x8000_0001, t1));
        assert!(!a.first((A, 40000), (MX, 25), SEQ ^ 0x8000_0001, t1 + Duration::from_secs(1)));
    }

    #[test]
    fn a_clock_slightly_behind_still_sees_the_attempt() {
        let t0 = Instant::now();
        let a = Attempts::new();
        let later = t0 + Duration::from_secs(10);
        assert!(a.first((A, 40000), (MX, 25), SEQ, later));
        assert!(!a.first((A, 40000), (MX, 25), SEQ, later - Duration::from_millis(3)));
    }

    #[test]
    fn a_flood_of_tuples_stays_in_the_table() {
        let t0 = Instant::now();
        let a = Attempts::new();
        let mut new = 0;
        for i in 0..4 * SLOTS as u32 {
            let src = IpAddr::V4(std::net::Ipv4Addr::from(0x6440_0000 | (i >> 16)));
            if a.first((src, i as u16), (MX, 25), SEQ, t0) {
                new += 1;
            }
        }
        // Every distinct tuple is an attempt (but for a tag collision, 1 in 2^31 a tuple).
        assert!(new > 4 * SLOTS - 4, "{new} attempts of {} tuples", 4 * SLOTS);
        assert_eq!(a.capacity(), SLOTS);
        assert!(a.occupied() <= SLOTS);
    }
}
