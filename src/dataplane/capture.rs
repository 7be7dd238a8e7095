//! What the data plane hands the capture writer: copies of the packets it did
//! not forward, in buffers from a fixed pool, through bounded queues
//! (crossbeam's array channels: shared by the workers without a lock). A
//! worker never waits, never locks and never allocates: with no free buffer
//! or a full queue the packet is counted (`capture_dropped`) and not captured.

use std::time::SystemTime;

use crossbeam_channel::{Receiver, Sender};

/// Buffers in the pool: the packets that can wait for the writer at once.
pub const POOL: usize = 512;
/// Bytes kept of each packet; a longer one (a GSO super-packet) is captured
/// truncated, with its original length in the record.
pub const SNAPLEN: usize = 2048;

/// One captured packet.
#[derive(Debug)]
pub struct Captured {
    /// The buffer, from the pool; `len` bytes of it hold the packet's start.
    pub buf: Box<[u8]>,
    /// Bytes captured.
    pub len: usize,
    /// The packet's length.
    pub orig_len: usize,
    /// When it arrived.
    pub at: SystemTime,
}

/// The workers' end: where to take free buffers and send filled ones.
#[derive(Debug, Clone)]
pub struct CaptureSink {
    free: Receiver<Box<[u8]>>,
    filled: Sender<Captured>,
}

/// The writer's end: filled buffers arrive, used ones go back.
#[derive(Debug)]
pub struct CaptureSource {
    /// Filled buffers, in the order the workers sent them.
    pub filled: Receiver<Captured>,
    /// Where a written buffer goes back to.
    pub free: Sender<Box<[u8]>>,
}

/// A pool of [`POOL`] buffers and the two queues around it (allocated here, once).
pub fn pool() -> (CaptureSink, CaptureSource) {
    let (free_tx, free_rx) = crossbeam_channel::bounded(POOL);
    for _ in 0..POOL {
        // Cannot fail: the queue holds exactly POOL buffers.
        let _ = free_tx.try_send(vec![0u8; SNAPLEN].into_boxed_slice());
    }
    let (filled_tx, filled_rx) = crossbeam_channel::bounded(POOL);
    (CaptureSink { free: free_rx, filled: filled_tx }, CaptureSource { filled: filled_rx, free: free_tx })
}

impl CaptureSink {
    /// Copies `packet` into a free buffer and hands it over; false when no
    /// buffer was free or the queue was full (the packet is not captured).
    pub fn offer(&self, packet: &[u8], at: SystemTime) -> bool {
        let Ok(mut buf) = self.free.try_recv() else { return false };
        let len = packet.len().min(buf.len());
        buf[..len].copy_from_slice(&packet[..len]);
        self.filled.try_send(Captured { buf, len, orig_len: packet.len(), at }).is_ok()
    }
}
