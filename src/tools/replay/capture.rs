//! Reading pcap and pcapng captures: records, their link types and where
//! the IP packet starts in a frame.

use std::borrow::Cow;
use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use pcap_file::pcap::PcapReader;
use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
use pcap_file::pcapng::{Block, PcapNgReader};
use pcap_file::DataLink;

/// Where the IP packet starts in a frame of `link`, if it holds one.
pub(super) fn ip_offset(link: DataLink, frame: &[u8]) -> Option<usize> {
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

pub(super) fn source_of(ip: &[u8]) -> Option<IpAddr> {
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
