//! The data plane: two TUN devices and one worker thread per direction around
//! the sans-I/O [`Router`].
//!
//! Plain threads, not tokio: each worker blocks in one `recv` on one device,
//! which is all the concurrency a two-device router has, and it keeps the hot
//! loop free of a runtime's wake-up and task overhead. Each worker owns its
//! buffers (allocated once) and its own [`Router`] (own counters, shared policy).
//! Shutdown wakes the blocked reads through a tun-rs `InterruptEvent`.

pub mod device;

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tun_rs::{InterruptEvent, SyncDevice};

use crate::config::Config;
use crate::policy::Policy;
use crate::router::{Counters, Direction, Router, Verdict};

pub use device::DeviceError;

/// Largest packet a TUN hands over without offload.
const RECV_BUF: usize = 65_536;
/// Room for any reply the router builds (at most 1280 bytes).
const REPLY_BUF: usize = 2048;

/// I/O counters of one worker.
#[derive(Debug, Default)]
pub struct IoCounters {
    /// Packets whose write failed (link down, no buffer space, ...).
    pub tx_errors: AtomicU64,
    /// Reads that failed with an error other than an interruption.
    pub rx_errors: AtomicU64,
}

/// A running data plane.
pub struct Dataplane {
    workers: Vec<std::thread::JoinHandle<()>>,
    counters: Vec<Arc<Counters>>,
    io: Vec<Arc<IoCounters>>,
    stop: Arc<InterruptEvent>,
}

impl Dataplane {
    /// Creates both devices and starts the workers.
    pub fn start(config: &Config) -> Result<Dataplane, DeviceError> {
        let sub = Arc::new(device::open(&config.subscriber)?);
        let up = Arc::new(device::open(&config.upstream)?);
        let stop = Arc::new(InterruptEvent::new().map_err(|source| DeviceError::Tun {
            name: config.subscriber.tun.clone(),
            what: "create interrupt event",
            source,
        })?);
        let policy = Arc::new(config.policy.clone());
        let mut dp = Dataplane {
            workers: Vec::new(),
            counters: Vec::new(),
            io: Vec::new(),
            stop,
        };
        for (dir, ingress, egress) in [
            (Direction::Outbound, sub.clone(), up.clone()),
            (Direction::Inbound, up.clone(), sub.clone()),
        ] {
            dp.spawn(dir, ingress, egress, policy.clone());
        }
        Ok(dp)
    }

    fn spawn(
        &mut self,
        dir: Direction,
        ingress: Arc<SyncDevice>,
        egress: Arc<SyncDevice>,
        policy: Arc<Policy>,
    ) {
        let router = Router::new(policy);
        self.counters.push(router.counters().clone());
        let io = Arc::new(IoCounters::default());
        self.io.push(io.clone());
        let stop = self.stop.clone();
        let handle = std::thread::Builder::new()
            .name(format!("op25b-{}", dir.name()))
            .spawn(move || worker(dir, router, &ingress, &egress, &stop, &io))
            .expect("spawning a worker thread only fails when the process is out of resources");
        self.workers.push(handle);
    }

    /// The routers' counters, one per worker.
    pub fn counters(&self) -> &[Arc<Counters>] {
        &self.counters
    }

    /// Total write and read errors.
    pub fn io_errors(&self) -> (u64, u64) {
        let sum = |f: fn(&IoCounters) -> &AtomicU64| {
            self.io.iter().map(|c| f(c).load(Ordering::Relaxed)).sum()
        };
        (sum(|c| &c.tx_errors), sum(|c| &c.rx_errors))
    }

    /// Stops the workers and waits for them; the devices close with the last reference.
    pub fn stop(self) -> Vec<Arc<Counters>> {
        if let Err(e) = self.stop.trigger() {
            tracing::error!(error = %e, "cannot wake the workers");
        }
        for w in self.workers {
            if w.join().is_err() {
                tracing::error!("a worker panicked");
            }
        }
        self.counters
    }
}

fn worker(
    dir: Direction,
    mut router: Router,
    ingress: &SyncDevice,
    egress: &SyncDevice,
    stop: &InterruptEvent,
    io: &IoCounters,
) {
    let mut buf = vec![0u8; RECV_BUF];
    let mut reply = vec![0u8; REPLY_BUF];
    tracing::debug!(direction = dir.name(), "worker started");
    loop {
        let n = match ingress.recv_intr(&mut buf, stop) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                if stop.is_trigger() {
                    break;
                }
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                io.rx_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(direction = dir.name(), error = %e, "read failed");
                if stop.is_trigger() {
                    break;
                }
                continue;
            }
        };
        let verdict = router.handle(Instant::now(), dir, &mut buf[..n], &mut reply);
        let (dev, bytes) = match verdict {
            Verdict::Forward { len } => (egress, &buf[..len]),
            Verdict::Reply { len, kind } => {
                tracing::debug!(direction = dir.name(), reply = kind.name(), "reply");
                (ingress, &reply[..len])
            }
            Verdict::Drop(reason) => {
                tracing::trace!(direction = dir.name(), reason = reason.name(), "drop");
                continue;
            }
        };
        if let Err(e) = dev.send(bytes) {
            // EIO while a link is down, ENOBUFS under pressure: a drop, not fatal.
            io.tx_errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(direction = dir.name(), error = %e, "write failed");
        }
    }
    tracing::debug!(direction = dir.name(), "worker stopped");
}
