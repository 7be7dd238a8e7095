//! How an idle worker waits: a busy poll (if configured), then a sleep
//! bounded by the next timer and [`MAX_SLEEP`].

use std::io;
use std::time::{Duration, Instant};

use tun_rs::InterruptEvent;

use super::fault::Faults;
use super::link::Link;

/// Longest sleep of an idle worker: it still looks at the policy (a reload)
/// and the banner responder's timers at least this often.
pub(crate) const MAX_SLEEP: Duration = Duration::from_secs(1);

/// Consecutive waits that end in an error on the device (POLLERR without
/// data) after which the device counts as lost, should its reads not say so.
const MAX_WAIT_ERRORS: u32 = 3;

/// What a busy poll found.
pub(super) enum Spun {
    /// The data plane stops.
    Stop,
    /// A packet waits.
    Readable,
    /// Nothing within the busy-poll time (or before the next timer).
    Idle,
}

/// Polls `dev` without sleeping for up to `busy_poll` (no later than `timer`).
pub(super) fn spin(dev: &Link, stop: &InterruptEvent, busy_poll: Duration, timer: Option<Instant>) -> Spun {
    let until = (Instant::now() + busy_poll).min(timer.unwrap_or(Instant::now() + busy_poll));
    loop {
        if stop.is_trigger() {
            return Spun::Stop;
        }
        if readable(dev) {
            return Spun::Readable;
        }
        if Instant::now() >= until {
            return Spun::Idle;
        }
        std::hint::spin_loop();
    }
}

/// Sleeps until a packet, the next timer or at most [`MAX_SLEEP`]; false
/// when the worker must stop (shutdown, or its device is lost).
pub(super) fn wait(
    dev: &Link,
    dev_index: usize,
    stop: &InterruptEvent,
    faults: &Faults,
    timer: Option<Instant>,
    now: &mut Instant,
    wait_errors: &mut u32,
) -> bool {
    // Never sleep longer than MAX_SLEEP: an idle worker still picks up
    // a reloaded policy (and lets go of the old one) and runs timers.
    let timeout = timer.map_or(MAX_SLEEP, |at| at.saturating_duration_since(Instant::now()).min(MAX_SLEEP));
    match dev.wait_readable_intr_timeout(stop, Some(timeout)) {
        Ok(()) => {
            *now = Instant::now();
            *wait_errors = 0;
        }
        Err(_) if stop.is_trigger() => return false,
        // Back to the top: the policy check, then the due timers.
        Err(e) if e.kind() == io::ErrorKind::TimedOut => *now = Instant::now(),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
        Err(e) => {
            // POLLERR ("fd error" from tun-rs): a deleted device. The
            // drain at the top reads EBADFD and reports it; should the
            // reads not fail, a few such waits in a row count as the loss.
            *wait_errors += 1;
            if *wait_errors >= MAX_WAIT_ERRORS {
                faults.lost(dev_index, &format!("waiting for a packet: {e}"));
                return false;
            }
        }
    }
    true
}

/// Whether a read would find a packet, without taking it (a zero-timeout wait).
fn readable(dev: &Link) -> bool {
    // A zero timeout turns the wait into one poll(2) that returns at once.
    let ev = NO_EVENT.with(|e| e.as_ref().map(|e| dev.wait_readable_intr_timeout(e, Some(Duration::ZERO)).is_ok()));
    ev.unwrap_or(false)
}

thread_local! {
    /// An event that never fires, for zero-timeout polls.
    static NO_EVENT: Option<InterruptEvent> = InterruptEvent::new().ok();
}
