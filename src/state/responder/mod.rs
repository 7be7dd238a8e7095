//! The banner responder: op25b ends a blocked SMTP connection itself, as the
//! server the client dialled, with one SMTP reply line, then closes.
//!
//! smoltcp is the TCP endpoint, in any-IP mode: a listening socket accepts a
//! SYN to any address and answers from that address, so the client sees the
//! server it dialled; the outside server never sees the connection.
//!
//! Sans-I/O, in the style of quinn-proto's connection: the router hands a
//! segment in once with `Responder::segment` (the responder's one lock, the
//! router's parse, one admission check; a new session also takes its reply
//! token under that lock); the data plane takes what is to be sent with
//! `poll_transmit` (through [`crate::state::State::poll_transmit`], which
//! applies the reply limit), asks [`Responder::poll_timeout`] (an atomic, no
//! lock) when the timers are due and runs them with
//! [`Responder::handle_timeout`]. Time is always passed in. Nothing is
//! allocated per segment: the segment is lent to smoltcp, and what it sends
//! goes into a ring of fixed slots ([`link`]).
//!
//! Bounds: `sessions` sockets per blocked port, created once. When none of a
//! port's sessions listens, a new SYN takes the oldest one still in
//! SYN-RECEIVED (it listens again silently: early drop, see
//! `Endpoint::make_room`); when all are past the handshake smoltcp answers
//! the SYN with an RST. So SYNs with forged sources, which never complete
//! the handshake, take only each other's sessions. A session lives at most
//! `idle` in all. At most [`link::QUEUE`] packets wait to be sent.
//!
//! Bounded replies to a forged SYN: a session still in SYN-RECEIVED after
//! [`SYN_RECEIVED_LIFETIME`] listens again silently, without the RST an abort
//! would send. smoltcp retransmits a SYN-ACK after 1 s and again 2 s later, so
//! the lifetime (2.5 s) lets exactly one retransmission out: a client whose
//! ACK was lost gets a second chance instead of waiting for a greeting that
//! never comes, and a SYN with a forged source brings its victim at most two
//! SYN-ACKs (each about the size of a SYN), never an RST, for one reply token.
//! The banner itself goes only to a client that completed the handshake, which
//! a forger off the path cannot. Every RST smoltcp would send (a segment it
//! cannot place, a SYN when every session is busy) goes out only with a reply
//! token for its destination.
//!
//! Admission happens under the same lock as the input, so no check can go
//! stale between them: a segment of no session in progress, a repeated SYN of
//! a session in progress and a SYN over its subscriber's share never reach
//! smoltcp (which would answer them with an RST outside the reply limit).

mod endpoint;
pub(crate) mod link;
#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::packet::{PacketView, Transport};
use crate::policy::{Banner, PortSet};
use endpoint::Endpoint;

/// How long a session waits for the client's ACK of its SYN-ACK.
pub const SYN_RECEIVED_LIFETIME: Duration = Duration::from_millis(2500);

/// What became of a segment handed to the responder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Taken: a new session, or a segment of one in progress.
    Accepted,
    /// Not part of a session in progress, or a repeated SYN of one: dropped.
    NotOwned,
    /// A SYN from a subscriber that holds its share of the sessions.
    SourceFull,
    /// A SYN over the reply limit of its source.
    RateLimited,
}

/// The banner responder, shared by the workers: its endpoint behind one
/// lock, its next deadline readable without it.
pub struct Responder {
    endpoint: Mutex<Endpoint>,
    deadline: Deadline,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder").field("deadline", &self.deadline.load()).finish_non_exhaustive()
    }
}

impl Responder {
    /// A responder for the blocked `ports` with the `banner` settings; its
    /// sockets and transmit ring are made on first use.
    pub fn new(ports: &PortSet, banner: &Banner) -> Responder {
        Responder { endpoint: Mutex::new(Endpoint::new(ports, banner)), deadline: Deadline::new() }
    }

    fn lock(&self) -> MutexGuard<'_, Endpoint> {
        // A poisoned lock only means a worker panicked mid-update; the
        // sockets are still valid sockets.
        self.endpoint.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A segment of a blocked flow from the subscriber: `view` parsed from
    /// `packet`. A new session spends a reply token for its source
    /// (`allow_reply`), like an RST would.
    pub(crate) fn segment(
        &self,
        now: Instant,
        view: &PacketView,
        packet: &[u8],
        allow_reply: impl FnOnce(IpAddr) -> bool,
    ) -> Admission {
        let mut e = self.lock();
        e.expire(now);
        let admission = if view.is_tcp_syn() {
            if e.owns(view) {
                // smoltcp ignores a SYN past LISTEN, but another listening
                // socket would take it and answer, outside the reply limit.
                Admission::NotOwned
            } else if e.sessions_of(view.src) >= e.per_source() {
                Admission::SourceFull
            } else if !allow_reply(view.src) {
                Admission::RateLimited
            } else {
                Admission::Accepted
            }
        } else if e.owns(view) {
            Admission::Accepted
        } else {
            Admission::NotOwned
        };
        if admission == Admission::Accepted {
            if let (true, Transport::Tcp { dst_port, .. }) = (view.is_tcp_syn(), view.transport) {
                e.make_room(dst_port);
            }
            e.input(now, packet);
        }
        self.deadline.store(e.deadline(), now);
        admission
    }

    /// The next packet for the subscriber side, copied into `out`; its
    /// length. An RST goes out only when `allow_reply` grants its
    /// destination a token; otherwise it is counted and skipped.
    pub(crate) fn poll_transmit(&self, out: &mut [u8], mut allow_reply: impl FnMut(IpAddr) -> bool) -> Option<usize> {
        let mut e = self.lock();
        e.transmit(out, &mut allow_reply)
    }

    /// When [`Responder::handle_timeout`] must run next (retransmissions,
    /// session lifetimes); read without the lock, rounded up to the microsecond.
    #[inline]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline.load()
    }

    /// Runs the timers due at `now`.
    pub fn handle_timeout(&self, now: Instant) {
        let mut e = self.lock();
        e.poll(now);
        self.deadline.store(e.deadline(), now);
    }

    /// Sessions between handshake and close.
    pub fn active(&self) -> usize {
        self.lock().active()
    }

    /// Sessions in progress of the subscriber `src` belongs to.
    pub fn sessions_of(&self, src: IpAddr) -> usize {
        self.lock().sessions_of(src)
    }

    /// RSTs not sent for want of a reply token.
    pub fn rsts_limited(&self) -> u64 {
        self.lock().rsts_limited
    }

    /// Sessions in SYN-RECEIVED given up for a new SYN when every session
    /// of its port was busy (early drop).
    pub fn syn_evictions(&self) -> u64 {
        self.lock().syn_evictions
    }

    /// Packets thrown away because the transmit ring was full.
    pub fn ring_overflows(&self) -> u64 {
        self.lock().ring_overflows()
    }

    /// The exact next deadline, under the lock (tests compare it with
    /// [`Responder::poll_timeout`]).
    #[cfg(test)]
    fn deadline_exact(&self) -> Option<Instant> {
        self.lock().deadline()
    }
}

/// The responder's next deadline, readable by every worker without taking
/// the responder's lock: microseconds after a base instant, `u64::MAX` for
/// none. The base is the first time the responder is given (it reads no
/// clock), and no deadline lies before it.
#[derive(Debug)]
struct Deadline {
    base: OnceLock<Instant>,
    micros: AtomicU64,
}

impl Deadline {
    fn new() -> Deadline {
        Deadline { base: OnceLock::new(), micros: AtomicU64::new(u64::MAX) }
    }

    fn store(&self, at: Option<Instant>, now: Instant) {
        let base = *self.base.get_or_init(|| now);
        // Rounded up: a timer never looks due before it is.
        let v = at.map_or(u64::MAX, |at| {
            let d = at.saturating_duration_since(base);
            (d.as_micros() as u64).saturating_add(u64::from(d.subsec_nanos() % 1000 != 0)).min(u64::MAX - 1)
        });
        self.micros.store(v, Ordering::Relaxed);
    }

    fn load(&self) -> Option<Instant> {
        match (self.micros.load(Ordering::Relaxed), self.base.get()) {
            (u64::MAX, _) | (_, None) => None,
            (v, Some(base)) => Some(*base + Duration::from_micros(v)),
        }
    }
}
