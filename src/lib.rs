//! op25b: a userspace router between two TUN devices that enforces Outbound
//! Port 25 Blocking (OP25B) on a fast path.
//!
//! The packet's path:
//!
//! ```text
//! subscriber TUN -> dataplane worker -> Router::handle(now, Outbound, buf, reply) -> upstream TUN
//!                                         | parse once (PacketView)     -> Drop(reason)
//!                                         | martians, anti-spoofing     -> Drop(spoofed)
//!                                         | addressed to the router     -> Reply(echo)
//!                                         | TTL / hop limit expired     -> Reply(ICMP time exceeded)
//!                                         | OP25B fast path             -> Reply(RST) / Drop
//!                                         | egress MTU                  -> Reply(ICMP too big)
//!                                         | forward: TTL-1, RFC 1624    -> Forward
//! ```
//!
//! The core ([`packet`], [`policy`], [`router`]) does no I/O, reads no clock and
//! allocates nothing per packet; [`dataplane`] is the thin loop around it.

pub mod config;
pub mod dataplane;
pub mod packet;
pub mod policy;
pub mod reload;
pub mod responder;
pub mod router;

pub use config::{Config, ConfigError};
pub use router::{Direction, DropReason, ReplyKind, Router, Verdict};
pub mod tools;
