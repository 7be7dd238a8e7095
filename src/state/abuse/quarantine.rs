//! The quarantine set: who is held, until when; read lock-free on the
//! packet path.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;

use super::DEFAULT_TRACK;
use crate::state::subscriber_key;

/// Why a quarantine was not started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuarantineRefused {
    /// The set holds its most entries.
    Full,
}

/// The subscribers in quarantine, each until a deadline. Bounded: at most
/// `capacity` at once (a forger that gets many addresses suspected cannot
/// grow it without end).
#[derive(Debug)]
pub struct Quarantine {
    /// Entries in `set`: the packet path's test while nobody is quarantined.
    count: AtomicUsize,
    set: ArcSwap<HashMap<u64, Instant>>,
    /// Serialises writers (a copy of the set is published per change).
    write: Mutex<()>,
    capacity: usize,
}

impl Default for Quarantine {
    fn default() -> Self {
        Quarantine::new(DEFAULT_TRACK)
    }
}

impl Quarantine {
    /// An empty set of at most `capacity` subscribers.
    pub fn new(capacity: usize) -> Quarantine {
        Quarantine {
            count: AtomicUsize::new(0),
            set: ArcSwap::from_pointee(HashMap::new()),
            write: Mutex::new(()),
            capacity: capacity.max(1),
        }
    }

    /// Whether `addr`'s subscriber is in quarantine at `now` (the packet
    /// path: one atomic load while nobody is).
    #[inline]
    pub fn holds(&self, addr: IpAddr, now: Instant) -> bool {
        if self.count.load(Ordering::Relaxed) == 0 {
            return false;
        }
        self.holds_slow(addr, now)
    }

    #[cold]
    fn holds_slow(&self, addr: IpAddr, now: Instant) -> bool {
        self.set.load().get(&subscriber_key(addr)).is_some_and(|until| now < *until)
    }

    /// Subscribers in quarantine (some may have expired and await [`Quarantine::expire`]).
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Whether nobody is in quarantine.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// When `key`'s quarantine ends, if it is in one.
    pub fn until(&self, key: u64) -> Option<Instant> {
        self.set.load().get(&key).copied()
    }

    /// Every subscriber in quarantine with its deadline.
    pub fn list(&self) -> Vec<(u64, Instant)> {
        let mut v: Vec<(u64, Instant)> = self.set.load().iter().map(|(k, u)| (*k, *u)).collect();
        v.sort_unstable_by_key(|(_, u)| *u);
        v
    }

    fn change<R>(&self, f: impl FnOnce(&mut HashMap<u64, Instant>) -> R) -> R {
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = HashMap::clone(&self.set.load());
        let r = f(&mut next);
        let n = next.len();
        self.set.store(Arc::new(next));
        self.count.store(n, Ordering::Relaxed);
        r
    }

    /// Puts `key` in quarantine until `until` (a subscriber already in one
    /// gets the later deadline). True when it was not in quarantine before.
    pub fn start(&self, key: u64, until: Instant) -> Result<bool, QuarantineRefused> {
        self.change(|set| {
            if let Some(u) = set.get_mut(&key) {
                *u = (*u).max(until);
                return Ok(false);
            }
            if set.len() >= self.capacity {
                return Err(QuarantineRefused::Full);
            }
            set.insert(key, until);
            Ok(true)
        })
    }

    /// Ends `key`'s quarantine now; true when it was in one.
    pub fn release(&self, key: u64) -> bool {
        if self.until(key).is_none() {
            return false;
        }
        self.change(|set| set.remove(&key).is_some())
    }

    /// Removes the quarantines that ended by `now` and returns their keys.
    pub fn expire(&self, now: Instant) -> Vec<u64> {
        if !self.set.load().values().any(|u| *u <= now) {
            return Vec::new();
        }
        self.change(|set| {
            let ended: Vec<u64> = set.iter().filter(|(_, u)| **u <= now).map(|(k, _)| *k).collect();
            for k in &ended {
                set.remove(k);
            }
            ended
        })
    }
}
