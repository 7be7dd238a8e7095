//! One stats model: the counters the data plane writes and the [`Stats`]
//! snapshot everyone reads (the shutdown log line, `op25b run --stats`,
//! `replay`, tests, and later the metrics endpoint).
//!
//! Invariants: every counter has exactly one writer thread (a worker's router
//! or its I/O loop), so an increment is a plain load and store, never a locked
//! read-modify-write; readers sum the writers' counters into a [`Stats`] when
//! asked. (The banner responder's few counts live under its own lock: see
//! [`ResponderStats`].) Every verdict bumps exactly one verdict counter of its direction, so
//! `received = forwarded + dropped + replied + terminated` per direction once
//! the writers are quiet.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::packet::{Direction, ParseError, TunnelKind};

pub(crate) mod figures;
mod neighbour;
mod reload;
pub use neighbour::NeighbourStats;
pub(crate) use reload::Reloads;
pub use reload::{KeptStats, ReloadStats};

macro_rules! reasons {
    ($(#[$m:meta])* pub enum $name:ident { $($(#[$vm:meta])* $v:ident => $s:literal,)* }) => {
        $(#[$m])*
        pub enum $name { $($(#[$vm])* $v,)* }
        impl $name {
            /// Every variant, in counter order.
            pub const ALL: &'static [$name] = &[$($name::$v,)*];
            /// Number of variants.
            pub const COUNT: usize = $name::ALL.len();
            /// Stable snake_case name, used for counters and logs.
            pub fn name(self) -> &'static str {
                match self { $($name::$v => $s,)* }
            }
        }
    };
}

reasons! {
    /// Why a packet was dropped. Each reason is one counter.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    #[non_exhaustive]
    pub enum DropReason {
        /// Shorter than its headers.
        Truncated => "truncated",
        /// IP version neither 4 nor 6.
        BadVersion => "bad_version",
        /// IPv4 IHL or TCP data offset below 5.
        BadHeaderLen => "bad_header_len",
        /// Total / payload length beyond the buffer or below the header.
        BadTotalLen => "bad_total_len",
        /// Wrong IPv4 header checksum.
        BadChecksum => "bad_checksum",
        /// Malformed or too long IPv6 extension-header chain.
        BadExtHeader => "bad_ext_header",
        /// First fragment too short for the TCP header (RFC 1858, RFC 7112).
        TinyFragment => "tiny_fragment",
        /// Later fragment within the first 128 bytes, which could rewrite the
        /// first fragment's transport header (RFC 1858).
        FragmentOverlap => "fragment_overlap",
        /// Source-routed packet (IPv4 LSRR/SSRR, IPv6 routing header with
        /// segments left): its real destination is not the one judged.
        SourceRouted => "source_routed",
        /// Source not allowed on the side it arrived from (BCP 38).
        Spoofed => "spoofed",
        /// Source or destination that is never routed (loopback, multicast source,
        /// link-local, unspecified, ...).
        Martian => "martian",
        /// TTL / hop limit expired where no ICMP error may be sent.
        TtlExpired => "ttl_expired",
        /// Larger than the egress MTU where no ICMP error may be sent, or IPv4
        /// without DF (the router does not fragment).
        TooBig => "too_big",
        /// Blocked by OP25B and not answered.
        Op25bBlocked => "op25b_blocked",
        /// Addressed to the router itself and not an echo request.
        Local => "local",
        /// A new inbound connection to a blocked port of a dynamic address (IP25B).
        Ip25bBlocked => "ip25b_blocked",
        /// A reply (RST, ICMP, echo reply, banner session, redirect) over the
        /// per-address reply limit.
        ReplyRateLimited => "reply_rate_limited",
        /// A new redirected connection while the flow table is full.
        ConntrackFull => "conntrack_full",
        /// A new redirected connection from a subscriber that holds its share
        /// of the flow table (`max_flows_per_source`).
        ConntrackSourceFull => "conntrack_source_full",
        /// A redirected connection reusing a subscriber port that is redirected
        /// for another destination.
        RedirectCollision => "redirect_collision",
        /// Dropped by a rule.
        RuleDrop => "rule_drop",
        /// Rejected by a rule where no reply may be sent.
        RuleReject => "rule_reject",
        /// Over a rule's rate limit.
        RateLimited => "rate_limited",
        /// From a subscriber in quarantine, to a destination outside its
        /// walled garden (`abuse.quarantine_allow`); TCP is answered with an RST.
        Quarantined => "quarantined",
        /// Inside a tunnel of a dynamic address, a packet OP25B (or IP25B)
        /// blocks, and not answered; or any tunnel of a dynamic address
        /// under `tunnels = "block"` but those with `tunnel_endpoints`.
        TunnelBlocked => "tunnel_blocked",
        /// A tunnel of a dynamic address whose tunnel header or inner packet
        /// does not parse (the far end could not judge it either).
        TunnelMalformed => "tunnel_malformed",
        /// Tunnels nested deeper than `packet::MAX_TUNNEL_DEPTH`.
        TunnelTooDeep => "tunnel_too_deep",
    }
}

reasons! {
    /// The replies the router builds. Each kind is one counter.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    #[non_exhaustive]
    pub enum ReplyKind {
        /// TCP RST for a blocked SYN.
        TcpRst => "tcp_rst",
        /// ICMP / ICMPv6 time exceeded.
        TimeExceeded => "time_exceeded",
        /// ICMP fragmentation needed / ICMPv6 packet too big.
        TooBig => "too_big",
        /// Echo reply from the router's own address.
        EchoReply => "echo_reply",
        /// ICMP / ICMPv6 administratively prohibited, for a rule's reject.
        Prohibited => "prohibited",
    }
}

impl From<ParseError> for DropReason {
    fn from(e: ParseError) -> DropReason {
        match e {
            ParseError::Truncated => DropReason::Truncated,
            ParseError::BadVersion => DropReason::BadVersion,
            ParseError::BadHeaderLen => DropReason::BadHeaderLen,
            ParseError::BadTotalLen => DropReason::BadTotalLen,
            ParseError::BadChecksum => DropReason::BadChecksum,
            ParseError::BadExtHeader => DropReason::BadExtHeader,
            ParseError::TinyFragment => DropReason::TinyFragment,
        }
    }
}

/// A monotonically increasing counter with a single writer and any number of
/// readers. The writer's increment is a plain load + store, not a locked
/// read-modify-write, which keeps it off the fast path's cost.
#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`; only the counter's one writer thread may call it.
    #[inline]
    pub(crate) fn add(&self, n: u64) {
        self.0.store(self.0.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The files op25b writes besides its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OutputFile {
    /// `[events] path`.
    Events,
    /// `[capture] dropped` and its rotated files.
    Capture,
    /// `op25b run --stats FILE`.
    Stats,
    /// `[abuse] state_file`: the quarantines and the tracked subscribers.
    AbuseState,
}

impl OutputFile {
    /// Every output, in counter order.
    pub const ALL: [OutputFile; OutputFile::COUNT] =
        [OutputFile::Events, OutputFile::Capture, OutputFile::Stats, OutputFile::AbuseState];
    /// How many there are.
    pub const COUNT: usize = 4;

    /// Stable name (counters, metrics labels).
    pub fn name(self) -> &'static str {
        match self {
            OutputFile::Events => "events",
            OutputFile::Capture => "capture",
            OutputFile::Stats => "stats",
            OutputFile::AbuseState => "abuse_state",
        }
    }
}

/// Failed writes of op25b's own files (a full disk, a file that cannot be
/// written). Each output has one writer thread, the only one that counts it.
#[derive(Debug, Default)]
pub struct WriteErrors([Counter; OutputFile::COUNT]);

impl WriteErrors {
    /// Counts `n` failed writes of `output`; only that output's writer calls it.
    pub(crate) fn add(&self, output: OutputFile, n: u64) {
        self.0[output as usize].add(n);
    }

    /// The count of `output`.
    pub fn get(&self, output: OutputFile) -> u64 {
        self.0[output as usize].get()
    }

    pub(crate) fn add_to(&self, s: &mut Stats) {
        for (t, c) in s.write_errors.iter_mut().zip(&self.0) {
            *t += c.get();
        }
    }
}

/// The verdict counters of one direction.
#[derive(Debug, Default)]
pub(crate) struct DirCounters {
    pub(crate) received: Counter,
    pub(crate) forwarded: Counter,
    pub(crate) forwarded_bytes: Counter,
    pub(crate) dropped: [Counter; DropReason::COUNT],
    pub(crate) replies: [Counter; ReplyKind::COUNT],
    pub(crate) terminated: Counter,
}

/// Per-rule packet and byte counters of one router, in the order of the
/// rules of the policy it runs. Rebuilt (not resized) when the policy
/// changes, carrying the counts of rules whose name stays.
#[derive(Debug, Default)]
pub(crate) struct RuleCounters {
    pub(crate) names: Vec<Arc<str>>,
    pub(crate) packets: Box<[Counter]>,
    pub(crate) bytes: Box<[Counter]>,
    /// Program faults (budget, trap), per rule.
    pub(crate) errors: Box<[Counter]>,
}

impl RuleCounters {
    /// Counters for rules named `names`, starting from the counts `old` has
    /// under the same names.
    pub(crate) fn carried(names: Vec<Arc<str>>, old: &RuleCounters) -> RuleCounters {
        let value =
            |list: &[Counter], name: &str| old.names.iter().position(|n| &**n == name).map_or(0, |i| list[i].get());
        let make = |list: &[Counter]| -> Box<[Counter]> {
            names.iter().map(|n| Counter(AtomicU64::new(value(list, n)))).collect()
        };
        let (packets, bytes, errors) = (make(&old.packets), make(&old.bytes), make(&old.errors));
        RuleCounters { names, packets, bytes, errors }
    }

    /// Rule `rule`'s program faulted.
    pub(crate) fn error(&self, rule: usize) {
        if let Some(e) = self.errors.get(rule) {
            e.add(1);
        }
    }

    #[inline]
    pub(crate) fn count(&self, rule: usize, bytes: usize) {
        if let (Some(p), Some(b)) = (self.packets.get(rule), self.bytes.get(rule)) {
            p.add(1);
            b.add(bytes as u64);
        }
    }
}

/// The OP25B actions by name, in the order of `policy::Action::index`.
pub const BLOCK_ACTIONS: [&str; 5] = ["reject", "drop", "icmp", "banner", "redirect"];

/// The counters one router (one worker's direction) writes.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) dirs: [DirCounters; 2],
    /// Packets the OP25B fast path blocked (answered, dropped, redirected or
    /// terminated), by the action in force ([`BLOCK_ACTIONS`]).
    pub(crate) op25b_blocked: [Counter; BLOCK_ACTIONS.len()],
    /// Connection attempts the fast path blocked: blocked SYNs but for
    /// retransmissions of one already counted (`state::attempts`), by action.
    pub(crate) op25b_blocked_connections: [Counter; BLOCK_ACTIONS.len()],
    /// Packets of blocked flows rewritten towards the relay (redirect).
    pub(crate) redirected: Counter,
    /// Banner SYNs refused because their subscriber holds its share of the
    /// sessions; each is also counted by its verdict.
    pub(crate) banner_source_full: Counter,
    /// Unassured redirect flows evicted for a new one (early drop).
    pub(crate) redirect_evictions: Counter,
    /// Packets the fast path would have blocked, forwarded (`monitor`).
    pub(crate) monitored: Counter,
    /// Connection attempts (SYNs but for retransmissions) among them.
    pub(crate) monitored_connections: Counter,
    /// Packets of subscribers in quarantine refused (answered or dropped).
    pub(crate) quarantined: Counter,
    /// Tunnel packets seen, by their outermost kind.
    pub(crate) tunnel_packets: [Counter; TunnelKind::COUNT],
    /// Tunnel packets blocked (dropped or answered), by their outermost kind.
    pub(crate) tunnel_blocked: [Counter; TunnelKind::COUNT],
    /// The rule counters in force, for readers; the router writes through its
    /// own handle to the same block.
    pub(crate) rules: Mutex<Arc<RuleCounters>>,
}

impl Counters {
    /// Adds this router's counts to `s`.
    pub(crate) fn add_to(&self, s: &mut Stats) {
        for d in Direction::ALL {
            let (c, t) = (&self.dirs[d.index()], &mut s.directions[d.index()]);
            t.received += c.received.get();
            t.forwarded += c.forwarded.get();
            t.forwarded_bytes += c.forwarded_bytes.get();
            t.terminated += c.terminated.get();
            for (t, c) in t.dropped.iter_mut().zip(&c.dropped) {
                *t += c.get();
            }
            for (t, c) in t.replies.iter_mut().zip(&c.replies) {
                *t += c.get();
            }
        }
        for (t, c) in s.op25b.blocked_by_action.iter_mut().zip(&self.op25b_blocked) {
            *t += c.get();
            s.op25b.blocked += c.get();
        }
        for (t, c) in s.op25b.blocked_connections_by_action.iter_mut().zip(&self.op25b_blocked_connections) {
            *t += c.get();
            s.op25b.blocked_connections += c.get();
        }
        s.op25b.monitored_connections += self.monitored_connections.get();
        s.op25b.redirected += self.redirected.get();
        s.op25b.banner_source_full += self.banner_source_full.get();
        s.op25b.redirect_evictions += self.redirect_evictions.get();
        s.op25b.monitored += self.monitored.get();
        s.abuse.refused += self.quarantined.get();
        for k in TunnelKind::ALL {
            s.tunnels.packets[k.index()] += self.tunnel_packets[k.index()].get();
            s.tunnels.blocked[k.index()] += self.tunnel_blocked[k.index()].get();
        }
        let rules = self.rules.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for (i, name) in rules.names.iter().enumerate() {
            let (packets, bytes) = (rules.packets[i].get(), rules.bytes[i].get());
            let errors = rules.errors.get(i).map_or(0, Counter::get);
            match s.rules.iter_mut().find(|r| r.name == **name) {
                Some(r) => {
                    r.packets += packets;
                    r.bytes += bytes;
                    r.errors += errors;
                }
                None => s.rules.push(RuleStats { name: name.to_string(), packets, bytes, errors }),
            }
        }
    }
}

/// What happened in one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DirStats {
    /// Packets handed to the router.
    pub received: u64,
    /// Packets forwarded.
    pub forwarded: u64,
    /// Bytes forwarded.
    pub forwarded_bytes: u64,
    /// Drops by [`DropReason`] (index: `reason as usize`).
    pub dropped: [u64; DropReason::COUNT],
    /// Replies by [`ReplyKind`].
    pub replies: [u64; ReplyKind::COUNT],
    /// Packets handed to the banner responder.
    pub terminated: u64,
}

impl DirStats {
    /// Packets dropped, all reasons.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }

    /// Replies sent, all kinds.
    pub fn replied_total(&self) -> u64 {
        self.replies.iter().sum()
    }

    /// The sum over verdicts: equals `received` once the writers are quiet.
    pub fn verdicts(&self) -> u64 {
        self.forwarded + self.dropped_total() + self.replied_total() + self.terminated
    }
}

/// OP25B's own figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Op25bStats {
    /// Packets the fast path blocked, whatever the action did with them.
    pub blocked: u64,
    /// The same by the action in force when they were blocked ([`BLOCK_ACTIONS`]).
    pub blocked_by_action: [u64; BLOCK_ACTIONS.len()],
    /// Connection attempts the fast path blocked: SYNs, a retransmitted SYN
    /// (same 4-tuple within `state::attempts::RETRY_WINDOW`) counted once.
    pub blocked_connections: u64,
    /// The same by action.
    pub blocked_connections_by_action: [u64; BLOCK_ACTIONS.len()],
    /// Packets of blocked flows sent to the relay (redirect).
    pub redirected: u64,
    /// Banner SYNs refused over the subscriber's share of sessions.
    pub banner_source_full: u64,
    /// Unassured redirect flows (the subscriber has not acknowledged the
    /// relay's SYN-ACK) evicted from the full flow table for a new SYN.
    pub redirect_evictions: u64,
    /// Packets the fast path would have blocked, forwarded by `action =
    /// "monitor"` (not in `blocked`).
    pub monitored: u64,
    /// Connection attempts among them (SYNs, retransmissions counted once).
    pub monitored_connections: u64,
}

/// Tunnels, by their outermost kind ([`TunnelKind::index`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TunnelStats {
    /// Tunnel packets seen (whatever `tunnels` says), one per packet.
    pub packets: [u64; TunnelKind::COUNT],
    /// Tunnel packets blocked: a blocked packet inside (dropped, or answered
    /// with ICMP), or a tunnel `tunnels = "block"` refuses. Malformed and
    /// too deep tunnels are counted by their drop reasons only.
    pub blocked: [u64; TunnelKind::COUNT],
}

/// Abuse handling's figures (`[abuse]`): gauges of the tracker and the
/// quarantine, and what the queue to the tracker could not take.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AbuseStats {
    /// Subscribers in the heavy-hitters table now.
    pub tracked: u64,
    /// Subscribers that crossed a threshold less than a window ago.
    pub suspected: u64,
    /// Subscribers in quarantine now.
    pub quarantined: u64,
    /// Packets of subscribers in quarantine refused outside their walled
    /// garden: TCP answered with an RST (also counted as a `tcp_rst` reply,
    /// or as a `reply_rate_limited` drop), the rest dropped as `quarantined`.
    pub refused: u64,
    /// Blocked attempts the full queue to the tracker did not take.
    pub attempts_dropped: u64,
}

/// One rule's counts.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RuleStats {
    /// The rule's name.
    pub name: String,
    /// Packets that matched it.
    pub packets: u64,
    /// Bytes that matched it.
    pub bytes: u64,
    /// Faults of its program (instruction budget exceeded, trap); 0 for
    /// rules without one.
    pub errors: u64,
}

/// One TUN device, as the data plane saw it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeviceStats {
    /// Packets read (a GSO super-packet counts once).
    pub rx_packets: u64,
    /// Bytes read.
    pub rx_bytes: u64,
    /// Reads that failed, or returned no packet.
    pub rx_errors: u64,
    /// Packets written.
    pub tx_packets: u64,
    /// Bytes written (with the virtio-net header when offload is on).
    pub tx_bytes: u64,
    /// Writes that failed (link down, no buffer space, ...).
    pub tx_errors: u64,
    /// Wake-ups that found packets on this device.
    pub batches: u64,
}

/// The banner responder's figures. The responder is shared by the workers:
/// its counts are written under its lock by whichever worker holds it (the
/// one exception to one writer per counter), and start again when a reload
/// replaces the responder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ResponderStats {
    /// Sessions between handshake and close, now.
    pub sessions: u64,
    /// RSTs the responder wanted to send over the reply limit (not sent).
    pub rsts_limited: u64,
    /// Packets it built that did not fit its transmit ring (not sent).
    pub ring_overflows: u64,
    /// Sessions still in SYN-RECEIVED (their client never acknowledged the
    /// SYN-ACK) given up for a new SYN when every session of the port was busy.
    pub syn_evictions: u64,
}

/// A snapshot of every counter: the routers' verdicts by direction, OP25B,
/// per-rule counts, the devices and the banner responder.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// By [`Direction::index`].
    pub directions: [DirStats; 2],
    /// The fast path.
    pub op25b: Op25bStats,
    /// Config and code rules, in the order of the policy in force.
    pub rules: Vec<RuleStats>,
    /// The subscriber device (0) and the upstream device (1).
    pub devices: [DeviceStats; 2],
    /// The banner responder.
    pub responder: ResponderStats,
    /// Events of blocked connections the full queue did not take.
    pub events_dropped: u64,
    /// Packets not forwarded that the capture could not take.
    pub capture_dropped: u64,
    /// Abuse handling, when `[abuse]` is on.
    pub abuse: AbuseStats,
    /// Tunnels by kind.
    pub tunnels: TunnelStats,
    /// Failed writes of op25b's own files, by [`OutputFile`] (index: `output as usize`).
    pub write_errors: [u64; OutputFile::COUNT],
    /// The upstream's neighbour table, when the upstream is an Ethernet interface.
    pub neighbours: Option<NeighbourStats>,
    /// Config reloads.
    pub reloads: ReloadStats,
}

impl Stats {
    /// The figures of one direction.
    pub fn dir(&self, d: Direction) -> &DirStats {
        &self.directions[d.index()]
    }

    /// Packets forwarded in `d`.
    pub fn forwarded(&self, d: Direction) -> u64 {
        self.dir(d).forwarded
    }

    /// Drops for `reason`, both directions.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.directions.iter().map(|d| d.dropped[reason as usize]).sum()
    }

    /// Replies of `kind`, both directions.
    pub fn replies(&self, kind: ReplyKind) -> u64 {
        self.directions.iter().map(|d| d.replies[kind as usize]).sum()
    }

    /// Packets handed to the banner responder, both directions.
    pub fn terminated(&self) -> u64 {
        self.directions.iter().map(|d| d.terminated).sum()
    }

    /// The counts of the rule named `name`.
    pub fn rule(&self, name: &str) -> Option<&RuleStats> {
        self.rules.iter().find(|r| r.name == name)
    }

    /// Every figure as (name, value) pairs, the names the log line and
    /// `op25b run --stats` use (`forwarded_outbound`, `drop_spoofed`, ...),
    /// in the order of `stats::figures::FIGURES`.
    pub fn pairs(&self) -> Vec<(String, u64)> {
        figures::pairs(self)
    }

    /// The non-zero figures as `name=value` words, for the log line.
    pub fn summary(&self) -> String {
        let words: Vec<String> =
            self.pairs().into_iter().filter(|(_, v)| *v > 0).map(|(k, v)| format!("{k}={v}")).collect();
        words.join(" ")
    }

    /// The whole snapshot as JSON: every figure by name (`counters`), each
    /// also at its place in `stats::figures::FIGURES`, and the rules.
    pub fn to_json(&self) -> serde_json::Value {
        figures::json(self)
    }
}
