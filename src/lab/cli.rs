//! `op25b lab ...`: the arguments (clap) and their dispatch.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::def::{Names, DEFAULT_NAME};
use super::kernel::RouterKind;
use super::veth::Upstream;
use super::{run, LabError};

/// Which lab.
#[derive(Args, Debug, Clone)]
pub struct LabName {
    /// The lab's name: its namespaces are NAME-sub and NAME-inet, its state
    /// /run/NAME (a-z, 0-9 and -, up to 24 characters).
    #[arg(long, default_value = DEFAULT_NAME)]
    pub name: String,
}

impl LabName {
    /// The lab's names, or a usage error.
    pub fn names(&self) -> Result<Names, LabError> {
        Names::new(&self.name).ok_or_else(|| {
            LabError::Usage(format!(
                "--name {:?}: a lab's name is 1 to 24 characters of a-z, 0-9 and -, starting with a letter (not \"op25b\")",
                self.name
            ))
        })
    }
}

/// `op25b lab`.
// The flattened `lab` fields are LabName, documented there (a doc comment
// on a flattened field would be clap's help text).
// Its doc comments are the help text: `[subscriber]` is a config section, no link.
#[allow(missing_docs, rustdoc::broken_intra_doc_links)]
#[derive(Subcommand, Debug, Clone)]
pub enum LabCommand {
    /// Build the lab and start op25b in it (and the SMTP servers with
    /// --servers). A healthy lab is left alone; a partial one is removed and
    /// built again.
    Up {
        #[command(flatten)]
        lab: LabName,
        /// Also start the outside SMTP servers (the MX and the ISP's relay,
        /// ports 25, 587, 465), which log what they accept (`op25b lab mail`).
        #[arg(long)]
        servers: bool,
        /// Run this config instead of the lab's own (`op25b lab config`); its
        /// [subscriber] and [upstream] netns must be the lab's. A control socket
        /// in the state directory is added unless it has a [control] section.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The program to run as the router (a binary taking `op25b run`'s
        /// arguments); this op25b by default.
        #[arg(long, value_name = "PATH")]
        bin: Option<PathBuf>,
        /// What forwards: op25b, or the kernel in a namespace NAME-rtr
        /// (veth pairs, ip_forward, OP25B as an nftables rule): the reference
        /// op25b is measured against.
        #[arg(long, value_enum, default_value = "op25b", conflicts_with_all = ["config", "bin", "stats", "upstream"])]
        router: RouterKind,
        /// Passed to `op25b run --stats FILE`: op25b writes its counters
        /// there when it stops (`down`) and on SIGUSR1.
        #[arg(long, value_name = "FILE")]
        stats: Option<PathBuf>,
        /// Run N op25b instances side by side, the subscribers spread over
        /// them by source address (docs/SCALING.md); on a lab of N whose
        /// instances died, start those again.
        #[arg(long, value_name = "N", default_value_t = 1)]
        instances: usize,
        /// op25b's upstream: a TUN, or a veth end on which op25b is the
        /// router itself (ARP, NDP, a gateway in the outside namespace).
        #[arg(long, value_enum, default_value_t = Upstream::Tun)]
        upstream: Upstream,
    },
    /// Stop what the lab started and remove its namespaces and state (nothing
    /// to do when it is not up; also after a crash).
    Down {
        #[command(flatten)]
        lab: LabName,
        /// Keep a copy of op25b's log (with its final counters) in FILE.
        #[arg(long, value_name = "FILE")]
        save_log: Option<PathBuf>,
    },
    /// Show the lab: namespaces, devices, processes, mail, op25b's last log
    /// lines. Exit status 1 when it is not (wholly) up.
    Status {
        #[command(flatten)]
        lab: LabName,
        /// The lab's definition and state as JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Run a command in the subscriber namespace (or another of the lab's).
    Exec {
        #[command(flatten)]
        lab: LabName,
        /// Run it in the outside namespace instead.
        #[arg(long)]
        outside: bool,
        /// The command and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "CMD")]
        command: Vec<OsString>,
    },
    /// Show the messages the lab's SMTP servers accepted.
    Mail {
        #[command(flatten)]
        lab: LabName,
        /// One JSON object a message.
        #[arg(long)]
        json: bool,
    },
    /// Write the config again (from --config, or what `up` ran), send op25b
    /// SIGHUP and print what op25b made of it; exit status 1 if it refused it.
    Reload {
        #[command(flatten)]
        lab: LabName,
        /// The config to put in force.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Print the lab's config (config/lab.toml is the default lab's).
    Config {
        #[command(flatten)]
        lab: LabName,
        /// The config of the lab with this kind of upstream.
        #[arg(long, value_enum, default_value_t = Upstream::Tun)]
        upstream: Upstream,
    },
    /// Show what OP25B does in the lab, as a table: connections from the
    /// dynamic and static subscribers to the MX and the relay (IPv4 and
    /// IPv6), a traceroute's first hop, mail sent, the outside servers' log;
    /// each against what OP25B should do. Needs `up --servers`; exit status 1
    /// if any case differs.
    Demo {
        #[command(flatten)]
        lab: LabName,
    },
    /// Make the lab's five connections (a dynamic subscriber to MX:25 over
    /// IPv4 and IPv6, to MX:587 and to the relay on 25, a static one to MX:25)
    /// and print what each did, one JSON object a line.
    Traffic {
        #[command(flatten)]
        lab: LabName,
    },
    /// The SMTP servers' process (started by `up --servers`).
    #[command(hide = true)]
    Serve {
        #[command(flatten)]
        lab: LabName,
        /// Where the mail and connection logs go (default: the lab's state directory).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Listen on ADDR (IP:PORT) as server NAME instead of the lab's addresses; repeatable.
        #[arg(long, value_name = "NAME=ADDR", value_parser = super::smtp::parse_listen)]
        listen: Vec<(String, std::net::SocketAddr)>,
        /// Stop after this long (e.g. 120s).
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        lifetime: Option<std::time::Duration>,
    },
}

/// Runs `op25b lab ...`; the exit status.
pub fn main(cmd: LabCommand) -> Result<u8, LabError> {
    match cmd {
        LabCommand::Up { lab, servers, config, bin, stats, router, upstream, instances } => {
            let opts = run::UpOptions { servers, config, bin, stats, router, upstream };
            match instances {
                1 => run::up(&lab.names()?, &opts),
                n => super::instances::up(&lab.names()?, n, &opts),
            }
            .map(|()| 0)
        }
        LabCommand::Down { lab, save_log } => run::down(&lab.names()?, save_log.as_deref()).map(|()| 0),
        LabCommand::Status { lab, json } => run::status(&lab.names()?, json),
        LabCommand::Exec { lab, outside, command } => run::exec(&lab.names()?, outside, &command),
        LabCommand::Mail { lab, json } => run::mail(&lab.names()?, json).map(|()| 0),
        LabCommand::Reload { lab, config } => run::reload(&lab.names()?, config.as_deref()),
        LabCommand::Config { lab, upstream } => {
            out!("{}", upstream.config_toml(&lab.names()?));
            Ok(0)
        }
        LabCommand::Demo { lab } => super::demo::demo(&lab.names()?),
        LabCommand::Traffic { lab } => super::demo::traffic(&lab.names()?).map(|()| 0),
        LabCommand::Serve { lab, dir, listen, lifetime } => {
            run::serve(&lab.names()?, dir, listen, lifetime).map(|()| 0)
        }
    }
}
