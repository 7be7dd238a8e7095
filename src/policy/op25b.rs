//! The OP25B fast path: concrete code over compiled tables, no dynamic dispatch.
//!
//! A TCP segment leaving the subscriber side is blocked when its destination
//! port is in `ports`, its source is in a dynamic pool and not exempt, and its
//! destination is not one of the ISP's relays. Everything else passes. The
//! checks run cheapest and most selective first: most traffic is not to port 25.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::{PortSet, PrefixSet};
use crate::packet::{PacketView, Transport};

/// What happens to a blocked connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Answer the SYN with a TCP RST (connection refused at once); drop the rest.
    Reject,
    /// Drop silently (the client waits for its connect timeout).
    Drop,
    /// Answer the SYN with ICMP / ICMPv6 administratively prohibited.
    Icmp,
    /// Complete the handshake as the dialled server, send an SMTP 554 line, close.
    Banner,
    /// Send the connection to the ISP relay (destination NAT).
    Redirect,
    /// Block nothing: forward the connection, and count, track and report
    /// it as one the policy would block (measure before enforcing).
    Monitor,
}

impl Action {
    /// Position in `stats::BLOCK_ACTIONS` (the per-action block counters).
    /// `monitor` blocks nothing and has no block counter: its would-be
    /// blocks are counted apart (`Op25bStats::monitored`); its index is one
    /// past the blocking actions'.
    #[inline]
    pub fn index(self) -> usize {
        match self {
            Action::Reject => 0,
            Action::Drop => 1,
            Action::Icmp => 2,
            Action::Banner => 3,
            Action::Redirect => 4,
            Action::Monitor => 5,
        }
    }

    /// The action's name in the config, events and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Action::Reject => "reject",
            Action::Drop => "drop",
            Action::Icmp => "icmp",
            Action::Banner => "banner",
            Action::Redirect => "redirect",
            Action::Monitor => "monitor",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The fast path's answer, with the reason when a packet passes (for traces).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
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
    /// Also block new inbound connections to the ports of dynamic addresses (IP25B).
    pub block_inbound: bool,
    /// Where `redirect` sends IPv4 connections.
    pub redirect_v4: Option<SocketAddr>,
    /// Where `redirect` sends IPv6 connections.
    pub redirect_v6: Option<SocketAddr>,
    /// The `banner` action's settings.
    pub banner: Banner,
    /// What happens to tunnels of dynamic addresses.
    pub tunnels: TunnelMode,
    /// With `tunnels = "block"`: the far ends tunnels may still reach (and
    /// come from); their packets are inspected.
    pub tunnel_endpoints: PrefixSet,
}

/// `[op25b] tunnels`: what happens to tunnels (IP in IP, GRE, Teredo, VXLAN,
/// Geneve) of a dynamic, non-exempt address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TunnelMode {
    /// Decapsulate and judge the packets inside like the subscriber's own.
    #[default]
    Inspect,
    /// Drop every tunnel but those to (or from) `tunnel_endpoints`, which are inspected.
    Block,
    /// Forward tunnels uninspected (a lab that studies them).
    Forward,
}

impl TunnelMode {
    /// The config's spelling.
    pub fn name(self) -> &'static str {
        match self {
            TunnelMode::Inspect => "inspect",
            TunnelMode::Block => "block",
            TunnelMode::Forward => "forward",
        }
    }
}

/// Settings of the `banner` action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Banner {
    /// The SMTP reply line (without CRLF).
    pub text: String,
    /// Most concurrent banner sessions; over it a SYN gets an RST.
    pub sessions: usize,
    /// Most concurrent sessions of one subscriber (an IPv4 address or an IPv6
    /// /64); over it a SYN gets an RST.
    pub per_source: usize,
    /// A session that sees nothing for this long is closed.
    pub idle: Duration,
}

/// Default bound of concurrent banner sessions per subscriber.
pub const DEFAULT_BANNER_PER_SOURCE: usize = 4;

/// The default banner line.
pub const DEFAULT_BANNER: &str =
    "554 5.7.1 Port 25 is blocked for dynamic addresses (OP25B); send mail through submission port 587 with SMTP AUTH";

impl Default for Banner {
    fn default() -> Self {
        Banner {
            text: DEFAULT_BANNER.to_string(),
            sessions: 64,
            per_source: DEFAULT_BANNER_PER_SOURCE,
            idle: Duration::from_secs(10),
        }
    }
}

impl Op25b {
    /// Where `redirect` sends a connection to `dst`, by IP family.
    pub(crate) fn redirect_target(&self, dst: IpAddr) -> Option<SocketAddr> {
        match dst {
            IpAddr::V4(_) => self.redirect_v4,
            IpAddr::V6(_) => self.redirect_v6,
        }
    }

    /// IP25B: true for a SYN from outside to a blocked port of a dynamic,
    /// non-exempt address, when `block_inbound` is on.
    #[inline]
    pub(crate) fn blocks_inbound(&self, view: &PacketView) -> bool {
        self.block_inbound
            && view.is_tcp_syn()
            && view.tcp_dst_port().is_some_and(|p| self.ports.contains(p))
            && self.dynamic.contains(view.dst)
            && !self.exempt_sources.contains(view.dst)
    }

    /// Whether OP25B applies to the subscriber address `addr`: in a dynamic
    /// pool and not exempt. Tunnels are inspected only for these.
    #[inline]
    pub(crate) fn applies_to(&self, addr: IpAddr) -> bool {
        self.dynamic.contains(addr) && !self.exempt_sources.contains(addr)
    }

    /// Judges a packet found inside an outbound tunnel whose outer source
    /// ([`Op25b::applies_to`]) is subject to OP25B: its port and destination
    /// decide, as if the subscriber had sent it.
    #[inline]
    pub(crate) fn judge_inner(&self, inner: &PacketView) -> Decision {
        let Transport::Tcp { dst_port, .. } = inner.transport else {
            return Decision::PassNotTcp;
        };
        if !self.ports.contains(dst_port) {
            Decision::PassPort
        } else if self.relays.contains(inner.dst) {
            Decision::PassRelay
        } else {
            Decision::Block
        }
    }

    /// IP25B for a packet found inside an inbound tunnel to a subscriber
    /// subject to OP25B: a SYN to a blocked port.
    #[inline]
    pub(crate) fn blocks_inbound_inner(&self, inner: &PacketView) -> bool {
        self.block_inbound && inner.is_tcp_syn() && inner.tcp_dst_port().is_some_and(|p| self.ports.contains(p))
    }

    /// Judges an outbound packet.
    #[inline]
    pub(crate) fn judge(&self, view: &PacketView) -> Decision {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_indexes_name_the_block_counters() {
        for a in [Action::Reject, Action::Drop, Action::Icmp, Action::Banner, Action::Redirect] {
            assert_eq!(crate::stats::BLOCK_ACTIONS[a.index()], a.to_string());
        }
    }
}
