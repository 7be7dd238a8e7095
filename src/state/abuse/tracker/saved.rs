//! The table as it is saved across a restart: every entry with its counts,
//! its window and its destination sketches, times as Unix seconds, and the
//! keys of the destination hash (so the sketches stay valid).
//!
//! What comes back from a file is untrusted: an entry that does not fit
//! (a subscriber that does not parse, sketches of the wrong size, a time that
//! is not a number) is left out, never a panic; at most `capacity` entries,
//! the heaviest, are taken.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{Slot, Tracker, BITMAP_WORDS, EXACT_DESTINATIONS, HLL_REGISTERS, SAMPLES};
use crate::state::abuse::{parse_subscriber, subscriber_name};

/// One subscriber of the table, saved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedEntry {
    /// The subscriber, as people write it.
    pub subscriber: String,
    /// Attempts since it entered the table, plus `error`.
    pub total: u64,
    /// How much of `total` may belong to subscribers it replaced.
    pub error: u64,
    /// First attempt (Unix seconds).
    pub first_seen: f64,
    /// Last attempt (Unix seconds).
    pub last_seen: f64,
    /// Start of its current window (Unix seconds).
    pub window_start: f64,
    /// Attempts in that window.
    pub window_attempts: u32,
    /// The window's distinct destinations as keyed hashes (at most 16).
    pub window_destinations: Vec<u64>,
    /// The window had more distinct destinations than it counts exactly.
    pub window_overflow: bool,
    /// The window's linear-counting bitmap.
    pub window_bitmap: Vec<u64>,
    /// The HyperLogLog registers of its whole life.
    pub life_registers: Vec<u8>,
    /// Sample destinations of the window.
    pub samples: Vec<IpAddr>,
    /// When it last crossed a threshold (Unix seconds).
    pub suspected_at: Option<f64>,
    /// Its crossing in the current window was reported.
    pub reported: bool,
}

/// The whole table, saved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedTracker {
    /// The keys of the destination hash.
    pub hash_keys: [u64; 4],
    /// The entries.
    pub entries: Vec<SavedEntry>,
}

impl Tracker {
    /// The table as saved; `unix` gives an instant's Unix seconds.
    pub fn save(&self, unix: &dyn Fn(Instant) -> f64) -> SavedTracker {
        let entries = self
            .slots
            .iter()
            .map(|s| {
                let exact = usize::from(s.exact_len).min(EXACT_DESTINATIONS);
                SavedEntry {
                    subscriber: subscriber_name(s.key),
                    total: s.total,
                    error: s.error,
                    first_seen: unix(s.first_seen),
                    last_seen: unix(s.last_seen),
                    window_start: unix(s.win_start),
                    window_attempts: s.win_attempts,
                    window_destinations: s.exact[..exact].to_vec(),
                    window_overflow: usize::from(s.exact_len) > EXACT_DESTINATIONS,
                    window_bitmap: s.bitmap.to_vec(),
                    life_registers: s.hll.to_vec(),
                    samples: s.samples.iter().flatten().copied().collect(),
                    suspected_at: s.suspected_at.map(unix),
                    reported: s.reported == Some(s.win_start),
                }
            })
            .collect();
        SavedTracker { hash_keys: self.seeds, entries }
    }

    /// A table of `capacity` holding what `saved` holds (the heaviest
    /// entries that fit); `instant` gives the instant of Unix seconds
    /// (`None` for one it cannot represent). Returns the table and how many
    /// entries were left out.
    pub fn restore(capacity: usize, saved: SavedTracker, instant: &dyn Fn(f64) -> Option<Instant>) -> (Tracker, usize) {
        let mut t = Tracker::with_seeds(capacity, saved.hash_keys);
        let mut entries = saved.entries;
        let offered = entries.len();
        entries.sort_by_key(|e| std::cmp::Reverse(e.total));
        for e in entries {
            if t.slots.len() >= t.capacity {
                break;
            }
            let Some(slot) = slot_of(&e, instant) else { continue };
            if t.index.contains_key(&slot.key) {
                continue;
            }
            let i = t.slots.len();
            t.index.insert(slot.key, i as u32);
            t.slots.push(slot);
            t.heap.push(i as u32);
            t.pos.push(i as u32);
            t.sift_up(i);
        }
        let kept = t.slots.len();
        (t, offered - kept)
    }
}

/// The slot of a saved entry, if it fits.
fn slot_of(e: &SavedEntry, instant: &dyn Fn(f64) -> Option<Instant>) -> Option<Slot> {
    let key = parse_subscriber(&e.subscriber)?;
    let at = |t: f64| if t.is_finite() { instant(t) } else { None };
    let (first_seen, last_seen, win_start) = (at(e.first_seen)?, at(e.last_seen)?, at(e.window_start)?);
    if e.window_destinations.len() > EXACT_DESTINATIONS
        || (e.window_overflow && e.window_destinations.len() != EXACT_DESTINATIONS)
        || e.samples.len() > SAMPLES
        || e.error > e.total
    {
        return None;
    }
    let mut slot = Slot::new(key, first_seen, 0);
    slot.total = e.total;
    slot.error = e.error;
    slot.last_seen = last_seen;
    slot.win_start = win_start;
    slot.win_attempts = e.window_attempts;
    slot.exact[..e.window_destinations.len()].copy_from_slice(&e.window_destinations);
    slot.exact_len = (e.window_destinations.len() + usize::from(e.window_overflow)) as u8;
    slot.bitmap = e.window_bitmap.as_slice().try_into().ok().unwrap_or([0; BITMAP_WORDS]);
    slot.hll = e.life_registers.as_slice().try_into().ok().unwrap_or([0; HLL_REGISTERS]);
    for (s, d) in slot.samples.iter_mut().zip(&e.samples) {
        *s = Some(*d);
    }
    slot.suspected_at = match e.suspected_at {
        Some(t) => Some(at(t)?),
        None => None,
    };
    slot.reported = e.reported.then_some(win_start);
    Some(slot)
}

/// Converts between instants and Unix seconds, from one reading of both clocks.
#[derive(Debug, Clone, Copy)]
pub struct Clocks {
    /// The instant of the reading.
    pub instant: Instant,
    /// Its Unix seconds.
    pub unix: f64,
}

impl Clocks {
    /// `t` as Unix seconds.
    pub fn unix_of(&self, t: Instant) -> f64 {
        match t.checked_duration_since(self.instant) {
            Some(after) => self.unix + after.as_secs_f64(),
            None => self.unix - self.instant.duration_since(t).as_secs_f64(),
        }
    }

    /// The instant of Unix seconds `t`: `None` before the monotonic clock
    /// can say (longer ago than the machine has been up).
    pub fn instant_of(&self, t: f64) -> Option<Instant> {
        let d = t - self.unix;
        if !d.is_finite() || d.abs() > 1e10 {
            return None;
        }
        if d >= 0.0 {
            self.instant.checked_add(Duration::from_secs_f64(d))
        } else {
            self.instant.checked_sub(Duration::from_secs_f64(-d))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::abuse::Thresholds;

    #[test]
    fn a_table_saved_and_restored_counts_on_where_it_stopped() {
        let t0 = Instant::now();
        let clocks = Clocks { instant: t0, unix: 1.8e9 };
        let th = Thresholds { window: Duration::from_secs(60), attempts: 30, destinations: 100 };
        let mut t = Tracker::new(16);
        let a = parse_subscriber("100.64.1.10").unwrap();
        let b = parse_subscriber("2001:db8:1:2::/64").unwrap();
        for i in 0..25u8 {
            let _ = t.record(t0, a, IpAddr::from([203, 0, 113, i]), &th);
        }
        let _ = t.record(t0, b, IpAddr::from([203, 0, 113, 1]), &th);
        let saved = t.save(&|i| clocks.unix_of(i));
        let text = serde_json::to_string(&saved).unwrap();
        let back: SavedTracker = serde_json::from_str(&text).unwrap();
        assert_eq!(back, saved);
        // The next run: its clocks read 10 s later.
        let t1 = t0 + Duration::from_secs(10);
        let later = Clocks { instant: t1, unix: 1.8e9 + 10.0 };
        let (mut r, left_out) = Tracker::restore(16, back, &|u| later.instant_of(u));
        assert_eq!(left_out, 0);
        assert_eq!(r.get(a, t1, th.window), t.get(a, t1, th.window));
        // Five more attempts to the same destinations cross the threshold,
        // counted as if there had been no restart (the hashes are the same).
        let go_on = |t: &mut Tracker| {
            for i in 0..4u8 {
                assert!(t.record(t1, a, IpAddr::from([203, 0, 113, i]), &th).is_none());
            }
            t.record(t1, a, IpAddr::from([203, 0, 113, 1]), &th).expect("the 30th attempt")
        };
        let (s, unbroken) = (go_on(&mut r), go_on(&mut t));
        assert_eq!(s, unbroken);
        assert_eq!(s.attempts, 30);
        // A smaller table keeps the heaviest; a broken entry is left out.
        let mut saved = t.save(&|i| clocks.unix_of(i));
        saved.entries.push(SavedEntry { subscriber: "nobody".into(), ..saved.entries[0].clone() });
        let (small, left_out) = Tracker::restore(1, saved, &|u| later.instant_of(u));
        assert_eq!((small.len(), left_out), (1, 2));
        assert!(small.get(a, t1, th.window).is_some());
    }
}
