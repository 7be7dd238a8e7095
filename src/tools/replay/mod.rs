//! `op25b replay`: runs a capture through the router with no devices.
//!
//! Formats: pcap (tcpdump's, microsecond or nanosecond) and pcapng
//! (Wireshark's default), told apart by their first bytes, from a file or
//! standard input. Link types: raw IP (101, and 228 / 229), Ethernet (1, with
//! 802.1Q / 802.1ad tags), Linux cooked capture (113, 276, what `tcpdump -i
//! any` writes). Frames that carry no IP packet (ARP, ...) are counted as
//! skipped. The packet's direction comes from the subscriber prefixes (a
//! source inside them is outbound), and its time from the capture, so rate
//! limits see the capture's pace. `--forwarded` / `--dropped` get the records
//! as captured, as pcap files.
//!
//! [`Capture`] is the reader on its own (any byte stream in, records out,
//! never a panic on bad input); [`replay_from`] runs one through a router.

mod capture;
mod error;
mod output;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use capture::{Capture, Record};
pub use error::ReplayError;

use crate::packet::{Direction, PacketView, Transport};
use crate::policy::PrefixSet;
use crate::router::{Router, RxInfo, Verdict};
use capture::{ip_offset, source_of};
use output::Out;

/// Where to write the sorted packets.
#[derive(Debug, Default, Clone)]
pub struct ReplayOptions {
    /// Records that were forwarded.
    pub forwarded: Option<PathBuf>,
    /// Records that were not forwarded (dropped or answered).
    pub dropped: Option<PathBuf>,
}

/// Per-rule counters after a replay.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RuleCount {
    /// Rule name.
    pub name: String,
    /// Packets that matched.
    pub packets: u64,
    /// Bytes that matched.
    pub bytes: u64,
    /// Faults of the rule's program (left out when none).
    #[serde(skip_serializing_if = "is_zero")]
    pub errors: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One tunnel kind's figures in a replay.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct TunnelCount {
    /// Tunnel packets of this (outermost) kind.
    pub packets: u64,
    /// Of these, blocked (a blocked packet inside, or `tunnels = "block"`).
    pub blocked: u64,
}

/// What a replay saw.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ReplayReport {
    /// Records read.
    pub packets: u64,
    /// Records that carried no IP packet.
    pub skipped: u64,
    /// Verdict name (`forward`, `drop`, `reply`) -> count.
    pub verdicts: BTreeMap<String, u64>,
    /// Drop reason -> count.
    pub drops: BTreeMap<String, u64>,
    /// Reply kind -> count.
    pub replies: BTreeMap<String, u64>,
    /// Packets the OP25B fast path blocked.
    pub op25b_blocked: u64,
    /// Connection attempts among them (a SYN and its retransmissions once).
    pub op25b_blocked_connections: u64,
    /// Packets it would have blocked, forwarded by `action = "monitor"`.
    pub op25b_monitored: u64,
    /// Connection attempts among those.
    pub op25b_monitored_connections: u64,
    /// Tunnel kind -> tunnel packets seen and blocked (kinds seen only).
    pub tunnels: BTreeMap<String, TunnelCount>,
    /// Per-rule counters, in rule order.
    pub rules: Vec<RuleCount>,
    /// Where reading stopped early, if it did.
    pub error: Option<String>,
}

/// One packet's result, for `replay --jsonl`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PacketLine {
    /// 1-based record number in the capture.
    pub record: u64,
    /// Capture time, seconds since the Unix epoch.
    pub time: f64,
    /// `outbound` or `inbound`; `null` for a record without an IP packet.
    pub direction: Option<&'static str>,
    /// Source and destination address, when the IP header could be read.
    pub src: Option<IpAddr>,
    /// Destination address.
    pub dst: Option<IpAddr>,
    /// `tcp`, `udp`, `icmp`, `icmpv6` or `proto N`.
    pub protocol: Option<String>,
    /// TCP / UDP ports.
    pub src_port: Option<u16>,
    /// Destination port.
    pub dst_port: Option<u16>,
    /// IP packet length in bytes.
    pub len: usize,
    /// `forward`, `drop`, `reply`, `terminate`, or `skipped` (no IP packet).
    pub verdict: &'static str,
    /// The drop reason or reply kind; `null` when forwarded.
    pub reason: Option<&'static str>,
}

/// Runs every record of the file `input` (`-`: standard input) through
/// `router`, calling `each` with every record's result in order.
pub fn replay(
    router: &mut Router,
    subscriber_prefixes: &PrefixSet,
    input: &Path,
    opts: &ReplayOptions,
    each: &mut dyn FnMut(&PacketLine),
) -> Result<ReplayReport, ReplayError> {
    let in_err = |why: String| ReplayError::Input { path: input.to_path_buf(), why };
    if input == Path::new("-") {
        return replay_from(router, subscriber_prefixes, std::io::stdin().lock(), opts, each)
            .map_err(|e| e.with_input(input));
    }
    let file = File::open(input).map_err(|e| in_err(e.to_string()))?;
    replay_from(router, subscriber_prefixes, file, opts, each).map_err(|e| e.with_input(input))
}

/// Runs every record read from `input` through `router`, calling `each` with
/// every record's result in order.
pub fn replay_from<R: Read>(
    router: &mut Router,
    subscriber_prefixes: &PrefixSet,
    input: R,
    opts: &ReplayOptions,
    each: &mut dyn FnMut(&PacketLine),
) -> Result<ReplayReport, ReplayError> {
    let in_err = |why: String| ReplayError::Input { path: PathBuf::from("-"), why };
    let mut capture = Capture::open(BufReader::with_capacity(1 << 16, input)).map_err(in_err)?;
    let mut forwarded = opts.forwarded.as_deref().map(Out::open).transpose()?;
    let mut dropped = opts.dropped.as_deref().map(Out::open).transpose()?;

    let mut report = ReplayReport::default();
    let start = Instant::now();
    let mut first_ts: Option<Duration> = None;
    let mut buf = vec![0u8; 65_536];
    let mut reply = vec![0u8; 2048];
    while let Some(next) = capture.next_record() {
        let record = report.packets + 1;
        let packet = match next {
            Ok(p) => p,
            Err(e) => {
                report.error = Some(format!("record {record}: {e}"));
                break;
            }
        };
        report.packets += 1;
        let frame = &packet.data[..];
        let ts = packet.timestamp;
        let mut line = PacketLine::skipped(record, ts);
        let Some(off) = ip_offset(packet.link, frame).filter(|o| *o < frame.len()) else {
            report.skipped += 1;
            each(&line);
            continue;
        };
        let ip = &frame[off..];
        let dir = match source_of(ip) {
            Some(src) if !subscriber_prefixes.contains(src) => Direction::Inbound,
            _ => Direction::Outbound,
        };
        let base = *first_ts.get_or_insert(ts);
        let now = start + ts.saturating_sub(base);
        let n = ip.len().min(buf.len());
        buf[..n].copy_from_slice(&ip[..n]);
        if let Ok(v) = PacketView::parse(&buf[..n]) {
            line.src = Some(v.src);
            line.dst = Some(v.dst);
            line.protocol = Some(crate::packet::protocol_name(v.protocol));
            if let Transport::Tcp { src_port, dst_port, .. } | Transport::Udp { src_port, dst_port } = v.transport {
                (line.src_port, line.dst_port) = (Some(src_port), Some(dst_port));
            }
        }
        let verdict = router.handle(now, dir, &mut buf[..n], &mut reply, RxInfo::default());
        line.direction = Some(dir.name());
        line.len = n;
        line.verdict = verdict.name();
        line.reason = verdict.reason();
        each(&line);
        *report.verdicts.entry(line.verdict.to_string()).or_default() += 1;
        match verdict {
            Verdict::Forward { .. } => {
                if let Some(o) = &mut forwarded {
                    o.write(&packet)?;
                }
            }
            Verdict::Drop(r) => *report.drops.entry(r.name().to_string()).or_default() += 1,
            Verdict::Reply { kind, .. } => *report.replies.entry(kind.name().to_string()).or_default() += 1,
            // Offline there is no responder: the packet is counted, not answered.
            Verdict::Terminate => {}
        }
        if !matches!(verdict, Verdict::Forward { .. }) {
            if let Some(o) = &mut dropped {
                o.write(&packet)?;
            }
        }
    }
    for o in [forwarded, dropped].into_iter().flatten() {
        o.finish()?;
    }
    add_router_figures(&mut report, router);
    Ok(report)
}

/// The router's own figures after the replay: OP25B, tunnels, rules.
fn add_router_figures(report: &mut ReplayReport, router: &Router) {
    let stats = router.stats();
    report.op25b_blocked = stats.op25b.blocked;
    report.op25b_blocked_connections = stats.op25b.blocked_connections;
    report.op25b_monitored = stats.op25b.monitored;
    report.op25b_monitored_connections = stats.op25b.monitored_connections;
    for k in crate::packet::TunnelKind::ALL {
        let (packets, blocked) = (stats.tunnels.packets[k.index()], stats.tunnels.blocked[k.index()]);
        if packets > 0 {
            report.tunnels.insert(k.name().to_string(), TunnelCount { packets, blocked });
        }
    }
    report.rules = stats
        .rules
        .iter()
        .map(|r| RuleCount { name: r.name.clone(), packets: r.packets, bytes: r.bytes, errors: r.errors })
        .collect();
}

impl PacketLine {
    /// A record read at `ts` that carries no IP packet (until told otherwise).
    fn skipped(record: u64, ts: Duration) -> PacketLine {
        PacketLine {
            record,
            time: ts.as_secs_f64(),
            direction: None,
            src: None,
            dst: None,
            protocol: None,
            src_port: None,
            dst_port: None,
            len: 0,
            verdict: "skipped",
            reason: None,
        }
    }
}
