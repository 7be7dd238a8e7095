//! The data plane: two TUN devices and worker threads around the sans-I/O
//! [`Router`].
//!
//! Plain threads, not tokio: each worker waits on one TUN queue, which is all
//! the concurrency a two-device router has, and the hot loop stays free of a
//! runtime's wake-ups and task overhead. Each worker owns its buffers
//! (allocated once) and its own [`Router`]s (own counters, shared policy).
//!
//! With `dataplane.workers` = N each device has N queues (a multiqueue TUN;
//! the kernel spreads flows over the queues by hash, one flow stays on one
//! queue) and each direction N workers; worker i of a direction owns queue i of
//! its ingress device. After draining its queue a worker also takes what is
//! waiting on queue i of its egress device when that queue's owner is not
//! draining it: the kernel often queues the answer (an echo reply, an ACK)
//! during the write itself, and handling it at once saves a thread wake-up
//! per round trip. A per-queue drain lock keeps each flow in order.
//!
//! With offload (the default) the devices carry a virtio-net header: a read
//! may return a 64 KiB TCP/UDP GSO super-packet, which the router judges on its
//! headers (MTU per segment) and which is written out unchanged with its
//! virtio header. Small forwarded UDP datagrams of one flow read in one drain
//! leave as one UDP GSO packet (see `gro`). Without kernel support it falls
//! back to plain packets. Shutdown wakes the waiting workers through a tun-rs
//! `InterruptEvent`.

pub mod device;
mod gro;
mod worker;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tun_rs::{InterruptEvent, SyncDevice, VIRTIO_NET_HDR_LEN};

use crate::config::{Config, DataplaneConfig};
use crate::policy::Policy;
use crate::router::{Counters, Direction, Router};
use arc_swap::ArcSwap;

pub use device::DeviceError;
pub use worker::IoCounters;
use worker::{Queue, Side, Worker};

/// Whether a worker takes packets from the reverse direction's queue after
/// its own drain (see the module docs).
const PEEK: bool = true;

/// Workers per direction when the config does not say: one per two cores
/// (a worker's writes run the receiving namespace's stack, and the traffic's
/// own endpoints need cores too), at most this many. On 2 cores, 2 workers per
/// direction lost to 1 (docs/PERFORMANCE.md).
const MAX_DEFAULT_WORKERS: usize = 4;

/// Workers per direction for `configured` (`dataplane.workers`) on this machine.
pub fn workers_per_direction(configured: Option<u16>) -> usize {
    match configured {
        Some(n) => usize::from(n.max(1)),
        None => std::thread::available_parallelism().map_or(1, |n| n.get() / 2).clamp(1, MAX_DEFAULT_WORKERS),
    }
}

/// A running data plane.
pub struct Dataplane {
    workers: Vec<std::thread::JoinHandle<()>>,
    counters: Vec<Arc<Counters>>,
    io: Vec<Arc<IoCounters>>,
    stop: Arc<InterruptEvent>,
    offload: bool,
    /// The policy in force; the workers pick up a new one before their next batch.
    policy: Arc<ArcSwap<Policy>>,
}

impl Dataplane {
    /// Creates both devices and starts the workers.
    pub fn start(config: &Config) -> Result<Dataplane, DeviceError> {
        let n = workers_per_direction(config.dataplane.workers);
        let (sub, up, offload) = open_pair(config, n)?;
        let stop = Arc::new(InterruptEvent::new().map_err(|source| DeviceError::Tun {
            name: config.subscriber.tun.clone(),
            what: "create interrupt event",
            source,
        })?);
        let policy = Arc::new(ArcSwap::from_pointee(config.policy.clone()));
        let mut dp = Dataplane {
            workers: Vec::new(),
            counters: Vec::new(),
            io: Vec::new(),
            stop,
            offload,
            policy: policy.clone(),
        };
        let sub: Vec<Arc<Queue>> = sub.into_iter().map(|d| Arc::new(Queue::new(d))).collect();
        let up: Vec<Arc<Queue>> = up.into_iter().map(|d| Arc::new(Queue::new(d))).collect();
        for (i, (s, u)) in sub.iter().zip(&up).enumerate() {
            for (dir, ingress, egress) in
                [(Direction::Outbound, s.clone(), u.clone()), (Direction::Inbound, u.clone(), s.clone())]
            {
                dp.spawn(i, dir, (ingress, egress), policy.clone(), offload, config.dataplane.busy_poll)?;
            }
        }
        tracing::debug!(workers_per_direction = n, "data plane started");
        Ok(dp)
    }

    fn spawn(
        &mut self,
        index: usize,
        dir: Direction,
        (ingress, egress): (Arc<Queue>, Arc<Queue>),
        policy: Arc<ArcSwap<Policy>>,
        offload: bool,
        busy_poll: std::time::Duration,
    ) -> Result<(), DeviceError> {
        let reverse = match dir {
            Direction::Outbound => Direction::Inbound,
            Direction::Inbound => Direction::Outbound,
        };
        let current = policy.load_full();
        let own = Router::new(current.clone());
        let rev = Router::new(current);
        self.counters.push(own.counters().clone());
        self.counters.push(rev.counters().clone());
        let io = Arc::new(IoCounters::default());
        self.io.push(io.clone());
        let stop = self.stop.clone();
        let worker = Worker {
            own: Side { dir, router: own },
            reverse: Side { dir: reverse, router: rev },
            offset: if offload { VIRTIO_NET_HDR_LEN } else { 0 },
            io,
            peek: PEEK,
            busy_poll,
            policy: arc_swap::Cache::new(policy),
        };
        let handle = std::thread::Builder::new()
            .name(format!("op25b-{}-{index}", dir.name()))
            .spawn(move || worker.run(&ingress, &egress, &stop))
            .map_err(|source| DeviceError::Tun {
                name: format!("worker {}", dir.name()),
                what: "spawn thread",
                source,
            })?;
        self.workers.push(handle);
        Ok(())
    }

    /// Puts `policy` in force (a config reload). Each worker switches before
    /// its next batch; a packet is judged wholly by one policy or the other.
    pub fn set_policy(&self, policy: Policy) {
        self.policy.store(Arc::new(policy));
    }

    /// Whether the devices use the virtio-net header (GSO/GRO offload).
    pub fn offload(&self) -> bool {
        self.offload
    }

    /// The routers' counters, one per worker.
    pub fn counters(&self) -> &[Arc<Counters>] {
        &self.counters
    }

    /// Totals of the workers' I/O counters: (tx_errors, rx_errors, batches, packets).
    pub fn io_totals(&self) -> (u64, u64, u64, u64) {
        let sum = |f: fn(&IoCounters) -> &AtomicU64| self.io.iter().map(|c| f(c).load(Ordering::Relaxed)).sum();
        (sum(|c| &c.tx_errors), sum(|c| &c.rx_errors), sum(|c| &c.batches), sum(|c| &c.packets))
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

/// Opens both devices, with offload when configured and the kernel allows it
/// on both; otherwise both without (the two must agree on the header).
type Queues = Vec<SyncDevice>;

fn open_pair(config: &Config, n: usize) -> Result<(Queues, Queues, bool), DeviceError> {
    let dp: &DataplaneConfig = &config.dataplane;
    if dp.offload {
        let pair = device::open(&config.subscriber, true, dp.queue_len, n)
            .and_then(|s| Ok((s, device::open(&config.upstream, true, dp.queue_len, n)?)));
        match pair {
            Ok((s, u)) if s.iter().chain(&u).all(|d| d.tcp_gso()) => return Ok((s, u, true)),
            Ok(_) => tracing::warn!("the kernel did not enable TUN offload; using plain packets"),
            Err(e @ DeviceError::Netns { .. }) => return Err(e),
            Err(e) => tracing::warn!(error = %e, "TUN offload unavailable; using plain packets"),
        }
    }
    let s = device::open(&config.subscriber, false, dp.queue_len, n)?;
    let u = device::open(&config.upstream, false, dp.queue_len, n)?;
    Ok((s, u, false))
}
