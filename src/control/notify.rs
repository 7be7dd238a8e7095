//! The service manager's notification protocol (sd_notify(3)), spoken only
//! when `NOTIFY_SOCKET` is set (systemd's `Type=notify`).
//!
//! One thread sends every message, so they arrive in the order they were
//! asked for: `READY=1` once both devices are up; `RELOADING=1` with
//! `MONOTONIC_USEC` before a reload and `READY=1` after it, accepted or not;
//! `STOPPING=1` when op25b stops. Between them, a one-line `STATUS=` of the
//! counters (sent when it changed, at most every [`STATUS_EVERY`]) and, when
//! the unit sets `WatchdogSec=`, `WATCHDOG=1` every half of it, but only
//! while every data-plane worker is looping ([`StatsReader::stalled`]): a
//! wedged or stopped worker stops the pings, and systemd restarts op25b.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

use crate::dataplane::StatsReader;
use crate::packet::Direction;
use crate::stats::Stats;

/// How often the status line is looked at (and sent if it changed).
pub const STATUS_EVERY: Duration = Duration::from_secs(5);

enum Msg {
    Ready,
    Reloading,
    Reloaded(Result<(), String>),
    Stopping,
}

/// The notifier thread; `None` from [`Notifier::start`] when there is no
/// service manager to tell.
pub struct Notifier {
    tx: mpsc::Sender<Msg>,
    thread: Option<JoinHandle<()>>,
}

impl Notifier {
    /// Starts the thread when `NOTIFY_SOCKET` is set. The counters and the
    /// workers' liveness come from `stats`.
    pub fn start(stats: StatsReader) -> std::io::Result<Option<Notifier>> {
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            return Ok(None);
        }
        let watchdog = sd_notify::watchdog_enabled();
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("op25b-notify".into())
            .spawn(move || Sender::new(stats, watchdog).run(&rx))?;
        Ok(Some(Notifier { tx, thread: Some(thread) }))
    }

    /// Both devices are up and the workers run.
    pub fn ready(&self) {
        let _ = self.tx.send(Msg::Ready); // the thread ends only after Stopping
    }

    /// A reload starts.
    pub fn reloading(&self) {
        let _ = self.tx.send(Msg::Reloading);
    }

    /// A reload ended: accepted, or refused for `reason` (the running config stays).
    pub fn reloaded(&self, outcome: Result<(), String>) {
        let _ = self.tx.send(Msg::Reloaded(outcome));
    }

    /// op25b stops: sends `STOPPING=1` and waits for it to go out.
    pub fn stopping(mut self) {
        let _ = self.tx.send(Msg::Stopping);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("the notify thread panicked");
            }
        }
    }
}

struct Sender {
    stats: StatsReader,
    /// Half of `WatchdogSec`, when set.
    ping_every: Option<Duration>,
    /// Why the last reload was refused, until one is accepted.
    refused: Option<String>,
    /// The status line last sent.
    sent_status: String,
    /// Whether a send error was logged already.
    warned: bool,
    /// Whether the stall of a worker was logged already.
    stall_logged: bool,
}

impl Sender {
    fn new(stats: StatsReader, watchdog: Option<Duration>) -> Sender {
        let ping_every = watchdog.filter(|w| !w.is_zero()).map(|w| w / 2);
        Sender { stats, ping_every, refused: None, sent_status: String::new(), warned: false, stall_logged: false }
    }

    fn run(mut self, rx: &mpsc::Receiver<Msg>) {
        let start = Instant::now();
        let mut next_ping = self.ping_every.map(|p| start + p);
        let mut next_status = start + STATUS_EVERY;
        loop {
            let wake = next_ping.map_or(next_status, |p| p.min(next_status));
            match rx.recv_timeout(wake.saturating_duration_since(Instant::now())) {
                Ok(Msg::Ready) => {
                    let status = self.status();
                    self.send(&[NotifyState::Ready, NotifyState::Status(&status)]);
                    self.sent_status = status;
                }
                Ok(Msg::Reloading) => match NotifyState::monotonic_usec_now() {
                    Ok(usec) => self.send(&[NotifyState::Reloading, usec]),
                    Err(e) => tracing::warn!(error = %e, "cannot read the monotonic clock for RELOADING=1"),
                },
                Ok(Msg::Reloaded(outcome)) => {
                    self.refused = outcome.err().map(|r| one_line(&r));
                    let status = self.status();
                    self.send(&[NotifyState::Ready, NotifyState::Status(&status)]);
                    self.sent_status = status;
                }
                Ok(Msg::Stopping) | Err(RecvTimeoutError::Disconnected) => {
                    self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            let now = Instant::now();
            if let (Some(at), Some(every)) = (next_ping, self.ping_every) {
                if now >= at {
                    self.watchdog();
                    next_ping = Some(now + every);
                }
            }
            if now >= next_status {
                let status = self.status();
                if status != self.sent_status {
                    self.send(&[NotifyState::Status(&status)]);
                    self.sent_status = status;
                }
                next_status = now + STATUS_EVERY;
            }
        }
    }

    /// `WATCHDOG=1` if every worker is alive; otherwise nothing (and one log line).
    fn watchdog(&mut self) {
        match self.stats.stalled() {
            None => {
                self.stall_logged = false;
                self.send(&[NotifyState::Watchdog]);
            }
            Some(s) => {
                if !self.stall_logged {
                    tracing::error!(
                        worker = %s.worker,
                        silent_ms = s.silent.as_millis() as u64,
                        "a data-plane worker stopped looping; no more watchdog pings"
                    );
                    self.stall_logged = true;
                }
            }
        }
    }

    fn status(&self) -> String {
        let counts = status_counts(&self.stats.stats());
        match &self.refused {
            Some(reason) => format!("reload refused: {reason}; the running config stays; {counts}"),
            None => counts,
        }
    }

    fn send(&mut self, states: &[NotifyState<'_>]) {
        if let Err(e) = sd_notify::notify(states) {
            if !self.warned {
                tracing::warn!(error = %e, "cannot notify the service manager (NOTIFY_SOCKET)");
                self.warned = true;
            }
        }
    }
}

/// The counters as the status line shows them.
fn status_counts(s: &Stats) -> String {
    let both = |f: fn(&crate::stats::DirStats) -> u64| f(s.dir(Direction::Outbound)) + f(s.dir(Direction::Inbound));
    format!(
        "forwarded {}, op25b blocked {}, dropped {}, replied {}",
        both(|d| d.forwarded),
        s.op25b.blocked,
        both(|d| d.dropped_total()),
        both(|d| d.replied_total())
    )
}

/// The first line of `text` (a config error may show the offending line
/// below its message): a status is one line.
fn one_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line_sums_both_directions() {
        let mut s = Stats::default();
        s.directions[0].forwarded = 7;
        s.directions[1].forwarded = 5;
        s.op25b.blocked = 2;
        s.directions[0].dropped[0] = 3;
        assert_eq!(status_counts(&s), "forwarded 12, op25b blocked 2, dropped 3, replied 0");
    }

    #[test]
    fn a_refusal_reason_is_one_line() {
        assert_eq!(one_line("a.toml:3: op25b.ports: bad\n  |\n3 | ports = [x]\n"), "a.toml:3: op25b.ports: bad");
        assert_eq!(one_line(""), "");
    }
}
