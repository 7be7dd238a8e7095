//! The command line's grammar: `op25b`'s commands, options and long help.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use op25b::binary::client::DEFAULT_SOCKET;
use op25b::binary::tools;
use op25b::Direction;

/// The config `run`, `check` and `replay` read unless told: where the package puts it.
pub(crate) const DEFAULT_CONFIG: &str = "/etc/op25b/op25b.toml";

/// `op25b --version`: the crate version and, when built from git, the commit.
pub(crate) static VERSION: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| match env!("OP25B_GIT_COMMIT") {
    "" => env!("CARGO_PKG_VERSION").to_string(),
    commit => format!("{} (git {commit})", env!("CARGO_PKG_VERSION")),
});

#[derive(Parser)]
#[command(
    name = "op25b",
    version = VERSION.as_str(),
    // Every command's -V prints the version, as each man page says it does.
    propagate_version = true,
    about = "Userspace two-TUN router enforcing Outbound Port 25 Blocking",
    disable_help_subcommand = true
)]
#[command(after_long_help = "\
Signals (op25b run): SIGHUP reloads the config, SIGUSR1 writes the counters to --stats, SIGINT and SIGTERM stop.

Exit status: 0 success; 2 a usage or config error, or a capability op25b run needs and lacks \
(a service manager should not restart it: the unit says RestartPreventExitStatus=2); 1 any other failure.

Files: /etc/op25b/op25b.toml, the packaged config (--config of run, check and replay by default); \
/run/op25b/op25b.sock, the unit's control socket (--socket of the commands that ask a running op25b by default).

Environment: OP25B_SOCKET, the control socket of stats, top, quarantine, release, reload and events (--socket wins; \
top, quarantine and release take --socket more than once: several instances).")]
pub(crate) struct Cli {
    /// How op25b's own log lines (standard error) are written.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub(crate) log_format: LogFormat,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// One line a person reads.
    Text,
    /// One JSON object a line.
    Json,
}

/// `check --direction`.
#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum DirectionArg {
    /// From the subscriber side to the upstream side.
    #[value(alias = "out")]
    Outbound,
    /// From the upstream side to the subscriber side.
    #[value(alias = "in")]
    Inbound,
}

impl From<DirectionArg> for Direction {
    fn from(d: DirectionArg) -> Direction {
        match d {
            DirectionArg::Outbound => Direction::Outbound,
            DirectionArg::Inbound => Direction::Inbound,
        }
    }
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Create the TUN devices and route between them until SIGINT or SIGTERM.
    ///
    /// SIGHUP reloads the config and reopens the events and capture files
    /// (log rotation: rename them, then reload); SIGUSR1 writes the counters
    /// to --stats.
    Run {
        /// The config file (TOML).
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Write every counter here as one JSON object, on SIGUSR1 and when
        /// op25b stops (written to a temporary file, then renamed).
        #[arg(long, value_name = "FILE")]
        stats: Option<PathBuf>,
    },
    /// Validate a config file and print the compiled policy; with --packet,
    /// show what the router would do with one packet, step by step.
    ///
    /// Exit status: 0 config valid (with --packet: forwarded), 1 with --packet:
    /// dropped / rejected / answered, 2 usage or config error.
    Check {
        /// The config file (TOML).
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// A packet, e.g. "tcp 100.64.1.10:40000 -> 203.0.113.25:25 syn"
        /// (IPv6 as [2001:db8:100::10]:40000; tcp, udp, icmp; flags syn, ack,
        /// rst, fin, psh; ttl=N; len=N). A tunnel wraps one in brackets:
        /// "gre 100.64.1.10 -> 198.51.100.1 [tcp 10.0.0.1:1234 -> 203.0.113.25:25 syn]"
        /// (ipip, 6in4, 4in6, 6in6, gre, teredo, vxlan, geneve).
        #[arg(short, long)]
        packet: Option<String>,
        /// Which way the packet travels (default: outbound when the source is
        /// in subscriber.prefixes, else inbound).
        #[arg(long, value_enum, requires = "packet")]
        direction: Option<DirectionArg>,
        /// Judge the packet as if these subscribers were in quarantine
        /// (IPv4 addresses, IPv6 addresses or /64s, comma-separated).
        #[arg(long, value_name = "ADDR,...", value_delimiter = ',', requires = "packet",
              value_parser = tools::quarantined_subscriber)]
        quarantined: Vec<u64>,
        /// Print one JSON object instead of text: the compiled policy, or with
        /// --packet the verdict and its trace.
        #[arg(long)]
        json: bool,
    },
    /// Ask a running op25b for its counters now, over its control socket.
    ///
    /// Exit status: 0 with an answer, 1 on a bad answer, 2 when no op25b
    /// answers at the socket.
    Stats {
        /// The control socket (`[control] socket` of the running op25b).
        #[arg(long, env = "OP25B_SOCKET", default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Print the answer as one JSON object.
        #[arg(long)]
        json: bool,
        /// Print every figure, zeros included.
        #[arg(long)]
        all: bool,
    },
    /// Show the subscribers OP25B blocks most, from a running op25b, or from
    /// several merged into one view (one --socket each).
    ///
    /// Needs [abuse] in its config. Exit status: 0 with an answer (from every
    /// socket), 2 when no op25b answers at a socket (the others are shown),
    /// 1 on a bad answer or a refusal (abuse handling off).
    Top {
        /// The control socket (`[control] socket` of the running op25b);
        /// repeated, one view merged from several instances: a subscriber's
        /// figures summed, its most severe state, the instances that hold it.
        #[arg(long, env = "OP25B_SOCKET", default_value = DEFAULT_SOCKET)]
        socket: Vec<PathBuf>,
        /// Print the answer as one JSON object: the rows ("top", heaviest
        /// first), who is in quarantine ("quarantined") and the thresholds;
        /// over several sockets also "instances" (each one's figures, or
        /// why it did not answer) and each row's "instances".
        #[arg(long)]
        json: bool,
        /// How many subscribers.
        #[arg(short, default_value_t = 20)]
        n: usize,
        /// Heaviest by blocked attempts or by distinct destinations, in the window.
        #[arg(long, value_enum, default_value_t = op25b::binary::client::TopBy::Attempts)]
        by: op25b::binary::client::TopBy,
        /// Refresh every second until interrupted.
        #[arg(long, conflicts_with = "json")]
        watch: bool,
    },
    /// Put a subscriber in quarantine now (only its walled garden stays reachable).
    ///
    /// With several --socket: on the instances that hold the subscriber (in
    /// their table or in quarantine; each is asked), or on every one with
    /// --all; one line per instance says what it did. Exit status: 0 done
    /// (everywhere it was asked); 1 refused (an address outside
    /// subscriber.prefixes, abuse handling off, the quarantine set full; or no
    /// instance holds the subscriber); 2 a usage error (not an address), or
    /// when no op25b answers (at a socket).
    Quarantine {
        /// An IPv4 address, or an IPv6 address or /64.
        subscriber: String,
        /// How long, e.g. 15m (default: abuse.quarantine_for).
        #[arg(long = "for", value_name = "DURATION", value_parser = humantime::parse_duration)]
        duration: Option<std::time::Duration>,
        /// The control socket (`[control] socket` of the running op25b);
        /// repeated, several instances.
        #[arg(long, env = "OP25B_SOCKET", default_value = DEFAULT_SOCKET)]
        socket: Vec<PathBuf>,
        /// On every instance, not only those that hold the subscriber (a
        /// quarantine that holds wherever the subscriber's traffic moves).
        #[arg(long)]
        all: bool,
    },
    /// End a subscriber's quarantine now.
    ///
    /// With several --socket: on the instances that hold its quarantine (each
    /// is asked), or on every one with --all; one line per instance says what
    /// it did. Exit status: 0 done (released somewhere), 1 not in quarantine
    /// (anywhere), 2 a usage error (not an address), or when no op25b answers
    /// (at a socket).
    Release {
        /// An IPv4 address, or an IPv6 address or /64.
        subscriber: String,
        /// The control socket (`[control] socket` of the running op25b);
        /// repeated, several instances.
        #[arg(long, env = "OP25B_SOCKET", default_value = DEFAULT_SOCKET)]
        socket: Vec<PathBuf>,
        /// On every instance, not only those that hold its quarantine.
        #[arg(long)]
        all: bool,
    },
    /// Ask the running op25b to reload its config file, and print the outcome.
    ///
    /// The same reload as SIGHUP: accepted (and what of the running state was
    /// kept) or refused (the running config stays in force, and why in one
    /// line). The unit's ExecReload, so that a refused config makes
    /// `systemctl reload op25b` fail. Exit status: 0 accepted, 1 refused or no
    /// answer.
    Reload {
        /// The control socket (`[control] socket` of the running op25b).
        #[arg(long, env = "OP25B_SOCKET", default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Follow the running op25b's events, as JSON lines, as they happen.
    ///
    /// Blocked connection attempts (sampled per subscriber as in the events
    /// file), abuse handling's and reloads' events, with or without an
    /// [events] file; a line {"event":"lagged","missed":N} says N were lost
    /// because this reader fell behind. Exit status: 1 when op25b stops, 2
    /// without --follow or when no op25b answers.
    Events {
        /// Follow until interrupted (op25b keeps no history of events: for
        /// the past, read the [events] file).
        #[arg(short, long)]
        follow: bool,
        /// The control socket (`[control] socket` of the running op25b).
        #[arg(long, env = "OP25B_SOCKET", default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Run a capture through the same pipeline, with no devices.
    ///
    /// Exit status: 0 when the whole capture was read, 2 on a config error or
    /// a corrupt or truncated capture (after reporting what was read).
    Replay {
        /// The config file (TOML).
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The capture: pcap or pcapng; raw IP, Ethernet or Linux cooked;
        /// `-` reads standard input.
        input: PathBuf,
        /// Write the forwarded packets here (pcap).
        #[arg(long)]
        forwarded: Option<PathBuf>,
        /// Write the packets that were not forwarded here (pcap).
        #[arg(long)]
        dropped: Option<PathBuf>,
        /// Judge as if these subscribers were in quarantine for the whole
        /// capture (IPv4 addresses, IPv6 addresses or /64s, comma-separated):
        /// a capture does not say who op25b had in quarantine.
        #[arg(long, value_name = "ADDR,...", value_delimiter = ',', value_parser = tools::quarantined_subscriber)]
        quarantined: Vec<u64>,
        /// Print one JSON object instead of text.
        #[arg(long, conflicts_with = "jsonl")]
        json: bool,
        /// Print one JSON object a line for each record, instead of the summary:
        /// record, time, direction, src, dst, protocol, src_port, dst_port,
        /// len, verdict, reason.
        #[arg(long)]
        jsonl: bool,
    },
    /// The namespace lab: op25b between a subscriber and an outside
    /// namespace, with SMTP servers outside (`op25b lab up --servers`).
    Lab {
        #[command(subcommand)]
        command: op25b::binary::lab::LabCommand,
    },
    /// Print this help, or the help of the given command.
    Help {
        /// The command, e.g. check.
        command: Option<String>,
    },
    /// Print a shell completion script to standard output.
    ///
    /// bash: `op25b completions bash > /etc/bash_completion.d/op25b`;
    /// zsh: into a directory of $fpath as `_op25b`; fish: into
    /// ~/.config/fish/completions/op25b.fish.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to standard output: op25b(1), with a
    /// subcommand's name that subcommand's page (op25b-run(1), ...), or with
    /// `op25b.toml` the config file's page, op25b.toml(5), made from the
    /// "Config reference" section of docs/CONFIG.md.
    Man {
        /// A subcommand whose page to print instead of op25b(1) (`lab up`:
        /// op25b-lab-up(1)), or op25b.toml.
        subcommand: Vec<String>,
        /// For op25b.toml: the Markdown file with the "## Config reference"
        /// section to read instead of the built-in docs/CONFIG.md.
        #[arg(long, value_name = "PATH")]
        reference: Option<PathBuf>,
    },
}
