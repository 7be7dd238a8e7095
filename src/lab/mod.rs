//! The namespace lab, written once: two network namespaces joined only by
//! `op25b run` (the subscribers' and the outside's), the lab's addresses and
//! routes, and optionally SMTP servers playing the outside MX and the ISP's
//! relay. `op25b lab up|down|status|exec|mail|reload` drives it; the tests'
//! harness, the benchmark, the soak and the demo use the same definition
//! ([`def`]) and set-up ([`setup`]).
//!
//! ```text
//!  netns NAME-sub (subscribers)          op25b run          netns NAME-inet (outside)
//!  lo: 100.64.1.10 dynamic, 100.64.9.10 static             lo: 203.0.113.25 MX, 198.51.100.25 relay
//!      2001:db8:100:1::10, 2001:db8:100:9::10                  2001:db8:203::25, 2001:db8:25::25
//!  default dev op25b-sub  <== TUN ==> op25b <== TUN ==>     op25b-up: 100.64.0.0/10, 2001:db8:100::/48
//! ```
//!
//! Invariants: everything the lab makes lives in its own namespaces (the root
//! namespace's network configuration is never touched); what it makes and
//! starts is recorded in its state file before it is made, so `down` removes
//! exactly that, idempotently, also after a crash; a recorded process is
//! signalled only while it is the same process (PID and start time).
//!
//! A tool beside the daemon, not part of the router: nothing below `daemon`
//! imports it (tests/architecture.rs).

/// `println!` for what the lab's commands print: a reader that has gone
/// (`op25b lab status | head`) ends the command quietly, as elsewhere in
/// the CLI, instead of a panic.
macro_rules! outln {
    ($($arg:tt)*) => { $crate::lab::stdout_line(format_args!($($arg)*)) };
}

/// `print!` likewise.
macro_rules! out {
    ($($arg:tt)*) => { $crate::lab::stdout_text(format_args!($($arg)*)) };
}

pub mod cli;
pub mod def;
mod demo;
mod fleet;
pub mod instances;
pub mod kernel;
pub mod net;
pub mod netns;
pub mod nexthop;
mod probe;
mod run;
pub mod setup;
pub mod smtp;
pub mod state;
pub mod veth;

#[cfg(feature = "testing")]
pub use def::Names;

use std::path::Path;

/// What can go wrong in the lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A file or directory of the lab could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A namespace could not be made, entered or removed.
    #[error("{0}")]
    Netns(String),
    /// A netlink request (link, address, route) failed.
    #[error("{0}")]
    Netlink(String),
    /// The state file is unreadable or of another lab.
    #[error("{0}")]
    State(String),
    /// The config given to the lab is refused (the message names file, line and key).
    #[error("{0}")]
    Config(String),
    /// The lab's SMTP servers could not start.
    #[error("{0}")]
    Smtp(String),
    /// A process of the lab failed to start or stopped.
    #[error("{0}")]
    Process(String),
    /// A wrong use of the command (no lab up, a bad name).
    #[error("{0}")]
    Usage(String),
}

impl LabError {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> LabError {
        LabError::Io { path: path.display().to_string(), source }
    }

    /// The exit status the CLI gives it: 2 for usage and config errors, else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            LabError::Config(_) | LabError::Usage(_) => 2,
            _ => 1,
        }
    }
}

/// Writes one line to standard output (see `outln!`).
pub(crate) fn stdout_line(args: std::fmt::Arguments<'_>) {
    stdout_text(format_args!("{args}\n"));
}

/// Writes to standard output; a closed pipe ends the process with status
/// 0, another failure with one line and status 1.
pub(crate) fn stdout_text(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("op25b: error: standard output: {e}");
        std::process::exit(1);
    }
}
