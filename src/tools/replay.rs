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

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapReader, PcapWriter};
use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
use pcap_file::pcapng::{Block, PcapNgReader};
use pcap_file::{DataLink, TsResolution};

use crate::packet::{Direction, PacketView, Transport};
use crate::policy::PrefixSet;
use crate::router::{Router, RxInfo, Verdict};

/// Why a replay could not start or finish.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// The input could not be opened or is not a pcap or pcapng capture.
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

/// The link types replay understands.
const SUPPORTED: [DataLink; 6] =
    [DataLink::RAW, DataLink::IPV4, DataLink::IPV6, DataLink::ETHERNET, DataLink::LINUX_SLL, DataLink::LINUX_SLL2];

fn check_link(link: DataLink) -> Result<(), String> {
    if SUPPORTED.contains(&link) {
        Ok(())
    } else {
        Err(format!("link type {link:?} is not supported (raw IP 101/228/229, Ethernet 1, Linux cooked 113/276)"))
    }
}

/// The first bytes of a pcapng file (its Section Header Block type).
const PCAPNG_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];

/// One record of a capture.
#[derive(Debug, Clone)]
pub struct Record<'a> {
    /// The link type of the interface it was captured on.
    pub link: DataLink,
    /// Capture time (since the Unix epoch, as the capture says).
    pub timestamp: Duration,
    /// The length of the packet on the wire.
    pub orig_len: u32,
    /// The bytes captured, from the link-layer header on.
    pub data: Cow<'a, [u8]>,
}

/// One pcapng interface: its link type and timestamp unit.
#[derive(Debug, Clone, Copy)]
struct Interface {
    link: DataLink,
    /// `if_tsresol`: bit 7 clear, 10^-n s; set, 2^-n s. Default 6 (microseconds).
    tsresol: u8,
}

impl Interface {
    /// pcap-file hands over the raw timestamp as if it counted nanoseconds.
    fn time(self, raw: Duration) -> Duration {
        let ticks = raw.as_nanos();
        let n = u32::from(self.tsresol & 0x7f);
        let nanos = if self.tsresol & 0x80 == 0 {
            match n.checked_sub(9) {
                None => ticks.saturating_mul(10u128.pow(9 - n)),
                Some(d) => ticks / 10u128.checked_pow(d).unwrap_or(u128::MAX),
            }
        } else if n < 64 {
            ticks.saturating_mul(1_000_000_000) >> n
        } else {
            0
        };
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

enum Inner<R: Read> {
    Pcap {
        reader: PcapReader<R>,
        link: DataLink,
    },
    /// `data`: the current packet, copied out of the reader's buffer.
    PcapNg {
        reader: PcapNgReader<R>,
        interfaces: Vec<Interface>,
        data: Vec<u8>,
    },
}

/// A pcap or pcapng capture being read: the reader to fuzz. Errors are
/// strings that say what is wrong; nothing in the input makes it panic.
pub struct Capture<R: Read> {
    inner: Inner<R>,
}

impl<R: Read> Capture<R> {
    /// Reads the file header (pcap) or the first section header (pcapng),
    /// telling the two apart by their first bytes.
    pub fn open(mut input: BufReader<R>) -> Result<Capture<BufReader<R>>, String> {
        let magic = input.fill_buf().map_err(|e| e.to_string())?;
        if magic.starts_with(&PCAPNG_MAGIC) {
            let reader = PcapNgReader::new(input).map_err(|e| format!("not a pcapng file: {e}"))?;
            return Ok(Capture { inner: Inner::PcapNg { reader, interfaces: Vec::new(), data: Vec::new() } });
        }
        let reader = PcapReader::new(input).map_err(|e| format!("not a pcap or pcapng file: {e}"))?;
        let link = reader.header().datalink;
        check_link(link)?;
        Ok(Capture { inner: Inner::Pcap { reader, link } })
    }
}

impl<R: Read> Capture<R> {
    /// "pcap" or "pcapng".
    pub fn format(&self) -> &'static str {
        match self.inner {
            Inner::Pcap { .. } => "pcap",
            Inner::PcapNg { .. } => "pcapng",
        }
    }

    /// The next packet record; `None` at the end, `Some(Err(why))` when the
    /// capture is corrupt or cut there (reading should stop).
    pub fn next_record(&mut self) -> Option<Result<Record<'_>, String>> {
        match &mut self.inner {
            Inner::Pcap { reader, link } => {
                let link = *link;
                Some(
                    reader
                        .next_packet()?
                        .map(|p| Record { link, timestamp: p.timestamp, orig_len: p.orig_len, data: p.data })
                        .map_err(|e| e.to_string()),
                )
            }
            Inner::PcapNg { reader, interfaces, data: copy } => loop {
                let block = match reader.next_block()? {
                    Ok(b) => b,
                    Err(e) => return Some(Err(e.to_string())),
                };
                let (id, raw, orig_len, data) = match block {
                    Block::SectionHeader(_) => {
                        interfaces.clear();
                        continue;
                    }
                    Block::InterfaceDescription(idb) => {
                        if let Err(e) = check_link(idb.linktype) {
                            return Some(Err(format!("interface {}: {e}", interfaces.len())));
                        }
                        let tsresol = idb
                            .options
                            .iter()
                            .find_map(|o| match o {
                                InterfaceDescriptionOption::IfTsResol(r) => Some(*r),
                                _ => None,
                            })
                            .unwrap_or(6);
                        interfaces.push(Interface { link: idb.linktype, tsresol });
                        continue;
                    }
                    Block::EnhancedPacket(p) => (p.interface_id, p.timestamp, p.original_len, p.data),
                    // A Simple Packet Block: interface 0, no timestamp.
                    Block::SimplePacket(p) => (0, Duration::ZERO, p.original_len, p.data),
                    Block::Packet(p) => {
                        (u32::from(p.interface_id), Duration::from_nanos(p.timestamp), p.original_len, p.data)
                    }
                    _ => continue,
                };
                let Some(iface) = interfaces.get(id as usize).copied() else {
                    return Some(Err(format!("a packet of interface {id}, which was not described")));
                };
                copy.clear();
                copy.extend_from_slice(&data);
                drop(data);
                let record =
                    Record { link: iface.link, timestamp: iface.time(raw), orig_len, data: Cow::Borrowed(copy) };
                return Some(Ok(record));
            },
        }
    }
}

/// A `--forwarded` / `--dropped` file: pcap, nanosecond timestamps, the link
/// type of the first record written.
struct Out {
    path: PathBuf,
    writer: Option<(DataLink, PcapWriter<BufWriter<File>>)>,
    file: Option<File>,
}

impl Out {
    fn open(path: &Path) -> Result<Out, ReplayError> {
        let file =
            File::create(path).map_err(|e| ReplayError::Output { path: path.to_path_buf(), why: e.to_string() })?;
        Ok(Out { path: path.to_path_buf(), writer: None, file: Some(file) })
    }

    fn err(&self, why: String) -> ReplayError {
        ReplayError::Output { path: self.path.clone(), why }
    }

    fn start(&mut self, link: DataLink) -> Result<(), ReplayError> {
        if self.writer.is_some() {
            return Ok(());
        }
        let Some(file) = self.file.take() else { return Ok(()) };
        let header = PcapHeader { datalink: link, ts_resolution: TsResolution::NanoSecond, ..PcapHeader::default() };
        let w = PcapWriter::with_header(BufWriter::new(file), header).map_err(|e| self.err(e.to_string()))?;
        self.writer = Some((link, w));
        Ok(())
    }

    fn write(&mut self, r: &Record<'_>) -> Result<(), ReplayError> {
        self.start(r.link)?;
        let Some((link, w)) = &mut self.writer else { return Ok(()) };
        if *link != r.link {
            let why = format!("link types {link:?} and {:?} cannot share one pcap file", r.link);
            return Err(ReplayError::Output { path: self.path.clone(), why });
        }
        w.write_packet(&PcapPacket::new(r.timestamp, r.orig_len, &r.data))
            .map(|_| ())
            .map_err(|e| ReplayError::Output { path: self.path.clone(), why: e.to_string() })
    }

    /// Writes what is buffered; an output that got no record is still a
    /// valid (empty) capture.
    fn finish(mut self) -> Result<(), ReplayError> {
        self.start(DataLink::RAW)?;
        if let Some((_, w)) = self.writer.take() {
            use std::io::Write as _;
            w.into_writer().flush().map_err(|e| self.err(e.to_string()))?;
        }
        Ok(())
    }
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

impl ReplayError {
    fn with_input(self, path: &Path) -> ReplayError {
        match self {
            ReplayError::Input { why, .. } => ReplayError::Input { path: path.to_path_buf(), why },
            other => other,
        }
    }
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
        let mut line = PacketLine {
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
        };
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

    fn pcapng(tsresol: Option<u8>) -> Vec<u8> {
        use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
        use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionBlock;
        let mut w = pcap_file::pcapng::PcapNgWriter::new(Vec::new()).unwrap();
        let options = tsresol.map(InterfaceDescriptionOption::IfTsResol).into_iter().collect();
        w.write_pcapng_block(InterfaceDescriptionBlock { linktype: DataLink::RAW, snaplen: 0, options }).unwrap();
        for i in 0..3u64 {
            let data = [0x45u8, 0, 0, 20, 0, 0, 0, 0, 64, 6, 0, 0, 100, 64, 1, 10, 203, 0, 113, 25];
            let epb = EnhancedPacketBlock {
                interface_id: 0,
                timestamp: Duration::from_nanos(1_000 + i),
                original_len: 20,
                data: Cow::Owned(data.to_vec()),
                options: vec![],
            };
            w.write_pcapng_block(epb).unwrap();
        }
        w.into_inner()
    }

    /// Every record of `bytes`, or where reading stopped.
    fn read_all(bytes: &[u8]) -> Result<Vec<(DataLink, Duration, usize)>, String> {
        let mut c = Capture::open(BufReader::new(bytes))?;
        let mut out = Vec::new();
        while let Some(r) = c.next_record() {
            let r = r?;
            out.push((r.link, r.timestamp, r.data.len()));
        }
        Ok(out)
    }

    #[test]
    fn pcapng_timestamps_follow_if_tsresol() {
        // No option: microseconds; 9: nanoseconds; 0x80 | 10: 2^-10 s.
        for (tsresol, first) in [
            (None, Duration::from_millis(1)),
            (Some(6), Duration::from_millis(1)),
            (Some(9), Duration::from_micros(1)),
            (Some(0x80 | 10), Duration::from_nanos(1_000 * 1_000_000_000 / 1024)),
        ] {
            let records = read_all(&pcapng(tsresol)).unwrap();
            assert_eq!(records.len(), 3);
            assert_eq!(records[0], (DataLink::RAW, first, 20), "{tsresol:?}");
        }
    }

    /// A cut or damaged capture is an error string or fewer records, never a
    /// panic (a bounded, deterministic sample; the fuzz targets go further).
    #[test]
    fn damaged_captures_do_not_panic() {
        let good = pcapng(None);
        for cut in 0..good.len() {
            let _ = read_all(&good[..cut]);
        }
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..1_000 {
            let mut bad = good.clone();
            for _ in 0..1 + x % 4 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let at = (x % bad.len() as u64) as usize;
                bad[at] = (x >> 32) as u8;
            }
            let _ = read_all(&bad);
        }
        // The last record cut short is an error, not a quiet end.
        let cut = read_all(&good[..good.len() - 1]);
        assert!(cut.is_err(), "{cut:?}");
    }
}
