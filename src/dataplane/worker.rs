//! The worker loop: drain one TUN queue through a [`Router`], then peek at the
//! reverse direction's queue, run the banner responder's due timers, then sleep.
//!
//! Invariants:
//! - At most one thread drains a queue at a time (the queue's drain lock), so
//!   the packets of a flow leave in the order they came, even though two
//!   workers may read the same queue.
//! - Nothing on the packet path allocates: the buffers, the reply buffer and
//!   the UDP coalescer are made once per worker; the banner responder writes
//!   into fixed slots and its output is copied into the reply buffer.
//! - Every counter here has one writer, this worker ([`IoCounters`]).
//! - A worker holds the policy and state it runs with and hands them to its
//!   two routers; the banner responder's timers and output use that state.
//!   A reload swaps them between batches, never within one.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tun_rs::{InterruptEvent, VirtioNetHdr};

use super::capture::CaptureSink;
use super::drain_lock::DrainLock;
use super::events::{AttemptSender, Event, EventSender};
use super::fault::{is_lost, Faults};
use super::gro::UdpCoalescer;
use super::idle::{spin, wait, Spun};
use super::link::Link;
use super::Active;
use crate::packet::reply::icmp_error;
use crate::packet::{Direction, IcmpError, PacketView};
use crate::policy::Policy;
use crate::router::{Router, RxInfo, Verdict};
use crate::state::State;
use crate::stats::{Counter, Stats};
use std::net::IpAddr;

/// Room for any reply the router builds: ICMP errors stay within 1280 bytes,
/// but an echo reply is as large as its request.
const REPLY_BUF: usize = 65_536;

/// Consecutive failed reads after which a worker gives up (a device that
/// fails this often is gone). A deleted device is known at once (EBADFD).
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
// A drain with a limit below DRAIN_MAX is a peek, and gives the queue back
// when its owner waits (`drain`).
const _: () = assert!(PEEK_MAX < DRAIN_MAX);

/// A worker's sign of life: when it last passed the top of its loop, in
/// milliseconds since the data plane started. One writer (the worker); read
/// by the service manager's watchdog (`control::notify`), so that a wedged
/// worker stops the watchdog pings.
#[derive(Debug)]
pub(crate) struct Heartbeat {
    /// The worker's thread name.
    pub(crate) name: String,
    epoch: Instant,
    last_ms: std::sync::atomic::AtomicU64,
}

impl Heartbeat {
    pub(crate) fn new(name: String, epoch: Instant) -> Heartbeat {
        Heartbeat { name, epoch, last_ms: std::sync::atomic::AtomicU64::new(0) }
    }

    /// The worker is alive at `now`.
    pub(crate) fn beat(&self, now: Instant) {
        let ms = u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// How long ago, seen at `now`, the worker last showed life.
    pub(crate) fn age(&self, now: Instant) -> Duration {
        let last = self.epoch + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        now.saturating_duration_since(last)
    }
}

/// The I/O counters of one worker, per device (0 subscriber, 1 upstream).
#[derive(Debug, Default)]
pub(crate) struct IoCounters {
    rx_packets: [Counter; 2],
    rx_bytes: [Counter; 2],
    rx_errors: [Counter; 2],
    tx_packets: [Counter; 2],
    tx_bytes: [Counter; 2],
    tx_errors: [Counter; 2],
    batches: [Counter; 2],
    /// Events the full queue did not take.
    events_dropped: Counter,
    /// Packets not forwarded that could not be captured (no free buffer).
    capture_dropped: Counter,
    /// Blocked attempts the full queue to abuse handling did not take.
    attempts_dropped: Counter,
}

impl IoCounters {
    /// Adds this worker's counts to the devices' figures.
    pub(crate) fn add_to(&self, s: &mut Stats) {
        s.events_dropped += self.events_dropped.get();
        s.capture_dropped += self.capture_dropped.get();
        s.abuse.attempts_dropped += self.attempts_dropped.get();
        for (i, d) in s.devices.iter_mut().enumerate() {
            d.rx_packets += self.rx_packets[i].get();
            d.rx_bytes += self.rx_bytes[i].get();
            d.rx_errors += self.rx_errors[i].get();
            d.tx_packets += self.tx_packets[i].get();
            d.tx_bytes += self.tx_bytes[i].get();
            d.tx_errors += self.tx_errors[i].get();
            d.batches += self.batches[i].get();
        }
    }
}

/// One device queue (a TUN queue or an Ethernet socket) and its drain lock.
pub(crate) struct Queue {
    pub(crate) dev: Link,
    drain: DrainLock,
}

impl Queue {
    pub(crate) fn new(dev: Link) -> Queue {
        Queue { dev, drain: DrainLock::default() }
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
    /// The policy and state in force, as the data plane holds them (reloads swap them).
    pub(crate) active: arc_swap::Cache<Arc<arc_swap::ArcSwap<Active>>, Arc<Active>>,
    /// The policy and state this worker runs with: its own, handed to both
    /// its routers, and swapped for the data plane's when a reload replaced them.
    pub(crate) current: Arc<Active>,
    /// Where blocked connection attempts go, when events are on.
    pub(crate) events: Option<EventSender>,
    /// Where copies of the packets not forwarded go, when capture is on.
    pub(crate) capture: Option<CaptureSink>,
    /// Where blocked attempts go, when abuse handling is on.
    pub(crate) abuse: Option<AttemptSender>,
    /// Set at the top of every loop: a worker that stops looping stops it.
    pub(crate) heartbeat: Arc<Heartbeat>,
    /// Where a lost device is reported.
    pub(crate) faults: Arc<Faults>,
}

/// Buffers of one worker, allocated once.
struct Bufs {
    buf: Vec<u8>,
    reply: Vec<u8>,
    gro: UdpCoalescer,
}

/// What a drain needs besides the side and the buffers.
struct Io<'a> {
    counters: &'a IoCounters,
    events: Option<&'a EventSender>,
    capture: Option<&'a CaptureSink>,
    abuse: Option<&'a AttemptSender>,
    off: usize,
    stop: &'a InterruptEvent,
    faults: &'a Faults,
    /// Consecutive failed reads.
    failures: u32,
}

impl Io<'_> {
    /// Counts a write to device `dev`; a write that finds the device gone
    /// reports it.
    fn sent(&self, dev: usize, result: io::Result<usize>, dir: Direction) {
        let c = self.counters;
        match result {
            Ok(n) => {
                c.tx_packets[dev].add(1);
                c.tx_bytes[dev].add(n as u64);
            }
            Err(e) => {
                // EIO while a link is down, ENOBUFS under pressure: a drop, not fatal.
                c.tx_errors[dev].add(1);
                if is_lost(&e) {
                    self.faults.lost(dev, &e);
                    return;
                }
                let count = c.tx_errors[dev].get();
                if count.is_power_of_two() {
                    tracing::debug!(direction = dir.name(), error = %e, count, "write failed");
                }
            }
        }
    }
}

/// The device index (0 subscriber, 1 upstream) packets travelling in `dir` are read from.
fn ingress_device(dir: Direction) -> usize {
    dir.index()
}

impl Worker {
    /// Takes the data plane's policy and state, and hands them to both
    /// routers, if a reload replaced them (a pointer comparison when nothing
    /// changed).
    fn sync_policy(&mut self) {
        let latest = self.active.load();
        if !Arc::ptr_eq(latest, &self.current) {
            self.current = Arc::clone(latest);
            for side in [&mut self.own, &mut self.reverse] {
                side.router.set_policy(self.current.policy.clone(), self.current.state.clone());
            }
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
        };
        let io_counters = Arc::clone(&self.io);
        let (events, capture, abuse) = (self.events.clone(), self.capture.clone(), self.abuse.clone());
        let faults = Arc::clone(&self.faults);
        let mut io = Io {
            counters: &io_counters,
            events: events.as_ref(),
            capture: capture.as_ref(),
            abuse: abuse.as_ref(),
            off,
            stop,
            faults: &faults,
            failures: 0,
        };
        let mut wait_errors = 0;
        let mut now = Instant::now();
        let dir = self.own.dir.name();
        // The subscriber side's queue of this worker: where banner output goes.
        let subscriber_side = if self.own.dir == Direction::Outbound { ingress } else { egress };
        tracing::debug!(direction = dir, offload = off > 0, "worker started");
        loop {
            // Once a batch or a wake-up (at most MAX_SLEEP + busy_poll apart).
            self.heartbeat.beat(now);
            // A lost device: op25b is stopping; nothing more to read or write.
            if faults.any() {
                break;
            }
            self.sync_policy();
            ingress.drain.lock();
            let r = drain(&mut self.own, &self.current.state, &mut io, &mut b, &mut now, (ingress, egress), DRAIN_MAX);
            ingress.drain.unlock();
            let n = match r {
                Drained::Done(n) => n,
                Drained::Stop => break,
            };
            if self.peek && egress.drain.try_lock() {
                // A reload during the drain: the queue's owner may have
                // switched already, so the peek must not use the old policy.
                self.sync_policy();
                let r = drain(
                    &mut self.reverse,
                    &self.current.state,
                    &mut io,
                    &mut b,
                    &mut now,
                    (egress, ingress),
                    PEEK_MAX,
                );
                egress.drain.unlock();
                // A failing reverse queue is its owner's to give up on: this
                // worker stops only for its own queue, a shutdown or a lost
                // device (whichever worker found it).
                if matches!(r, Drained::Stop) && (stop.is_trigger() || faults.any()) {
                    break;
                }
            }
            if self.own.dir == Direction::Outbound {
                // Packets whose next hop on the upstream link never answered:
                // ICMP host unreachable to their senders, on the subscriber side.
                let policy = &self.current.policy;
                egress.dev.take_unreachable(|pkt| unreachable(policy, pkt, &mut b.reply, &io, ingress));
            }
            // The banner responder's timers (retransmissions, expiry) run in
            // whichever worker finds them due, also while traffic keeps it
            // from sleeping; what the responder sends goes to the subscriber.
            let state = &self.current.state;
            let timer = state.poll_timeout();
            if timer.is_some_and(|at| at <= now) {
                now = Instant::now();
                state.handle_timeout(now);
                transmit(state, now, &mut b.reply, &io, subscriber_side, self.own.dir);
                continue;
            }
            if n == DRAIN_MAX {
                // More may be waiting: drain again before sleeping.
                now = Instant::now();
                continue;
            }
            if !self.busy_poll.is_zero() {
                match spin(&ingress.dev, stop, self.busy_poll, timer) {
                    Spun::Stop => break,
                    Spun::Readable => {
                        now = Instant::now();
                        continue;
                    }
                    Spun::Idle => {}
                }
            }
            if !wait(&ingress.dev, ingress_device(self.own.dir), stop, &faults, timer, &mut now, &mut wait_errors) {
                break;
            }
        }
        tracing::debug!(direction = dir, "worker stopped");
    }
}

/// Reads from `from` until it is empty or `max` packets were read, judges each
/// with `side.router`, forwards to `to` and replies through `from`; what the
/// banner responder of `state` (the router's) sends goes back through `from`.
fn drain(
    side: &mut Side,
    state: &State,
    io: &mut Io<'_>,
    b: &mut Bufs,
    now: &mut Instant,
    (from, to): (&Queue, &Queue),
    max: usize,
) -> Drained {
    let dir = side.dir;
    let off = io.off;
    let (rx_dev, tx_dev) = (ingress_device(dir), ingress_device(dir.reverse()));
    let c = io.counters;
    let mut n = 0;
    let result = loop {
        // A peek (a `max` below the owner's) gives the queue back to its owner.
        if n == max || (max < DRAIN_MAX && from.drain.wanted()) {
            break Drained::Done(n);
        }
        let len = match from.dev.recv(&mut b.buf) {
            Ok(len) => len,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Drained::Done(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                if read_failed(io, rx_dev, dir, &e) {
                    break Drained::Stop;
                }
                continue;
            }
        };
        io.failures = 0;
        n += 1;
        // One clock read per 64 packets of a burst: the core only needs
        // time for rate limits, at millisecond grain.
        if n % 64 == 0 {
            *now = Instant::now();
        }
        if len <= off {
            c.rx_errors[rx_dev].add(1);
            continue;
        }
        c.rx_packets[rx_dev].add(1);
        c.rx_bytes[rx_dev].add((len - off) as u64);
        let rx = if off > 0 { rx_info(&b.buf[..off]) } else { RxInfo::default() };
        let gso = rx.gso_size;
        let packet = &mut b.buf[off..len];
        let verdict = side.router.handle(*now, dir, packet, &mut b.reply[off..], rx);
        if let Some(cap) = io.capture {
            // Not forwarded: the packet is as it arrived (only forwarding rewrites).
            if !matches!(verdict, Verdict::Forward { .. }) && !cap.offer(&b.buf[off..len], SystemTime::now()) {
                c.capture_dropped.add(1);
            }
        }
        if let Some(block) = side.router.take_block() {
            report_block(&side.router, io, block, *now);
        }
        match verdict {
            Verdict::Forward { len } => {
                if gso.is_none() && b.gro.enabled() {
                    // Small packets of one UDP flow leave as one GSO packet.
                    if b.gro.push(&b.buf[..off + len]).is_ok() {
                        continue;
                    }
                    flush(&mut b.gro, &to.dev, io, tx_dev, dir);
                    if b.gro.push(&b.buf[..off + len]).is_ok() {
                        continue;
                    }
                } else {
                    flush(&mut b.gro, &to.dev, io, tx_dev, dir);
                }
                // The virtio-net header goes out as it came in: the headers
                // it describes (offsets, segment size) did not move.
                io.sent(tx_dev, to.dev.send(&b.buf[..off + len]), dir);
            }
            Verdict::Reply { len, kind } => {
                tracing::debug!(direction = dir.name(), reply = kind.name(), "reply");
                io.sent(rx_dev, from.dev.send(&b.reply[..off + len]), dir);
            }
            Verdict::Drop(reason) => {
                tracing::trace!(direction = dir.name(), reason = reason.name(), "drop");
            }
            Verdict::Terminate => {
                // The banner action is outbound only: `from` is the subscriber side.
                transmit(state, *now, &mut b.reply, io, from, dir);
            }
        }
    };
    if n > 0 {
        c.batches[rx_dev].add(1);
    }
    flush(&mut b.gro, &to.dev, io, tx_dev, dir);
    // An Ethernet upstream batches small frames: forwarded ones (`to`) or
    // replies (`from`) leave now, in one system call each.
    for (dev, link) in [(tx_dev, &to.dev), (rx_dev, &from.dev)] {
        if let Err(e) = link.flush() {
            io.sent(dev, Err(e), dir);
        }
    }
    result
}

/// Counts a failed read and tells whether the worker must stop: the device
/// is gone, or too many reads in a row failed, or the data plane stops.
#[cold]
fn read_failed(io: &mut Io<'_>, rx_dev: usize, dir: Direction, e: &io::Error) -> bool {
    let c = io.counters;
    io.failures += 1;
    c.rx_errors[rx_dev].add(1);
    if is_lost(e) {
        io.faults.lost(rx_dev, e);
        return true;
    }
    let count = c.rx_errors[rx_dev].get();
    if count.is_power_of_two() {
        tracing::warn!(direction = dir.name(), error = %e, count, "read failed");
    }
    if io.failures >= MAX_READ_FAILURES {
        io.faults.lost(rx_dev, &format!("{} reads in a row failed, the last: {e}", io.failures));
        return true;
    }
    io.stop.is_trigger()
}

/// Hands an OP25B block (or monitor's would-be block) to abuse handling and
/// to the events, without waiting: a full queue counts a drop.
fn report_block(router: &Router, io: &Io<'_>, block: crate::router::Block, now: Instant) {
    let c = io.counters;
    if let (Some(tx), Some(attempt)) = (io.abuse, block.attempt(now)) {
        if tx.try_send(attempt).is_err() {
            c.attempts_dropped.add(1);
        }
    }
    if let Some(tx) = io.events {
        let rule = block.rule.and_then(|i| router.rule_name(i));
        if tx.try_send(Event::Blocked { block, rule }).is_err() {
            c.events_dropped.add(1);
        }
    }
}

/// Sends what the banner responder has for the subscriber side (`to`), each
/// packet with a zeroed virtio-net header in front.
fn transmit(state: &State, now: Instant, reply: &mut [u8], io: &Io<'_>, to: &Queue, dir: Direction) {
    let off = io.off;
    reply[..off].fill(0);
    while let Some(len) = state.poll_transmit(now, &mut reply[off..]) {
        io.sent(0, to.dev.send(&reply[..off + len]), dir);
    }
}

/// Answers the sender of `pkt`, whose next hop never answered, with ICMP host
/// unreachable through the subscriber side (`to`).
fn unreachable(policy: &Policy, pkt: &[u8], reply: &mut [u8], io: &Io<'_>, to: &Queue) {
    let Ok(view) = PacketView::parse(pkt) else { return };
    let from = match view.src {
        IpAddr::V4(_) => policy.address_v4.map(IpAddr::V4),
        IpAddr::V6(_) => policy.address_v6.map(IpAddr::V6),
    };
    let Some(from) = from else { return };
    let off = io.off;
    reply[..off].fill(0);
    if let Some(len) = icmp_error(IcmpError::HostUnreachable, &view, pkt, from, &mut reply[off..]) {
        io.sent(0, to.dev.send(&reply[..off + len]), Direction::Inbound);
    }
}

fn flush(gro: &mut UdpCoalescer, to: &Link, io: &Io<'_>, dev: usize, dir: Direction) {
    if let Some(bytes) = gro.take() {
        io.sent(dev, to.send(bytes), dir);
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
