//! The `op25b` command line: parse arguments, load the config, call the library.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::{CommandFactory, Parser, Subcommand};
use op25b::control::client::DEFAULT_SOCKET;
use op25b::tools::{self, replay, spec::PacketSpec};
use op25b::{Config, Direction, Router, Verdict};

/// The config `run`, `check` and `replay` read unless told: where the package puts it.
const DEFAULT_CONFIG: &str = "/etc/op25b/op25b.toml";

/// `op25b --version`: the crate version and, when built from git, the commit.
static VERSION: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| match env!("OP25B_GIT_COMMIT") {
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
struct Cli {
    /// How op25b's own log lines (standard error) are written.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    /// One line a person reads.
    Text,
    /// One JSON object a line.
    Json,
}

/// `check --direction`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum DirectionArg {
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
enum Command {
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
        #[arg(long, value_enum, default_value_t = op25b::control::client::TopBy::Attempts)]
        by: op25b::control::client::TopBy,
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
        command: op25b::lab::cli::LabCommand,
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

/// Writes to standard output; when the reader has gone (`op25b check | head`),
/// exits quietly with status 0 instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => { output(&format_args!($($arg)*)) };
}

/// `out!` with a newline.
macro_rules! outln {
    ($($arg:tt)*) => { output(&format_args!("{}\n", format_args!($($arg)*))) };
}

fn output(text: &std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(*text).and_then(|()| stdout.flush()) {
        quit_on_write_error(&e);
    }
}

/// The end of a command whose standard output cannot be written: quietly
/// when the reader has gone, else with one line.
fn quit_on_write_error(e: &std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("op25b: error: standard output: {e}");
    std::process::exit(1);
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => {
            logs.with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()).init()
        }
    }
    let config_path = match &cli.command {
        Command::Run { config, .. } | Command::Check { config, .. } | Command::Replay { config, .. } => config,
        Command::Stats { socket, json, all } => return op25b::control::client::stats(socket, *json, *all),
        Command::Reload { socket } => return op25b::control::client::reload(socket),
        Command::Events { follow: true, socket } => return op25b::control::client::events(socket),
        Command::Events { follow: false, .. } => {
            eprintln!("op25b: error: op25b events needs --follow (op25b keeps no history of events: read the [events] file for the past)");
            return ExitCode::from(2);
        }
        Command::Top { socket, json, n, by, watch } => {
            return op25b::control::client::top(socket, *n, *by, *json, *watch)
        }
        Command::Quarantine { subscriber, duration, socket, all } => {
            return op25b::control::client::quarantine(socket, subscriber, *duration, *all)
        }
        Command::Release { subscriber, socket, all } => {
            return op25b::control::client::release(socket, subscriber, *all)
        }
        Command::Help { command } => return help(command.as_deref()),
        Command::Lab { command } => return lab(command.clone()),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "op25b", &mut script);
            out!("{}", String::from_utf8_lossy(&script));
            return ExitCode::SUCCESS;
        }
        Command::Man { subcommand, reference } => return man(subcommand, reference.as_deref()),
    };
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            eprintln!("op25b: {}", e.render(color));
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Check { packet: None, json: false, .. } => {
            out!("{}", config.render());
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { packet: None, json: true, .. } => {
            outln!("{}", config.to_json());
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { packet: Some(spec), direction, json, quarantined, .. } => {
            check_packet(&config, &spec, direction, &quarantined, json)
        }
        Command::Replay { input, forwarded, dropped, json, jsonl, quarantined, .. } => {
            let format = match (json, jsonl) {
                (true, _) => ReplayOutput::Json,
                (_, true) => ReplayOutput::Lines,
                _ => ReplayOutput::Text,
            };
            run_replay(&config, &input, replay::ReplayOptions { forwarded, dropped }, &quarantined, format)
        }
        Command::Run { stats, .. } => {
            // One path with the library: what `op25b::daemon::Daemon` runs is `op25b run`.
            let daemon = op25b::daemon::Daemon::new(config);
            let daemon = match stats {
                Some(path) => daemon.stats_file(path),
                None => daemon,
            };
            daemon.run().map_err(anyhow::Error::from).map(|stopped| match stopped {
                op25b::daemon::Stopped::DeviceLost(_) => ExitCode::FAILURE,
                _ => ExitCode::SUCCESS,
            })
        }
        Command::Stats { .. }
        | Command::Reload { .. }
        | Command::Events { .. }
        | Command::Top { .. }
        | Command::Quarantine { .. }
        | Command::Release { .. }
        | Command::Help { .. }
        | Command::Lab { .. }
        | Command::Completions { .. }
        | Command::Man { .. } => unreachable!("answered before a config is loaded"),
    };
    result.unwrap_or_else(|e| {
        eprintln!("op25b: error: {e:#}");
        // A missing capability is the deployment's error, like a bad config:
        // restarting cannot fix it (the unit's RestartPreventExitStatus=2).
        let privileges = e.downcast_ref::<op25b::daemon::RunError>().is_some_and(|e| e.is_deployment_error());
        if privileges {
            ExitCode::from(2)
        } else {
            ExitCode::FAILURE
        }
    })
}

/// `op25b lab ...`: its errors as one line, exit 2 for usage and config, else 1.
fn lab(command: op25b::lab::cli::LabCommand) -> ExitCode {
    match op25b::lab::cli::main(command) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("op25b: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// `op25b help [COMMAND]`: the long help of op25b or of one command.
fn help(command: Option<&str>) -> ExitCode {
    use clap::CommandFactory;
    let mut cli = Cli::command();
    // Built, so that a command's usage line reads `op25b check ...`.
    cli.build();
    let text = match command {
        None => cli.render_long_help(),
        Some(name) => match cli.find_subcommand_mut(name) {
            Some(sub) => sub.render_long_help(),
            None => {
                eprintln!("op25b: error: no command {name:?} (try `op25b help`)");
                return ExitCode::from(2);
            }
        },
    };
    out!("{text}");
    ExitCode::SUCCESS
}

fn check_packet(
    config: &Config,
    spec: &str,
    direction: Option<DirectionArg>,
    quarantined: &[u64],
    json: bool,
) -> anyhow::Result<ExitCode> {
    let usage = |msg: String| {
        eprintln!("op25b: error: {msg}");
        Ok(ExitCode::from(2))
    };
    let parsed = match PacketSpec::parse(spec) {
        Ok(p) => p,
        Err(e) => return usage(e.to_string()),
    };
    let mut bytes = match parsed.build() {
        Ok(b) => b,
        Err(e) => return usage(e.to_string()),
    };
    let in_prefixes = config.policy.subscriber_prefixes.contains(parsed.src);
    let (dir, why) = match direction {
        Some(d) => (d.into(), "given with --direction"),
        None if in_prefixes => (Direction::Outbound, "source is in subscriber.prefixes"),
        None => (Direction::Inbound, "source is not in subscriber.prefixes"),
    };
    let policy = Arc::new(config.policy.clone());
    let state = match tools::offline_state(&policy, quarantined) {
        Ok(s) => s,
        Err(e) => return usage(e),
    };
    let mut router = Router::with_state(policy.clone(), Arc::new(state));
    let mut reply = vec![0u8; 2048];
    let (verdict, trace) = router.handle_traced(Instant::now(), dir, &mut bytes, &mut reply);
    let forwarded = matches!(verdict, Verdict::Forward { .. });
    if json {
        let steps: Vec<serde_json::Value> =
            trace.steps.iter().map(|s| serde_json::json!({"stage": s.stage, "detail": s.detail})).collect();
        let reason = verdict.reason();
        let out = serde_json::json!({
            "packet": spec,
            "direction": dir.name(),
            "direction_reason": why,
            "verdict": verdict.name(),
            "reason": reason,
            "forwarded": forwarded,
            "trace": steps,
        });
        outln!("{out}");
    } else {
        outln!("packet     {spec}");
        outln!("direction  {} ({why})", dir.name());
        for s in &trace.steps {
            outln!("  {:<14} {}", s.stage, s.detail);
        }
        outln!("verdict    {}", tools::verdict_detail(verdict));
    }
    Ok(if forwarded { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// What `replay` prints.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ReplayOutput {
    Text,
    Json,
    Lines,
}

fn run_replay(
    config: &Config,
    input: &std::path::Path,
    opts: replay::ReplayOptions,
    quarantined: &[u64],
    format: ReplayOutput,
) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;
    let policy = Arc::new(config.policy.clone());
    let state = match tools::offline_state(&policy, quarantined) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("op25b: error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let mut router = Router::with_state(policy.clone(), Arc::new(state));
    let mut lines = std::io::BufWriter::new(std::io::stdout().lock());
    let mut each = |line: &replay::PacketLine| {
        if format == ReplayOutput::Lines {
            let written = serde_json::to_writer(&mut lines, line)
                .map_err(std::io::Error::from)
                .and_then(|()| lines.write_all(b"\n"));
            if let Err(e) = written {
                quit_on_write_error(&e);
            }
        }
    };
    let result = replay::replay(&mut router, &config.policy.subscriber_prefixes, input, &opts, &mut each);
    if let Err(e) = lines.flush() {
        quit_on_write_error(&e);
    }
    drop(lines);
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("op25b: error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    match format {
        ReplayOutput::Lines => {}
        ReplayOutput::Json => outln!("{}", serde_json::to_string(&report)?),
        ReplayOutput::Text => {
            let name = if input == std::path::Path::new("-") { "<stdin>".into() } else { input.display().to_string() };
            outln!("{name}: {} packets read, {} without an IP packet", report.packets, report.skipped);
            for (v, n) in &report.verdicts {
                outln!("  {v:<10} {n}");
            }
            for (r, n) in &report.drops {
                outln!("    drop {r:<18} {n}");
            }
            for (k, n) in &report.replies {
                outln!("    reply {k:<17} {n}");
            }
            outln!("  op25b blocked {}", report.op25b_blocked);
            if config.policy.op25b.action == op25b::policy::Action::Monitor {
                outln!("  op25b monitored (would be blocked, forwarded) {}", report.op25b_monitored);
            }
            for (k, c) in &report.tunnels {
                outln!("  tunnel {k:<8} {} packets, {} blocked", c.packets, c.blocked);
            }
            if !report.rules.is_empty() {
                outln!("  rules (packets / bytes matched):");
                for r in &report.rules {
                    if r.errors == 0 {
                        outln!("    {:<24} {:>8} {:>10}", r.name, r.packets, r.bytes);
                    } else {
                        outln!("    {:<24} {:>8} {:>10}  program errors {}", r.name, r.packets, r.bytes, r.errors);
                    }
                }
            }
        }
    }
    if let Some(e) = &report.error {
        eprintln!(
            "op25b: error: {}: capture broken at {e}; the figures above cover the records before it",
            input.display()
        );
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}

/// `op25b man [SUBCOMMAND]`: the roff page of op25b or of one subcommand
/// (named `op25b-NAME`, as git names its pages), to standard output.
fn man(subcommand: &[String], reference: Option<&Path>) -> ExitCode {
    if let [name] = subcommand {
        if name == "op25b.toml" {
            return config_man(reference);
        }
    }
    let mut page = Cli::command();
    let version = page.get_version().unwrap_or_default().to_string();
    let mut path = String::from("op25b");
    // Each word a visible subcommand of the one before: `lab up` is op25b-lab-up(1).
    for name in subcommand {
        let visible: Vec<&clap::Command> = page.get_subcommands().filter(|c| !c.is_hide_set()).collect();
        let Some(sub) = visible.iter().find(|c| c.get_name() == name).map(|c| (*c).clone()) else {
            let names: Vec<&str> = visible.iter().map(|c| c.get_name()).collect();
            eprintln!("op25b: error: man {name:?}: no such subcommand of {path} (one of {})", names.join(", "));
            return ExitCode::from(2);
        };
        path = format!("{path}-{name}");
        page = sub.name(path.clone()).version(version.clone());
    }
    let mut out = Vec::new();
    if let Err(e) = clap_mangen::Man::new(page).render(&mut out) {
        eprintln!("op25b: error: rendering the man page: {e}");
        return ExitCode::FAILURE;
    }
    out!("{}", String::from_utf8_lossy(&out));
    ExitCode::SUCCESS
}

/// op25b.toml(5) from the docs/CONFIG.md built in, or from the file at `reference`.
fn config_man(reference: Option<&Path>) -> ExitCode {
    let text = match reference {
        None => include_str!("../docs/CONFIG.md").to_string(),
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) => {
                eprintln!("op25b: error: {}: {e}", path.display());
                return ExitCode::from(2);
            }
        },
    };
    match op25b::config::man::render(&text, env!("CARGO_PKG_VERSION")) {
        Ok(page) => {
            out!("{page}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("op25b: error: man op25b.toml: {e}");
            ExitCode::from(2)
        }
    }
}
