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
mod tracker;

pub use persist::{Restored, SavedAbuse, SavedQuarantine, STATE_VERSION};
pub use tracker::{
    Clocks, Entry, SavedEntry, SavedTracker, Suspicion, Thresholds, Tracker, EXACT_DESTINATIONS, SAMPLES,
};

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriber_names_round_trip() {
        for text in ["100.64.1.10", "2001:db8:1:2::/64"] {
            let key = parse_subscriber(text).expect(text);
            assert_eq!(subscriber_name(key), text);
        }
        assert_eq!(parse_subscriber("2001:db8:1:2::99"), parse_subscriber("2001:db8:1:2::/64"));
        assert_eq!(parse_subscriber("2001:db8:1:2:3::/80"), parse_subscriber("2001:db8:1:2::/64"));
        assert_eq!(parse_subscriber("100.64.1.10/32"), parse_subscriber("100.64.1.10"));
        for bad in ["", "100.64.1.0/24", "2001:db8::/48", "nobody"] {
            assert_eq!(parse_subscriber(bad), None, "{bad}");
        }
    }

    #[test]
    fn quarantine_holds_until_its_deadline_or_release() {
        let q = Quarantine::new(2);
        let t0 = Instant::now();
        let a: IpAddr = "100.64.1.10".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2::7".parse().unwrap();
        assert!(!q.holds(a, t0));
        assert_eq!(q.start(subscriber_key(a), t0 + Duration::from_secs(10)), Ok(true));
        assert!(q.holds(a, t0));
        assert!(q.holds(a, t0 + Duration::from_millis(9_999)));
        assert!(!q.holds(a, t0 + Duration::from_secs(10)), "ends exactly at its deadline");
        assert!(!q.holds(b, t0));
        // The whole /64 is one subscriber.
        assert_eq!(q.start(subscriber_key(b), t0 + Duration::from_secs(5)), Ok(true));
        assert!(q.holds("2001:db8:1:2::99".parse().unwrap(), t0));
        assert_eq!(q.start(parse_subscriber("100.64.9.9").unwrap(), t0), Err(QuarantineRefused::Full));
        // A second start keeps the later deadline.
        assert_eq!(q.start(subscriber_key(b), t0 + Duration::from_secs(1)), Ok(false));
        assert_eq!(q.until(subscriber_key(b)), Some(t0 + Duration::from_secs(5)));
        assert_eq!(q.expire(t0 + Duration::from_secs(5)), vec![subscriber_key(b)]);
        assert_eq!(q.len(), 1);
        assert!(q.release(subscriber_key(a)));
        assert!(!q.release(subscriber_key(a)));
        assert!(q.is_empty());
        assert!(!q.holds(a, t0));
    }

    fn attempts(src: &str, n: u32, at: Instant, monitor: bool) -> Vec<Attempt> {
        (0..n)
            .map(|i| Attempt {
                at,
                src: src.parse().unwrap(),
                dst: IpAddr::V4(Ipv4Addr::new(203, 0, 113, (i % 200) as u8)),
                monitor,
            })
            .collect()
    }

    #[test]
    fn crossing_a_threshold_reports_once_and_quarantines_when_asked() {
        let mut settings = AbuseSettings::default();
        settings.thresholds.attempts = 5;
        settings.thresholds.destinations = 1000;
        settings.on_suspect = OnSuspect::Quarantine;
        settings.quarantine_for = Duration::from_secs(30);
        let q = Arc::new(Quarantine::new(16));
        let abuse = Abuse::new(settings, Arc::clone(&q));
        let t0 = Instant::now();
        let mut out = Vec::new();
        abuse.record(attempts("100.64.1.10", 4, t0, false), &mut out);
        assert!(out.is_empty());
        abuse.record(attempts("100.64.1.10", 10, t0, false), &mut out);
        let key = parse_subscriber("100.64.1.10").unwrap();
        assert!(
            matches!(out[0], AbuseEvent::Suspected { key: k, attempts: 5, monitor: false, .. } if k == key),
            "{out:?}"
        );
        assert_eq!(
            out[1],
            AbuseEvent::QuarantineStarted { key, duration: Duration::from_secs(30), cause: QuarantineCause::Threshold }
        );
        assert_eq!(out.len(), 2, "once per window");
        assert!(q.holds("100.64.1.10".parse().unwrap(), t0));
        let top = abuse.top(10, t0, false);
        assert_eq!((top[0].standing, top[0].entry.attempts), (Standing::Quarantined, 14));
        // Would-be blocks of monitor are reported but quarantine nobody.
        out.clear();
        abuse.record(attempts("100.64.1.11", 5, t0, true), &mut out);
        assert!(matches!(out.as_slice(), [AbuseEvent::Suspected { monitor: true, .. }]), "{out:?}");
        assert_eq!(abuse.top(10, t0, false)[1].standing, Standing::Suspected);
        assert_eq!(abuse.gauges(t0), (2, 2, 1));
        // The quarantine ends at its time, once.
        out.clear();
        abuse.expire(t0 + Duration::from_secs(29), &mut out);
        assert!(out.is_empty());
        abuse.expire(t0 + Duration::from_secs(30), &mut out);
        assert_eq!(out, vec![AbuseEvent::QuarantineEnded { key, end: QuarantineEnd::Expired }]);
        // By hand: quarantine, release.
        assert!(matches!(
            abuse.quarantine(key, t0, None),
            AbuseEvent::QuarantineStarted { cause: QuarantineCause::Manual, .. }
        ));
        assert_eq!(abuse.release(key), Some(AbuseEvent::QuarantineEnded { key, end: QuarantineEnd::Released }));
        assert_eq!(abuse.release(key), None);
    }

    #[test]
    fn lookup_finds_a_subscriber_in_the_table_or_in_quarantine() {
        let abuse = Abuse::new(AbuseSettings::default(), Arc::new(Quarantine::new(16)));
        let t0 = Instant::now();
        abuse.record(attempts("100.64.1.10", 3, t0, false), &mut Vec::new());
        let held = abuse.lookup(parse_subscriber("100.64.1.10").unwrap(), t0).expect("in the table");
        assert_eq!((held.standing, held.entry.map(|e| e.attempts)), (Standing::Normal, Some(3)));
        let other = parse_subscriber("100.64.1.11").unwrap();
        assert_eq!(abuse.lookup(other, t0), None);
        let _ = abuse.quarantine(other, t0, Some(Duration::from_secs(5)));
        let held = abuse.lookup(other, t0).expect("in quarantine");
        assert_eq!((held.entry, held.standing), (None, Standing::Quarantined));
        assert_eq!(held.quarantine_until, Some(t0 + Duration::from_secs(5)));
        assert_eq!(abuse.lookup(other, t0 + Duration::from_secs(5)), None, "over");
    }
}
