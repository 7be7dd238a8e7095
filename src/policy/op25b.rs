//! The OP25B fast path: concrete code over compiled tables, no dynamic dispatch.
//!
//! A TCP segment leaving the subscriber side is blocked when its destination
//! port is in `ports`, its source is in a dynamic pool and not exempt, and its
//! destination is not one of the ISP's relays. Everything else passes. The
//! checks run cheapest and most selective first: most traffic is not to port 25.

use std::fmt;

use super::{PortSet, PrefixSet};
use crate::packet::{PacketView, Transport};

/// What happens to a blocked connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Answer the SYN with a TCP RST (connection refused at once); drop the rest.
    Reject,
    /// Drop silently (the client waits for its connect timeout).
    Drop,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Reject => "reject",
            Action::Drop => "drop",
        })
    }
}

/// The fast path's answer, with the reason when a packet passes (for traces).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Not TCP, or no TCP header to judge (a later fragment).
    PassNotTcp,
    /// The destination port is not a blocked port.
    PassPort,
    /// The source is not in a dynamic pool.
    PassNotDynamic,
    /// The source is exempt.
    PassExempt,
    /// The destination is an ISP relay.
    PassRelay,
    /// Blocked.
    Block,
}

impl Decision {
    /// A short human-readable reason.
    pub fn describe(self) -> &'static str {
        match self {
            Decision::PassNotTcp => "pass: no TCP header",
            Decision::PassPort => "pass: destination port not blocked",
            Decision::PassNotDynamic => "pass: source not in a dynamic pool",
            Decision::PassExempt => "pass: source is exempt",
            Decision::PassRelay => "pass: destination is an ISP relay",
            Decision::Block => "block: dynamic source to a blocked port outside",
        }
    }
}

/// The compiled OP25B policy.
#[derive(Debug, Clone)]
pub struct Op25b {
    /// Dynamic-address pools.
    pub dynamic: PrefixSet,
    /// Exempt sources (static customers, opted-out subscribers).
    pub exempt_sources: PrefixSet,
    /// The ISP's own relays, reachable on the blocked ports.
    pub relays: PrefixSet,
    /// Blocked destination ports.
    pub ports: PortSet,
    /// What to do with a blocked connection.
    pub action: Action,
}

impl Op25b {
    /// Judges an outbound packet.
    #[inline]
    pub fn judge(&self, view: &PacketView) -> Decision {
        let Transport::Tcp { dst_port, .. } = view.transport else {
            return Decision::PassNotTcp;
        };
        if !self.ports.contains(dst_port) {
            Decision::PassPort
        } else if !self.dynamic.contains(view.src) {
            Decision::PassNotDynamic
        } else if self.exempt_sources.contains(view.src) {
            Decision::PassExempt
        } else if self.relays.contains(view.dst) {
            Decision::PassRelay
        } else {
            Decision::Block
        }
    }
}
