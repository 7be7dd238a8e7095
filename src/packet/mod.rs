//! Packets on the wire: the parsed view, in-place rewrites with incremental
//! checksums, and the builders for the replies the router sends. Also the
//! shared vocabulary every layer above uses ([`Direction`]).

internal!(checksum, encap);
pub(crate) mod nat;
pub(crate) mod reply;
pub(crate) mod tunnel;
pub(crate) mod view;

pub(crate) use reply::IcmpError;
pub use tunnel::TunnelKind;
pub(crate) use tunnel::MAX_TUNNEL_DEPTH;
pub use view::{proto, protocol_name, tcp_flags, Fragment, IpVersion, PacketView, ParseError, Transport};

/// Which way a packet travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// From the subscriber side to the upstream side.
    Outbound,
    /// From the upstream side to the subscriber side.
    Inbound,
}

impl Direction {
    /// Both directions, in counter order.
    pub const ALL: [Direction; 2] = [Direction::Outbound, Direction::Inbound];

    /// Index in per-direction arrays.
    #[inline]
    pub fn index(self) -> usize {
        self as usize
    }

    /// The other direction.
    pub fn reverse(self) -> Direction {
        match self {
            Direction::Outbound => Direction::Inbound,
            Direction::Inbound => Direction::Outbound,
        }
    }

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

/// Decrements the TTL / hop limit of the packet `view` was parsed from, updating
/// the IPv4 header checksum incrementally (RFC 1624). The caller has checked that
/// the TTL is above 1.
#[inline]
pub(crate) fn decrement_ttl(view: &PacketView, buf: &mut [u8]) {
    match view.version {
        IpVersion::V4 => {
            debug_assert!(view.ttl > 1, "the router answers TTL 1 itself");
            // The view checked the 20-byte header, so the slice is there.
            let Some(h) = buf.get_mut(8..12) else { return };
            h[0] = h[0].wrapping_sub(1);
            let sum = u16::from_be_bytes([h[2], h[3]]);
            h[2..4].copy_from_slice(&checksum::ttl_decremented(sum).to_be_bytes());
        }
        IpVersion::V6 => buf[7] = buf[7].wrapping_sub(1),
    }
}
