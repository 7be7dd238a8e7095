//! Stage 1, sanity: the packet parses, its addresses are routable, its source
//! is allowed on the side it came from (BCP 38), and nothing in it could make
//! the headers judged differ from the headers delivered (fragment overlap,
//! source routing).

use std::net::IpAddr;
use std::ops::ControlFlow;

use super::{DropReason, Packet, Router, Tracer, Verdict};
use crate::packet::{reply, Direction, Fragment, ParseError};

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
        if self.own_address(view.src) == Some(view.src) {
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
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            !reply::is_unicast_host(src)
                || s.is_link_local()
                || d.is_unspecified()
                || d.is_loopback()
                || d.is_link_local()
                || d.is_multicast()
                || d.is_broadcast()
                || d.octets()[0] == 0
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            !reply::is_unicast_host(src)
                || s.is_unicast_link_local()
                || d.is_unspecified()
                || d.is_loopback()
                || d.is_unicast_link_local()
                || d.to_ipv4_mapped().is_some()
                // Multicast beyond link scope is never routed by this router.
                || d.is_multicast()
        }
        _ => true,
    }
}
