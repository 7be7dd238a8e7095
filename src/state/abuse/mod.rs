//! Abuse handling's state: who OP25B keeps blocking ([`Tracker`], a
//! heavy-hitters table the control plane's abuse thread owns) and who is in
//! quarantine ([`Quarantine`], read by the router on every outbound packet
//! while anyone is).
//!
//! The packet path never touches the tracker: a worker hands each blocked
//! attempt to the abuse thread through a bounded queue, without waiting.
//! The quarantine set is read without a lock: one atomic load while nobody
//! is quarantined, and a lock-free snapshot (`ArcSwap`) otherwise; the rare
//! writers (the abuse thread, `op25b quarantine` and `op25b release`)
//! publish a new snapshot.

mod persist;
mod quarantine;
#[cfg(test)]
mod tests;
mod tracker;

pub use persist::{SavedAbuse, STATE_VERSION};
pub use quarantine::{Quarantine, QuarantineRefused};
pub use tracker::{Clocks, Entry, SavedTracker, Thresholds, Tracker};

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::subscriber_key;

/// What crossing a threshold does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnSuspect {
    /// Write an event (and a log line).
    Event,
    /// Write the event and quarantine the subscriber.
    Quarantine,
}

/// `[abuse]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbuseSettings {
    /// The window and the thresholds.
    pub thresholds: Thresholds,
    /// What crossing a threshold does.
    pub on_suspect: OnSuspect,
    /// How long a quarantine lasts unless released.
    pub quarantine_for: Duration,
    /// Subscribers the tracker holds.
    pub track: usize,
    /// Where the quarantines and the table are saved across restarts.
    pub state_file: Option<PathBuf>,
}

/// Default `abuse.track`.
pub const DEFAULT_TRACK: usize = 4096;

impl Default for AbuseSettings {
    fn default() -> Self {
        AbuseSettings {
            thresholds: Thresholds { window: Duration::from_secs(60), attempts: 30, destinations: 10 },
            on_suspect: OnSuspect::Event,
            quarantine_for: Duration::from_secs(15 * 60),
            track: DEFAULT_TRACK,
            state_file: None,
        }
    }
}

/// A subscriber key as people write it: the IPv4 address, or the IPv6 /64.
pub fn subscriber_name(key: u64) -> String {
    if key >> 32 == 0xffff_ffff {
        Ipv4Addr::from(key as u32).to_string()
    } else {
        format!("{}/64", Ipv6Addr::from(u128::from(key) << 64))
    }
}

/// The subscriber key of `text`: an IPv4 address, an IPv6 address (its /64),
/// or an IPv6 prefix of length 64 or more (its /64).
pub fn parse_subscriber(text: &str) -> Option<u64> {
    let text = text.trim();
    if let Ok(a) = text.parse::<IpAddr>() {
        return Some(subscriber_key(a));
    }
    match text.parse::<ipnet::IpNet>() {
        Ok(ipnet::IpNet::V6(n)) if n.prefix_len() >= 64 => Some(subscriber_key(IpAddr::V6(n.addr()))),
        Ok(ipnet::IpNet::V4(n)) if n.prefix_len() == 32 => Some(subscriber_key(IpAddr::V4(n.addr()))),
        _ => None,
    }
}

/// Why a quarantine started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuarantineCause {
    /// The subscriber crossed a threshold (`on_suspect = "quarantine"`).
    Threshold,
    /// `op25b quarantine`.
    Manual,
}

/// Why a quarantine ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuarantineEnd {
    /// Its time was up.
    Expired,
    /// `op25b release`.
    Released,
}

/// What abuse handling reports (as events and log lines).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum AbuseEvent {
    /// A subscriber crossed a threshold (once per window).
    Suspected {
        /// The subscriber key.
        key: u64,
        /// Blocked attempts in the window so far.
        attempts: u32,
        /// Distinct destinations in the window so far.
        destinations: u32,
        /// The window.
        window: Duration,
        /// A few destinations it tried.
        samples: Vec<IpAddr>,
        /// The attempts were would-be blocks of `action = "monitor"`.
        monitor: bool,
    },
    /// A quarantine started.
    QuarantineStarted {
        /// The subscriber key.
        key: u64,
        /// How long it lasts unless released.
        duration: Duration,
        /// Why.
        cause: QuarantineCause,
    },
    /// A quarantine ended.
    QuarantineEnded {
        /// The subscriber key.
        key: u64,
        /// Why.
        end: QuarantineEnd,
    },
    /// A quarantine could not start: the set is full.
    QuarantineRefused {
        /// The subscriber key.
        key: u64,
    },
}

/// A blocked connection attempt, as a worker hands it to abuse handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// When (the worker's clock).
    pub at: Instant,
    /// The subscriber's address.
    pub src: IpAddr,
    /// The destination it tried.
    pub dst: IpAddr,
    /// A would-be block of `action = "monitor"` (never starts a quarantine).
    pub monitor: bool,
}

/// A subscriber's standing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Under the thresholds.
    Normal,
    /// Crossed a threshold less than a window ago.
    Suspected,
    /// In quarantine.
    Quarantined,
}

impl Standing {
    /// The name `op25b top` shows.
    pub fn name(self) -> &'static str {
        match self {
            Standing::Normal => "normal",
            Standing::Suspected => "suspected",
            Standing::Quarantined => "quarantined",
        }
    }
}

/// One row of `op25b top`.
#[derive(Debug, Clone, PartialEq)]
pub struct TopEntry {
    /// The table's entry.
    pub entry: Entry,
    /// Its standing now.
    pub standing: Standing,
    /// When its quarantine ends, if in one.
    pub quarantine_until: Option<Instant>,
}

/// A subscriber this op25b holds ([`Abuse::lookup`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    /// Its entry in the table, if it is in the table.
    pub entry: Option<Entry>,
    /// Its standing now.
    pub standing: Standing,
    /// When its quarantine ends, if in one.
    pub quarantine_until: Option<Instant>,
}

/// Abuse handling of a running op25b: the settings, the tracker (behind a
/// lock only the abuse thread and the control plane take) and the
/// quarantine set the routers read.
#[derive(Debug)]
pub struct Abuse {
    settings: Mutex<AbuseSettings>,
    tracker: Mutex<Tracker>,
    quarantine: Arc<Quarantine>,
    /// Something worth saving changed since [`Abuse::take_changed`].
    changed: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Abuse {
    /// Abuse handling with `settings`, quarantining into `quarantine` (the
    /// routers' state's set).
    pub fn new(settings: AbuseSettings, quarantine: Arc<Quarantine>) -> Abuse {
        let tracker = Tracker::new(settings.track);
        Abuse {
            settings: Mutex::new(settings),
            tracker: Mutex::new(tracker),
            quarantine,
            changed: AtomicBool::new(false),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> AbuseSettings {
        lock(&self.settings).clone()
    }

    /// Puts new settings in force (a reload); the table keeps its size.
    pub fn reconfigure(&self, mut settings: AbuseSettings) {
        let mut s = lock(&self.settings);
        settings.track = s.track;
        *s = settings;
    }

    /// The quarantine set.
    pub fn quarantine_set(&self) -> &Arc<Quarantine> {
        &self.quarantine
    }

    /// Records blocked attempts; what they caused goes to `out`.
    pub fn record(&self, attempts: impl IntoIterator<Item = Attempt>, out: &mut Vec<AbuseEvent>) {
        let settings = self.settings();
        let mut tracker = lock(&self.tracker);
        for a in attempts {
            self.changed.store(true, Ordering::Relaxed);
            let key = super::subscriber_key(a.src);
            let Some(s) = tracker.record(a.at, key, a.dst, &settings.thresholds) else { continue };
            out.push(AbuseEvent::Suspected {
                key,
                attempts: s.attempts,
                destinations: s.destinations,
                window: settings.thresholds.window,
                samples: s.samples,
                monitor: a.monitor,
            });
            if settings.on_suspect == OnSuspect::Quarantine && !a.monitor {
                out.push(self.start(key, a.at, settings.quarantine_for, QuarantineCause::Threshold));
            }
        }
    }

    fn start(&self, key: u64, now: Instant, duration: Duration, cause: QuarantineCause) -> AbuseEvent {
        match self.quarantine.start(key, now + duration) {
            Ok(_) => {
                self.changed.store(true, Ordering::Relaxed);
                AbuseEvent::QuarantineStarted { key, duration, cause }
            }
            Err(QuarantineRefused::Full) => AbuseEvent::QuarantineRefused { key },
        }
    }

    /// `op25b quarantine`: quarantines `key` from `now` for `duration`
    /// (the configured time when `None`).
    pub fn quarantine(&self, key: u64, now: Instant, duration: Option<Duration>) -> AbuseEvent {
        let duration = duration.unwrap_or_else(|| self.settings().quarantine_for);
        self.start(key, now, duration, QuarantineCause::Manual)
    }

    /// `op25b release`: ends `key`'s quarantine; the event, if it was in one.
    pub fn release(&self, key: u64) -> Option<AbuseEvent> {
        let released = self.quarantine.release(key);
        if released {
            self.changed.store(true, Ordering::Relaxed);
        }
        released.then_some(AbuseEvent::QuarantineEnded { key, end: QuarantineEnd::Released })
    }

    /// Whether something worth saving changed since the last call.
    pub fn take_changed(&self) -> bool {
        self.changed.swap(false, Ordering::Relaxed)
    }

    /// Ends the quarantines that are over at `now`.
    pub fn expire(&self, now: Instant, out: &mut Vec<AbuseEvent>) {
        for key in self.quarantine.expire(now) {
            self.changed.store(true, Ordering::Relaxed);
            out.push(AbuseEvent::QuarantineEnded { key, end: QuarantineEnd::Expired });
        }
    }

    fn standing(&self, e: &Entry, now: Instant, window: Duration) -> (Standing, Option<Instant>) {
        match self.quarantine.until(e.key).filter(|u| now < *u) {
            Some(u) => (Standing::Quarantined, Some(u)),
            None if e.suspected_at.is_some_and(|at| now < at + window) => (Standing::Suspected, None),
            None => (Standing::Normal, None),
        }
    }

    /// The `n` heaviest subscribers now (quarantined subscribers that are
    /// not in the table are in [`Quarantine::list`]).
    pub fn top(&self, n: usize, now: Instant, by_destinations: bool) -> Vec<TopEntry> {
        let window = self.settings().thresholds.window;
        let tracker = lock(&self.tracker);
        tracker
            .top(n, now, window, by_destinations)
            .into_iter()
            .map(|entry| {
                let (standing, quarantine_until) = self.standing(&entry, now, window);
                TopEntry { entry, standing, quarantine_until }
            })
            .collect()
    }

    /// Subscriber `key` as `op25b top` would show it, if this op25b holds
    /// it: in the table, or in quarantine (then `entry` is `None` when it
    /// is not in the table too).
    pub fn lookup(&self, key: u64, now: Instant) -> Option<Held> {
        let window = self.settings().thresholds.window;
        let entry = lock(&self.tracker).get(key, now, window);
        match entry {
            Some(entry) => {
                let (standing, quarantine_until) = self.standing(&entry, now, window);
                Some(Held { entry: Some(entry), standing, quarantine_until })
            }
            None => {
                let until = self.quarantine.until(key).filter(|u| now < *u)?;
                Some(Held { entry: None, standing: Standing::Quarantined, quarantine_until: Some(until) })
            }
        }
    }

    /// The gauges: tracked, suspected, quarantined.
    pub fn gauges(&self, now: Instant) -> (u64, u64, u64) {
        let window = self.settings().thresholds.window;
        let t = lock(&self.tracker);
        (t.len() as u64, t.suspected(now, window) as u64, self.quarantine.len() as u64)
    }
}
