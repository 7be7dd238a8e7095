//! What the data plane hands the events writer: blocked connection attempts,
//! through a bounded queue. A worker never waits on it: when the queue is
//! full the event is counted (`events_dropped`) and the packet goes on.

use std::sync::Arc;

use crate::router::Block;

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
