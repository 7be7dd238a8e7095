//! The end of stage 3 for outbound packets OP25B let through, quarantine
//! (after OP25B, whose blocks of a quarantined subscriber stay OP25B's,
//! counted and tracked): outbound packets of a subscriber in quarantine
//! (`[abuse]`) pass only to its walled garden (`abuse.quarantine_allow`);
//! TCP elsewhere is answered with an RST (a reply token, like any RST),
//! the rest dropped. While nobody is in quarantine the stage costs one
//! atomic load.

use std::ops::ControlFlow;

use super::{DropReason, Packet, Router, Tracer, Verdict};
use crate::packet::Transport;

impl Router {
    /// An outbound packet OP25B let through.
    #[inline]
    pub(super) fn quarantine<T: Tracer>(&self, p: &mut Packet<'_>, t: &mut T) -> ControlFlow<Verdict> {
        if !self.quarantine.holds(p.view.src, p.now) {
            return ControlFlow::Continue(());
        }
        self.quarantined(p, t)
    }

    #[cold]
    fn quarantined<T: Tracer>(&self, p: &mut Packet<'_>, t: &mut T) -> ControlFlow<Verdict> {
        if self.policy.quarantine_allow.allows(&p.view, &self.policy.op25b.relays) {
            t.note("quarantine", || {
                "pass: the subscriber is in quarantine; the destination is in its walled garden".into()
            });
            return ControlFlow::Continue(());
        }
        self.counters.quarantined.add(1);
        let tcp = matches!(p.view.transport, Transport::Tcp { .. });
        t.note("quarantine", || {
            let answer = if tcp { "TCP RST" } else { "drop" };
            format!("refused ({answer}): the subscriber is in quarantine; the destination is outside its walled garden")
        });
        let verdict = if tcp { self.rst(p, DropReason::Quarantined) } else { Verdict::Drop(DropReason::Quarantined) };
        ControlFlow::Break(verdict)
    }
}
