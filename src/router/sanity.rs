//! Stage 1, sanity: the packet parses, its addresses are routable, its source
//! is allowed on the side it came from (BCP 38), and nothing in it could make
//! the headers judged differ from the headers delivered (fragment overlap,
//! source routing).

use std::net::IpAddr;
use std::ops::ControlFlow;

use super::{DropReason, Packet, Router, Tracer, Verdict};
use crate::packet::{Direction, Fragment, ParseError};

/// Later fragments must start at least this many 8-byte units in. A real
/// fragmenter never cuts a first fragment this short (IPv6 needs 1280-byte
/// links, IPv4 links below 148 bytes do not exist), while a later fragment this
/// close to the start could overwrite the transport header of the first: up to
/// 60 bytes of TCP header behind up to 68 bytes of AH (RFC 1858, RFC 3128).
pub const MIN_LATER_FRAGMENT_OFFSET: u16 = 16;

/// A packet that does not parse: dropped, counted by why.
#[cold]
pub(super) fn malformed<T: Tracer>(e: ParseError, t: &mut T) -> Verdict {
    t.note("parse", || format!("malformed: {e}"));
    Verdict::Drop(e.into())
}

impl Router {
    #[inline]
    pub(super) fn sanity<T: Tracer>(&self, p: &Packet<'_>, t: &mut T) -> ControlFlow<Verdict> {
        let (view, dir) = (&p.view, p.dir);
        if is_martian(view.src, view.dst) {
            t.note("sanity", || "martian address (loopback, multicast, link-local, unspecified ...)".into());
            return ControlFlow::Break(Verdict::Drop(DropReason::Martian));
        }
        let from_subscriber_space = self.policy.subscriber_prefixes.contains(view.src);
        if from_subscriber_space != (dir == Direction::Outbound) {
            t.note("anti-spoofing", || match dir {
                Direction::Outbound => format!("drop: source {} is outside subscriber.prefixes", view.src),
                Direction::Inbound => format!("drop: source {} from upstream claims a subscriber prefix", view.src),
            });
            return ControlFlow::Break(Verdict::Drop(DropReason::Spoofed));
        }
        t.note("anti-spoofing", || match dir {
            Direction::Outbound => format!("pass: source {} is in subscriber.prefixes", view.src),
            Direction::Inbound => format!("pass: source {} is not a subscriber address", view.src),
        });
        if matches!(view.fragment, Fragment::Later { offset } if offset < MIN_LATER_FRAGMENT_OFFSET) {
            t.note("fragments", || {
                "drop: later fragment inside the first 128 bytes (could overwrite the transport header, RFC 1858)"
                    .into()
            });
            return ControlFlow::Break(Verdict::Drop(DropReason::FragmentOverlap));
        }
        if view.source_routed {
            t.note("source route", || {
                "drop: source routing (IPv4 LSRR/SSRR, IPv6 routing header with segments left)".into()
            });
            return ControlFlow::Break(Verdict::Drop(DropReason::SourceRouted));
        }
        if self.is_own(view.src) {
            t.note("anti-spoofing", || "drop: source is the router's own address".into());
            return ControlFlow::Break(Verdict::Drop(DropReason::Spoofed));
        }
        ControlFlow::Continue(())
    }
}

/// Addresses a router never forwards from or to (RFC 1812 5.3.7, RFC 4291 2.5.6).
#[inline]
fn is_martian(src: IpAddr, dst: IpAddr) -> bool {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => martian4(s) || martian4(d),
        (IpAddr::V6(s), IpAddr::V6(d)) => martian6(s) || martian6(d),
        _ => true,
    }
}

/// An IPv4 address never routed from or to: "this network" 0/8 (with the
/// unspecified address), loopback 127/8, link-local 169.254/16, multicast
/// 224/4 and the limited broadcast. The same set for sources and
/// destinations. One table load by the first octet decides most addresses.
#[inline]
fn martian4(a: std::net::Ipv4Addr) -> bool {
    /// By first octet: 0 routable, 1 martian, 2 depends on the rest.
    const FIRST: [u8; 256] = {
        let mut t = [0u8; 256];
        t[0] = 1;
        t[127] = 1;
        let mut i = 224;
        while i < 240 {
            t[i] = 1;
            i += 1;
        }
        t[169] = 2;
        t[255] = 2;
        t
    };
    let v = u32::from(a);
    match FIRST[(v >> 24) as usize] {
        0 => false,
        1 => true,
        _ => v >> 16 == 0xa9fe || v == u32::MAX,
    }
}

/// An IPv6 address never routed from or to: unspecified, loopback,
/// IPv4-mapped, link-local fe80::/10, and multicast (beyond link scope this
/// router routes none). The same set for sources and destinations; the top
/// 16 bits decide most addresses.
#[inline]
fn martian6(a: std::net::Ipv6Addr) -> bool {
    let v = u128::from(a);
    let top = (v >> 112) as u16;
    if top == 0 {
        return v <= 1 || v >> 32 == 0xffff;
    }
    top >= 0xff00 || top & 0xffc0 == 0xfe80
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::reply;
    use std::net::Ipv4Addr;

    /// The integer test against the standard library's predicates, over
    /// every first octet and the edges of each range.
    #[test]
    fn martian4_is_the_standard_library_s_sets() {
        let reference = |a: Ipv4Addr| {
            a.is_unspecified()
                || a.is_loopback()
                || a.is_link_local()
                || a.is_multicast()
                || a.is_broadcast()
                || a.octets()[0] == 0
        };
        for first in 0..=255u32 {
            for rest in [0u32, 1, 0xfe_0000, 0xfe_ffff, 0xff_fffe, 0xff_ffff, 0x12_3456] {
                let a = Ipv4Addr::from((first << 24) | rest);
                assert_eq!(martian4(a), reference(a), "{a}");
            }
        }
        for a in ["169.253.255.255", "169.254.0.0", "169.255.0.0", "255.255.255.255", "255.255.255.254"] {
            let a: Ipv4Addr = a.parse().unwrap();
            assert_eq!(martian4(a), reference(a), "{a}");
        }
        // Sources: the same set as the source check before (not a unicast host, or link-local).
        for first in 0..=255u32 {
            let a = Ipv4Addr::from((first << 24) | 0x01_0203);
            let old = !reply::is_unicast_host(a.into()) || a.is_link_local();
            assert_eq!(martian4(a), old, "{a}");
        }
    }

    #[test]
    fn martian6_is_the_standard_library_s_sets() {
        let reference = |a: std::net::Ipv6Addr, source: bool| {
            let unicast_host = reply::is_unicast_host(a.into());
            if source {
                !unicast_host || a.is_unicast_link_local()
            } else {
                a.is_unspecified()
                    || a.is_loopback()
                    || a.is_unicast_link_local()
                    || a.to_ipv4_mapped().is_some()
                    || a.is_multicast()
            }
        };
        let mut cases: Vec<std::net::Ipv6Addr> = [
            "::",
            "::1",
            "::2",
            "::ffff:0:0",
            "::ffff:1.2.3.4",
            "::fffe:1.2.3.4",
            "::1:ffff:1.2.3.4",
            "fe80::1",
            "febf:ffff::1",
            "fec0::1",
            "fe7f::1",
            "ff02::1",
            "ff0e::1",
            "fe00::",
            "2001:db8::1",
            "64:ff9b::1",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        for top in 0..=0xffffu32 {
            cases.push(std::net::Ipv6Addr::from((u128::from(top) << 112) | 0x1234));
        }
        for a in cases {
            assert_eq!(martian6(a), reference(a, true), "source {a}");
            assert_eq!(martian6(a), reference(a, false), "destination {a}");
        }
    }
}
