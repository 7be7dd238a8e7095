//! Tunnels, decapsulated for judging: where in an IP packet the packet it
//! carries begins.
//!
//! [`decapsulate`] looks at a parsed packet ([`PacketView`]) and its bytes and
//! answers whether it is a tunnel, of which [`TunnelKind`], and the offset of
//! the inner IP packet in the same bytes (the caller parses it with
//! [`PacketView::parse_inner`] and may decapsulate that again). Nothing is
//! copied or allocated: an inner packet is a view of the same buffer. The
//! forwarded packet is always the outer one; decapsulation only decides.
//!
//! Kinds: IPv4 or IPv6 in IPv4 or IPv6 (protocols 4 and 41), GRE version 0
//! (RFC 2784 / 2890: checksum, key and sequence; payload IPv4, IPv6 or
//! transparent Ethernet bridging), Teredo (RFC 4380: IPv6 in UDP port 3544,
//! after the authentication and origin indicators), VXLAN (RFC 7348, UDP
//! 4789) and Geneve (RFC 8926, UDP 6081, options skipped) carrying Ethernet,
//! with at most one VLAN tag, or (Geneve) IP directly.
//!
//! Not inspected (a tunnel with no IP packet to judge, forwarded as is): GRE
//! version 1 (PPTP, PPP inside), GRE, VXLAN or Geneve payloads that are
//! neither IP nor Ethernet, Ethernet frames that are not IP (ARP, MPLS, ...).
//! Refused as malformed ([`TunnelError::BadHeader`]): what a Linux endpoint
//! refuses too, GRE with a routing header or an unknown version, VXLAN
//! without its VNI flag, Geneve of another version, Teredo whose payload is
//! not IPv6, Ethernet with more than one VLAN tag. Checksums (GRE, UDP) are
//! never read: a wrong one must not change the decision.

use etherparse::{EtherType, Ethernet2HeaderSlice, SingleVlanHeaderSlice};

use super::view::{Fragment, IpVersion, PacketView, Transport};

/// The most encapsulations judged in one packet; a packet with more is dropped.
pub const MAX_TUNNEL_DEPTH: usize = 3;

/// The UDP ports of the tunnels carried in UDP.
pub mod ports {
    /// Teredo (RFC 4380), either end.
    pub const TEREDO: u16 = 3544;
    /// VXLAN (RFC 7348), destination.
    pub const VXLAN: u16 = 4789;
    /// Geneve (RFC 8926), destination.
    pub const GENEVE: u16 = 6081;
}

/// IP protocol numbers of IP-in-IP and GRE.
const IPV4_IN_IP: u8 = 4;
const IPV6_IN_IP: u8 = 41;
const GRE: u8 = 47;

/// GRE / Geneve protocol type of transparent Ethernet bridging.
const TEB: u16 = 0x6558;

/// What kind of tunnel a packet is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TunnelKind {
    /// IPv4 in IPv4 (protocol 4).
    Ipip,
    /// IPv6 in IPv4 (protocol 41: 6in4, 6to4, ISATAP).
    SixIn4,
    /// IPv4 in IPv6 (protocol 4).
    FourIn6,
    /// IPv6 in IPv6 (protocol 41).
    SixIn6,
    /// GRE version 0 (protocol 47).
    Gre,
    /// Teredo: IPv6 in UDP, port 3544.
    Teredo,
    /// VXLAN: Ethernet in UDP, port 4789.
    Vxlan,
    /// Geneve: Ethernet or IP in UDP, port 6081.
    Geneve,
}

impl TunnelKind {
    /// Every kind, in counter order.
    pub const ALL: [TunnelKind; 8] = [
        TunnelKind::Ipip,
        TunnelKind::SixIn4,
        TunnelKind::FourIn6,
        TunnelKind::SixIn6,
        TunnelKind::Gre,
        TunnelKind::Teredo,
        TunnelKind::Vxlan,
        TunnelKind::Geneve,
    ];

    /// Number of kinds.
    pub const COUNT: usize = TunnelKind::ALL.len();

    /// Position in per-kind counters.
    #[inline]
    pub fn index(self) -> usize {
        self as usize
    }

    /// The name in the config, counters, metrics and events.
    pub fn name(self) -> &'static str {
        match self {
            TunnelKind::Ipip => "ipip",
            TunnelKind::SixIn4 => "6in4",
            TunnelKind::FourIn6 => "4in6",
            TunnelKind::SixIn6 => "6in6",
            TunnelKind::Gre => "gre",
            TunnelKind::Teredo => "teredo",
            TunnelKind::Vxlan => "vxlan",
            TunnelKind::Geneve => "geneve",
        }
    }

    /// The kind of a name ([`TunnelKind::name`]).
    pub fn from_name(name: &str) -> Option<TunnelKind> {
        TunnelKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl std::fmt::Display for TunnelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a tunnel could not be decapsulated. Each becomes a drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TunnelError {
    /// The tunnel or Ethernet header runs past the end of the packet.
    #[error("tunnel header cut short")]
    Truncated,
    /// A header the far end refuses: GRE routing or version, VXLAN without
    /// its VNI flag, Geneve version, Teredo not carrying IPv6, stacked VLAN tags.
    #[error("malformed tunnel header")]
    BadHeader,
    /// The inner packet is not of the IP version its header announces.
    #[error("inner packet of the wrong IP version")]
    BadInner,
}

/// One decapsulation: the kind, and where the inner IP packet begins in the
/// bytes of the outer one (`Ok(None)`: a tunnel carrying no IP packet).
pub type Decapsulated = (TunnelKind, Result<Option<usize>, TunnelError>);

/// Whether `view` may be a tunnel: one look at the protocol (and the UDP
/// ports), cheap enough for every packet.
#[inline]
pub fn may_be_tunnel(view: &PacketView) -> bool {
    match view.transport {
        Transport::Udp { src_port, dst_port } => tunnel_port(src_port, dst_port),
        Transport::Tcp { .. } => false,
        _ => matches!(view.protocol, IPV4_IN_IP | IPV6_IN_IP | GRE),
    }
}

/// Whether UDP between these ports may be a tunnel. One range test keeps most
/// UDP out: the three destination ports lie between 3544 and 6081.
#[inline]
fn tunnel_port(src: u16, dst: u16) -> bool {
    (dst.wrapping_sub(ports::TEREDO) <= ports::GENEVE - ports::TEREDO
        && (dst == ports::TEREDO || dst == ports::VXLAN || dst == ports::GENEVE))
        || src == ports::TEREDO
}

/// Decapsulates one layer of `packet` (the bytes of the IP packet `view`
/// describes, at most `view.len`): `None` when it is no tunnel (a later
/// fragment never is: it holds no headers).
pub fn decapsulate(view: &PacketView, packet: &[u8]) -> Option<Decapsulated> {
    if matches!(view.fragment, Fragment::Later { .. }) || !may_be_tunnel(view) {
        return None;
    }
    let at = view.l4_offset;
    let l4 = packet.get(at..view.len.min(packet.len()))?;
    let v4 = view.version == IpVersion::V4;
    let (kind, inner) = match view.protocol {
        IPV4_IN_IP => (if v4 { TunnelKind::Ipip } else { TunnelKind::FourIn6 }, Ok(Some((0, 4)))),
        IPV6_IN_IP => (if v4 { TunnelKind::SixIn4 } else { TunnelKind::SixIn6 }, Ok(Some((0, 6)))),
        GRE => (TunnelKind::Gre, gre(l4)),
        _ => {
            let Transport::Udp { dst_port, .. } = view.transport else { return None };
            let payload = l4.get(8..).unwrap_or_default();
            let (kind, inner) = match dst_port {
                ports::VXLAN => (TunnelKind::Vxlan, vxlan(payload)),
                ports::GENEVE => (TunnelKind::Geneve, geneve(payload)),
                _ => (TunnelKind::Teredo, teredo(payload).map(|at| Some((at, 6)))),
            };
            (kind, inner.map(|i| i.map(|(o, v)| (o + 8, v))))
        }
    };
    let checked = inner.and_then(|found| match found {
        None => Ok(None),
        Some((off, version)) => match l4.get(off) {
            None => Err(TunnelError::Truncated),
            Some(b) if b >> 4 == version => Ok(Some(at + off)),
            Some(_) => Err(TunnelError::BadInner),
        },
    });
    Some((kind, checked))
}

/// An inner packet found: its offset in the payload and its IP version.
type Found = Option<(usize, u8)>;

/// GRE (RFC 2784 with RFC 2890's key and sequence number).
fn gre(h: &[u8]) -> Result<Found, TunnelError> {
    let fixed = h.get(..4).ok_or(TunnelError::Truncated)?;
    let flags = u16::from_be_bytes([fixed[0], fixed[1]]);
    let protocol = u16::from_be_bytes([fixed[2], fixed[3]]);
    match flags & 0x0007 {
        0 => {}
        // PPTP's enhanced GRE carries PPP: no IP packet this router reads.
        1 => return Ok(None),
        _ => return Err(TunnelError::BadHeader),
    }
    if flags & 0x4000 != 0 {
        // Routing present (RFC 1701): refused by RFC 2784 endpoints.
        return Err(TunnelError::BadHeader);
    }
    let len = 4 + [0x8000u16, 0x2000, 0x1000].iter().filter(|bit| flags & **bit != 0).count() * 4;
    if h.len() < len {
        return Err(TunnelError::Truncated);
    }
    payload(protocol, &h[len..]).map(|f| f.map(|(o, v)| (o + len, v)))
}

/// A GRE or Geneve payload by its protocol type.
fn payload(protocol: u16, p: &[u8]) -> Result<Found, TunnelError> {
    match EtherType(protocol) {
        EtherType::IPV4 => Ok(Some((0, 4))),
        EtherType::IPV6 => Ok(Some((0, 6))),
        _ if protocol == TEB => ethernet(p),
        _ => Ok(None),
    }
}

/// VXLAN: an 8-byte header with the VNI flag, then Ethernet.
fn vxlan(h: &[u8]) -> Result<Found, TunnelError> {
    let fixed = h.get(..8).ok_or(TunnelError::Truncated)?;
    if fixed[0] & 0x08 == 0 {
        return Err(TunnelError::BadHeader);
    }
    ethernet(&h[8..]).map(|f| f.map(|(o, v)| (o + 8, v)))
}

/// Geneve: version 0, options skipped, then Ethernet or IP.
fn geneve(h: &[u8]) -> Result<Found, TunnelError> {
    let fixed = h.get(..8).ok_or(TunnelError::Truncated)?;
    if fixed[0] >> 6 != 0 {
        return Err(TunnelError::BadHeader);
    }
    let len = 8 + usize::from(fixed[0] & 0x3f) * 4;
    if h.len() < len {
        return Err(TunnelError::Truncated);
    }
    payload(u16::from_be_bytes([fixed[2], fixed[3]]), &h[len..]).map(|f| f.map(|(o, v)| (o + len, v)))
}

/// Teredo: the authentication indicator (`00 01`, id and value lengths, id,
/// value, 8-byte nonce, confirmation byte) and the origin indicator (`00 00`,
/// port, address), each optional and in that order, then IPv6.
fn teredo(u: &[u8]) -> Result<usize, TunnelError> {
    let mut at = 0;
    if u.get(..2) == Some(&[0, 1]) {
        let (id, value) = (u.get(2).ok_or(TunnelError::Truncated)?, u.get(3).ok_or(TunnelError::Truncated)?);
        at = 4 + usize::from(*id) + usize::from(*value) + 9;
    }
    if u.get(at..at + 2) == Some(&[0, 0]) {
        at += 8;
    }
    match u.get(at) {
        None => Err(TunnelError::Truncated),
        Some(b) if b >> 4 == 6 => Ok(at),
        Some(_) => Err(TunnelError::BadHeader),
    }
}

/// An Ethernet II frame with at most one VLAN tag (802.1Q or 802.1ad).
fn ethernet(f: &[u8]) -> Result<Found, TunnelError> {
    let eth = Ethernet2HeaderSlice::from_slice(f).map_err(|_| TunnelError::Truncated)?;
    let mut at = eth.slice().len();
    let mut ether_type = eth.ether_type();
    let tagged = |t: EtherType| {
        matches!(t, EtherType::VLAN_TAGGED_FRAME | EtherType::PROVIDER_BRIDGING | EtherType::VLAN_DOUBLE_TAGGED_FRAME)
    };
    if tagged(ether_type) {
        let vlan = SingleVlanHeaderSlice::from_slice(&f[at..]).map_err(|_| TunnelError::Truncated)?;
        at += vlan.slice().len();
        ether_type = vlan.ether_type();
        if tagged(ether_type) {
            return Err(TunnelError::BadHeader);
        }
    }
    Ok(match ether_type {
        EtherType::IPV4 => Some((at, 4)),
        EtherType::IPV6 => Some((at, 6)),
        _ => None,
    })
}

#[cfg(test)]
#[path = "tunnel_tests.rs"]
mod tests;
