//! Building tunnelled packets: an inner IP packet wrapped in one of the
//! [`TunnelKind`]s, for `op25b check --packet`, tests and fuzzing. Not for
//! the forwarding path (it allocates): the router never encapsulates.

use std::net::IpAddr;

use etherparse::{IpNumber, PacketBuilder, PacketBuilderStep};

use super::tunnel::{ports, TunnelKind};

/// The optional parts of the encapsulation headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// GRE: checksum, key and sequence number present (the checksum is
    /// written as zero: the router never reads it).
    pub gre_extras: bool,
    /// GRE: transparent Ethernet bridging instead of the IP payload type.
    pub gre_ethernet: bool,
    /// Teredo: an authentication indicator (4-byte id, 4-byte value) and an
    /// origin indicator before the IPv6 packet.
    pub teredo_indicators: bool,
    /// VXLAN, Geneve, GRE with Ethernet: one 802.1Q tag.
    pub vlan: bool,
    /// Geneve: option bytes (a multiple of 4, at most 252).
    pub geneve_options: u8,
}

/// Why a packet could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncapError {
    /// Outer addresses of two IP versions, or a kind that needs the other version.
    #[error("{0}")]
    Addresses(String),
    /// The packet does not fit an IP packet.
    #[error("cannot build: {0}")]
    Build(String),
}

fn outer(src: IpAddr, dst: IpAddr, ttl: u8) -> Result<PacketBuilderStep<etherparse::IpHeaders>, EncapError> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => Ok(PacketBuilder::ipv4(s.octets(), d.octets(), ttl)),
        (IpAddr::V6(s), IpAddr::V6(d)) => Ok(PacketBuilder::ipv6(s.octets(), d.octets(), ttl)),
        _ => Err(EncapError::Addresses("outer source and destination are of different IP versions".into())),
    }
}

/// An Ethernet frame around `inner` (an IP packet), with one VLAN tag if asked.
fn ethernet(inner: &[u8], vlan: bool) -> Vec<u8> {
    let ether_type: u16 = if inner.first().is_some_and(|b| b >> 4 == 6) { 0x86dd } else { 0x0800 };
    let mut f = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01];
    if vlan {
        f.extend_from_slice(&[0x81, 0x00, 0x00, 0x64]);
    }
    f.extend_from_slice(&ether_type.to_be_bytes());
    f.extend_from_slice(inner);
    f
}

/// The tunnel header and payload of `kind` around `inner`.
fn body(kind: TunnelKind, inner: &[u8], o: &Options) -> Vec<u8> {
    let inner_type: u16 = if inner.first().is_some_and(|b| b >> 4 == 6) { 0x86dd } else { 0x0800 };
    let mut b = Vec::with_capacity(inner.len() + 64);
    match kind {
        TunnelKind::Gre => {
            let flags: u16 = if o.gre_extras { 0xb000 } else { 0 };
            let protocol = if o.gre_ethernet { 0x6558 } else { inner_type };
            b.extend_from_slice(&flags.to_be_bytes());
            b.extend_from_slice(&protocol.to_be_bytes());
            if o.gre_extras {
                b.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0x30, 0x39, 0, 0, 0, 1]);
            }
            if o.gre_ethernet {
                b.extend(ethernet(inner, o.vlan));
            } else {
                b.extend_from_slice(inner);
            }
        }
        TunnelKind::Teredo => {
            if o.teredo_indicators {
                b.extend_from_slice(&[0, 1, 4, 4, 1, 2, 3, 4, 5, 6, 7, 8]);
                b.extend_from_slice(&[9; 8]);
                b.push(0);
                b.extend_from_slice(&[0, 0, 0xf2, 0x30, 0x3f, 0xff, 0x8f, 0xf5]);
            }
            b.extend_from_slice(inner);
        }
        TunnelKind::Vxlan => {
            b.extend_from_slice(&[0x08, 0, 0, 0, 0, 0x10, 0x01, 0]);
            b.extend(ethernet(inner, o.vlan));
        }
        TunnelKind::Geneve => {
            let words = o.geneve_options.min(252) / 4;
            b.extend_from_slice(&[words, 0, 0x65, 0x58, 0, 0x10, 0x01, 0]);
            for _ in 0..words {
                b.extend_from_slice(&[0x01, 0x02, 0x80, 0x00]);
            }
            b.extend(ethernet(inner, o.vlan));
        }
        _ => b.extend_from_slice(inner),
    }
    b
}

/// `inner` wrapped in `kind` from `src` to `dst`, the outer TTL / hop limit `ttl`. The kinds of IP in IP take
/// their name from the versions (`ipip`, `6in4`, `4in6`, `6in6`): the inner
/// packet must be of the version they name and the outer addresses of theirs.
pub fn encapsulate(
    kind: TunnelKind,
    src: IpAddr,
    dst: IpAddr,
    ttl: u8,
    inner: &[u8],
    o: &Options,
) -> Result<Vec<u8>, EncapError> {
    let inner6 = inner.first().is_some_and(|b| b >> 4 == 6);
    let (outer6, want6) = match kind {
        TunnelKind::Ipip => (Some(false), Some(false)),
        TunnelKind::SixIn4 => (Some(false), Some(true)),
        TunnelKind::FourIn6 => (Some(true), Some(false)),
        TunnelKind::SixIn6 => (Some(true), Some(true)),
        TunnelKind::Teredo => (Some(false), Some(true)),
        _ => (None, None),
    };
    if outer6.is_some_and(|v6| v6 != src.is_ipv6()) || want6.is_some_and(|v6| v6 != inner6) {
        return Err(EncapError::Addresses(format!("{kind} needs other IP versions (outer or inner)")));
    }
    let step = outer(src, dst, ttl)?;
    let body = body(kind, inner, o);
    let mut out = Vec::with_capacity(body.len() + 48);
    let built = match kind {
        TunnelKind::Ipip | TunnelKind::FourIn6 => step.write(&mut out, IpNumber(4), &body),
        TunnelKind::SixIn4 | TunnelKind::SixIn6 => step.write(&mut out, IpNumber(41), &body),
        TunnelKind::Gre => step.write(&mut out, IpNumber(47), &body),
        TunnelKind::Teredo => step.udp(ports::TEREDO, ports::TEREDO).write(&mut out, &body),
        TunnelKind::Vxlan => step.udp(49152, ports::VXLAN).write(&mut out, &body),
        TunnelKind::Geneve => step.udp(49152, ports::GENEVE).write(&mut out, &body),
    };
    built.map_err(|e| EncapError::Build(e.to_string()))?;
    Ok(out)
}
