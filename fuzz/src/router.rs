//! The router under fuzzing: a fixed set of policies (every OP25B action, with
//! and without IP25B, all with config rules of every rule action), and a
//! [`Driver`] that feeds packets to two workers sharing one State, keeps a
//! virtual clock, runs the banner responder's timers and transmissions as the
//! data plane does, and checks what leaves the router.
//!
//! [`Script`] is the raw target's input format, a sequence of records:
//!
//! ```text
//! byte 0           policy (low 4 bits, modulo the count); bit 4: a 1280-byte reply buffer
//! then records     CTL LEN [LEN_HI] [GSO_LO GSO_HI] PACKET...
//!   CTL bit 0      direction: 0 outbound, 1 inbound
//!   CTL bits 1-3   time to advance first: 0, 1 ms, 50 ms, 1 s, 5 s, 31 s, 2 min, 11 min
//!   CTL bit 4      worker: 0 or 1 (both share the State)
//!   CTL bit 5      RxInfo::csum_partial
//!   CTL bit 6      RxInfo::gso_size follows the length
//!   CTL bit 7      the length has a second (high) byte
//!   LEN = 0        no packet: answer the last packet that left the router instead
//! ```

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use op25b::packet::{Direction, PacketView};
use op25b::policy::Policy;
use op25b::state::abuse::{Abuse, AbuseEvent, AbuseSettings, Attempt};
use op25b::testing::{packets, PolicyBuilder};
use op25b::{Router, RxInfo, Verdict};

/// Rules of every action, kind of match and family, run by every policy.
const RULES: &str = r#"
[sets]
mail = [25, 465, 587]
outside = ["192.0.2.0/24", "2001:db8:ff::/48", "203.0.113.0/25"]

[[rule]]
name = "static-accept"
direction = "outbound"
src = ["100.64.9.0/24", "2001:db8:100:9::/64"]
action = "accept"

[[rule]]
name = "count-all"
action = "count"

[[rule]]
name = "no-telnet"
direction = "outbound"
protocol = "tcp"
dst = ["@outside"]
dst_ports = [23, "6000-6010"]
tcp_flags = "syn"
action = "reject"

[[rule]]
name = "mail-syn-limit"
direction = "outbound"
protocol = "tcp"
dst_ports = ["@mail"]
tcp_flags = "syn"
action = "rate-limit"
rate = 1
burst = 2

[[rule]]
name = "dns-in-drop"
direction = "inbound"
protocol = "udp"
src_ports = [53]
dst_ports = ["1-1023"]
action = "drop"

[[rule]]
name = "ping-limit"
protocol = "icmp"
action = "rate-limit"
rate = 1
burst = 1

[[rule]]
name = "ping6-reject"
protocol = "icmpv6"
dst = ["2001:db8:ff::/48"]
action = "reject"

[[rule]]
name = "discard-reject"
protocol = "udp"
dst_ports = [9]
action = "reject"

[[rule]]
name = "rst-count"
direction = "any"
protocol = "tcp"
tcp_flags = "rst"
action = "count"
"#;

/// The configs of the policies: every action, with and without IP25B, all
/// with the rules above, and the lab's as it is.
pub fn builders() -> Vec<PolicyBuilder> {
    let base = || PolicyBuilder::lab().op25b("reply_rate", 1).op25b("reply_burst", 2).rules(RULES);
    let banner = |b: PolicyBuilder| {
        b.action("banner").op25b("banner_sessions", 4).op25b("banner_sessions_per_source", 2).op25b("banner_timeout", 1)
    };
    let redirect = |b: PolicyBuilder, port: u16, flows: u32| {
        b.action("redirect")
            .op25b("redirect_to", format!(r#"["198.51.100.25:{port}", "[2001:db8:25::25]:{port}"]"#))
            .op25b("max_flows", flows)
            .op25b("max_flows_per_source", 2)
    };
    let inbound = |b: PolicyBuilder| b.op25b("block_inbound", true).op25b("ports", "[25, 465, 587]");
    // Suspected after two blocked attempts (or destinations) in a minute,
    // quarantined for a minute, in a table of 16 subscribers.
    let abuse = |b: PolicyBuilder| {
        b.abuse("window", "\"60s\"")
            .abuse("threshold", 2)
            .abuse("destinations_threshold", 2)
            .abuse("on_suspect", "\"quarantine\"")
            .abuse("quarantine_for", "\"1m\"")
            .abuse("track", 16)
    };
    vec![
        base().action("reject"),
        base().action("drop"),
        base().action("icmp"),
        banner(base()),
        redirect(base(), 25, 8),
        inbound(base().action("reject")).upstream("mtu", 1280),
        inbound(base().action("drop")),
        inbound(base().action("icmp")).subscriber("mtu", 1280),
        banner(inbound(base())),
        redirect(inbound(base()), 2525, 64),
        PolicyBuilder::lab(),
        base().action("monitor"),
        abuse(base().action("reject")),
        abuse(inbound(base().action("monitor"))),
    ]
}

/// The policies and their `[abuse]` settings, built once per process
/// (building parses TOML).
pub fn policies() -> &'static [(Arc<Policy>, Option<AbuseSettings>)] {
    static POLICIES: OnceLock<Vec<(Arc<Policy>, Option<AbuseSettings>)>> = OnceLock::new();
    POLICIES.get_or_init(|| {
        builders()
            .iter()
            .map(|b| {
                let c = b.config();
                (Arc::new(c.policy), c.abuse)
            })
            .collect()
    })
}

fn pick(selector: u8) -> &'static (Arc<Policy>, Option<AbuseSettings>) {
    let all = policies();
    &all[usize::from(selector) % all.len()]
}

/// A router over policy `selector` (modulo the count) with fresh state.
pub fn router(selector: u8) -> Router {
    Router::new(pick(selector).0.clone())
}

/// A few ordinary packets of the lab: seeds, and what a fuzzed config is tried on.
pub fn sample_packets() -> Vec<Vec<u8>> {
    use op25b::testing::lab::*;
    vec![
        packets::syn(DYN4, MX4, 25),
        packets::syn(DYN6, MX6, 25),
        packets::tcp(MX4, 25, DYN4, 40000).syn().ack(2).build(),
        packets::syn(STATIC4, MX4, 25),
        packets::udp(DYN4, 5353, "192.0.2.53", 53, b"q"),
        packets::udp("192.0.2.53", 53, DYN4, 53, b"a"),
        packets::echo_request(DYN4, ROUTER4, b"ping"),
        packets::echo_request(DYN6, MX6, b"ping"),
        packets::echo_request_ttl(DYN4, MX4, b"ttl", 1),
    ]
}

/// A packet that left the router, and the direction its answer travels in.
#[derive(Debug, Clone)]
pub struct Left {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// Outbound if a subscriber would answer it, inbound if the outside would.
    pub answer: Direction,
}

/// Two workers over one State, a clock, and what left the router lately.
#[derive(Debug)]
pub struct Driver {
    workers: [Router; 2],
    now: Instant,
    reply: Vec<u8>,
    out: Vec<u8>,
    /// The last packets that left (forwarded, replies, responder output), oldest first.
    pub left: Vec<Left>,
    /// Abuse handling fed with OP25B's blocks, as the data plane feeds it,
    /// quarantining into the routers' state (policies with `[abuse]`).
    abuse: Option<Abuse>,
    events: Vec<AbuseEvent>,
}

/// Packets kept in [`Driver::left`].
const KEEP: usize = 16;

impl Driver {
    /// Policy `selector` (modulo the count); a reply buffer of 1280 bytes
    /// (the least the router is documented to need) if `small_reply`.
    pub fn new(selector: u8, small_reply: bool) -> Driver {
        let (policy, settings) = pick(selector);
        let mut first = Router::new(policy.clone());
        let mut second = Router::with_state(policy.clone(), first.state().clone());
        let abuse = settings.clone().map(|s| Abuse::new(s, first.state().quarantine().clone()));
        first.note_blocks(abuse.is_some());
        second.note_blocks(abuse.is_some());
        Driver {
            abuse,
            events: Vec::new(),
            workers: [first, second],
            now: Instant::now(),
            reply: vec![0; if small_reply { 1280 } else { 65_536 }],
            out: vec![0; 65_536],
            left: Vec::new(),
        }
    }

    /// Moves the clock on and runs the timers that fell due.
    pub fn advance(&mut self, by: Duration) {
        self.now += by;
        self.timers();
    }

    fn keep(&mut self, bytes: &[u8], answer: Direction) {
        if self.left.len() == KEEP {
            self.left.remove(0);
        }
        self.left.push(Left { bytes: bytes.to_vec(), answer });
    }

    fn timers(&mut self) {
        if let Some(a) = &self.abuse {
            a.expire(self.now, &mut self.events);
            self.events.clear();
        }
        let state = self.workers[0].state().clone();
        if state.poll_timeout().is_some_and(|at| at <= self.now) {
            state.handle_timeout(self.now);
        }
        let mut sent = 0;
        while let Some(n) = state.poll_transmit(self.now, &mut self.out) {
            assert!(n <= self.out.len(), "poll_transmit wrote {n} bytes into {}", self.out.len());
            let pkt = self.out[..n].to_vec();
            if let Err(e) = PacketView::parse(&pkt) {
                panic!("the responder sent an unparsable packet ({e:?}): {pkt:02x?}");
            }
            self.keep(&pkt, Direction::Outbound);
            sent += 1;
            assert!(sent < 10_000, "poll_transmit does not run dry");
        }
    }

    /// Hands `pkt` to a worker as the device would, checks the verdict, and
    /// runs the responder as the data plane does after each packet.
    pub fn send(&mut self, worker: usize, dir: Direction, pkt: &[u8], rx: RxInfo) -> Verdict {
        let mut buf = pkt.to_vec();
        let v = self.workers[worker % 2].handle(self.now, dir, &mut buf, &mut self.reply, rx);
        if let Some(block) = self.workers[worker % 2].take_block() {
            if let (Some(a), None) = (&self.abuse, block.rule) {
                let attempt = Attempt {
                    at: self.now,
                    src: block.src.ip(),
                    dst: block.dst.ip(),
                    monitor: block.action == "monitor",
                };
                a.record([attempt], &mut self.events);
                self.events.clear();
            }
        }
        match v {
            Verdict::Forward { len } => {
                assert!(len <= buf.len(), "forward of {len} bytes from a {}-byte packet", buf.len());
                let fwd = buf[..len].to_vec();
                self.keep(&fwd, dir.reverse());
            }
            Verdict::Reply { len, kind } => {
                assert!(len <= self.reply.len(), "a {len}-byte reply in a {}-byte buffer", self.reply.len());
                let reply = self.reply[..len].to_vec();
                if let Err(e) = PacketView::parse(&reply) {
                    panic!("a {kind:?} reply that does not parse ({e:?}): {reply:02x?}");
                }
                self.keep(&reply, dir);
            }
            _ => {}
        }
        self.timers();
        v
    }

    /// The last packet that left, `back` places from the newest (modulo the count).
    pub fn recent(&self, back: u8) -> Option<&Left> {
        let n = self.left.len();
        (n > 0).then(|| &self.left[n - 1 - usize::from(back) % n])
    }

    /// Each worker's counters (the State's, the responder's, are in both).
    pub fn stats(&self) -> Vec<op25b::Stats> {
        self.workers.iter().map(Router::stats).collect()
    }

    /// Checks the counters: per direction and worker, every packet received
    /// has exactly one verdict.
    pub fn finish(&self) {
        for w in &self.workers {
            let s = w.stats();
            for d in Direction::ALL {
                let x = s.dir(d);
                let judged = x.forwarded + x.dropped_total() + x.replied_total() + x.terminated;
                assert_eq!(x.received, judged, "{d:?}: {x:?}");
            }
        }
    }
}

/// The raw target's input: see the module docs.
#[derive(Debug)]
pub struct Script<'a> {
    data: &'a [u8],
}

const STEPS: [Duration; 8] = [
    Duration::ZERO,
    Duration::from_millis(1),
    Duration::from_millis(50),
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(31),
    Duration::from_secs(120),
    Duration::from_secs(660),
];

/// One record of a [`Script`], for writing seeds.
#[derive(Debug, Clone, Default)]
pub struct Record {
    /// Inbound rather than outbound.
    pub inbound: bool,
    /// Index into the clock steps (0 to 7).
    pub wait: u8,
    /// Worker 1 rather than 0.
    pub second_worker: bool,
    /// The packet; empty to answer the last packet that left.
    pub packet: Vec<u8>,
}

impl<'a> Script<'a> {
    /// The input as a script.
    pub fn new(data: &'a [u8]) -> Script<'a> {
        Script { data }
    }

    /// Encodes records into a script (the inverse of [`Script::run`]'s reading).
    pub fn encode(selector: u8, records: &[Record]) -> Vec<u8> {
        let mut out = vec![selector];
        for r in records {
            let ctl = u8::from(r.inbound) | (r.wait & 7) << 1 | u8::from(r.second_worker) << 4 | 0x80;
            out.push(ctl);
            let len = u16::try_from(r.packet.len()).expect("a packet under 64 KiB");
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&r.packet);
        }
        out
    }

    /// Plays the script.
    pub fn run(self) {
        let _ = self.play();
    }

    /// Plays the script; the driver afterwards (`None` for an empty input).
    pub fn play(self) -> Option<Driver> {
        let (&head, mut rest) = self.data.split_first()?;
        let mut d = Driver::new(head & 0x0f, head & 0x10 != 0);
        let take = |n: usize, rest: &mut &'a [u8]| -> &'a [u8] {
            let (a, b) = rest.split_at(n.min(rest.len()));
            *rest = b;
            a
        };
        while let Some((&ctl, tail)) = rest.split_first() {
            rest = tail;
            let dir = if ctl & 1 == 0 { Direction::Outbound } else { Direction::Inbound };
            let worker = usize::from(ctl >> 4 & 1);
            let mut len = usize::from(take(1, &mut rest).first().copied().unwrap_or(0));
            if ctl & 0x80 != 0 {
                len |= usize::from(take(1, &mut rest).first().copied().unwrap_or(0)) << 8;
            }
            let mut rx = RxInfo { csum_partial: ctl & 0x20 != 0, gso_size: None };
            if ctl & 0x40 != 0 {
                let g = take(2, &mut rest);
                rx.gso_size =
                    Some(u16::from_le_bytes([g.first().copied().unwrap_or(0), g.get(1).copied().unwrap_or(0)]));
            }
            d.advance(STEPS[usize::from(ctl >> 1 & 7)]);
            if len == 0 {
                if let Some(last) = d.recent(0).cloned() {
                    if let Some(answer) = super::structured::answer(&last.bytes, super::structured::Flags::Auto, b"") {
                        let _ = d.send(worker, last.answer, &answer, RxInfo::default());
                    }
                }
                continue;
            }
            let pkt = take(len, &mut rest);
            let _ = d.send(worker, dir, pkt, rx);
        }
        d.finish();
        Some(d)
    }
}
