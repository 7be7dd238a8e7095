//! [`TestRouter`]: routers with their own state and a virtual clock, driven
//! like a device would drive them: packets in, the bytes that would leave
//! out. The one harness of op25b's tests, benches and fuzz targets.
//!
//! Built with [`TestRouter::new`] it is one worker, and time and the banner
//! responder move only when a test says so. Built with
//! [`TestRouter::data_plane`] it plays the data plane: two workers sharing
//! one State, OP25B's blocks fed to abuse handling, the responder's timers
//! and transmissions run after every packet, every reply checked to parse,
//! and the last packets that left kept ([`TestRouter::recent`]) so that a
//! script can answer them.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::packet::{Direction, PacketView};
use crate::policy::Policy;
use crate::router::{Router, RxInfo, Verdict};
use crate::state::abuse::{Abuse, AbuseEvent, AbuseSettings};
use crate::state::State;
use crate::stats::Stats;

/// A packet that left the router, and the direction its answer travels in.
#[derive(Debug, Clone)]
pub struct Left {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// Outbound if a subscriber would answer it, inbound if the outside would.
    pub answer: Direction,
}

/// Packets kept for [`TestRouter::recent`].
const KEEP: usize = 16;

/// How [`TestRouter::data_plane`] builds its routers.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Abuse handling (`[abuse]`), quarantining into the routers' state.
    pub abuse: Option<AbuseSettings>,
    /// The reply buffer's size (1280 is the least the router is documented to need).
    pub reply_len: usize,
}

impl Default for Setup {
    fn default() -> Setup {
        Setup { abuse: None, reply_len: 65_536 }
    }
}

/// The data plane's part around the routers, in [`TestRouter::data_plane`].
#[derive(Debug)]
struct Plane {
    second: Router,
    abuse: Option<Abuse>,
    events: Vec<AbuseEvent>,
    out: Vec<u8>,
    left: VecDeque<Left>,
}

/// A router, a clock that moves only when told, and a reply buffer.
#[derive(Debug)]
pub struct TestRouter {
    /// The router under test (worker 0).
    pub router: Router,
    /// The time handed to the router with each packet.
    pub now: Instant,
    reply: Vec<u8>,
    plane: Option<Box<Plane>>,
}

impl TestRouter {
    /// A router over `policy` with fresh state, at an arbitrary start time.
    pub fn new(policy: Arc<Policy>) -> TestRouter {
        TestRouter::with_state(Arc::clone(&policy), Arc::new(State::new(&policy)))
    }

    /// A router over `policy` sharing `state` (a second worker of the same data plane).
    pub fn with_state(policy: Arc<Policy>, state: Arc<State>) -> TestRouter {
        TestRouter {
            router: Router::with_state(policy, state),
            now: Instant::now(),
            reply: vec![0; 65_536],
            plane: None,
        }
    }

    /// Two workers over `policy` and one fresh State, driven as the data
    /// plane drives them (see the module docs).
    pub fn data_plane(policy: Arc<Policy>, setup: Setup) -> TestRouter {
        TestRouter::plane_with(policy, setup, Vec::new(), Vec::new())
    }

    /// Starts afresh as [`TestRouter::data_plane`] does, keeping the
    /// buffers: a fuzz target renews one harness per input rather than
    /// zeroing 64 KiB buffers for each.
    pub fn renew(&mut self, policy: Arc<Policy>, setup: Setup) {
        let reply = std::mem::take(&mut self.reply);
        let out = self.plane.take().map(|p| p.out).unwrap_or_default();
        *self = TestRouter::plane_with(policy, setup, reply, out);
    }

    fn plane_with(policy: Arc<Policy>, setup: Setup, mut reply: Vec<u8>, mut out: Vec<u8>) -> TestRouter {
        let state = Arc::new(State::new(&policy));
        let mut first = Router::with_state(Arc::clone(&policy), Arc::clone(&state));
        let mut second = Router::with_state(policy, Arc::clone(&state));
        let abuse = setup.abuse.map(|s| Abuse::new(s, Arc::clone(state.quarantine())));
        first.note_blocks(abuse.is_some());
        second.note_blocks(abuse.is_some());
        // What a buffer held before does not matter: the router writes before it reads.
        reply.resize(setup.reply_len, 0);
        // Only a banner responder transmits.
        if state.responder().is_some() {
            out.resize(65_536, 0);
        }
        let plane = Plane { second, abuse, events: Vec::new(), out, left: VecDeque::new() };
        TestRouter { router: first, now: Instant::now(), reply, plane: Some(Box::new(plane)) }
    }

    /// Feeds `pkt` travelling in `dir`; the verdict and the bytes that would
    /// leave (the rewritten packet, or the reply; nothing for a drop or a
    /// packet the banner responder took).
    pub fn send(&mut self, dir: Direction, pkt: &[u8]) -> (Verdict, Vec<u8>) {
        self.send_rx(dir, pkt, RxInfo::default())
    }

    /// Like [`TestRouter::send`], with what an offload device says of the packet.
    pub fn send_rx(&mut self, dir: Direction, pkt: &[u8], rx: RxInfo) -> (Verdict, Vec<u8>) {
        self.send_on(0, dir, pkt, rx)
    }

    /// Like [`TestRouter::send_rx`], to worker `worker` (0 or 1, modulo 2;
    /// worker 1 is worker 0 unless built by [`TestRouter::data_plane`]).
    /// In the data plane's part, also what the data plane does after the
    /// packet: OP25B's block to abuse handling, the responder's timers.
    pub fn send_on(&mut self, worker: usize, dir: Direction, pkt: &[u8], rx: RxInfo) -> (Verdict, Vec<u8>) {
        let mut buf = pkt.to_vec();
        let driven = self.plane.is_some();
        let router = match &mut self.plane {
            Some(p) if worker % 2 == 1 => &mut p.second,
            _ => &mut self.router,
        };
        let v = router.handle(self.now, dir, &mut buf, &mut self.reply, rx);
        // The data plane takes the block; a test of one worker takes it itself.
        let block = if driven { router.take_block() } else { None };
        let out = match v {
            Verdict::Forward { len } => {
                assert!(len <= buf.len(), "forward of {len} bytes from a {}-byte packet", buf.len());
                buf.truncate(len);
                buf
            }
            Verdict::Reply { len, .. } => {
                assert!(len <= self.reply.len(), "a {len}-byte reply in a {}-byte buffer", self.reply.len());
                self.reply[..len].to_vec()
            }
            Verdict::Drop(_) | Verdict::Terminate => Vec::new(),
        };
        let Some(plane) = &mut self.plane else { return (v, out) };
        if let (Some(a), Some(attempt)) = (&plane.abuse, block.and_then(|b| b.attempt(self.now))) {
            a.record([attempt], &mut plane.events);
            plane.events.clear();
        }
        match v {
            Verdict::Forward { .. } => plane.keep(&out, dir.reverse()),
            Verdict::Reply { kind, .. } => {
                if let Err(e) = PacketView::parse(&out) {
                    panic!("a {kind:?} reply that does not parse ({e:?}): {out:02x?}");
                }
                plane.keep(&out, dir);
            }
            _ => {}
        }
        self.drive();
        (v, out)
    }

    /// [`TestRouter::send`] from the subscriber side.
    pub fn out(&mut self, pkt: &[u8]) -> (Verdict, Vec<u8>) {
        self.send(Direction::Outbound, pkt)
    }

    /// [`TestRouter::send`] from the upstream side.
    pub fn inb(&mut self, pkt: &[u8]) -> (Verdict, Vec<u8>) {
        self.send(Direction::Inbound, pkt)
    }

    /// Moves the clock on (and, in the data plane's part, runs what fell due).
    pub fn advance(&mut self, by: Duration) {
        self.now += by;
        self.drive();
    }

    /// The data plane's part between packets: abuse handling's expiries,
    /// the responder's due timers, its transmissions kept.
    fn drive(&mut self) {
        let Some(plane) = &mut self.plane else { return };
        if let Some(a) = &plane.abuse {
            a.expire(self.now, &mut plane.events);
            plane.events.clear();
        }
        let state = Arc::clone(self.router.state());
        if state.poll_timeout().is_some_and(|at| at <= self.now) {
            state.handle_timeout(self.now);
        }
        let mut sent = 0;
        while let Some(n) = state.poll_transmit(self.now, &mut plane.out) {
            assert!(n <= plane.out.len(), "poll_transmit wrote {n} bytes into {}", plane.out.len());
            let pkt = plane.out[..n].to_vec();
            if let Err(e) = PacketView::parse(&pkt) {
                panic!("the responder sent an unparsable packet ({e:?}): {pkt:02x?}");
            }
            plane.keep(&pkt, Direction::Outbound);
            sent += 1;
            assert!(sent < 10_000, "poll_transmit does not run dry");
        }
    }

    /// What the banner responder has to send now.
    pub fn transmitted(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 2048];
        while let Some(n) = self.router.state().poll_transmit(self.now, &mut buf) {
            out.push(buf[..n].to_vec());
        }
        out
    }

    /// Runs the responder's timers due now; what it sent.
    pub fn run_timers(&mut self) -> Vec<Vec<u8>> {
        if self.router.state().poll_timeout().is_some_and(|at| at <= self.now) {
            self.router.state().handle_timeout(self.now);
        }
        self.transmitted()
    }

    /// The router's counters now.
    pub fn stats(&self) -> Stats {
        self.router.stats()
    }

    /// Each worker's counters (the State's, the responder's, are in both).
    pub fn worker_stats(&self) -> Vec<Stats> {
        let mut all = vec![self.router.stats()];
        all.extend(self.plane.as_ref().map(|p| p.second.stats()));
        all
    }

    /// The last packet that left, `back` places from the newest (modulo the
    /// count); always `None` outside the data plane's part.
    pub fn recent(&self, back: u8) -> Option<&Left> {
        let left = &self.plane.as_ref()?.left;
        let n = left.len();
        (n > 0).then(|| &left[n - 1 - usize::from(back) % n])
    }

    /// Checks the counters: per direction and worker, every packet received
    /// has exactly one verdict.
    pub fn check_counts(&self) {
        for s in self.worker_stats() {
            for d in Direction::ALL {
                let x = s.dir(d);
                let judged = x.forwarded + x.dropped_total() + x.replied_total() + x.terminated;
                assert_eq!(x.received, judged, "{d:?}: {x:?}");
            }
        }
    }
}

impl Plane {
    fn keep(&mut self, bytes: &[u8], answer: Direction) {
        if self.left.len() == KEEP {
            self.left.pop_front();
        }
        self.left.push_back(Left { bytes: bytes.to_vec(), answer });
    }
}
