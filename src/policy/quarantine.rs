//! What a subscriber in quarantine may still reach (`abuse.quarantine_allow`):
//! a walled garden, as ISPs keep for infected lines. Everything else from it
//! is refused: TCP with an RST, the rest dropped.

use std::fmt;

use super::{PortSet, PrefixSet};
use crate::packet::{PacketView, Transport};

/// The walled garden.
#[derive(Clone, PartialEq, Eq)]
pub struct QuarantineAllow {
    /// TCP destination ports.
    pub tcp: PortSet,
    /// UDP destination ports.
    pub udp: PortSet,
    /// ICMP and ICMPv6 (echo, errors).
    pub icmp: bool,
    /// The ISP's relays (`op25b.relays`), on any port: `@relays`.
    pub relays: bool,
    /// Destinations reachable on any port (a portal, the ISP's help pages).
    pub destinations: PrefixSet,
    /// The entries as written, for `check` and logs.
    pub written: Vec<String>,
}

/// The default walled garden: DNS, submission (587, 465) and the relays.
pub const DEFAULT_QUARANTINE_ALLOW: [&str; 5] = ["udp/53", "tcp/53", "tcp/587", "tcp/465", "@relays"];

impl Default for QuarantineAllow {
    fn default() -> Self {
        QuarantineAllow {
            tcp: PortSet::new([53, 587, 465]),
            udp: PortSet::new([53]),
            icmp: false,
            relays: true,
            destinations: PrefixSet::default(),
            written: DEFAULT_QUARANTINE_ALLOW.iter().map(|s| s.to_string()).collect(),
        }
    }
}

impl fmt::Debug for QuarantineAllow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.written).finish()
    }
}

impl QuarantineAllow {
    /// Whether a quarantined subscriber may send `view` (`relays` are the
    /// policy's `op25b.relays`).
    #[inline]
    pub fn allows(&self, view: &PacketView, relays: &PrefixSet) -> bool {
        let by_port = match view.transport {
            Transport::Tcp { dst_port, .. } => self.tcp.contains(dst_port),
            Transport::Udp { dst_port, .. } => self.udp.contains(dst_port),
            Transport::Icmp { .. } => self.icmp,
            _ => false,
        };
        by_port || (self.relays && relays.contains(view.dst)) || self.destinations.contains(view.dst)
    }
}
