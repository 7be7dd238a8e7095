//! `op25b replay`: runs a capture through the router with no devices.
//!
//! Link types: raw IP (101, and 228 / 229), Ethernet (1, with 802.1Q / 802.1ad
//! tags), Linux cooked capture (113, 276, what `tcpdump -i any` writes).
//! Frames that carry no IP packet (ARP, ...) are counted as skipped. The
//! packet's direction comes from the subscriber prefixes (a source inside them
//! is outbound), and its time from the capture, so rate limits see the
//! capture's pace. `--forwarded` / `--dropped` get the records as captured.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapReader, PcapWriter};
use pcap_file::DataLink;

use crate::packet::Direction;
use crate::policy::PrefixSet;
use crate::router::{Router, RxInfo, Verdict};

/// Why a replay could not start or finish.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// The input could not be opened or is not a pcap file.
    #[error("{path}: {why}")]
    Input {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// An output file could not be written.
    #[error("{path}: {why}")]
    Output {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

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
    /// Packets it would have blocked, forwarded by `action = "monitor"`.
    pub op25b_monitored: u64,
    /// Per-rule counters, in rule order.
    pub rules: Vec<RuleCount>,
    /// Where reading stopped early, if it did.
    pub error: Option<String>,
}

/// Where the IP packet starts in a frame of `link`, if it holds one.
fn ip_offset(link: DataLink, frame: &[u8]) -> Option<usize> {
    let at = |off: usize, ethertype: u16| match ethertype {
        0x0800 | 0x86dd => Some(off),
        _ => None,
    };
    let be = |i: usize| frame.get(i..i + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    match link {
        DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => Some(0),
        DataLink::ETHERNET => {
            let mut off = 12;
            let mut ethertype = be(off)?;
            // Up to two VLAN tags (802.1Q, 802.1ad QinQ).
            for _ in 0..2 {
                if matches!(ethertype, 0x8100 | 0x88a8) {
                    off += 4;
                    ethertype = be(off)?;
                }
            }
            at(off + 2, ethertype)
        }
        DataLink::LINUX_SLL => at(16, be(14)?),
        DataLink::LINUX_SLL2 => at(20, be(0)?),
        _ => None,
    }
}

fn source_of(ip: &[u8]) -> Option<IpAddr> {
    match ip.first()? >> 4 {
        4 => ip.get(12..16).map(|b| IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
        6 => ip.get(8..24).map(|b| IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(b).unwrap_or([0; 16])))),
        _ => None,
    }
}

struct Out {
    path: PathBuf,
    writer: PcapWriter<BufWriter<File>>,
}

impl Out {
    fn open(path: &Path, header: PcapHeader) -> Result<Out, ReplayError> {
        let err = |why: String| ReplayError::Output { path: path.to_path_buf(), why };
        let file = File::create(path).map_err(|e| err(e.to_string()))?;
        let writer = PcapWriter::with_header(BufWriter::new(file), header).map_err(|e| err(e.to_string()))?;
        Ok(Out { path: path.to_path_buf(), writer })
    }

    fn write(&mut self, p: &PcapPacket<'_>) -> Result<(), ReplayError> {
        self.writer
            .write_packet(p)
            .map(|_| ())
            .map_err(|e| ReplayError::Output { path: self.path.clone(), why: e.to_string() })
    }
}

/// Runs every record of `input` through `router`.
pub fn replay(
    router: &mut Router,
    subscriber_prefixes: &PrefixSet,
    input: &Path,
    opts: &ReplayOptions,
) -> Result<ReplayReport, ReplayError> {
    let in_err = |why: String| ReplayError::Input { path: input.to_path_buf(), why };
    let file = File::open(input).map_err(|e| in_err(e.to_string()))?;
    let mut reader = PcapReader::new(BufReader::new(file)).map_err(|e| in_err(format!("not a pcap file: {e}")))?;
    let header = reader.header();
    let link = header.datalink;
    let supported =
        [DataLink::RAW, DataLink::IPV4, DataLink::IPV6, DataLink::ETHERNET, DataLink::LINUX_SLL, DataLink::LINUX_SLL2];
    if !supported.contains(&link) {
        return Err(in_err(format!(
            "link type {link:?} is not supported (raw IP 101/228/229, Ethernet 1, Linux cooked 113/276)"
        )));
    }
    let mut forwarded = opts.forwarded.as_deref().map(|p| Out::open(p, header)).transpose()?;
    let mut dropped = opts.dropped.as_deref().map(|p| Out::open(p, header)).transpose()?;

    let mut report = ReplayReport::default();
    let start = Instant::now();
    let mut first_ts: Option<Duration> = None;
    let mut buf = vec![0u8; 65_536];
    let mut reply = vec![0u8; 2048];
    while let Some(next) = reader.next_packet() {
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
        let Some(off) = ip_offset(link, frame).filter(|o| *o < frame.len()) else {
            report.skipped += 1;
            continue;
        };
        let ip = &frame[off..];
        let dir = match source_of(ip) {
            Some(src) if !subscriber_prefixes.contains(src) => Direction::Inbound,
            _ => Direction::Outbound,
        };
        let ts = packet.timestamp;
        let base = *first_ts.get_or_insert(ts);
        let now = start + ts.saturating_sub(base);
        let n = ip.len().min(buf.len());
        buf[..n].copy_from_slice(&ip[..n]);
        let verdict = router.handle(now, dir, &mut buf[..n], &mut reply, RxInfo::default());
        *report.verdicts.entry(super::verdict_name(verdict).to_string()).or_default() += 1;
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
    let stats = router.stats();
    report.op25b_blocked = stats.op25b.blocked;
    report.op25b_monitored = stats.op25b.monitored;
    report.rules =
        stats.rules.iter().map(|r| RuleCount { name: r.name.clone(), packets: r.packets, bytes: r.bytes }).collect();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_ip_in_each_link_type() {
        let mut eth = vec![0u8; 12];
        eth.extend_from_slice(&[0x81, 0x00, 0, 5, 0x86, 0xdd, 0x60]);
        assert_eq!(ip_offset(DataLink::ETHERNET, &eth), Some(18));
        let mut arp = vec![0u8; 12];
        arp.extend_from_slice(&[0x08, 0x06]);
        assert_eq!(ip_offset(DataLink::ETHERNET, &arp), None);
        let mut sll = vec![0u8; 14];
        sll.extend_from_slice(&[0x08, 0x00, 0x45]);
        assert_eq!(ip_offset(DataLink::LINUX_SLL, &sll), Some(16));
        assert_eq!(ip_offset(DataLink::RAW, &[0x45]), Some(0));
        assert_eq!(ip_offset(DataLink::ETHERNET, &[0u8; 5]), None);
    }
}
