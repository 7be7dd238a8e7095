//! Why a device could not be set up: one error type that the device set-up
//! and the privilege check both return, apart from either (so neither
//! imports the other for it).

use std::io;

/// Why a device could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// The namespace does not exist or cannot be joined.
    #[error("network namespace {name:?} (/run/netns/{name}): {cause}")]
    Netns {
        /// Namespace name.
        name: String,
        /// The cause (in the message, not a `source()`: a chain prints it once).
        cause: io::Error,
    },
    /// A worker thread could not be started.
    #[error("cannot start a worker thread: {cause}")]
    Spawn {
        /// The cause (in the message, not a `source()`: a chain prints it once).
        cause: io::Error,
    },
    /// The process lacks a capability a device step needs.
    #[error(
        "op25b run needs {capability} {why}; it runs as uid {euid} without it: grant it \
         (AmbientCapabilities={capability} in the unit, setpriv --ambient-caps) or run as root"
    )]
    Capability {
        /// The capability's name, `CAP_...`.
        capability: &'static str,
        /// What it is needed for.
        why: String,
        /// The effective user.
        euid: u32,
    },
    /// `/dev/net/tun` cannot be opened by this user.
    #[error(
        "/dev/net/tun: {detail}: uid {euid} cannot open it; make it mode 0666 as distributions do \
         (chmod 0666 /dev/net/tun), or grant CAP_DAC_OVERRIDE"
    )]
    TunAccess {
        /// The error, mode and owner.
        detail: String,
        /// The effective user.
        euid: u32,
    },
    /// The upstream interface cannot be used as it is (one line: what and how to fix it).
    #[error("upstream.interface {name:?}{}: {reason}", netns.as_deref().map(|n| format!(" in namespace {n:?}")).unwrap_or_default())]
    Uplink {
        /// Interface name.
        name: String,
        /// Its namespace, when the config names one.
        netns: Option<String>,
        /// What is wrong.
        reason: String,
    },
    /// Creating or configuring the TUN device failed.
    #[error("TUN device {name:?}: {what}: {cause}")]
    Tun {
        /// Interface name.
        name: String,
        /// The step that failed.
        what: &'static str,
        /// The cause (in the message, not a `source()`: a chain prints it once).
        cause: io::Error,
    },
}
