//! Abuse handling's state as it is saved across a restart (`[abuse]
//! state_file`): the quarantines with their deadlines, and the table of
//! tracked subscribers. Times are Unix seconds, so a quarantine that ended
//! while op25b was down is not restored. The file itself (where, when,
//! atomically) is the control plane's; this is its content, versioned.

use serde::{Deserialize, Serialize};

use super::{lock, parse_subscriber, subscriber_name, Abuse, Clocks, SavedTracker, Tracker};

/// The version of the saved form this op25b writes and reads.
pub const STATE_VERSION: u32 = 1;

/// One quarantine, saved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedQuarantine {
    /// The subscriber, as people write it.
    pub subscriber: String,
    /// When it ends (Unix seconds).
    pub until: f64,
}

/// Everything saved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedAbuse {
    /// [`STATE_VERSION`] when written.
    pub version: u32,
    /// When it was saved (Unix seconds).
    pub saved_at: f64,
    /// The quarantines.
    pub quarantines: Vec<SavedQuarantine>,
    /// The table.
    pub tracker: SavedTracker,
}

/// What a restore put back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Restored {
    /// Quarantines in force again.
    pub quarantines: usize,
    /// Quarantines that ended while op25b was down (or did not parse).
    pub ended: usize,
    /// Subscribers in the table again.
    pub tracked: usize,
    /// Saved subscribers left out (broken, or beyond the table's size).
    pub left_out: usize,
}

impl Abuse {
    /// The state to save, at `clocks`.
    pub fn save(&self, clocks: &Clocks) -> SavedAbuse {
        let quarantines = self
            .quarantine
            .list()
            .into_iter()
            .filter(|(_, until)| *until > clocks.instant)
            .map(|(key, until)| SavedQuarantine { subscriber: subscriber_name(key), until: clocks.unix_of(until) })
            .collect();
        let tracker = lock(&self.tracker).save(&|t| clocks.unix_of(t));
        SavedAbuse { version: STATE_VERSION, saved_at: clocks.unix, quarantines, tracker }
    }

    /// Puts back what `saved` holds (at start, before any attempt is
    /// recorded): the quarantines that have not ended by `clocks`, and the
    /// table (sized by the settings in force).
    pub fn restore(&self, saved: SavedAbuse, clocks: &Clocks) -> Restored {
        let mut r = Restored::default();
        for q in &saved.quarantines {
            let until = q.until.is_finite().then(|| clocks.instant_of(q.until)).flatten();
            match (parse_subscriber(&q.subscriber), until) {
                (Some(key), Some(until)) if until > clocks.instant => {
                    if self.quarantine.start(key, until).is_ok() {
                        r.quarantines += 1;
                    }
                }
                _ => r.ended += 1,
            }
        }
        let capacity = lock(&self.tracker).capacity();
        let (tracker, left_out): (Tracker, usize) =
            Tracker::restore(capacity, saved.tracker, &|t| clocks.instant_of(t));
        r.tracked = tracker.len();
        r.left_out = left_out;
        *lock(&self.tracker) = tracker;
        r
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::super::{AbuseSettings, Attempt, Quarantine};
    use super::*;

    #[test]
    fn quarantines_come_back_unless_they_ended_meanwhile() {
        let t0 = Instant::now();
        let clocks = Clocks { instant: t0, unix: 1.8e9 };
        let abuse = Abuse::new(AbuseSettings::default(), Arc::new(Quarantine::new(16)));
        let (a, b) = (parse_subscriber("100.64.1.10").unwrap(), parse_subscriber("100.64.1.11").unwrap());
        abuse.quarantine(a, t0, Some(Duration::from_secs(600)));
        abuse.quarantine(b, t0, Some(Duration::from_secs(5)));
        let attempt = Attempt {
            at: t0,
            src: "100.64.1.12".parse().unwrap(),
            dst: IpAddr::from([203, 0, 113, 9]),
            monitor: false,
        };
        abuse.record([attempt], &mut Vec::new());
        assert!(abuse.take_changed());
        assert!(!abuse.take_changed());
        let text = serde_json::to_string(&abuse.save(&clocks)).unwrap();
        // op25b was down for a minute: b's quarantine ended meanwhile.
        let t1 = t0 + Duration::from_secs(3);
        let later = Clocks { instant: t1, unix: 1.8e9 + 60.0 };
        let q = Arc::new(Quarantine::new(16));
        let next = Abuse::new(AbuseSettings::default(), Arc::clone(&q));
        let r = next.restore(serde_json::from_str(&text).unwrap(), &later);
        assert_eq!(r, Restored { quarantines: 1, ended: 1, tracked: 1, left_out: 0 });
        let until = q.until(a).expect("a is in quarantine again");
        assert!((later.unix_of(until) - (1.8e9 + 600.0)).abs() < 0.01, "the same deadline");
        assert_eq!(q.until(b), None);
        assert_eq!(next.top(10, t1, false)[0].entry.total, 1);
        // Not the version this op25b writes, or not its fields: refused by the parser.
        assert!(serde_json::from_str::<SavedAbuse>("{\"version\":1}").is_err());
    }
}
