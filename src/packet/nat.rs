//! In-place address and port rewrites for the redirect action (destination
//! NAT), with incremental checksum updates (RFC 1624): the IPv4 header
//! checksum, and the TCP checksum, which covers the addresses through the
//! pseudo-header and the ports directly.
//!
//! A packet from an offload-enabled device may carry a partial TCP checksum
//! (the kernel completes it later): then only the pseudo-header part is
//! updated, in the partial form, and port changes need nothing.

use std::net::{IpAddr, SocketAddr};

use super::checksum::{adjust, adjust_bytes, adjust_partial};
use super::view::{IpVersion, PacketView, Transport};

/// Which end of the connection to rewrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Source address and port.
    Source,
    /// Destination address and port.
    Destination,
}

/// Rewrites the source or destination of the TCP packet `view` was parsed from
/// to `to`. Returns false (and changes nothing) for a packet that is not an
/// unfragmented TCP packet of the same IP version.
pub fn rewrite(buf: &mut [u8], view: &PacketView, end: End, to: SocketAddr, csum_partial: bool) -> bool {
    let Transport::Tcp { .. } = view.transport else {
        return false;
    };
    if view.fragment != super::Fragment::Whole || buf.len() < view.l4_offset + 20 {
        return false;
    }
    let (addr_at, addr_len) = match (view.version, to.ip(), end) {
        (IpVersion::V4, IpAddr::V4(_), End::Source) => (12, 4),
        (IpVersion::V4, IpAddr::V4(_), End::Destination) => (16, 4),
        (IpVersion::V6, IpAddr::V6(_), End::Source) => (8, 16),
        (IpVersion::V6, IpAddr::V6(_), End::Destination) => (24, 16),
        _ => return false,
    };
    let new_addr: [u8; 16] = match to.ip() {
        IpAddr::V4(a) => {
            let mut b = [0; 16];
            b[..4].copy_from_slice(&a.octets());
            b
        }
        IpAddr::V6(a) => a.octets(),
    };
    let new_addr = &new_addr[..addr_len];
    let mut old_addr = [0u8; 16];
    old_addr[..addr_len].copy_from_slice(&buf[addr_at..addr_at + addr_len]);
    let old_addr = &old_addr[..addr_len];
    let l4 = view.l4_offset;
    let port_at = l4 + if end == End::Source { 0 } else { 2 };
    let old_port = [buf[port_at], buf[port_at + 1]];
    let new_port = to.port().to_be_bytes();

    let tcp_sum = u16::from_be_bytes([buf[l4 + 16], buf[l4 + 17]]);
    let tcp_sum = if csum_partial {
        adjust_partial(tcp_sum, old_addr, new_addr)
    } else {
        let s = adjust_bytes(tcp_sum, old_addr, new_addr);
        adjust(s, u16::from_be_bytes(old_port), u16::from_be_bytes(new_port))
    };
    buf[l4 + 16..l4 + 18].copy_from_slice(&tcp_sum.to_be_bytes());
    if view.version == IpVersion::V4 {
        let ip_sum = adjust_bytes(u16::from_be_bytes([buf[10], buf[11]]), old_addr, new_addr);
        buf[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    }
    buf[addr_at..addr_at + addr_len].copy_from_slice(new_addr);
    buf[port_at..port_at + 2].copy_from_slice(&new_port);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::checksum::sum;
    use crate::testing::packets::{tcp, tcp_checksum_ok, udp};

    #[test]
    fn destination_and_source_rewrites_keep_checksums_valid() {
        let mut p = tcp("100.64.1.10", 40000, "203.0.113.25", 25).window(1000).syn().payload(b"EHLO").build();
        let v = PacketView::parse(&p).unwrap();
        assert!(rewrite(&mut p, &v, End::Destination, "198.51.100.25:2525".parse().unwrap(), false));
        let v = PacketView::parse(&p).expect("IPv4 header checksum still valid");
        assert_eq!(v.dst.to_string(), "198.51.100.25");
        assert_eq!(v.tcp_dst_port(), Some(2525));
        assert_eq!(sum(&p[..20]), 0xffff);
        assert!(tcp_checksum_ok(&p));

        let mut q = tcp("2001:db8:25::25", 25, "2001:db8:100:1::10", 40000)
            .seq(9)
            .window(1000)
            .ack(2)
            .payload(b"220 relay")
            .build();
        let v = PacketView::parse(&q).unwrap();
        assert!(rewrite(&mut q, &v, End::Source, "[2001:db8:203::25]:25".parse().unwrap(), false));
        let v = PacketView::parse(&q).unwrap();
        assert_eq!(v.src.to_string(), "2001:db8:203::25");
        assert!(tcp_checksum_ok(&q));
    }

    #[test]
    fn refuses_what_it_cannot_rewrite() {
        let mut p = udp("100.64.1.10", 1, "203.0.113.25", 25, &[]);
        let v = PacketView::parse(&p).unwrap();
        let before = p.clone();
        assert!(!rewrite(&mut p, &v, End::Destination, "198.51.100.25:25".parse().unwrap(), false));
        let mut t = tcp("100.64.1.10", 1, "203.0.113.25", 25).window(1).syn().build();
        let tv = PacketView::parse(&t).unwrap();
        assert!(!rewrite(&mut t, &tv, End::Destination, "[2001:db8::1]:25".parse().unwrap(), false));
        assert_eq!(p, before);
    }
}
