//! The heavy-hitters table of subscribers whose connections OP25B blocked.
//!
//! Space-Saving (Metwally, Agrawal, El Abbadi 2005) over a fixed number of
//! entries: a subscriber already in the table counts up; a new one takes a
//! free entry, or, when the table is full, the entry with the smallest count,
//! inheriting that count (recorded as its possible overestimate, `error`).
//! Every subscriber with more than `1/track` of all attempts is guaranteed an
//! entry, and a flood of single attempts from random (forged) sources only
//! churns the entries at the bottom: it cannot push out a subscriber whose
//! count is above theirs, and it allocates nothing (the entries, the index
//! and the min-heap are sized once).
//!
//! Per entry, besides the Space-Saving count: attempts and distinct
//! destinations in the subscriber's current window, a distinct-destination
//! estimate over its whole life, first and last seen, and a few sample
//! destinations. The window is *fixed* and per subscriber: it opens at the
//! subscriber's first attempt and covers `window` from there; the next
//! attempt at or after its end opens the next one. Counts in a window are
//! exact for a subscriber that held its entry through the window.
//!
//! Distinct destinations in a window: exact up to [`EXACT_DESTINATIONS`]
//! (as 64-bit keyed hashes), then a linear-counting estimate over a 512-bit
//! bitmap (good to a few per cent up to about a thousand). Over the whole
//! life: a 64-register HyperLogLog (about 13 % error).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Distinct destinations a window counts exactly.
pub const EXACT_DESTINATIONS: usize = 16;
/// Sample destinations kept per window (the first distinct ones).
pub const SAMPLES: usize = 4;

const BITMAP_WORDS: usize = 8;
const BITMAP_BITS: f64 = (BITMAP_WORDS * 64) as f64;
const HLL_REGISTERS: usize = 64;

/// What makes a subscriber suspected, in one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// The window's length.
    pub window: Duration,
    /// Blocked attempts in a window.
    pub attempts: u32,
    /// Distinct destinations in a window.
    pub destinations: u32,
}

/// A subscriber that just crossed a threshold (once per window).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suspicion {
    /// The subscriber key ([`crate::state::subscriber_key`]).
    pub key: u64,
    /// Attempts in the window so far.
    pub attempts: u32,
    /// Distinct destinations in the window so far.
    pub destinations: u32,
    /// A few of the destinations.
    pub samples: Vec<IpAddr>,
}

/// One subscriber as the table shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The subscriber key.
    pub key: u64,
    /// Attempts in the current window (0 once it has ended).
    pub attempts: u32,
    /// Attempts since it entered the table, plus `error`.
    pub total: u64,
    /// How much of `total` may belong to subscribers it replaced.
    pub error: u64,
    /// Distinct destinations in the current window (0 once it has ended).
    pub destinations: u32,
    /// Distinct destinations since it entered the table (estimate).
    pub total_destinations: u64,
    /// First attempt since it entered the table.
    pub first_seen: Instant,
    /// Last attempt.
    pub last_seen: Instant,
    /// When it last crossed a threshold.
    pub suspected_at: Option<Instant>,
    /// Sample destinations of the current window.
    pub samples: Vec<IpAddr>,
}

#[derive(Debug, Clone)]
struct Slot {
    key: u64,
    total: u64,
    error: u64,
    first_seen: Instant,
    last_seen: Instant,
    win_start: Instant,
    win_attempts: u32,
    /// Distinct destination hashes of the window, exact while fewer than EXACT_DESTINATIONS.
    exact: [u64; EXACT_DESTINATIONS],
    exact_len: u8,
    /// Linear-counting bitmap of the window's destinations.
    bitmap: [u64; BITMAP_WORDS],
    /// HyperLogLog registers over the whole life.
    hll: [u8; HLL_REGISTERS],
    samples: [Option<IpAddr>; SAMPLES],
    suspected_at: Option<Instant>,
    /// The window (by its start) whose crossing was reported.
    reported: Option<Instant>,
}

impl Slot {
    fn new(key: u64, now: Instant, inherited: u64) -> Slot {
        Slot {
            key,
            total: inherited,
            error: inherited,
            first_seen: now,
            last_seen: now,
            win_start: now,
            win_attempts: 0,
            exact: [0; EXACT_DESTINATIONS],
            exact_len: 0,
            bitmap: [0; BITMAP_WORDS],
            hll: [0; HLL_REGISTERS],
            samples: [None; SAMPLES],
            suspected_at: None,
            reported: None,
        }
    }

    fn open_window(&mut self, now: Instant) {
        self.win_start = now;
        self.win_attempts = 0;
        self.exact_len = 0;
        self.bitmap = [0; BITMAP_WORDS];
        self.samples = [None; SAMPLES];
    }

    fn in_window(&self, now: Instant, window: Duration) -> bool {
        now < self.win_start + window
    }

    /// Adds a destination (by its hash) to the window and the life counts.
    fn add_destination(&mut self, dst: IpAddr, h: u64) {
        let bit = (h % (BITMAP_WORDS as u64 * 64)) as usize;
        self.bitmap[bit / 64] |= 1 << (bit % 64);
        let n = usize::from(self.exact_len);
        if n <= EXACT_DESTINATIONS && !self.exact[..n.min(EXACT_DESTINATIONS)].contains(&h) {
            if n < EXACT_DESTINATIONS {
                self.exact[n] = h;
                if let Some(s) = self.samples.iter_mut().find(|s| s.is_none()) {
                    *s = Some(dst);
                }
            }
            // One past the exact list marks it overflowed.
            self.exact_len += 1;
        }
        // HyperLogLog: the register from the low bits, the rank from the rest.
        let reg = (h as usize) % HLL_REGISTERS;
        let rank = ((h >> 6) | (1 << 57)).trailing_zeros() as u8 + 1;
        if rank > self.hll[reg] {
            self.hll[reg] = rank;
        }
    }

    fn window_destinations(&self) -> u32 {
        let n = usize::from(self.exact_len);
        if n <= EXACT_DESTINATIONS {
            return n as u32;
        }
        let zeros: u32 = self.bitmap.iter().map(|w| w.count_zeros()).sum();
        let estimate = if zeros == 0 {
            // Saturated: the most linear counting can say.
            BITMAP_BITS * BITMAP_BITS.ln()
        } else {
            -BITMAP_BITS * (f64::from(zeros) / BITMAP_BITS).ln()
        };
        (estimate.round() as u32).max(EXACT_DESTINATIONS as u32 + 1)
    }

    fn life_destinations(&self) -> u64 {
        let m = HLL_REGISTERS as f64;
        let sum: f64 = self.hll.iter().map(|&r| (-f64::from(r)).exp2()).sum();
        let raw = 0.709 * m * m / sum;
        let zeros = self.hll.iter().filter(|&&r| r == 0).count();
        let e = if raw <= 2.5 * m && zeros > 0 { m * (m / zeros as f64).ln() } else { raw };
        e.round() as u64
    }
}

/// The table.
#[derive(Debug)]
pub struct Tracker {
    capacity: usize,
    slots: Vec<Slot>,
    index: HashMap<u64, u32, ahash::RandomState>,
    /// Slot numbers as a min-heap by `total`.
    heap: Vec<u32>,
    /// Slot number -> position in `heap`.
    pos: Vec<u32>,
    hasher: ahash::RandomState,
    /// The keys of `hasher`: saved with the table, so that the destination
    /// hashes it holds stay valid in the next run.
    seeds: [u64; 4],
    /// Entries taken over from another subscriber.
    replaced: u64,
}

impl Tracker {
    /// A table of `capacity` subscribers (at least 1), allocated now.
    pub fn new(capacity: usize) -> Tracker {
        Tracker::with_seeds(capacity, random_seeds())
    }

    /// A table whose destination hashes are keyed with `seeds`.
    fn with_seeds(capacity: usize, seeds: [u64; 4]) -> Tracker {
        let capacity = capacity.max(1);
        Tracker {
            capacity,
            slots: Vec::with_capacity(capacity),
            // Twice the entries: the churn of replaced entries leaves
            // tombstones, and at most half full the map cleans them up in
            // place instead of growing.
            index: HashMap::with_capacity_and_hasher(2 * capacity, ahash::RandomState::new()),
            heap: Vec::with_capacity(capacity),
            pos: Vec::with_capacity(capacity),
            hasher: ahash::RandomState::with_seeds(seeds[0], seeds[1], seeds[2], seeds[3]),
            seeds,
            replaced: 0,
        }
    }

    /// Most subscribers the table holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Subscribers in the table.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no attempt was recorded yet.
    #[cfg(any(test, feature = "testing"))]
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Entries that changed hands (a new subscriber took the smallest one).
    #[cfg(test)]
    pub fn replaced(&self) -> u64 {
        self.replaced
    }

    /// Records a blocked attempt of subscriber `key` to `dst` at `now`; the
    /// crossing, if this attempt is the one that crosses a threshold of
    /// `t` in the subscriber's window (once per window).
    pub fn record(&mut self, now: Instant, key: u64, dst: IpAddr, t: &Thresholds) -> Option<Suspicion> {
        let i = self.slot_of(key, now);
        let h = self.hasher.hash_one(dst);
        let slot = &mut self.slots[i];
        if !slot.in_window(now, t.window) {
            slot.open_window(now);
        }
        slot.win_attempts = slot.win_attempts.saturating_add(1);
        slot.total += 1;
        slot.last_seen = now;
        slot.add_destination(dst, h);
        let crossed = slot.reported != Some(slot.win_start)
            && (slot.win_attempts >= t.attempts || slot.window_destinations() >= t.destinations);
        let suspicion = crossed.then(|| {
            slot.reported = Some(slot.win_start);
            slot.suspected_at = Some(now);
            Suspicion {
                key,
                attempts: slot.win_attempts,
                destinations: slot.window_destinations(),
                samples: slot.samples.iter().flatten().copied().collect(),
            }
        });
        self.sift_down(self.pos[i] as usize);
        suspicion
    }

    /// The slot of `key`: its own, a free one, or the smallest one's.
    fn slot_of(&mut self, key: u64, now: Instant) -> usize {
        if let Some(&i) = self.index.get(&key) {
            return i as usize;
        }
        if self.slots.len() < self.capacity {
            let i = self.slots.len();
            self.slots.push(Slot::new(key, now, 0));
            self.heap.push(i as u32);
            self.pos.push(i as u32);
            self.index.insert(key, i as u32);
            self.sift_up(i);
            return i;
        }
        // Full: the smallest entry changes hands and keeps its count as error.
        let i = self.heap[0] as usize;
        let old = &self.slots[i];
        self.index.remove(&old.key);
        self.slots[i] = Slot::new(key, now, old.total);
        self.index.insert(key, i as u32);
        self.replaced += 1;
        i
    }

    fn sift_up(&mut self, mut at: usize) {
        while at > 0 {
            let parent = (at - 1) / 2;
            if self.total_at(at) >= self.total_at(parent) {
                break;
            }
            self.swap(at, parent);
            at = parent;
        }
    }

    fn sift_down(&mut self, mut at: usize) {
        let n = self.heap.len();
        loop {
            let (l, r) = (2 * at + 1, 2 * at + 2);
            let mut least = at;
            if l < n && self.total_at(l) < self.total_at(least) {
                least = l;
            }
            if r < n && self.total_at(r) < self.total_at(least) {
                least = r;
            }
            if least == at {
                break;
            }
            self.swap(at, least);
            at = least;
        }
    }

    fn total_at(&self, heap_pos: usize) -> u64 {
        self.slots[self.heap[heap_pos] as usize].total
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.pos[self.heap[a] as usize] = a as u32;
        self.pos[self.heap[b] as usize] = b as u32;
    }

    fn entry(&self, s: &Slot, now: Instant, window: Duration) -> Entry {
        let live = s.in_window(now, window);
        Entry {
            key: s.key,
            attempts: if live { s.win_attempts } else { 0 },
            total: s.total,
            error: s.error,
            destinations: if live { s.window_destinations() } else { 0 },
            total_destinations: s.life_destinations(),
            first_seen: s.first_seen,
            last_seen: s.last_seen,
            suspected_at: s.suspected_at,
            samples: if live { s.samples.iter().flatten().copied().collect() } else { Vec::new() },
        }
    }

    /// The subscriber `key`, if in the table.
    pub fn get(&self, key: u64, now: Instant, window: Duration) -> Option<Entry> {
        let &i = self.index.get(&key)?;
        Some(self.entry(&self.slots[i as usize], now, window))
    }

    /// The `n` heaviest subscribers at `now`: by attempts in the window (or
    /// distinct destinations in it, with `by_destinations`), then by total.
    pub fn top(&self, n: usize, now: Instant, window: Duration, by_destinations: bool) -> Vec<Entry> {
        let mut all: Vec<Entry> = self.slots.iter().map(|s| self.entry(s, now, window)).collect();
        if by_destinations {
            all.sort_unstable_by_key(|e| std::cmp::Reverse((e.destinations, e.total_destinations, e.total)));
        } else {
            all.sort_unstable_by_key(|e| std::cmp::Reverse((e.attempts, e.total)));
        }
        all.truncate(n);
        all
    }

    /// Subscribers that crossed a threshold less than one window before `now`.
    pub fn suspected(&self, now: Instant, window: Duration) -> usize {
        self.slots.iter().filter(|s| s.suspected_at.is_some_and(|at| now < at + window)).count()
    }
}

/// Keys no one outside the process can guess (std's per-process random
/// SipHash keys, spent on four counters).
fn random_seeds() -> [u64; 4] {
    use std::hash::BuildHasher;
    let s = std::collections::hash_map::RandomState::new();
    std::array::from_fn(|i| s.hash_one(i))
}

mod saved;
pub use saved::{Clocks, SavedTracker};

#[cfg(test)]
mod tests;
