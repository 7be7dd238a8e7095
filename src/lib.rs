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
//! no I/O, reads no clock and allocates nothing per packet; the data plane
//! (crate-private) is the thin loop around it. Layers point one way, each
//! module importing only those below it: packet, stats, policy, state,
//! router, then config, then tools and reload, then dataplane, then control,
//! then daemon and lab, then testing (docs/ARCHITECTURE.md).
//!
//! # The library's API
//!
//! - [`Daemon`]: the whole router (`op25b run`) from a [`Config`], with
//!   rules given in code ([`Daemon::rule`], at a [`Place`]);
//! - [`Rule`]: a rule written in Rust; it sees a [`PacketView`] and a
//!   [`RuleContext`] (its [`Direction`]) and returns a [`RuleVerdict`];
//!   [`Policy::attach`] puts it into a policy ([`AttachError`] if it does not fit);
//! - [`Config`] / [`ConfigError`]: the TOML file, validated into a [`Policy`];
//! - [`Router`], [`RxInfo`], [`Verdict`], [`State`]: the sans-I/O core, one
//!   packet at a time, for a data plane of one's own;
//! - [`Stats`], [`DropReason`], [`ReplyKind`]: the counters.
//!
//! With the `testing` feature, `testing` (`PolicyBuilder`, packet
//! constructors, `TestRouter`) and the internals the tests, benches and fuzz
//! targets reach into (hidden from these docs) are public too.

#![warn(missing_docs)]

/// Declares internal modules: crate-private, or public but hidden from the
/// documentation with the `testing` feature (the tests', benches', examples'
/// and fuzz targets' white-box view).
macro_rules! internal {
    ($($name:ident),+ $(,)?) => {$(
        #[cfg(feature = "testing")]
        #[doc(hidden)]
        pub mod $name;
        #[cfg(not(feature = "testing"))]
        pub(crate) mod $name;
    )+};
}

pub mod packet;
pub mod stats;

pub mod policy;
pub mod state;

pub mod router;

pub mod config;
pub mod daemon;

// Internals: the binary's commands (through `binary`) and, with the `testing`
// feature, the white-box view.
internal!(control, dataplane, lab, tools);
pub(crate) mod reload;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

/// What the `op25b` binary runs besides [`daemon::Daemon`]: its commands'
/// entry points. Not part of the API (hidden, no stability promise); the
/// binary is a crate of its own and reaches the library only through `pub`.
#[doc(hidden)]
pub mod binary {
    pub use crate::config::man::render as man_page;
    pub use crate::control::client;
    pub use crate::lab::cli as lab;
    /// `check --packet` and `replay`.
    pub mod tools {
        pub use crate::tools::{offline_state, quarantined_subscriber, replay, spec, verdict_detail};
    }
}

pub use config::{Config, ConfigError};
pub use daemon::Daemon;
pub use packet::{Direction, PacketView};
pub use policy::{AttachError, Place, Policy, Rule, RuleContext, RuleVerdict};
pub use router::{Router, RxInfo, Verdict};
pub use state::State;
pub use stats::{DropReason, ReplyKind, Stats};
