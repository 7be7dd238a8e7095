//! The events stream (`GET /v1/events`, `op25b events --follow`): the
//! events writer's lines, after its per-subscriber sampling, published to
//! whoever follows on the control socket, as newline-delimited JSON.
//!
//! Bounded: the writer publishes into a broadcast channel of [`CAPACITY`]
//! lines and never waits; a follower that falls further behind loses the
//! oldest lines and is told how many (`{"event":"lagged","missed":N}`), and
//! the misses are counted. Nothing a follower does reaches the writer or
//! the data plane.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::broadcast;

/// Lines the channel holds for the slowest follower.
pub const CAPACITY: usize = 1024;

/// The publishing end, shared by the events writer and the control socket.
#[derive(Clone, Debug)]
pub struct EventStream {
    tx: broadcast::Sender<Arc<str>>,
    /// Lines followers missed because they fell behind, in total.
    missed: Arc<AtomicU64>,
}

impl Default for EventStream {
    fn default() -> Self {
        EventStream::new()
    }
}

impl EventStream {
    /// A stream nobody follows yet.
    pub fn new() -> EventStream {
        let (tx, _) = broadcast::channel(CAPACITY);
        EventStream { tx, missed: Arc::new(AtomicU64::new(0)) }
    }

    /// Whether anyone follows (the writer formats lines for nobody otherwise).
    pub fn followed(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    /// Publishes one JSON line (without its newline); never waits.
    pub fn publish(&self, line: &str) {
        if self.followed() {
            // An error means the last follower just left: nothing to do.
            let _ = self.tx.send(Arc::from(line));
        }
    }

    /// How many follow now.
    pub fn followers(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Lines followers missed, in total.
    pub fn missed(&self) -> u64 {
        self.missed.load(Ordering::Relaxed)
    }

    /// A new follower: it sees what is published from now on.
    pub fn follow(&self) -> Follower {
        Follower { rx: self.tx.subscribe(), missed: Arc::clone(&self.missed) }
    }
}

/// One follower's end.
#[derive(Debug)]
pub struct Follower {
    rx: broadcast::Receiver<Arc<str>>,
    missed: Arc<AtomicU64>,
}

impl Follower {
    /// The next line with its newline, a `lagged` line when lines were
    /// lost, or `None` when the stream has ended (op25b stops).
    pub async fn next(&mut self) -> Option<String> {
        match self.rx.recv().await {
            Ok(line) => Some(format!("{line}\n")),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                self.missed.fetch_add(n, Ordering::Relaxed);
                tracing::debug!(missed = n, "events stream: a follower fell behind");
                Some(format!("{}\n", serde_json::json!({"event": "lagged", "missed": n})))
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread().build().expect("runtime").block_on(f)
    }

    #[test]
    fn a_follower_sees_lines_published_after_it_came() {
        let s = EventStream::new();
        s.publish("{\"before\":1}");
        assert!(!s.followed());
        let mut f = s.follow();
        s.publish("{\"a\":1}");
        assert_eq!(block_on(f.next()).as_deref(), Some("{\"a\":1}\n"));
        drop(s);
        assert_eq!(block_on(f.next()), None, "the stream ended");
    }

    #[test]
    fn a_slow_follower_is_told_what_it_missed_and_the_publisher_never_waits() {
        let s = EventStream::new();
        let mut slow = s.follow();
        for i in 0..CAPACITY + 10 {
            s.publish(&format!("{{\"n\":{i}}}"));
        }
        let first = block_on(slow.next()).expect("a line");
        let v: serde_json::Value = serde_json::from_str(&first).expect("JSON");
        assert_eq!((v["event"].as_str(), v["missed"].as_u64()), (Some("lagged"), Some(10)));
        assert_eq!(s.missed(), 10);
        // Then the oldest line still held.
        assert_eq!(block_on(slow.next()).as_deref(), Some("{\"n\":10}\n"));
    }
}
