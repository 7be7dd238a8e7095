//! The router under fuzzing: a fixed set of policies (every OP25B action, with
//! and without IP25B, all with config rules of every rule action), driven by
//! the testing harness as the data plane drives it
//! ([`TestRouter::data_plane`]: two workers sharing one State, a virtual
//! clock, the banner responder's timers and transmissions, abuse handling,
//! what leaves the router checked).
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

use std::cell::RefCell;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use op25b::packet::Direction;
use op25b::policy::Policy;
use op25b::state::abuse::AbuseSettings;
use op25b::testing::{packets, PolicyBuilder, Setup, TestRouter};
use op25b::{Router, RxInfo};

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

/// A router over policy `selector` (modulo the count) with fresh state
/// (whose tables a fuzz build, `cfg(fuzzing)`, sizes for a few packets).
pub fn router(selector: u8) -> Router {
    Router::new(Arc::clone(&pick(selector).0))
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

/// The harness over policy `selector` (modulo the count), driven as the
/// data plane drives its workers (the state's tables, in a fuzz build, sized
/// for a few packets); a reply buffer of 1280 bytes (the least the router is
/// documented to need) if `small_reply`. The harness of the input before, when it was given back ([`recycle`]),
/// is renewed rather than built: its buffers stay.
pub fn driver(selector: u8, small_reply: bool) -> TestRouter {
    let (policy, abuse) = pick(selector);
    let setup = Setup { abuse: abuse.clone(), reply_len: if small_reply { 1280 } else { 65_536 } };
    match SPARE.with(|s| s.borrow_mut().take()) {
        Some(mut t) => {
            t.renew(Arc::clone(policy), setup);
            t
        }
        None => TestRouter::data_plane(Arc::clone(policy), setup),
    }
}

thread_local! {
    static SPARE: RefCell<Option<TestRouter>> = const { RefCell::new(None) };
}

/// Gives a harness back for the next input's [`driver`].
pub fn recycle(t: TestRouter) {
    SPARE.with(|s| *s.borrow_mut() = Some(t));
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
        if let Some(d) = self.play() {
            recycle(d);
        }
    }

    /// Plays the script; the harness afterwards (`None` for an empty input).
    pub fn play(self) -> Option<TestRouter> {
        let (&head, mut rest) = self.data.split_first()?;
        let mut d = driver(head & 0x0f, head & 0x10 != 0);
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
                        let _ = d.send_on(worker, last.answer, &answer, RxInfo::default());
                    }
                }
                continue;
            }
            let pkt = take(len, &mut rest);
            let _ = d.send_on(worker, dir, pkt, rx);
        }
        d.check_counts();
        Some(d)
    }
}
