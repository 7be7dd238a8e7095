//! ARP and NDP on the wire, through smoltcp's types: what a received frame
//! says about neighbours, and the frames the neighbour table sends. Nothing
//! here keeps state; nothing allocates.

use std::net::{Ipv4Addr, Ipv6Addr};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, Icmpv6Packet,
    Icmpv6Repr, IpProtocol, Ipv6Packet, Ipv6Repr, NdiscNeighborFlags, NdiscRepr, RawHardwareAddress,
};

/// An Ethernet (MAC) address.
pub type Mac = [u8; 6];

/// The broadcast MAC address.
pub const BROADCAST: Mac = [0xff; 6];

/// Length of an Ethernet header without VLAN tag.
pub const ETH_HEADER_LEN: usize = 14;

/// What a received frame says to the neighbour table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message {
    /// An ARP request: who has `target`? Tell `sender_ip` at `sender_mac`.
    ArpRequest { sender_mac: Mac, sender_ip: Ipv4Addr, target: Ipv4Addr },
    /// An ARP reply: `sender_ip` is at `sender_mac`.
    ArpReply { sender_mac: Mac, sender_ip: Ipv4Addr },
    /// A neighbour solicitation for `target` from `src` (unspecified for DAD),
    /// with the link-layer address to answer to.
    Solicit { src: Ipv6Addr, src_mac: Mac, target: Ipv6Addr },
    /// A neighbour advertisement: `target` is at `mac`.
    Advert { target: Ipv6Addr, mac: Mac, solicited: bool },
}

/// Why a frame that looked like ARP or NDP was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// Too short or fields that do not parse.
    Invalid,
    /// NDP with a hop limit other than 255 (RFC 4861 7.1: came from off-link).
    HopLimit,
}

/// Decodes `frame` (with its Ethernet header). `Ok(None)`: not ARP and not a
/// neighbour solicitation or advertisement (the router's business).
pub fn parse(frame: &[u8]) -> Result<Option<Message>, Malformed> {
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return Err(Malformed::Invalid);
    };
    match eth.ethertype() {
        EthernetProtocol::Arp => parse_arp(eth.payload()).map(Some),
        EthernetProtocol::Ipv6 => parse_ndp(eth.src_addr().0, eth.payload()),
        _ => Ok(None),
    }
}

fn parse_arp(payload: &[u8]) -> Result<Message, Malformed> {
    let pkt = ArpPacket::new_checked(payload).map_err(|_| Malformed::Invalid)?;
    let Ok(ArpRepr::EthernetIpv4 {
        operation, source_hardware_addr, source_protocol_addr, target_protocol_addr, ..
    }) = ArpRepr::parse(&pkt)
    else {
        return Err(Malformed::Invalid);
    };
    let sender_mac = source_hardware_addr.0;
    match operation {
        ArpOperation::Request => {
            Ok(Message::ArpRequest { sender_mac, sender_ip: source_protocol_addr, target: target_protocol_addr })
        }
        ArpOperation::Reply => Ok(Message::ArpReply { sender_mac, sender_ip: source_protocol_addr }),
        _ => Err(Malformed::Invalid),
    }
}

fn parse_ndp(eth_src: Mac, payload: &[u8]) -> Result<Option<Message>, Malformed> {
    let ip = Ipv6Packet::new_checked(payload).map_err(|_| Malformed::Invalid)?;
    if ip.next_header() != IpProtocol::Icmpv6 {
        return Ok(None);
    }
    let body = ip.payload();
    // Only the two neighbour messages are ours; every other ICMPv6 is the router's.
    if !matches!(body.first(), Some(135 | 136)) {
        return Ok(None);
    }
    if ip.hop_limit() != 255 {
        return Err(Malformed::HopLimit);
    }
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    let icmp = Icmpv6Packet::new_checked(body).map_err(|_| Malformed::Invalid)?;
    let repr =
        Icmpv6Repr::parse(&src, &dst, &icmp, &ChecksumCapabilities::default()).map_err(|_| Malformed::Invalid)?;
    let mac_of = |ll: Option<RawHardwareAddress>| match ll {
        Some(raw) => <[u8; 6]>::try_from(raw.as_bytes()).map_err(|_| Malformed::Invalid),
        None => Ok(eth_src),
    };
    match repr {
        Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit { target_addr, lladdr }) => {
            Ok(Some(Message::Solicit { src, src_mac: mac_of(lladdr)?, target: target_addr }))
        }
        Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert { flags, target_addr, lladdr }) => Ok(Some(Message::Advert {
            target: target_addr,
            mac: mac_of(lladdr)?,
            solicited: flags.contains(NdiscNeighborFlags::SOLICITED),
        })),
        _ => Err(Malformed::Invalid),
    }
}

/// Writes an Ethernet header into `out[..14]`; `None` when `out` is shorter.
pub fn write_eth(out: &mut [u8], src: Mac, dst: Mac, ethertype: EthernetProtocol) -> Option<()> {
    let head = out.get_mut(..ETH_HEADER_LEN)?;
    let mut frame = EthernetFrame::new_unchecked(head);
    EthernetRepr { src_addr: EthernetAddress(src), dst_addr: EthernetAddress(dst), ethertype }.emit(&mut frame);
    Some(())
}

/// An ARP request (`target_mac` zero, broadcast) or reply, framed; returns its length.
pub fn arp(
    out: &mut [u8],
    op: ArpOperation,
    own: (Mac, Ipv4Addr),
    target: (Mac, Ipv4Addr),
    eth_dst: Mac,
) -> Option<usize> {
    let repr = ArpRepr::EthernetIpv4 {
        operation: op,
        source_hardware_addr: EthernetAddress(own.0),
        source_protocol_addr: own.1,
        target_hardware_addr: EthernetAddress(target.0),
        target_protocol_addr: target.1,
    };
    let len = ETH_HEADER_LEN + repr.buffer_len();
    let out = out.get_mut(..len)?;
    write_eth(out, own.0, eth_dst, EthernetProtocol::Arp)?;
    repr.emit(&mut ArpPacket::new_unchecked(&mut out[ETH_HEADER_LEN..]));
    Some(len)
}

/// The solicited-node multicast address of `addr` (RFC 4291 2.7.1) and its MAC (RFC 2464 7).
pub fn solicited_node(addr: Ipv6Addr) -> (Ipv6Addr, Mac) {
    let o = addr.octets();
    let ip = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00 | u16::from(o[13]), u16::from_be_bytes([o[14], o[15]]));
    (ip, multicast_mac(ip))
}

/// The MAC of an IPv6 multicast address (33:33 and its last 32 bits).
pub fn multicast_mac(ip: Ipv6Addr) -> Mac {
    let o = ip.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

/// The EUI-64 link-local address of `mac` (RFC 4291 2.5.1).
pub fn link_local(mac: Mac) -> Ipv6Addr {
    let mut o = [0u8; 16];
    o[0] = 0xfe;
    o[1] = 0x80;
    o[8..11].copy_from_slice(&[mac[0] ^ 2, mac[1], mac[2]]);
    o[11] = 0xff;
    o[12] = 0xfe;
    o[13..16].copy_from_slice(&mac[3..6]);
    Ipv6Addr::from(o)
}

/// A neighbour solicitation (to the target's solicited-node group) or
/// advertisement (to `dst` at `eth_dst`), framed; returns its length.
pub fn ndp(out: &mut [u8], repr: NdiscRepr<'_>, src: (Mac, Ipv6Addr), dst: (Mac, Ipv6Addr)) -> Option<usize> {
    let icmp = Icmpv6Repr::Ndisc(repr);
    let ip = Ipv6Repr {
        src_addr: src.1,
        dst_addr: dst.1,
        next_header: IpProtocol::Icmpv6,
        payload_len: icmp.buffer_len(),
        hop_limit: 255,
    };
    let len = ETH_HEADER_LEN + ip.buffer_len() + icmp.buffer_len();
    let out = out.get_mut(..len)?;
    write_eth(out, src.0, dst.0, EthernetProtocol::Ipv6)?;
    let mut pkt = Ipv6Packet::new_unchecked(&mut out[ETH_HEADER_LEN..]);
    ip.emit(&mut pkt);
    let mut body = Icmpv6Packet::new_unchecked(pkt.payload_mut());
    icmp.emit(&src.1, &dst.1, &mut body, &ChecksumCapabilities::default());
    Some(len)
}

/// A solicitation for `target` from `src`.
pub fn solicit(out: &mut [u8], src: (Mac, Ipv6Addr), target: Ipv6Addr) -> Option<usize> {
    let (group, group_mac) = solicited_node(target);
    let repr = NdiscRepr::NeighborSolicit { target_addr: target, lladdr: Some(RawHardwareAddress::from_bytes(&src.0)) };
    ndp(out, repr, src, (group_mac, group))
}

/// An advertisement of `target` at `own_mac`, solicited by `to` (all-nodes when
/// the solicitation came from the unspecified address, RFC 4861 7.2.4).
pub fn advert(out: &mut [u8], own_mac: Mac, target: Ipv6Addr, to: (Mac, Ipv6Addr)) -> Option<usize> {
    let (flags, dst) = if to.1.is_unspecified() {
        let all = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
        (NdiscNeighborFlags::ROUTER | NdiscNeighborFlags::OVERRIDE, (multicast_mac(all), all))
    } else {
        (NdiscNeighborFlags::ROUTER | NdiscNeighborFlags::SOLICITED | NdiscNeighborFlags::OVERRIDE, to)
    };
    let repr = NdiscRepr::NeighborAdvert {
        flags,
        target_addr: target,
        lladdr: Some(RawHardwareAddress::from_bytes(&own_mac)),
    };
    ndp(out, repr, (own_mac, target), dst)
}
