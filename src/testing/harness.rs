//! [`TestRouter`]: a router with its own state and a virtual clock, driven
//! like a device would drive it: packets in, the bytes that would leave out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::packet::Direction;
use crate::policy::Policy;
use crate::router::{Router, RxInfo, Verdict};
use crate::state::State;
use crate::stats::Stats;

/// A router, a clock that moves only when told, and a reply buffer.
#[derive(Debug)]
pub struct TestRouter {
    /// The router under test.
    pub router: Router,
    /// The time handed to the router with each packet.
    pub now: Instant,
    reply: Vec<u8>,
}

impl TestRouter {
    /// A router over `policy` with fresh state, at an arbitrary start time.
    pub fn new(policy: Arc<Policy>) -> TestRouter {
        TestRouter { router: Router::new(policy), now: Instant::now(), reply: vec![0; 65_536] }
    }

    /// A router over `policy` sharing `state` (a second worker of the same data plane).
    pub fn with_state(policy: Arc<Policy>, state: Arc<State>) -> TestRouter {
        TestRouter { router: Router::with_state(policy, state), now: Instant::now(), reply: vec![0; 65_536] }
    }

    /// Feeds `pkt` travelling in `dir`; the verdict and the bytes that would
    /// leave (the rewritten packet, or the reply; nothing for a drop or a
    /// packet the banner responder took).
    pub fn send(&mut self, dir: Direction, pkt: &[u8]) -> (Verdict, Vec<u8>) {
        self.send_rx(dir, pkt, RxInfo::default())
    }

    /// Like [`TestRouter::send`], with what an offload device says of the packet.
    pub fn send_rx(&mut self, dir: Direction, pkt: &[u8], rx: RxInfo) -> (Verdict, Vec<u8>) {
        let mut buf = pkt.to_vec();
        let v = self.router.handle(self.now, dir, &mut buf, &mut self.reply, rx);
        let out = match v {
            Verdict::Forward { len } => buf[..len].to_vec(),
            Verdict::Reply { len, .. } => self.reply[..len].to_vec(),
            Verdict::Drop(_) | Verdict::Terminate => Vec::new(),
        };
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

    /// Moves the clock on.
    pub fn advance(&mut self, by: Duration) {
        self.now += by;
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
}
