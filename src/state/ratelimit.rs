//! Per-source token buckets in a table of fixed size. A source is an IPv4
//! address or an IPv6 /64.
//!
//! Memory is bounded by construction: the table has [`SETS`] x [`WAYS`]
//! entries, allocated once. A source hashes (aHash with a per-process random
//! key, so nobody can aim at one set) to a set of four entries; a new source
//! takes a free entry or evicts the least recently seen one. A flood of random
//! sources therefore costs nothing extra in memory; its only effect is to evict
//! idle sources, whose buckets restart full, which is what an idle source's
//! bucket would be anyway. A busy source is refreshed on every packet, so
//! evicting it takes more distinct sources in its set than the flood can send
//! between two of its packets.

use ahash::RandomState;
use std::net::IpAddr;
use std::time::Instant;

use super::subscriber_key;
use crate::policy::Limit;

/// Number of sets. A fuzz build (`cfg(fuzzing)`) builds a State per input
/// of a few packets: 4 sets there, the same code.
#[cfg(not(fuzzing))]
pub const SETS: usize = 4096;
/// Number of sets in a fuzz build.
#[cfg(fuzzing)]
pub const SETS: usize = 4;
/// Entries per set.
pub const WAYS: usize = 4;

#[derive(Debug, Clone, Copy)]
struct Entry {
    key: u64,
    /// Saved credit in nanoseconds of refill; one token costs `cost_ns`.
    credit: u64,
    /// When the bucket was last refilled; `None` for a free entry.
    last: Option<Instant>,
}

/// Token buckets keyed by source address, bounded in memory.
#[derive(Debug)]
pub struct RateLimiter {
    cost_ns: u64,
    cap_ns: u64,
    hasher: RandomState,
    table: Box<[Entry]>,
}

impl RateLimiter {
    /// A limiter with an empty table of fixed size.
    pub fn new(limit: Limit) -> RateLimiter {
        let cost_ns = 1_000_000_000 / u64::from(limit.rate.max(1));
        let cap_ns = cost_ns.saturating_mul(u64::from(limit.burst.max(1)));
        let empty = Entry { key: 0, credit: 0, last: None };
        RateLimiter { cost_ns, cap_ns, hasher: RandomState::new(), table: vec![empty; SETS * WAYS].into_boxed_slice() }
    }

    /// Takes one token for `src` at `now`; false when its bucket is empty.
    pub fn allow(&mut self, src: IpAddr, now: Instant) -> bool {
        let key = subscriber_key(src);
        let set = (self.hasher.hash_one(key) as usize) % SETS;
        let ways = &mut self.table[set * WAYS..(set + 1) * WAYS];
        let idx = match ways.iter().position(|e| e.last.is_some() && e.key == key) {
            Some(i) => i,
            None => {
                let i = ways
                    .iter()
                    .position(|e| e.last.is_none())
                    .unwrap_or_else(|| (0..WAYS).min_by_key(|&i| ways[i].last).unwrap_or(0));
                ways[i] = Entry { key, credit: self.cap_ns, last: Some(now) };
                i
            }
        };
        let e = &mut ways[idx];
        let last = e.last.unwrap_or(now);
        let elapsed = now.saturating_duration_since(last).as_nanos();
        e.credit = (u128::from(e.credit) + elapsed).min(u128::from(self.cap_ns)) as u64;
        // Workers' clocks may interleave slightly out of order: never move back.
        e.last = Some(last.max(now));
        if e.credit >= self.cost_ns {
            e.credit -= self.cost_ns;
            true
        } else {
            false
        }
    }

    /// Sources currently tracked (at most `SETS * WAYS`).
    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        self.table.iter().filter(|e| e.last.is_some()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_rate() {
        let mut l = RateLimiter::new(Limit { rate: 10, burst: 5 });
        let t0 = Instant::now();
        let src: IpAddr = "100.64.1.10".parse().unwrap();
        let allowed = (0..20).filter(|_| l.allow(src, t0)).count();
        assert_eq!(allowed, 5, "the burst");
        // One second later: 10 more tokens, capped at the burst of 5.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..20).filter(|_| l.allow(src, t1)).count(), 5);
        // 100 ms later: exactly one token.
        let t2 = t1 + Duration::from_millis(100);
        assert_eq!((0..20).filter(|_| l.allow(src, t2)).count(), 1);
        // Another source has its own bucket.
        let other: IpAddr = "2001:db8:100::10".parse().unwrap();
        assert!(l.allow(other, t2));
    }

    #[test]
    fn over_ten_seconds_at_most_burst_plus_rate_times_seconds() {
        let mut l = RateLimiter::new(Limit { rate: 100, burst: 20 });
        let t0 = Instant::now();
        let src: IpAddr = "100.64.1.10".parse().unwrap();
        let mut allowed = 0;
        for ms in 0..10_000u64 {
            for _ in 0..10 {
                allowed += u64::from(l.allow(src, t0 + Duration::from_millis(ms)));
            }
        }
        assert!(allowed <= 20 + 100 * 10, "{allowed}");
        assert!(allowed >= 100 * 10, "{allowed}");
    }

    #[test]
    fn an_ipv6_64_is_one_source() {
        let mut l = RateLimiter::new(Limit { rate: 1, burst: 3 });
        let now = Instant::now();
        let allowed = (0..100u16).filter(|i| l.allow(format!("2001:db8:100:1::{i:x}").parse().unwrap(), now)).count();
        assert_eq!(allowed, 3);
        assert!(l.allow("2001:db8:100:2::1".parse().unwrap(), now), "another /64");
    }

    /// A flood of forged sources evicts idle buckets only: a source seen
    /// between every 50 of them keeps its (empty) bucket through 200,000,
    /// so the flood cannot reset its limit. Eviction needs four new sources
    /// in its set of four between two of its packets, which a keyed hash
    /// leaves to chance (here about 1 in 10^9 per gap).
    #[test]
    fn a_flood_of_sources_does_not_reset_a_busy_sources_bucket() {
        let mut l = RateLimiter::new(Limit { rate: 1, burst: 5 });
        let t0 = Instant::now();
        let busy: IpAddr = "100.64.1.10".parse().unwrap();
        let mut allowed = 0;
        for i in 0..200_000u32 {
            // 200,000 sources in a fifth of a second: the busy bucket
            // refills by a fifth of a token meanwhile.
            let now = t0 + Duration::from_micros(u64::from(i));
            if i % 50 == 0 {
                allowed += u32::from(l.allow(busy, now));
            }
            l.allow(IpAddr::V4((0x6450_0000 + i).into()), now);
        }
        assert_eq!(allowed, 5, "the burst, once");
        assert!(l.tracked() <= SETS * WAYS);
    }

    #[test]
    fn memory_is_bounded_under_a_flood_of_sources() {
        let mut l = RateLimiter::new(Limit { rate: 1, burst: 1 });
        let now = Instant::now();
        for i in 0..200_000u32 {
            l.allow(IpAddr::V4(i.into()), now);
        }
        assert!(l.tracked() <= SETS * WAYS);
    }
}
