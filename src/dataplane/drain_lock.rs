//! A queue's drain lock: who reads a device queue now. Each queue has an
//! owning worker; the other direction's worker may peek at it after its own
//! drain when nobody drains it. A peek stops after the packet in hand once
//! the owner waits, so the owner never waits out a whole peek (up to
//! `PEEK_MAX` TCP super-packets, tens of microseconds each, kept it in a
//! `sched_yield` loop: docs/PERFORMANCE.md, "Per packet and per wake-up").

use std::sync::atomic::{AtomicBool, Ordering};

/// The lock of one device queue.
#[derive(Debug, Default)]
pub struct DrainLock {
    draining: AtomicBool,
    /// The owner waits for the lock: a peeking worker stops after its
    /// current packet.
    wanted: AtomicBool,
}

impl DrainLock {
    /// Takes the lock if nobody drains the queue (a peek).
    pub fn try_lock(&self) -> bool {
        !self.draining.swap(true, Ordering::Acquire)
    }

    /// Takes the lock for the queue's owner, waiting for a peeking worker
    /// to let go (it stops after the packet in hand).
    pub fn lock(&self) {
        if self.try_lock() {
            return;
        }
        self.wanted.store(true, Ordering::Relaxed);
        // Read before trying: a swap writes the line the peek reads `wanted` from.
        while self.draining.load(Ordering::Relaxed) || !self.try_lock() {
            std::thread::yield_now();
        }
        self.wanted.store(false, Ordering::Relaxed);
    }

    /// Whether the owner waits for this queue (a peek lets go at once).
    pub fn wanted(&self) -> bool {
        self.wanted.load(Ordering::Relaxed)
    }

    /// Lets go of the queue.
    pub fn unlock(&self) {
        self.draining.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::DrainLock;

    #[test]
    fn one_holder_at_a_time() {
        let l = DrainLock::default();
        assert!(l.try_lock());
        assert!(!l.try_lock(), "held");
        assert!(!l.wanted());
        l.unlock();
        l.lock();
        assert!(!l.try_lock(), "held by the owner");
        l.unlock();
        assert!(l.try_lock());
    }

    #[test]
    fn the_owner_waits_and_says_so() {
        let l = std::sync::Arc::new(DrainLock::default());
        assert!(l.try_lock(), "a peek holds it");
        let owner = std::thread::spawn({
            let l = l.clone();
            move || {
                l.lock();
                l.unlock();
            }
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !l.wanted() {
            assert!(std::time::Instant::now() < deadline, "the owner never said it waits");
            std::thread::yield_now();
        }
        l.unlock();
        owner.join().unwrap();
        assert!(!l.wanted(), "the owner took it and cleared its wish");
    }
}
