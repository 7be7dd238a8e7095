//! Abuse handling's thread: it takes the blocked attempts the workers queue
//! ([`crate::dataplane::events::AttemptSender`]), keeps the heavy-hitters
//! table, starts and ends quarantines, and reports what happened as log
//! lines and events. The workers never wait on it; it never touches a packet.
//!
//! Also here: the JSON of `op25b top` and of the abuse events.

use std::net::IpAddr;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::abuse_state::StateFile;
use super::writer::WriterThread;
use crate::dataplane::events::{Event, EventSender};
use crate::state::abuse::{
    subscriber_name, Abuse, AbuseEvent, Attempt, Entry, QuarantineCause, QuarantineEnd, Standing, TopEntry,
};
use crate::stats::WriteErrors;

/// How often the thread looks for quarantines that are over, at the latest.
const TICK: Duration = Duration::from_millis(200);

/// How long the thread lets attempts gather after a batch (the queue holds
/// 16,384: 5 ms of a flood of over 3 million blocked SYNs a second).
const GATHER: Duration = Duration::from_millis(5);

/// Most attempts recorded under one lock.
const BATCH: usize = 1024;

/// Starts the thread; it ends when every sender of `rx` is gone (join it
/// after), and saves the state (`[abuse] state_file`, if set; restored with
/// [`super::abuse_state::load`] before the workers start) a last time.
/// Failed saves are counted in `errors`.
pub fn start(
    abuse: Arc<Abuse>,
    rx: Receiver<Attempt>,
    events: Option<EventSender>,
    errors: Arc<WriteErrors>,
) -> std::io::Result<WriterThread> {
    let file = StateFile::new(errors);
    WriterThread::spawn("op25b-abuse", move || run(&abuse, &rx, events.as_ref(), file))
}

fn run(abuse: &Abuse, rx: &Receiver<Attempt>, events: Option<&EventSender>, mut file: StateFile) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut out = Vec::new();
    loop {
        let first = rx.recv_timeout(TICK);
        match first {
            Ok(a) => batch.push(a),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(a) => batch.push(a),
                Err(_) => break,
            }
        }
        let busy = !batch.is_empty();
        abuse.record(batch.drain(..), &mut out);
        abuse.expire(Instant::now(), &mut out);
        for e in out.drain(..) {
            report(e, events);
        }
        file.tick(abuse, false);
        if busy {
            // Let the next attempts gather (as the events writer does): a
            // worker's send to a waiting thread costs a wake-up, one to a
            // sleeping one does not.
            std::thread::sleep(GATHER);
        }
    }
    abuse.expire(Instant::now(), &mut out);
    for e in out.drain(..) {
        report(e, events);
    }
    file.tick(abuse, true);
}

/// Logs `e` and hands it to the events writer, if there is one.
pub fn report(e: AbuseEvent, events: Option<&EventSender>) {
    log(&e);
    if let Some(tx) = events {
        // Rare and worth a short wait when the writer is behind.
        let _ = tx.send(Event::Abuse(e));
    }
}

fn secs(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs().max(1))).to_string()
}

fn log(e: &AbuseEvent) {
    match e {
        AbuseEvent::Suspected { key, attempts, destinations, window, monitor, .. } => tracing::warn!(
            subscriber = %subscriber_name(*key),
            attempts,
            destinations,
            window = %secs(*window),
            monitor,
            "abuse: subscriber suspected"
        ),
        AbuseEvent::QuarantineStarted { key, duration, cause } => tracing::warn!(
            subscriber = %subscriber_name(*key),
            duration = %secs(*duration),
            cause = cause_name(*cause),
            "abuse: quarantine started"
        ),
        AbuseEvent::QuarantineEnded { key, end } => {
            tracing::info!(subscriber = %subscriber_name(*key), reason = end_name(*end), "abuse: quarantine ended")
        }
        AbuseEvent::QuarantineRefused { key } => tracing::error!(
            subscriber = %subscriber_name(*key),
            "abuse: quarantine not started: the quarantine set is full"
        ),
    }
}

fn cause_name(c: QuarantineCause) -> &'static str {
    match c {
        QuarantineCause::Threshold => "threshold",
        QuarantineCause::Manual => "manual",
    }
}

fn end_name(e: QuarantineEnd) -> &'static str {
    match e {
        QuarantineEnd::Expired => "expired",
        QuarantineEnd::Released => "released",
    }
}

/// An abuse event as the JSON object of its events line (without `ts`).
pub(crate) fn event_json(e: &AbuseEvent) -> serde_json::Value {
    match e {
        AbuseEvent::Suspected { key, attempts, destinations, window, samples, monitor } => serde_json::json!({
            "event": "abuse_suspected",
            "subscriber": subscriber_name(*key),
            "attempts": attempts,
            "destinations": destinations,
            "window": secs(*window),
            "window_seconds": window.as_secs_f64(),
            "samples": samples.iter().map(IpAddr::to_string).collect::<Vec<_>>(),
            "action": if *monitor { "monitor" } else { "blocked" },
        }),
        AbuseEvent::QuarantineStarted { key, duration, cause } => serde_json::json!({
            "event": "quarantine_start",
            "subscriber": subscriber_name(*key),
            "duration": secs(*duration),
            "duration_seconds": duration.as_secs_f64(),
            "cause": cause_name(*cause),
        }),
        AbuseEvent::QuarantineEnded { key, end } => serde_json::json!({
            "event": "quarantine_end",
            "subscriber": subscriber_name(*key),
            "reason": end_name(*end),
        }),
        AbuseEvent::QuarantineRefused { key } => serde_json::json!({
            "event": "quarantine_refused",
            "subscriber": subscriber_name(*key),
            "reason": "the quarantine set is full",
        }),
    }
}

/// Converts the data plane's instants to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    instant: Instant,
    system: SystemTime,
}

impl Clock {
    pub(crate) fn now() -> Clock {
        Clock { instant: Instant::now(), system: SystemTime::now() }
    }

    /// `t` as Unix seconds.
    pub(crate) fn unix(&self, t: Instant) -> f64 {
        let wall = match t.checked_duration_since(self.instant) {
            Some(after) => self.system + after,
            None => self.system - self.instant.duration_since(t),
        };
        wall.duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
    }
}

/// The answer to `top N attempts|destinations`: `top` heaviest first, and
/// every subscriber in quarantine.
pub(crate) fn top_json(abuse: &Abuse, n: usize, by_destinations: bool) -> serde_json::Value {
    let clock = Clock::now();
    let now = clock.instant;
    let rows: Vec<serde_json::Value> = abuse.top(n, now, by_destinations).iter().map(|t| top_row(t, &clock)).collect();
    let quarantined: Vec<serde_json::Value> = abuse
        .quarantine_set()
        .list()
        .into_iter()
        .filter(|(_, until)| now < *until)
        .map(|(key, until)| serde_json::json!({"subscriber": subscriber_name(key), "until": clock.unix(until)}))
        .collect();
    let s = abuse.settings();
    let (tracked, suspected, _) = abuse.gauges(now);
    serde_json::json!({
        "tracked": tracked,
        "suspected": suspected,
        "window_seconds": s.thresholds.window.as_secs_f64(),
        "threshold": s.thresholds.attempts,
        "destinations_threshold": s.thresholds.destinations,
        "by": if by_destinations { "destinations" } else { "attempts" },
        "top": rows,
        "quarantined": quarantined,
    })
}

fn top_row(t: &TopEntry, clock: &Clock) -> serde_json::Value {
    entry_row(&t.entry, t.standing, t.quarantine_until, clock)
}

fn entry_row(e: &Entry, standing: Standing, until: Option<Instant>, clock: &Clock) -> serde_json::Value {
    serde_json::json!({
        "subscriber": subscriber_name(e.key),
        "attempts": e.attempts,
        "total": e.total,
        "error": e.error,
        "destinations": e.destinations,
        "total_destinations": e.total_destinations,
        "first_seen": clock.unix(e.first_seen),
        "last_seen": clock.unix(e.last_seen),
        "state": standing.name(),
        "quarantine_until": until.map(|u| clock.unix(u)),
        "samples": e.samples.iter().map(IpAddr::to_string).collect::<Vec<_>>(),
    })
}

/// The answer to a lookup of `keys`: a row (as `top`'s) for each one this
/// op25b holds, in the table or in quarantine (then with zero attempts and
/// no times), in the order asked; the others are left out.
pub(crate) fn subscribers_json(abuse: &Abuse, keys: &[u64]) -> serde_json::Value {
    let clock = Clock::now();
    let rows: Vec<serde_json::Value> = keys
        .iter()
        .filter_map(|&key| {
            let held = abuse.lookup(key, clock.instant)?;
            Some(match &held.entry {
                Some(e) => entry_row(e, held.standing, held.quarantine_until, &clock),
                None => serde_json::json!({
                    "subscriber": subscriber_name(key),
                    "attempts": 0,
                    "total": 0,
                    "error": 0,
                    "destinations": 0,
                    "total_destinations": 0,
                    "first_seen": null,
                    "last_seen": null,
                    "state": held.standing.name(),
                    "quarantine_until": held.quarantine_until.map(|u| clock.unix(u)),
                    "samples": [],
                }),
            })
        })
        .collect();
    serde_json::json!({ "subscribers": rows })
}
