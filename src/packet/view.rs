//! `PacketView`: one parse of an IP packet, done at the edge, read by everyone after.
//!
//! The view checks the IP header (version, header length, total length against
//! the buffer, the IPv4 header checksum), walks the extension-header chain to the
//! upper-layer header and reads the ports and flags that the policy needs. It keeps
//! offsets, not references, so the caller may rewrite the buffer in place
//! afterwards (TTL, checksums) without re-parsing.
//!
//! A plain IPv4 header (no options, not a fragment) or IPv6 header followed
//! directly by TCP, UDP or ICMP is read at fixed offsets; a test checks that
//! this gives the full parse's view. Everything else takes the full parse.
//! Field parsing there uses etherparse's header slices; the chain walk is ours because
//! its stopping rules are a security decision: the walk stops at a non-first
//! fragment (what follows its fragment header is payload, not headers) and gives
//! up after [`MAX_EXT_HEADERS`] extension headers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::{
    ip_number, IpAuthHeaderSlice, Ipv4HeaderSlice, Ipv6FragmentHeaderSlice, Ipv6HeaderSlice, Ipv6RawExtHeaderSlice,
    TcpHeaderSlice,
};

use super::checksum;

/// The most IPv6 extension headers (or IPv4 AH headers) the walk follows. Real
/// traffic carries zero to three; a long chain only serves to hide the
/// upper-layer header from filters (RFC 7112, RFC 9098).
pub const MAX_EXT_HEADERS: usize = 8;

/// IP protocol numbers the core looks at.
pub mod proto {
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// ICMP for IPv4.
    pub const ICMP: u8 = 1;
    /// ICMP for IPv6.
    pub const ICMPV6: u8 = 58;
}

/// Name of an IP protocol number as the config spells it: `tcp`, `udp`,
/// `icmp`, `icmpv6`, or `proto N`.
pub fn protocol_name(p: u8) -> String {
    match p {
        proto::TCP => "tcp".into(),
        proto::UDP => "udp".into(),
        proto::ICMP => "icmp".into(),
        proto::ICMPV6 => "icmpv6".into(),
        n => format!("proto {n}"),
    }
}

/// TCP flag bits as they sit in byte 13 of the TCP header.
pub mod tcp_flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
}

/// Why a packet could not be parsed. Each variant becomes a drop counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The buffer is shorter than the fixed IP header, or the TCP header of an
    /// unfragmented packet is cut short.
    #[error("truncated packet")]
    Truncated,
    /// The version nibble is neither 4 nor 6.
    #[error("IP version is neither 4 nor 6")]
    BadVersion,
    /// IPv4 IHL below 5, or a TCP data offset below 5.
    #[error("bad header length")]
    BadHeaderLen,
    /// The IPv4 total length / IPv6 payload length disagrees with the buffer.
    #[error("total length beyond the buffer or below the header")]
    BadTotalLen,
    /// The IPv4 header checksum is wrong.
    #[error("bad IPv4 header checksum")]
    BadChecksum,
    /// An IPv6 extension-header chain that is malformed, too long, or carries a
    /// hop-by-hop header anywhere but first.
    #[error("malformed or too long extension-header chain")]
    BadExtHeader,
    /// A first fragment too short to hold the whole TCP header (RFC 1858, RFC 7112).
    #[error("transport header incomplete in first fragment")]
    TinyFragment,
}

/// IP version of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpVersion {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

/// Where the packet stands in a fragmented datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fragment {
    /// A whole datagram (also an IPv6 atomic fragment: offset 0, no more fragments).
    Whole,
    /// Offset 0 with more fragments to come: it carries the upper-layer header.
    First,
    /// A later fragment; `offset` is in 8-byte units.
    Later {
        /// Fragment offset in 8-byte units.
        offset: u16,
    },
}

/// What the view knows of the upper-layer header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Not read: a later fragment, or a protocol the core does not look into.
    None,
    /// A complete TCP header.
    Tcp {
        /// Source port.
        src_port: u16,
        /// Destination port.
        dst_port: u16,
        /// Flag byte (see [`tcp_flags`]).
        flags: u8,
        /// Sequence number.
        seq: u32,
        /// Acknowledgment number.
        ack: u32,
        /// TCP header length in bytes.
        header_len: u8,
    },
    /// A UDP header.
    Udp {
        /// Source port.
        src_port: u16,
        /// Destination port.
        dst_port: u16,
    },
    /// The first bytes of an ICMP / ICMPv6 message.
    Icmp {
        /// ICMP type.
        icmp_type: u8,
        /// ICMP code.
        code: u8,
    },
}

/// A parsed IP packet: addresses, lengths, fragment state and the transport
/// header fields, with offsets into the buffer it was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketView {
    /// IP version.
    pub version: IpVersion,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// TTL (IPv4) or hop limit (IPv6).
    pub ttl: u8,
    /// Upper-layer protocol number, after any extension headers.
    pub protocol: u8,
    /// Length of the IP packet in bytes (may be less than the buffer).
    pub len: usize,
    /// Offset of the upper-layer header.
    pub l4_offset: usize,
    /// Fragment state.
    pub fragment: Fragment,
    /// IPv4 Don't Fragment bit (always true for IPv6: routers never fragment it).
    pub dont_fragment: bool,
    /// Transport header fields, where read.
    pub transport: Transport,
    /// Source routed: IPv4 loose/strict source route option, or an IPv6 routing
    /// header with segments left. The destination field is then not where the
    /// packet ends up.
    pub source_routed: bool,
}

impl PacketView {
    /// A view of nothing, for [`PacketView::parse_into`] to fill.
    pub const EMPTY: PacketView = PacketView {
        version: IpVersion::V4,
        src: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        ttl: 0,
        protocol: 0,
        len: 0,
        l4_offset: 0,
        fragment: Fragment::Whole,
        dont_fragment: false,
        transport: Transport::None,
        source_routed: false,
    };

    /// Like [`PacketView::parse`], into a view the caller holds: the router
    /// parses straight into its per-packet context, where moving the view
    /// out of a `Result` would copy it once more.
    #[inline]
    pub fn parse_into(buf: &[u8], out: &mut PacketView) -> Result<(), ParseError> {
        if Self::parse_fast(buf, out).is_none() {
            *out = Self::parse_full(buf)?;
        }
        Ok(())
    }

    /// Parses `buf` as an IPv4 or IPv6 packet.
    #[inline]
    pub fn parse(buf: &[u8]) -> Result<PacketView, ParseError> {
        // Most packets are a plain IP header and TCP, UDP or ICMP right after
        // it: read those at fixed offsets. Everything else (options, extension
        // headers, fragments, anything short or malformed) takes the full
        // walk, which also names what is wrong. Both give the same view for
        // every packet the fast path takes (tested).
        let mut view = PacketView::EMPTY;
        Self::parse_into(buf, &mut view).map(|()| view)
    }

    /// The fixed-offset parse, written straight into `out` (a view built
    /// elsewhere and moved would cost a copy); `None` hands the packet to
    /// [`Self::parse_full`] and leaves `out` as it was.
    #[inline]
    fn parse_fast(buf: &[u8], out: &mut PacketView) -> Option<()> {
        match *buf.first()? {
            0x45 => {
                let h: &[u8; 20] = buf.get(..20)?.try_into().ok()?;
                let len = usize::from(u16::from_be_bytes([h[2], h[3]]));
                let frag = u16::from_be_bytes([h[6], h[7]]);
                // More-fragments or an offset: the full walk.
                if len < 20 || len > buf.len() || frag & 0x3fff != 0 || !checksum::ipv4_header_ok(h) {
                    return None;
                }
                let transport = fast_transport(&buf[20..len], h[9], proto::ICMP)?;
                *out = PacketView {
                    version: IpVersion::V4,
                    src: IpAddr::V4(Ipv4Addr::new(h[12], h[13], h[14], h[15])),
                    dst: IpAddr::V4(Ipv4Addr::new(h[16], h[17], h[18], h[19])),
                    ttl: h[8],
                    protocol: h[9],
                    len,
                    l4_offset: 20,
                    fragment: Fragment::Whole,
                    dont_fragment: frag & 0x4000 != 0,
                    transport,
                    source_routed: false,
                };
                Some(())
            }
            b if b >> 4 == 6 => {
                let h: &[u8; 40] = buf.get(..40)?.try_into().ok()?;
                let payload = usize::from(u16::from_be_bytes([h[4], h[5]]));
                let len = 40 + payload;
                if payload == 0 || len > buf.len() {
                    return None;
                }
                let transport = fast_transport(&buf[40..len], h[6], proto::ICMPV6)?;
                let addr = |at: usize| {
                    let mut a = [0u8; 16];
                    a.copy_from_slice(&h[at..at + 16]);
                    IpAddr::V6(Ipv6Addr::from(a))
                };
                *out = PacketView {
                    version: IpVersion::V6,
                    src: addr(8),
                    dst: addr(24),
                    ttl: h[7],
                    protocol: h[6],
                    len,
                    l4_offset: 40,
                    fragment: Fragment::Whole,
                    dont_fragment: true,
                    transport,
                    source_routed: false,
                };
                Some(())
            }
            _ => None,
        }
    }

    /// The full parse: IPv4 options, AH, the IPv6 extension-header chain,
    /// fragments, and a reason for every malformed packet.
    pub(crate) fn parse_full(buf: &[u8]) -> Result<PacketView, ParseError> {
        match buf.first().map(|b| b >> 4) {
            None => Err(ParseError::Truncated),
            Some(4) => Self::parse_v4(buf, false),
            Some(6) => Self::parse_v6(buf, false),
            Some(_) => Err(ParseError::BadVersion),
        }
    }

    /// Parses a packet carried inside a tunnel (`packet::tunnel`). With
    /// `cut`, the buffer may end before the packet's own length says (the
    /// outer packet is a first fragment): the view then holds what the buffer
    /// has, and a transport header it does not hold whole is a
    /// [`ParseError::TinyFragment`], as in a first fragment.
    pub(crate) fn parse_inner(buf: &[u8], cut: bool) -> Result<PacketView, ParseError> {
        match buf.first().map(|b| b >> 4) {
            None => Err(ParseError::Truncated),
            Some(4) => Self::parse_v4(buf, cut),
            Some(6) => Self::parse_v6(buf, cut),
            Some(_) => Err(ParseError::BadVersion),
        }
    }

    fn parse_v4(buf: &[u8], cut: bool) -> Result<PacketView, ParseError> {
        use etherparse::err::ipv4::HeaderError as H;
        use etherparse::err::ipv4::HeaderSliceError as E;
        let ip = Ipv4HeaderSlice::from_slice(buf).map_err(|e| match e {
            E::Len(_) => ParseError::Truncated,
            E::Content(H::HeaderLengthSmallerThanHeader { .. }) => ParseError::BadHeaderLen,
            E::Content(H::UnexpectedVersion { .. }) => ParseError::BadVersion,
        })?;
        let header_len = ip.slice().len();
        let len = usize::from(ip.total_len());
        if len < header_len || len > buf.len() && !cut {
            return Err(ParseError::BadTotalLen);
        }
        let len = len.min(buf.len());
        if checksum::sum(ip.slice()) != 0xffff {
            return Err(ParseError::BadChecksum);
        }
        let offset = ip.fragments_offset().value();
        let fragment = match (offset, ip.more_fragments()) {
            (0, false) => Fragment::Whole,
            (0, true) => Fragment::First,
            (offset, _) => Fragment::Later { offset },
        };
        let mut protocol = ip.protocol().0;
        let mut l4_offset = header_len;
        if !matches!(fragment, Fragment::Later { .. }) {
            // IPv4 knows one extension header, AH (RFC 4302), in front of the
            // transport header; follow it so AH cannot hide a TCP header.
            let mut hops = 0;
            while protocol == ip_number::AUTH.0 {
                hops += 1;
                if hops > MAX_EXT_HEADERS {
                    return Err(ParseError::BadExtHeader);
                }
                let ah = IpAuthHeaderSlice::from_slice(&buf[l4_offset..len]).map_err(|_| ParseError::BadExtHeader)?;
                protocol = ah.next_header().0;
                l4_offset += ah.slice().len();
            }
        }
        let src = IpAddr::V4(Ipv4Addr::from(ip.source()));
        let dst = IpAddr::V4(Ipv4Addr::from(ip.destination()));
        let transport = read_transport(&buf[l4_offset..len], protocol, cut_fragment(fragment, cut))?;
        Ok(PacketView {
            version: IpVersion::V4,
            src,
            dst,
            ttl: ip.ttl(),
            protocol,
            len,
            l4_offset,
            fragment,
            dont_fragment: ip.dont_fragment(),
            source_routed: v4_source_routed(&buf[20..header_len])?,
            transport,
        })
    }

    fn parse_v6(buf: &[u8], cut: bool) -> Result<PacketView, ParseError> {
        let ip = Ipv6HeaderSlice::from_slice(buf).map_err(|_| ParseError::Truncated)?;
        // A payload length of 0 means a jumbogram (RFC 2675), which never crosses
        // a link with a TUN's MTU: treat it as a length error.
        let len = etherparse::Ipv6Header::LEN + usize::from(ip.payload_length());
        if ip.payload_length() == 0 && buf.len() > etherparse::Ipv6Header::LEN || len > buf.len() && !cut {
            return Err(ParseError::BadTotalLen);
        }
        let len = len.min(buf.len());
        let mut next = ip.next_header().0;
        let mut l4_offset = etherparse::Ipv6Header::LEN;
        let mut fragment = Fragment::Whole;
        let mut source_routed = false;
        let mut hops = 0;
        loop {
            let rest = &buf[l4_offset..len];
            let (header_len, next_header) = match next {
                0 if hops == 0 => raw_ext(rest)?,
                0 => return Err(ParseError::BadExtHeader),
                43 => {
                    // Routing header: segments left is its fourth byte.
                    source_routed |= rest.get(3).is_some_and(|left| *left > 0);
                    raw_ext(rest)?
                }
                60 | 135 | 139 | 140 => raw_ext(rest)?,
                44 => {
                    let f = Ipv6FragmentHeaderSlice::from_slice(rest).map_err(|_| ParseError::BadExtHeader)?;
                    let offset = f.fragment_offset().value();
                    if fragment != Fragment::Whole {
                        // Two fragment headers in one packet: nobody sends that honestly.
                        return Err(ParseError::BadExtHeader);
                    }
                    fragment = match (offset, f.more_fragments()) {
                        (0, false) => Fragment::Whole,
                        (0, true) => Fragment::First,
                        (offset, _) => Fragment::Later { offset },
                    };
                    (f.slice().len(), f.next_header().0)
                }
                51 => {
                    let ah = IpAuthHeaderSlice::from_slice(rest).map_err(|_| ParseError::BadExtHeader)?;
                    (ah.slice().len(), ah.next_header().0)
                }
                _ => break,
            };
            hops += 1;
            if hops > MAX_EXT_HEADERS {
                return Err(ParseError::BadExtHeader);
            }
            l4_offset += header_len;
            next = next_header;
            if let Fragment::Later { .. } = fragment {
                // What follows the fragment header of a later fragment is data.
                break;
            }
        }
        let transport = read_transport(&buf[l4_offset..len], next, cut_fragment(fragment, cut))?;
        Ok(PacketView {
            version: IpVersion::V6,
            src: IpAddr::V6(Ipv6Addr::from(ip.source())),
            dst: IpAddr::V6(Ipv6Addr::from(ip.destination())),
            ttl: ip.hop_limit(),
            protocol: next,
            len,
            l4_offset,
            fragment,
            dont_fragment: true,
            source_routed,
            transport,
        })
    }

    /// True for a TCP segment with SYN set and ACK clear: the start of a connection.
    pub fn is_tcp_syn(&self) -> bool {
        matches!(self.transport, Transport::Tcp { flags, .. }
            if flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN)
    }

    /// The TCP source port, if this packet carries a TCP header.
    #[inline]
    pub fn tcp_src_port(&self) -> Option<u16> {
        match self.transport {
            Transport::Tcp { src_port, .. } => Some(src_port),
            _ => None,
        }
    }

    /// The TCP destination port, if the TCP header was read.
    #[inline]
    pub fn tcp_dst_port(&self) -> Option<u16> {
        match self.transport {
            Transport::Tcp { dst_port, .. } => Some(dst_port),
            _ => None,
        }
    }

    /// True for ICMP / ICMPv6 error messages (and unreadable ICMP), about which
    /// no ICMP error may be sent (RFC 1122 3.2.2, RFC 4443 2.4 e).
    pub fn is_icmp_error(&self) -> bool {
        match (self.protocol, self.transport) {
            (proto::ICMP, Transport::Icmp { icmp_type, .. }) => !matches!(icmp_type, 0 | 8 | 13 | 14),
            (proto::ICMPV6, Transport::Icmp { icmp_type, .. }) => icmp_type < 128,
            (proto::ICMP | proto::ICMPV6, _) => true,
            _ => false,
        }
    }
}

/// The transport header of an unfragmented packet at a fixed offset, for
/// [`PacketView::parse_fast`]: complete TCP, UDP and ICMP headers only.
#[inline]
fn fast_transport(l4: &[u8], protocol: u8, icmp: u8) -> Option<Transport> {
    if protocol == proto::TCP {
        let t: &[u8; 20] = l4.get(..20)?.try_into().ok()?;
        let header_len = (t[12] >> 4) * 4;
        if header_len < 20 || usize::from(header_len) > l4.len() {
            return None;
        }
        Some(Transport::Tcp {
            src_port: u16::from_be_bytes([t[0], t[1]]),
            dst_port: u16::from_be_bytes([t[2], t[3]]),
            flags: t[13],
            seq: u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
            ack: u32::from_be_bytes([t[8], t[9], t[10], t[11]]),
            header_len,
        })
    } else if protocol == proto::UDP {
        let u: &[u8; 8] = l4.get(..8)?.try_into().ok()?;
        Some(Transport::Udp { src_port: u16::from_be_bytes([u[0], u[1]]), dst_port: u16::from_be_bytes([u[2], u[3]]) })
    } else if protocol == icmp {
        let i: &[u8; 4] = l4.get(..4)?.try_into().ok()?;
        Some(Transport::Icmp { icmp_type: i[0], code: i[1] })
    } else {
        None
    }
}

/// Whether IPv4 options carry a loose or strict source route (RFC 791 types
/// 131 and 137). Malformed options make the header invalid.
fn v4_source_routed(mut options: &[u8]) -> Result<bool, ParseError> {
    let mut routed = false;
    while let Some(&kind) = options.first() {
        match kind {
            0 => break,
            1 => options = &options[1..],
            _ => {
                let len = usize::from(*options.get(1).ok_or(ParseError::BadHeaderLen)?);
                if len < 2 || len > options.len() {
                    return Err(ParseError::BadHeaderLen);
                }
                routed |= kind == 131 || kind == 137;
                options = &options[len..];
            }
        }
    }
    Ok(routed)
}

/// How the transport read treats a packet whose buffer may be cut: a whole
/// packet cut short is read like a first fragment (its transport header must
/// be there in full).
#[inline]
fn cut_fragment(fragment: Fragment, cut: bool) -> Fragment {
    if cut && fragment == Fragment::Whole {
        Fragment::First
    } else {
        fragment
    }
}

/// Length and next header of a generic IPv6 extension header.
fn raw_ext(rest: &[u8]) -> Result<(usize, u8), ParseError> {
    let h = Ipv6RawExtHeaderSlice::from_slice(rest).map_err(|_| ParseError::BadExtHeader)?;
    Ok((h.slice().len(), h.next_header().0))
}

fn read_transport(l4: &[u8], protocol: u8, fragment: Fragment) -> Result<Transport, ParseError> {
    if let Fragment::Later { .. } = fragment {
        return Ok(Transport::None);
    }
    match protocol {
        proto::TCP => {
            use etherparse::err::tcp::HeaderError as H;
            use etherparse::err::tcp::HeaderSliceError as E;
            let tcp = TcpHeaderSlice::from_slice(l4).map_err(|e| match e {
                E::Len(_) if fragment == Fragment::First => ParseError::TinyFragment,
                E::Len(_) => ParseError::Truncated,
                E::Content(H::DataOffsetTooSmall { .. }) => ParseError::BadHeaderLen,
            })?;
            Ok(Transport::Tcp {
                src_port: tcp.source_port(),
                dst_port: tcp.destination_port(),
                flags: l4[13],
                seq: tcp.sequence_number(),
                ack: tcp.acknowledgment_number(),
                header_len: tcp.slice().len() as u8,
            })
        }
        // A first fragment must hold the whole upper-layer header (RFC 7112).
        proto::UDP | proto::ICMP | proto::ICMPV6 if fragment == Fragment::First && l4.len() < 8 => {
            Err(ParseError::TinyFragment)
        }
        proto::UDP if l4.len() >= 8 => Ok(Transport::Udp {
            src_port: u16::from_be_bytes([l4[0], l4[1]]),
            dst_port: u16::from_be_bytes([l4[2], l4[3]]),
        }),
        proto::ICMP | proto::ICMPV6 if l4.len() >= 4 => Ok(Transport::Icmp { icmp_type: l4[0], code: l4[1] }),
        // Short UDP / ICMP: the policy does not depend on them; forward as is.
        _ => Ok(Transport::None),
    }
}

#[cfg(test)]
#[path = "view_tests.rs"]
mod tests;
