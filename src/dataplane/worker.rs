//! The worker loop: drain one TUN queue through a [`Router`], then peek at the
//! reverse direction's queue, then sleep.
//!
//! Invariants:
//! - At most one thread drains a queue at a time (the queue's drain lock), so
//!   the packets of a flow leave in the order they came, even though two
//!   workers may read the same queue.
//! - Nothing on the packet path allocates: the buffers, the reply buffer and
//!   the UDP coalescer are made once per worker.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tun_rs::{InterruptEvent, SyncDevice, VirtioNetHdr};

use super::gro::UdpCoalescer;
use crate::policy::Policy;
use crate::router::{Direction, Router, RxInfo, Verdict};

/// Room for any reply the router builds: ICMP errors stay within 1280 bytes,
/// but an echo reply is as large as its request.
const REPLY_BUF: usize = 65_536;

/// Consecutive failed reads after which a worker gives up (a device that
/// fails this often is gone).
const MAX_READ_FAILURES: u32 = 1000;

/// Packets one drain reads before it lets go of the queue (so a peeking
/// worker, or the owner, gets its turn and the clock is read again).
const DRAIN_MAX: usize = 256;

/// Packets a worker takes from the reverse direction's queue after its own
/// drain, when that queue's owner is asleep. A reply the kernel generated
/// while this worker wrote (an ICMP echo reply, a TCP ACK) is already queued
/// when the write returns: taking it here saves the owner's wake-up on the
/// round trip (see docs/PERFORMANCE.md).
const PEEK_MAX: usize = 64;

/// Longest sleep of an idle worker: it still looks at the policy (a reload)
/// and the banner responder's timers at least this often.
const MAX_SLEEP: Duration = Duration::from_secs(1);

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

/// One TUN queue (file descriptor) and its drain lock.
pub(crate) struct Queue {
    pub(crate) dev: SyncDevice,
    draining: AtomicBool,
}

impl Queue {
    pub(crate) fn new(dev: SyncDevice) -> Queue {
        Queue { dev, draining: AtomicBool::new(false) }
    }

    fn try_lock(&self) -> bool {
        !self.draining.swap(true, Ordering::Acquire)
    }

    /// Waits for a peeking worker to finish (it holds the lock for at most
    /// `PEEK_MAX` packets).
    fn lock(&self) {
        while !self.try_lock() {
            std::thread::yield_now();
        }
    }

    fn unlock(&self) {
        self.draining.store(false, Ordering::Release);
    }
}

/// Why a drain ended.
enum Drained {
    /// The queue is empty (or the batch limit was reached): `n` packets read.
    Done(usize),
    /// The device keeps failing or the data plane stops.
    Stop,
}

/// The per-direction state a drain works with.
pub(crate) struct Side {
    pub(crate) dir: Direction,
    pub(crate) router: Router,
}

/// One worker: owns queue `i` of its ingress device; peeks at queue `i` of the
/// egress device (the reverse direction) when that one's owner sleeps.
pub(crate) struct Worker {
    pub(crate) own: Side,
    pub(crate) reverse: Side,
    /// Bytes in front of each packet: the virtio-net header with offload, else 0.
    pub(crate) offset: usize,
    pub(crate) io: Arc<IoCounters>,
    pub(crate) peek: bool,
    /// How long the worker keeps polling its queue (non-blocking) after the
    /// last packet before it sleeps (`dataplane.busy_poll_us`). Zero: sleep at
    /// once. Spinning trades a core for the wake-up latency of the next
    /// packet; see docs/PERFORMANCE.md for what it buys.
    pub(crate) busy_poll: Duration,
    /// The policy in force, as the data plane holds it (reloads swap it).
    pub(crate) policy: arc_swap::Cache<Arc<arc_swap::ArcSwap<Policy>>, Arc<Policy>>,
}

/// Buffers of one worker, allocated once.
struct Bufs {
    buf: Vec<u8>,
    reply: Vec<u8>,
    gro: UdpCoalescer,
    failures: u32,
    now: Instant,
}

impl Worker {
    /// Switches both routers to the data plane's current policy if a reload
    /// replaced it (a pointer comparison when nothing changed).
    fn sync_policy(&mut self) {
        let current = self.policy.load();
        if !Arc::ptr_eq(current, self.own.router.policy_arc()) {
            self.own.router.set_policy(current.clone());
            self.reverse.router.set_policy(current.clone());
            tracing::debug!(direction = self.own.dir.name(), "worker switched to the reloaded policy");
        }
    }

    pub(crate) fn run(mut self, ingress: &Queue, egress: &Queue, stop: &InterruptEvent) {
        let off = self.offset;
        let mut b = Bufs {
            buf: vec![0u8; off + 65_535],
            // A zeroed virtio-net header stays in front of replies: no offload asked.
            reply: vec![0u8; off + REPLY_BUF],
            gro: UdpCoalescer::new(off),
            failures: 0,
            now: Instant::now(),
        };
        let dir = self.own.dir.name();
        tracing::debug!(direction = dir, offload = off > 0, "worker started");
        'outer: loop {
            self.sync_policy();
            ingress.lock();
            let r = drain(&mut self.own, &self.io, off, &mut b, ingress, egress, DRAIN_MAX, stop);
            ingress.unlock();
            let n = match r {
                Drained::Done(n) => n,
                Drained::Stop => break,
            };
            if n > 0 {
                self.io.batches.fetch_add(1, Ordering::Relaxed);
                self.io.packets.fetch_add(n as u64, Ordering::Relaxed);
            }
            if self.peek && egress.try_lock() {
                // A reload during the drain: the queue's owner may have
                // switched already, so the peek must not use the old policy.
                self.sync_policy();
                let r = drain(&mut self.reverse, &self.io, off, &mut b, egress, ingress, PEEK_MAX, stop);
                egress.unlock();
                if let Drained::Done(k) = r {
                    self.io.packets.fetch_add(k as u64, Ordering::Relaxed);
                }
            }
            // The banner responder's timers (retransmissions, expiry) run in
            // whichever worker finds them due, also while traffic keeps it
            // from sleeping; what the responder sends goes to the subscriber.
            let subscriber_side = if self.own.dir == Direction::Outbound { ingress } else { egress };
            let timer = self.own.router.policy().runtime.responder_deadline.as_ref().and_then(|d| d.load());
            if timer.is_some_and(|at| at <= b.now) {
                b.now = Instant::now();
                let now = b.now;
                let dir = self.own.dir;
                respond(&self.own.router, off, &mut b.reply, subscriber_side, &self.io, dir, |r| r.poll(now));
                continue;
            }
            if n == DRAIN_MAX {
                // More may be waiting: drain again before sleeping.
                b.now = Instant::now();
                continue;
            }
            if !self.busy_poll.is_zero() {
                let until = (Instant::now() + self.busy_poll).min(timer.unwrap_or(Instant::now() + self.busy_poll));
                loop {
                    if stop.is_trigger() {
                        break 'outer;
                    }
                    if readable(&ingress.dev) {
                        b.now = Instant::now();
                        continue 'outer;
                    }
                    if Instant::now() >= until {
                        break;
                    }
                    std::hint::spin_loop();
                }
            }
            // Never sleep longer than MAX_SLEEP: an idle worker still picks up
            // a reloaded policy (and lets go of the old one) and runs timers.
            let timeout = timer.map_or(MAX_SLEEP, |at| at.saturating_duration_since(Instant::now()).min(MAX_SLEEP));
            match ingress.dev.wait_readable_intr_timeout(stop, Some(timeout)) {
                Ok(()) => b.now = Instant::now(),
                Err(_) if stop.is_trigger() => break,
                // Back to the top: the policy check, then the due timers.
                Err(e) if e.kind() == io::ErrorKind::TimedOut => b.now = Instant::now(),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::error!(direction = dir, error = %e, "cannot wait for the device; worker stops");
                    break;
                }
            }
        }
        tracing::debug!(direction = dir, "worker stopped");
    }
}

/// Whether a read would find a packet, without taking it (a zero-timeout wait).
fn readable(dev: &SyncDevice) -> bool {
    // A zero timeout turns the wait into one poll(2) that returns at once.
    let ev = NO_EVENT.with(|e| e.as_ref().map(|e| dev.wait_readable_intr_timeout(e, Some(Duration::ZERO)).is_ok()));
    ev.unwrap_or(false)
}

thread_local! {
    /// An event that never fires, for zero-timeout polls.
    static NO_EVENT: Option<InterruptEvent> = InterruptEvent::new().ok();
}

/// Reads from `from` until it is empty or `max` packets were read, judges each
/// with `side.router`, forwards to `to` and replies through `from`.
#[allow(clippy::too_many_arguments)]
fn drain(
    side: &mut Side,
    io: &IoCounters,
    off: usize,
    b: &mut Bufs,
    from: &Queue,
    to: &Queue,
    max: usize,
    stop: &InterruptEvent,
) -> Drained {
    let dir = side.dir;
    let mut n = 0;
    let result = loop {
        if n == max {
            break Drained::Done(n);
        }
        let len = match from.dev.recv(&mut b.buf) {
            Ok(len) => len,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Drained::Done(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                b.failures += 1;
                let count = io.rx_errors.fetch_add(1, Ordering::Relaxed) + 1;
                if count.is_power_of_two() {
                    tracing::warn!(direction = dir.name(), error = %e, count, "read failed");
                }
                if b.failures >= MAX_READ_FAILURES || stop.is_trigger() {
                    tracing::error!(direction = dir.name(), error = %e, "device keeps failing; worker stops");
                    break Drained::Stop;
                }
                continue;
            }
        };
        b.failures = 0;
        n += 1;
        // One clock read per 64 packets of a burst: the core only needs
        // time for rate limits, at millisecond grain.
        if n % 64 == 0 {
            b.now = Instant::now();
        }
        if len <= off {
            io.rx_errors.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let rx = if off > 0 { rx_info(&b.buf[..off]) } else { RxInfo::default() };
        let gso = rx.gso_size;
        let packet = &mut b.buf[off..len];
        let verdict = side.router.handle_offloaded(b.now, dir, packet, &mut b.reply[off..], rx);
        let sent = match verdict {
            Verdict::Forward { len } => {
                if gso.is_none() && b.gro.enabled() {
                    // Small packets of one UDP flow leave as one GSO packet.
                    match b.gro.push(&b.buf[..off + len]) {
                        Ok(()) => continue,
                        Err(()) => {
                            flush(&mut b.gro, &to.dev, io, dir);
                            match b.gro.push(&b.buf[..off + len]) {
                                Ok(()) => continue,
                                Err(()) => to.dev.send(&b.buf[..off + len]),
                            }
                        }
                    }
                } else {
                    flush(&mut b.gro, &to.dev, io, dir);
                    // The virtio-net header goes out as it came in: the headers
                    // it describes (offsets, segment size) did not move.
                    to.dev.send(&b.buf[..off + len])
                }
            }
            Verdict::Reply { len, kind } => {
                tracing::debug!(direction = dir.name(), reply = kind.name(), "reply");
                from.dev.send(&b.reply[..off + len])
            }
            Verdict::Drop(reason) => {
                tracing::trace!(direction = dir.name(), reason = reason.name(), "drop");
                continue;
            }
            Verdict::Terminate => {
                let now = b.now;
                respond(&side.router, off, &mut b.reply, from, io, dir, |r| r.input(now, &b.buf[off..len]));
                continue;
            }
        };
        if let Err(e) = sent {
            tx_error(io, dir, &e);
        }
    };
    flush(&mut b.gro, &to.dev, io, dir);
    result
}

fn flush(gro: &mut UdpCoalescer, to: &SyncDevice, io: &IoCounters, dir: Direction) {
    if let Some(bytes) = gro.take() {
        if let Err(e) = to.send(bytes) {
            tx_error(io, dir, &e);
        }
    }
}

fn tx_error(io: &IoCounters, dir: Direction, e: &io::Error) {
    // EIO while a link is down, ENOBUFS under pressure: a drop, not fatal.
    let count = io.tx_errors.fetch_add(1, Ordering::Relaxed) + 1;
    if count.is_power_of_two() {
        tracing::debug!(direction = dir.name(), error = %e, count, "write failed");
    }
}

/// What a packet's virtio-net header says: the segment payload size of a GSO
/// super-packet, and whether the transport checksum is left partial.
fn rx_info(header: &[u8]) -> RxInfo {
    let Ok(h) = VirtioNetHdr::decode(header) else {
        return RxInfo::default();
    };
    // gso_type: 0 none, 1 TCPv4, 3 UDP (UFO), 4 TCPv6, 5 UDP L4; 0x80 is the ECN bit.
    let gso_size = (h.gso_type & 0x7f != 0 && h.gso_size > 0).then_some(h.gso_size);
    RxInfo { gso_size, csum_partial: h.flags & super::gro::VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 }
}

/// Runs `step` on the banner responder (if the policy has one) and sends what
/// it has to send back to the subscriber side (`to`), each with a zeroed
/// virtio-net header in front.
#[allow(clippy::too_many_arguments)]
fn respond(
    router: &Router,
    off: usize,
    reply: &mut [u8],
    to: &Queue,
    io: &IoCounters,
    dir: Direction,
    step: impl FnOnce(&mut crate::responder::Responder),
) {
    let Some(mut r) = router.policy().runtime.responder() else {
        return;
    };
    step(&mut r);
    reply[..off].fill(0);
    let runtime = &router.policy().runtime;
    let now = Instant::now();
    while let Some(len) = r.transmit_limited(&mut reply[off..], |to| runtime.allow_reply(to, now)) {
        if let Err(e) = to.dev.send(&reply[..off + len]) {
            tx_error(io, dir, &e);
        }
    }
}
