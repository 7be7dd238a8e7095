//! Stage 5, forward: the egress MTU (per segment of a GSO super-packet),
//! then TTL - 1 with the IPv4 checksum updated incrementally (RFC 1624).

use super::{DropReason, Packet, ReplyKind, Router, Tracer, Verdict};
use crate::packet::{self, IcmpError, Transport};

impl Router {
    #[inline]
    pub(super) fn forward<T: Tracer>(&self, p: &mut Packet<'_>, t: &mut T) -> Verdict {
        let view = &p.view;
        let mtu = self.policy.egress_mtu(p.dir);
        // What goes on the wire: the packet, or one segment of a super-packet.
        let wire_len = match (p.rx.gso_size, view.transport) {
            (Some(g), Transport::Tcp { header_len, .. }) => view.l4_offset + usize::from(header_len) + usize::from(g),
            (Some(g), Transport::Udp { .. }) => view.l4_offset + 8 + usize::from(g),
            _ => view.len,
        };
        if wire_len > usize::from(mtu) {
            t.note("mtu", || format!("{} bytes exceed the egress MTU {mtu}", view.len));
            if !view.dont_fragment {
                return Verdict::Drop(DropReason::TooBig);
            }
            return self.icmp(p, IcmpError::TooBig { mtu }, ReplyKind::TooBig, DropReason::TooBig);
        }
        packet::decrement_ttl(view, p.buf);
        Verdict::Forward { len: view.len }
    }
}
