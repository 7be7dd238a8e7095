//! Stage 2, local: packets addressed to the router itself (an echo request
//! is answered, anything else dropped), and packets whose TTL / hop limit
//! ends here (ICMP time exceeded from the router).

use std::ops::ControlFlow;

use super::{DropReason, Packet, ReplyKind, Router, Tracer, Verdict};
use crate::packet::{reply, IcmpError};

impl Router {
    #[inline]
    pub(super) fn local<T: Tracer>(&self, p: &mut Packet<'_>, t: &mut T) -> ControlFlow<Verdict> {
        if self.is_own(p.view.dst) {
            t.note("local", || "addressed to the router".into());
            let view = &p.view;
            if !reply::echo_allowed(view) {
                return ControlFlow::Break(Verdict::Drop(DropReason::Local));
            }
            let buf = &*p.buf;
            let echo = |out: &mut [u8]| reply::echo_reply(view, buf, out);
            return ControlFlow::Break(self.answer(
                p.now,
                view,
                ReplyKind::EchoReply,
                echo,
                p.reply,
                DropReason::Local,
            ));
        }
        let ttl = p.view.ttl;
        if ttl <= 1 {
            t.note("ttl", || format!("expired (ttl {ttl})"));
            let v = self.icmp(p, IcmpError::TimeExceeded, ReplyKind::TimeExceeded, DropReason::TtlExpired);
            return ControlFlow::Break(v);
        }
        ControlFlow::Continue(())
    }
}
