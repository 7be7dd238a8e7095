//! The data plane: two TUN devices and one worker thread per direction around
//! the sans-I/O [`Router`].
//!
//! Plain threads, not tokio: each worker waits on one device, which is all the
//! concurrency a two-device router has, and the hot loop stays free of a
//! runtime's wake-ups and task overhead. Each worker owns its buffers (allocated
//! once) and its own [`Router`] (own counters, shared policy).
//!
//! A wake-up drains the device: non-blocking reads fill a batch until the device
//! is empty or the batch is full, then the router judges every packet, replies
//! go back out at once, and the forwarded packets leave in one `send_multiple`.
//! With offload (the default) the devices carry a virtio-net header: a read may
//! return a 64 KiB TCP/UDP super-packet that tun-rs splits into MTU-sized
//! segments with complete checksums (so the router's in-place TTL and checksum
//! rewrite stays correct), and the write merges consecutive segments of a flow
//! again (GRO), so the kernel on either side handles a few large packets
//! instead of many small ones. Without kernel support it falls back to plain
//! packets. Shutdown wakes the waiting workers through a tun-rs `InterruptEvent`.

pub mod device;

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tun_rs::{InterruptEvent, SyncDevice, VirtioNetHdr, VIRTIO_NET_HDR_LEN};

use crate::config::{Config, DataplaneConfig};
use crate::policy::Policy;
use crate::router::{Counters, Direction, Router, Verdict};

pub use device::DeviceError;

/// Room for any reply the router builds (at most 1280 bytes) and its header.
const REPLY_BUF: usize = 2048;

/// I/O counters of one worker.
#[derive(Debug, Default)]
pub struct IoCounters {
    /// Writes that failed (link down, no buffer space, ...).
    pub tx_errors: AtomicU64,
    /// Reads that failed with an error other than "nothing to read".
    pub rx_errors: AtomicU64,
    /// Wake-ups that found packets.
    pub batches: AtomicU64,
    /// Packets read (a GSO super-packet counts once).
    pub packets: AtomicU64,
}

/// A running data plane.
pub struct Dataplane {
    workers: Vec<std::thread::JoinHandle<()>>,
    counters: Vec<Arc<Counters>>,
    io: Vec<Arc<IoCounters>>,
    stop: Arc<InterruptEvent>,
    offload: bool,
}

impl Dataplane {
    /// Creates both devices and starts the workers.
    pub fn start(config: &Config) -> Result<Dataplane, DeviceError> {
        let (sub, up, offload) = open_pair(config)?;
        let (sub, up) = (Arc::new(sub), Arc::new(up));
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
            offload,
        };
        for (dir, ingress, egress) in [
            (Direction::Outbound, sub.clone(), up.clone()),
            (Direction::Inbound, up.clone(), sub.clone()),
        ] {
            dp.spawn(dir, ingress, egress, policy.clone(), offload)?;
        }
        Ok(dp)
    }

    fn spawn(
        &mut self,
        dir: Direction,
        ingress: Arc<SyncDevice>,
        egress: Arc<SyncDevice>,
        policy: Arc<Policy>,
        offload: bool,
    ) -> Result<(), DeviceError> {
        let router = Router::new(policy);
        self.counters.push(router.counters().clone());
        let io = Arc::new(IoCounters::default());
        self.io.push(io.clone());
        let stop = self.stop.clone();
        let worker = Worker {
            dir,
            router,
            offset: if offload { VIRTIO_NET_HDR_LEN } else { 0 },
            io,
        };
        let handle = std::thread::Builder::new()
            .name(format!("op25b-{}", dir.name()))
            .spawn(move || worker.run(&ingress, &egress, &stop))
            .map_err(|source| DeviceError::Tun {
                name: format!("worker {}", dir.name()),
                what: "spawn thread",
                source,
            })?;
        self.workers.push(handle);
        Ok(())
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
        let sum = |f: fn(&IoCounters) -> &AtomicU64| {
            self.io.iter().map(|c| f(c).load(Ordering::Relaxed)).sum()
        };
        (
            sum(|c| &c.tx_errors),
            sum(|c| &c.rx_errors),
            sum(|c| &c.batches),
            sum(|c| &c.packets),
        )
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
fn open_pair(config: &Config) -> Result<(SyncDevice, SyncDevice, bool), DeviceError> {
    let dp: &DataplaneConfig = &config.dataplane;
    if dp.offload {
        let pair = device::open(&config.subscriber, true, dp.queue_len)
            .and_then(|s| Ok((s, device::open(&config.upstream, true, dp.queue_len)?)));
        match pair {
            Ok((s, u)) if s.tcp_gso() && u.tcp_gso() => return Ok((s, u, true)),
            Ok(_) => tracing::warn!("the kernel did not enable TUN offload; using plain packets"),
            Err(e @ DeviceError::Netns { .. }) => return Err(e),
            Err(e) => tracing::warn!(error = %e, "TUN offload unavailable; using plain packets"),
        }
    }
    let s = device::open(&config.subscriber, false, dp.queue_len)?;
    let u = device::open(&config.upstream, false, dp.queue_len)?;
    Ok((s, u, false))
}

struct Worker {
    dir: Direction,
    router: Router,
    /// Bytes in front of each packet: the virtio-net header with offload, else 0.
    offset: usize,
    io: Arc<IoCounters>,
}

/// Consecutive failed reads after which a worker gives up (a device that
/// fails this often is gone).
const MAX_READ_FAILURES: u32 = 1000;

impl Worker {
    fn run(mut self, ingress: &SyncDevice, egress: &SyncDevice, stop: &InterruptEvent) {
        let off = self.offset;
        let mut buf = vec![0u8; off + 65_535];
        // A zeroed virtio-net header stays in front of replies: no offload asked.
        let mut reply = vec![0u8; off + REPLY_BUF];
        let dir = self.dir.name();
        let mut failures = 0u32;
        let mut in_batch = 0u64;
        let mut now = Instant::now();
        tracing::debug!(direction = dir, offload = off > 0, "worker started");
        loop {
            let n = match ingress.recv(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if in_batch > 0 {
                        self.io.batches.fetch_add(1, Ordering::Relaxed);
                        self.io.packets.fetch_add(in_batch, Ordering::Relaxed);
                        in_batch = 0;
                    }
                    match ingress.wait_readable_intr(stop) {
                        Ok(()) => {
                            now = Instant::now();
                            continue;
                        }
                        Err(_) if stop.is_trigger() => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            tracing::error!(direction = dir, error = %e, "cannot wait for the device; worker stops");
                            break;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    failures += 1;
                    let count = self.io.rx_errors.fetch_add(1, Ordering::Relaxed) + 1;
                    if count.is_power_of_two() {
                        tracing::warn!(direction = dir, error = %e, count, "read failed");
                    }
                    if failures >= MAX_READ_FAILURES || stop.is_trigger() {
                        tracing::error!(direction = dir, error = %e, "device keeps failing; worker stops");
                        break;
                    }
                    continue;
                }
            };
            failures = 0;
            in_batch += 1;
            // One clock read per 64 packets of a burst: the core only needs
            // time for rate limits, at millisecond grain.
            if in_batch % 64 == 0 {
                now = Instant::now();
            }
            if n <= off {
                self.io.rx_errors.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let gso = if off > 0 { gso_size(&buf[..off]) } else { None };
            let packet = &mut buf[off..n];
            let verdict = match gso {
                Some(g) => self
                    .router
                    .handle_gso(now, self.dir, packet, &mut reply[off..], g),
                None => self.router.handle(now, self.dir, packet, &mut reply[off..]),
            };
            let sent = match verdict {
                // The virtio-net header goes out as it came in: the headers it
                // describes (offsets, segment size) did not move.
                Verdict::Forward { len } => egress.send(&buf[..off + len]),
                Verdict::Reply { len, kind } => {
                    tracing::debug!(direction = dir, reply = kind.name(), "reply");
                    ingress.send(&reply[..off + len])
                }
                Verdict::Drop(reason) => {
                    tracing::trace!(direction = dir, reason = reason.name(), "drop");
                    continue;
                }
                // The banner responder arrives with its own commit.
                Verdict::Terminate => continue,
            };
            if let Err(e) = sent {
                // EIO while a link is down, ENOBUFS under pressure: a drop, not fatal.
                let count = self.io.tx_errors.fetch_add(1, Ordering::Relaxed) + 1;
                if count.is_power_of_two() {
                    tracing::debug!(direction = dir, error = %e, count, "write failed");
                }
            }
        }
        tracing::debug!(direction = dir, "worker stopped");
    }
}

/// The segment payload size of a GSO super-packet, from its virtio-net header.
fn gso_size(header: &[u8]) -> Option<u16> {
    let h = VirtioNetHdr::decode(header).ok()?;
    // gso_type: 0 none, 1 TCPv4, 3 UDP (UFO), 4 TCPv6, 5 UDP L4; 0x80 is the ECN bit.
    (h.gso_type & 0x7f != 0 && h.gso_size > 0).then_some(h.gso_size)
}
