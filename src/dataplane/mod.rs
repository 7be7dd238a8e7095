//! The data plane: the subscriber TUN, the upstream (a TUN or an Ethernet
//! interface) and worker threads around the sans-I/O [`Router`].
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
//! per round trip. A per-queue drain lock keeps each flow in order; an owner
//! that finds its queue taken flags it, and the peek stops after the packet
//! in hand.
//!
//! With offload (the default) the devices carry a virtio-net header: a read
//! may return a 64 KiB TCP/UDP GSO super-packet, which the router judges on its
//! headers (MTU per segment) and which is written out unchanged with its
//! virtio header. Small forwarded UDP datagrams of one flow read in one drain
//! leave as one UDP GSO packet (see `gro`). Without kernel support it falls
//! back to plain packets. Shutdown wakes the waiting workers through a tun-rs
//! `InterruptEvent`.

pub mod capture;
mod device;
mod drain_lock;
mod error;
mod eth;
pub mod events;
mod fault;
mod gro;
mod idle;
mod link;
mod netdev;
pub mod privileges;
mod txbatch;
mod uplink;
mod worker;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tun_rs::{InterruptEvent, VIRTIO_NET_HDR_LEN};

use crate::config::{Config, DataplaneConfig};
use crate::packet::Direction;
use crate::policy::Policy;
use crate::router::Router;
use crate::state::abuse::Abuse;
use crate::state::neighbour::Neighbours;
use crate::state::State;
use crate::stats::{Counters, Reloads, Stats, WriteErrors};
use arc_swap::ArcSwap;

#[cfg(feature = "testing")]
pub use device::tun_queues;
use device::Opened;
#[cfg(feature = "testing")]
pub use drain_lock::DrainLock;
pub use error::DeviceError;
pub use fault::DeviceFault;
use fault::{Faults, NetnsWatch};
use link::Link;
use netdev::NetDev;
use worker::{Heartbeat, IoCounters, Queue, Side, Worker};

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

/// The policy in force and its state, swapped together on a reload.
#[derive(Debug)]
pub(crate) struct Active {
    /// The tables.
    pub(crate) policy: Arc<Policy>,
    /// The runtime state the workers share under this policy.
    pub(crate) state: Arc<State>,
}

/// A handle that reads the data plane's counters from any thread (the
/// control plane's), while the data plane runs and after it stopped.
#[derive(Clone)]
pub struct StatsReader {
    counters: Arc<Vec<Arc<Counters>>>,
    io: Arc<Vec<Arc<IoCounters>>>,
    active: Arc<ArcSwap<Active>>,
    abuse: Option<Arc<Abuse>>,
    heartbeats: Arc<Vec<Arc<Heartbeat>>>,
    write_errors: Arc<WriteErrors>,
    /// A worker silent for longer is stalled.
    stall_after: Duration,
    faults: Arc<Faults>,
    /// The kernel's figures of each device (0 subscriber, 1 upstream).
    kernel: Arc<[Option<NetDev>; 2]>,
    /// The upstream's neighbour table (an Ethernet upstream only).
    neighbours: Option<Arc<Mutex<Neighbours>>>,
    reloads: Arc<Reloads>,
}

/// A worker that has not run its loop for longer than it ever sleeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stalled {
    /// The worker's thread name (`op25b-outbound-0`, ...).
    pub worker: String,
    /// How long since it last showed life.
    pub silent: Duration,
}

impl StatsReader {
    /// A snapshot of every counter: the routers', the devices', the responder's.
    pub fn stats(&self) -> Stats {
        let mut s = Stats::default();
        for c in self.counters.iter() {
            c.add_to(&mut s);
        }
        for io in self.io.iter() {
            io.add_to(&mut s);
        }
        s.responder = self.active.load().state.responder_stats();
        if let Some(a) = &self.abuse {
            let (tracked, suspected, quarantined) = a.gauges(std::time::Instant::now());
            (s.abuse.tracked, s.abuse.suspected, s.abuse.quarantined) = (tracked, suspected, quarantined);
        }
        self.write_errors.add_to(&mut s);
        s.reloads = self.reloads.get();
        s.neighbours = self.neighbours.as_ref().map(|n| n.lock().unwrap_or_else(|p| p.into_inner()).stats());
        s
    }

    /// Abuse handling, when `[abuse]` is on.
    pub fn abuse(&self) -> Option<&Arc<Abuse>> {
        self.abuse.as_ref()
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        Arc::clone(&self.active.load().policy)
    }

    /// The first worker that has not passed the top of its loop for longer
    /// than a worker ever sleeps or polls (plus a grace period), or `None`
    /// when all are alive. A worker that stopped (its device failed) or
    /// hangs counts as stalled.
    pub fn stalled(&self) -> Option<Stalled> {
        self.stalled_at(Instant::now())
    }

    fn stalled_at(&self, now: Instant) -> Option<Stalled> {
        first_stalled(&self.heartbeats, now, self.stall_after)
    }

    /// Packets the kernel dropped at each device's queue towards op25b (op25b
    /// too slow to read), by device index (0 subscriber, 1 upstream): the
    /// devices' own `tx_dropped`, read now from /proc. `None` for a device
    /// whose figures cannot be read (gone, or /proc not there).
    pub fn queue_drops(&self) -> [Option<u64>; 2] {
        [0, 1].map(|i| {
            let dev = self.kernel[i].as_ref()?;
            dev.queue_dropped().inspect_err(|e| tracing::debug!(error = %e, "no queue drops")).ok()
        })
    }

    /// The data plane's liveness as the watchdog sees it: `Ok` while both
    /// devices are present and every worker loops; otherwise why not (the
    /// first lost device, else the first stalled worker).
    pub fn health(&self) -> Result<(), String> {
        if let Some(f) = self.faults.first() {
            return Err(f.to_string());
        }
        match self.stalled() {
            Some(s) => Err(format!("worker {} has not looped for {:.1} s", s.worker, s.silent.as_secs_f64())),
            None => Ok(()),
        }
    }
}

fn first_stalled(heartbeats: &[Arc<Heartbeat>], now: Instant, stall_after: Duration) -> Option<Stalled> {
    heartbeats.iter().find_map(|h| {
        let silent = h.age(now);
        (silent > stall_after).then(|| Stalled { worker: h.name.clone(), silent })
    })
}

/// Extra time a worker gets beyond its longest sleep before it counts as
/// stalled: a drain of a full batch, a slow write, a busy machine.
const STALL_GRACE: Duration = Duration::from_secs(2);

/// A running data plane.
pub struct Dataplane {
    workers: Vec<std::thread::JoinHandle<()>>,
    counters: Vec<Arc<Counters>>,
    io: Vec<Arc<IoCounters>>,
    stop: Arc<InterruptEvent>,
    offload: bool,
    /// What is in force; the workers pick up a new one before their next batch.
    active: Arc<ArcSwap<Active>>,
    /// Abuse handling, with `[abuse]`.
    abuse: Option<Arc<Abuse>>,
    heartbeats: Vec<Arc<Heartbeat>>,
    /// When the data plane started: the heartbeats' zero.
    epoch: Instant,
    stall_after: Duration,
    write_errors: Arc<WriteErrors>,
    reloads: Arc<Reloads>,
    faults: Arc<Faults>,
    watch: NetnsWatch,
    kernel: Arc<[Option<NetDev>; 2]>,
    neighbours: Option<Arc<Mutex<Neighbours>>>,
}

/// Puts a saved abuse state back ([`Sinks::restore_abuse`]).
pub type RestoreAbuse = Arc<dyn Fn(&Abuse) + Send + Sync>;

/// Where the workers send what they saw besides forwarding: events of
/// blocked connections, copies of the packets not forwarded, and blocked
/// attempts for abuse handling (all optional); and what op25b's own files
/// and a lost device are reported to.
#[derive(Default, Clone)]
pub struct Sinks {
    /// Events (`[events]`).
    pub events: Option<events::EventSender>,
    /// The capture (`[capture]`).
    pub capture: Option<capture::CaptureSink>,
    /// Blocked attempts (`[abuse]`).
    pub abuse: Option<events::AttemptSender>,
    /// The write errors of op25b's own files (their writers count them), read
    /// into every snapshot.
    pub write_errors: Arc<WriteErrors>,
    /// Called once, from the thread that finds it, when a device is lost
    /// (see [`Dataplane::fault`]): op25b's cue to stop.
    pub on_fault: Option<Arc<dyn Fn() + Send + Sync>>,
    /// Called once with abuse handling (`[abuse]`) before the workers
    /// start: a saved state restored here is in force for the first packet.
    pub restore_abuse: Option<RestoreAbuse>,
}

impl Dataplane {
    /// Creates both devices and starts the workers, which send to `sinks`.
    /// With `[abuse]` in `config`, abuse handling starts with the state's
    /// quarantine set ([`Dataplane::abuse`]; the attempts arrive through
    /// `sinks.abuse` wherever its receiver is).
    pub fn start(config: &Config, sinks: Sinks) -> Result<Dataplane, DeviceError> {
        if let crate::config::DeviceKind::Interface(link) = &config.upstream.kind {
            uplink::check(&config.upstream, link)?;
        }
        let n = workers_per_direction(config.dataplane.workers);
        let (sub, up, offload) = open_pair(config, n)?;
        let (sub_ns, up_ns) = (sub.netns, up.netns);
        let kernel = Arc::new([sub.kernel, up.kernel]);
        let neighbours = up.queues.first().and_then(Link::neighbours);
        let (sub, up) = (sub.queues, up.queues);
        let stop = Arc::new(InterruptEvent::new().map_err(|cause| DeviceError::Tun {
            name: config.subscriber.tun.clone(),
            what: "create interrupt event",
            cause,
        })?);
        let policy = Arc::new(config.policy.clone());
        let state = Arc::new(State::new(&policy));
        let abuse = config.abuse.clone().map(|a| Arc::new(Abuse::new(a, Arc::clone(state.quarantine()))));
        if let (Some(a), Some(restore)) = (&abuse, &sinks.restore_abuse) {
            restore(a);
        }
        let active = Arc::new(ArcSwap::from_pointee(Active { policy, state }));
        let devices = [&config.subscriber, &config.upstream];
        let faults = Arc::new(Faults::new(devices.map(|d| (d.tun.clone(), d.netns.clone())), sinks.on_fault.clone()));
        let watched: Vec<_> = [sub_ns, up_ns]
            .into_iter()
            .enumerate()
            .filter_map(|(i, id)| Some((i, devices[i].netns.clone()?, id?)))
            .collect();
        let watch = NetnsWatch::start(watched, Arc::clone(&faults)).map_err(|cause| DeviceError::Spawn { cause })?;
        let mut dp = Dataplane {
            workers: Vec::new(),
            counters: Vec::new(),
            io: Vec::new(),
            stop,
            offload,
            active,
            heartbeats: Vec::new(),
            epoch: Instant::now(),
            abuse,
            write_errors: Arc::clone(&sinks.write_errors),
            reloads: Arc::default(),
            faults,
            watch,
            kernel,
            neighbours,
            stall_after: idle::MAX_SLEEP + config.dataplane.busy_poll + STALL_GRACE,
        };
        let sub: Vec<Arc<Queue>> = sub.into_iter().map(|d| Arc::new(Queue::new(d))).collect();
        let up: Vec<Arc<Queue>> = up.into_iter().map(|d| Arc::new(Queue::new(d))).collect();
        for (i, (s, u)) in sub.iter().zip(&up).enumerate() {
            for (dir, ingress, egress) in
                [(Direction::Outbound, s.clone(), u.clone()), (Direction::Inbound, u.clone(), s.clone())]
            {
                dp.spawn(i, dir, (ingress, egress), offload, config.dataplane.busy_poll, sinks.clone())?;
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
        offload: bool,
        busy_poll: std::time::Duration,
        sinks: Sinks,
    ) -> Result<(), DeviceError> {
        let current = self.active.load_full();
        let mut own = Router::with_state(current.policy.clone(), current.state.clone());
        let mut rev = Router::with_state(current.policy.clone(), current.state.clone());
        let note = sinks.events.is_some() || sinks.abuse.is_some();
        own.note_blocks(note);
        rev.note_blocks(note);
        self.counters.push(own.counters().clone());
        self.counters.push(rev.counters().clone());
        let io = Arc::new(IoCounters::default());
        self.io.push(io.clone());
        let stop = self.stop.clone();
        let name = format!("op25b-{}-{index}", dir.name());
        let heartbeat = Arc::new(Heartbeat::new(name.clone(), self.epoch));
        self.heartbeats.push(heartbeat.clone());
        let worker = Worker {
            own: Side { dir, router: own },
            reverse: Side { dir: dir.reverse(), router: rev },
            offset: if offload { VIRTIO_NET_HDR_LEN } else { 0 },
            io,
            peek: PEEK,
            busy_poll,
            active: arc_swap::Cache::new(Arc::clone(&self.active)),
            current,
            events: sinks.events,
            capture: sinks.capture,
            abuse: sinks.abuse,
            heartbeat,
            faults: Arc::clone(&self.faults),
        };
        let handle = std::thread::Builder::new()
            .name(name)
            .spawn(move || worker.run(&ingress, &egress, &stop))
            .map_err(|cause| DeviceError::Spawn { cause })?;
        self.workers.push(handle);
        Ok(())
    }

    /// Puts `policy` in force with `state` (a config reload). Each worker
    /// switches before its next batch; a packet is judged wholly by one
    /// policy or the other. A state built for another policy is replaced by
    /// fresh state here, with a warning, so that the routers take the state
    /// as it is and each worker runs with the very state its routers use.
    pub fn set_policy(&self, policy: Policy, state: State) {
        let state = if state.fits(&policy) {
            state
        } else {
            tracing::warn!("data plane given state built for another policy; using fresh state");
            State::new(&policy)
        };
        self.active.store(Arc::new(Active { policy: Arc::new(policy), state: Arc::new(state) }));
    }

    /// The state in force (a reload carries parts of it over).
    pub fn state(&self) -> Arc<State> {
        Arc::clone(&self.active.load().state)
    }

    /// Abuse handling, when `[abuse]` is on.
    pub fn abuse(&self) -> Option<&Arc<Abuse>> {
        self.abuse.as_ref()
    }

    /// The reload figures, for the thread that reloads.
    pub fn reloads(&self) -> &Reloads {
        &self.reloads
    }

    /// Whether the devices use the virtio-net header (GSO/GRO offload).
    pub fn offload(&self) -> bool {
        self.offload
    }

    /// A snapshot of every counter: the routers', the devices', the responder's.
    pub fn stats(&self) -> Stats {
        self.stats_reader().stats()
    }

    /// A handle for reading the counters from another thread.
    pub fn stats_reader(&self) -> StatsReader {
        StatsReader {
            counters: Arc::new(self.counters.clone()),
            io: Arc::new(self.io.clone()),
            active: Arc::clone(&self.active),
            abuse: self.abuse.clone(),
            heartbeats: Arc::new(self.heartbeats.clone()),
            stall_after: self.stall_after,
            write_errors: Arc::clone(&self.write_errors),
            reloads: Arc::clone(&self.reloads),
            faults: Arc::clone(&self.faults),
            kernel: Arc::clone(&self.kernel),
            neighbours: self.neighbours.clone(),
        }
    }

    /// The first device lost while running (deleted, or its namespace gone
    /// from its name), if any.
    pub fn fault(&self) -> Option<DeviceFault> {
        self.faults.first()
    }

    /// Stops the workers and waits for them; the devices close with the last
    /// reference. The final figures.
    pub fn stop(mut self) -> Stats {
        self.watch.stop();
        if let Err(e) = self.stop.trigger() {
            tracing::error!(error = %e, "cannot wake the workers");
        }
        for w in std::mem::take(&mut self.workers) {
            if w.join().is_err() {
                tracing::error!("a worker panicked");
            }
        }
        self.stats()
    }
}

/// Opens both devices, with offload when configured and the kernel allows it
/// on both; otherwise both without (the two must agree on the header). Each
/// device comes as its queues' file descriptors and the namespace it was made in.
fn open_pair(config: &Config, n: usize) -> Result<(Opened, Opened, bool), DeviceError> {
    let dp: &DataplaneConfig = &config.dataplane;
    if dp.offload {
        let pair = device::open(&config.subscriber, true, dp.queue_len, n)
            .and_then(|s| Ok((s, device::open(&config.upstream, true, dp.queue_len, n)?)));
        match pair {
            Ok((s, u)) if s.queues.iter().chain(&u.queues).all(|d| d.tcp_gso()) => return Ok((s, u, true)),
            Ok(_) => tracing::warn!("the kernel did not enable TUN offload; using plain packets"),
            Err(e @ (DeviceError::Netns { .. } | DeviceError::Capability { .. } | DeviceError::TunAccess { .. })) => {
                return Err(e)
            }
            Err(e) => tracing::warn!(error = %e, "TUN offload unavailable; using plain packets"),
        }
    }
    let s = device::open(&config.subscriber, false, dp.queue_len, n)?;
    let u = device::open(&config.upstream, false, dp.queue_len, n)?;
    Ok((s, u, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_silent_longer_than_it_sleeps_is_stalled() {
        let epoch = Instant::now();
        let out = Arc::new(Heartbeat::new("op25b-outbound-0".into(), epoch));
        let inb = Arc::new(Heartbeat::new("op25b-inbound-0".into(), epoch));
        let beats = [out.clone(), inb.clone()];
        let limit = Duration::from_secs(3);
        // Both looped at 10 s; seen at 12 s all is well, at 14 s both are stalled.
        out.beat(epoch + Duration::from_secs(10));
        inb.beat(epoch + Duration::from_secs(10));
        assert_eq!(first_stalled(&beats, epoch + Duration::from_secs(12), limit), None);
        // The inbound worker keeps looping, the outbound one hangs.
        inb.beat(epoch + Duration::from_secs(14));
        let stalled = first_stalled(&beats, epoch + Duration::from_secs(14), limit);
        assert_eq!(stalled, Some(Stalled { worker: "op25b-outbound-0".into(), silent: Duration::from_secs(4) }));
        out.beat(epoch + Duration::from_secs(14));
        assert_eq!(first_stalled(&beats, epoch + Duration::from_secs(14), limit), None);
    }
}
