//! Builders for the packets the router answers with: TCP RST, ICMP / ICMPv6
//! errors and echo replies. Each writes into a buffer the caller owns and
//! returns the length written, or `None` when no reply may or can be built.
//!
//! Invariants that keep replies from being used for amplification: an error
//! quotes at most the offending packet (so a reply is at most the trigger plus
//! a fixed 48 bytes of headers), IPv4 errors stay within 576 bytes (RFC 1812
//! 4.3.2.3) and ICMPv6 errors within 1280 (RFC 4443 2.4 c); an echo reply is the
//! size of its request.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::{
    icmpv4, icmpv6, IcmpEchoHeader, Icmpv4Header, Icmpv4Type, Icmpv6Header, Icmpv6Type, IpNumber, Ipv4Header,
    Ipv6Header, TcpHeader,
};

use super::view::{tcp_flags, IpVersion, PacketView, Transport};

/// TTL / hop limit of packets the router originates.
pub const REPLY_TTL: u8 = 64;
/// Largest IPv4 ICMP error (RFC 1812 4.3.2.3).
pub const ICMPV4_ERROR_MAX: usize = 576;
/// Largest ICMPv6 error (RFC 4443 2.4 c: the IPv6 minimum MTU).
pub const ICMPV6_ERROR_MAX: usize = 1280;

/// The ICMP errors the router sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpError {
    /// TTL / hop limit exceeded in transit.
    TimeExceeded,
    /// IPv4 fragmentation needed and DF set / ICMPv6 packet too big, with the MTU.
    TooBig {
        /// The MTU of the egress link.
        mtu: u16,
    },
    /// Communication administratively prohibited (ICMP 3/13, ICMPv6 1/1).
    Prohibited,
    /// The next hop on the link never answered (ICMP 3/1, ICMPv6 1/3).
    HostUnreachable,
}

/// Writes an IP header for a router-originated packet and returns its length.
fn write_ip(out: &mut [u8], src: IpAddr, dst: IpAddr, protocol: u8, payload_len: usize) -> Option<usize> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut h = Ipv4Header::new(
                u16::try_from(payload_len).ok()?,
                REPLY_TTL,
                IpNumber(protocol),
                s.octets(),
                d.octets(),
            )
            .ok()?;
            h.header_checksum = h.calc_header_checksum();
            let bytes = h.to_bytes();
            out.get_mut(..bytes.len())?.copy_from_slice(&bytes);
            Some(bytes.len())
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let h = Ipv6Header {
                traffic_class: 0,
                flow_label: Default::default(),
                payload_length: u16::try_from(payload_len).ok()?,
                next_header: IpNumber(protocol),
                hop_limit: REPLY_TTL,
                source: s.octets(),
                destination: d.octets(),
            };
            let bytes = h.to_bytes();
            out.get_mut(..bytes.len())?.copy_from_slice(&bytes);
            Some(bytes.len())
        }
        _ => None,
    }
}

/// A TCP RST answering `view` (RFC 9293 3.10.7.1), as if sent by the destination
/// the client dialled. A SYN gets RST+ACK acknowledging it, so the client's
/// connect() fails with ECONNREFUSED at once; a segment with ACK gets a bare RST
/// with the sequence number it expects. An RST is never answered.
pub fn tcp_rst(view: &PacketView, out: &mut [u8]) -> Option<usize> {
    let Transport::Tcp { src_port, dst_port, flags, seq, ack, header_len } = view.transport else {
        return None;
    };
    if flags & tcp_flags::RST != 0 {
        return None;
    }
    let mut tcp = TcpHeader::new(dst_port, src_port, 0, 0);
    tcp.rst = true;
    if flags & tcp_flags::ACK != 0 {
        tcp.sequence_number = ack;
    } else {
        let data = view.len.checked_sub(view.l4_offset + usize::from(header_len))?;
        let seg_len = data as u32 + u32::from(flags & tcp_flags::SYN != 0) + u32::from(flags & tcp_flags::FIN != 0);
        tcp.ack = true;
        tcp.acknowledgment_number = seq.wrapping_add(seg_len);
    }
    tcp.checksum = match (view.dst, view.src) {
        (IpAddr::V4(s), IpAddr::V4(d)) => tcp.calc_checksum_ipv4_raw(s.octets(), d.octets(), &[]).ok()?,
        (IpAddr::V6(s), IpAddr::V6(d)) => tcp.calc_checksum_ipv6_raw(s.octets(), d.octets(), &[]).ok()?,
        _ => return None,
    };
    let bytes = tcp.to_bytes();
    let ip_len = write_ip(out, view.dst, view.src, 6, bytes.len())?;
    out.get_mut(ip_len..ip_len + bytes.len())?.copy_from_slice(&bytes);
    Some(ip_len + bytes.len())
}

/// An ICMP / ICMPv6 error about `pkt`, sent from `from` (the router's address of
/// that family) to the packet's source. Returns `None` where RFC 1122 3.2.2 /
/// RFC 4443 2.4 e forbid one: about an ICMP error, a later fragment, or a
/// source that is not a unicast host address.
pub fn icmp_error(kind: IcmpError, view: &PacketView, pkt: &[u8], from: IpAddr, out: &mut [u8]) -> Option<usize> {
    if !icmp_allowed(view) {
        return None;
    }
    let pkt = pkt.get(..view.len)?;
    match view.version {
        IpVersion::V4 => {
            let quote = &pkt[..pkt.len().min(ICMPV4_ERROR_MAX - Ipv4Header::MIN_LEN - 8)];
            let t = match kind {
                IcmpError::TimeExceeded => Icmpv4Type::TimeExceeded(icmpv4::TimeExceededCode::TtlExceededInTransit),
                IcmpError::TooBig { mtu } => {
                    Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::FragmentationNeeded {
                        next_hop_mtu: mtu,
                    })
                }
                IcmpError::Prohibited => {
                    Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::FilterProhibited)
                }
                IcmpError::HostUnreachable => Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::Host),
            };
            let icmp = Icmpv4Header::with_checksum(t, quote);
            write_icmp(out, from, view.src, 1, &icmp.to_bytes(), quote)
        }
        IpVersion::V6 => {
            let quote = &pkt[..pkt.len().min(ICMPV6_ERROR_MAX - Ipv6Header::LEN - 8)];
            let t = match kind {
                IcmpError::TimeExceeded => Icmpv6Type::TimeExceeded(icmpv6::TimeExceededCode::HopLimitExceeded),
                IcmpError::TooBig { mtu } => Icmpv6Type::PacketTooBig { mtu: u32::from(mtu) },
                IcmpError::Prohibited => Icmpv6Type::DestinationUnreachable(icmpv6::DestUnreachableCode::Prohibited),
                IcmpError::HostUnreachable => Icmpv6Type::DestinationUnreachable(icmpv6::DestUnreachableCode::Address),
            };
            let (IpAddr::V6(s), IpAddr::V6(d)) = (from, view.src) else {
                return None;
            };
            let icmp = Icmpv6Header::with_checksum(t, s.octets(), d.octets(), quote).ok()?;
            write_icmp(out, from, view.src, 58, &icmp.to_bytes(), quote)
        }
    }
}

/// Whether an ICMP error about `view` may be sent at all (RFC 1122 3.2.2,
/// RFC 4443 2.4 e): not about an ICMP error or a later fragment, not to a
/// source that is not a unicast host, not about a multicast destination.
pub fn icmp_allowed(view: &PacketView) -> bool {
    !view.is_icmp_error()
        && !matches!(view.fragment, super::Fragment::Later { .. })
        && is_unicast_host(view.src)
        && !is_multicast(view.dst)
}

/// Whether an RST may answer `view`: a TCP segment that is not itself an RST,
/// from a unicast host.
pub fn rst_allowed(view: &PacketView) -> bool {
    matches!(view.transport, Transport::Tcp { flags, .. } if flags & tcp_flags::RST == 0) && is_unicast_host(view.src)
}

/// Whether `view` is an echo request the router may answer.
pub fn echo_allowed(view: &PacketView) -> bool {
    matches!(view.transport, Transport::Icmp { icmp_type: 8 | 128, code: 0 })
        && view.fragment == super::Fragment::Whole
        && is_unicast_host(view.src)
}

/// An echo reply to an echo request addressed to the router itself: same
/// identifier, sequence and data, addresses swapped. Same size as the request.
pub fn echo_reply(view: &PacketView, pkt: &[u8], out: &mut [u8]) -> Option<usize> {
    let Transport::Icmp { icmp_type, .. } = view.transport else {
        return None;
    };
    if !echo_allowed(view) {
        return None;
    }
    let l4 = pkt.get(view.l4_offset..view.len)?;
    if l4.len() < 8 {
        return None;
    }
    let echo = IcmpEchoHeader { id: u16::from_be_bytes([l4[4], l4[5]]), seq: u16::from_be_bytes([l4[6], l4[7]]) };
    let data = &l4[8..];
    match (icmp_type, view.dst, view.src) {
        (8, IpAddr::V4(_), IpAddr::V4(_)) => {
            let icmp = Icmpv4Header::with_checksum(Icmpv4Type::EchoReply(echo), data);
            write_icmp(out, view.dst, view.src, 1, &icmp.to_bytes(), data)
        }
        (128, IpAddr::V6(s), IpAddr::V6(d)) => {
            let icmp = Icmpv6Header::with_checksum(Icmpv6Type::EchoReply(echo), s.octets(), d.octets(), data).ok()?;
            write_icmp(out, view.dst, view.src, 58, &icmp.to_bytes(), data)
        }
        _ => None,
    }
}

fn write_icmp(out: &mut [u8], src: IpAddr, dst: IpAddr, protocol: u8, header: &[u8], body: &[u8]) -> Option<usize> {
    let ip_len = write_ip(out, src, dst, protocol, header.len() + body.len())?;
    let end = ip_len + header.len() + body.len();
    let dst = out.get_mut(ip_len..end)?;
    dst[..header.len()].copy_from_slice(header);
    dst[header.len()..].copy_from_slice(body);
    Some(end)
}

/// True for an address that may receive a reply: not unspecified, loopback,
/// multicast, IPv4 broadcast or (IPv4) "this network".
#[inline]
pub fn is_unicast_host(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => {
            !(a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.is_broadcast() || a.octets()[0] == 0)
        }
        IpAddr::V6(a) => !(a.is_unspecified() || a.is_loopback() || a.is_multicast() || is_v4_mapped(a)),
    }
}

fn is_multicast(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => a.is_multicast() || a == Ipv4Addr::BROADCAST,
        IpAddr::V6(a) => a.is_multicast(),
    }
}

fn is_v4_mapped(a: Ipv6Addr) -> bool {
    a.to_ipv4_mapped().is_some()
}
