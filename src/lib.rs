//! op25b: a userspace router between two TUN devices that enforces Outbound
//! Port 25 Blocking (OP25B) on a fast path.
//!
//! The packet's path:
//!
//! ```text
//! subscriber TUN -> dataplane worker -> Router::handle(now, Outbound, buf, reply, rx) -> upstream TUN
//!                                         sanity  parse once (PacketView)       -> Drop(reason)
//!                                                 martians, anti-spoofing       -> Drop(martian / spoofed)
//!                                                 fragment overlap, source route -> Drop
//!                                         local   addressed to the router       -> Reply(echo)
//!                                                 TTL / hop limit expired       -> Reply(ICMP time exceeded)
//!                                         op25b   fast path, then its action    -> Reply(RST / ICMP) / Drop /
//!                                                                                  Terminate (banner) / NAT (redirect)
//!                                                 inbound: IP25B, un-redirect   -> Drop / rewrite
//!                                         rules   pipeline, first final verdict -> Drop / Reply / accept
//!                                         forward egress MTU                    -> Reply(ICMP too big)
//!                                                 TTL-1, RFC 1624               -> Forward
//! ```
//!
//! The core ([`packet`], [`stats`], [`policy`], [`state`], [`router`]) does
//! no I/O, reads no clock and allocates nothing per packet; [`dataplane`] is
//! the thin loop around it. Layers point one way, each module importing only
//! those below it: packet, stats, policy, state, router, then config, then
//! tools and reload, then dataplane, then testing (docs/ARCHITECTURE.md).

pub mod packet;
pub mod stats;

pub mod policy;
pub mod state;

pub mod router;

pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod lab;
pub mod reload;
pub mod testing;
pub mod tools;

pub use config::{Config, ConfigError};
pub use packet::Direction;
pub use router::{Router, RxInfo, Verdict};
pub use state::State;
pub use stats::{DropReason, ReplyKind, Stats};
