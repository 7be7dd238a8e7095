//! What the data plane hands the events writer: blocked connection attempts,
//! through a bounded queue. A worker never waits on it: when the queue is
//! full the event is counted (`events_dropped`) and the packet goes on.

use std::sync::Arc;

use crate::router::Block;
use crate::state::abuse::{AbuseEvent, Attempt};

/// One event.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// A connection attempt OP25B or a rule blocked.
    Blocked {
        /// What the router saw.
        block: Block,
        /// The rule's name, when a rule blocked it.
        rule: Option<Arc<str>>,
    },
    /// Abuse handling: a subscriber suspected, a quarantine started or ended.
    Abuse(AbuseEvent),
    /// A config reload, accepted or refused.
    Reload {
        /// Accepted.
        ok: bool,
        /// The file, or why it was refused.
        detail: String,
    },
}

/// The sending end of the events queue.
pub type EventSender = std::sync::mpsc::SyncSender<Event>;

/// Events the queue holds before workers start counting them as dropped.
pub const QUEUE: usize = 4096;

/// The sending end of the queue of blocked attempts to abuse handling.
pub type AttemptSender = std::sync::mpsc::SyncSender<Attempt>;

/// Attempts the queue to abuse handling holds before workers count them as
/// dropped (`abuse_attempts_dropped`).
pub const ATTEMPT_QUEUE: usize = 16_384;
