//! The `op25b` command line: parse arguments, load the config, call the library.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use op25b::binary::tools::replay;
use op25b::Config;

/// Writes to standard output; when the reader has gone (`op25b check | head`),
/// exits quietly with status 0 instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => { $crate::output(&format_args!($($arg)*)) };
}

/// `out!` with a newline.
macro_rules! outln {
    ($($arg:tt)*) => { $crate::output(&format_args!("{}\n", format_args!($($arg)*))) };
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

#[path = "main/check.rs"]
mod check;
#[path = "main/cli.rs"]
mod cli;

use check::{check_packet, run_replay, ReplayOutput};
use cli::{Cli, Command, LogFormat};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(&cli.log_format);
    let config_path = match &cli.command {
        Command::Run { config, .. } | Command::Check { config, .. } | Command::Replay { config, .. } => config,
        other => return without_config(other),
    };
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            eprintln!("op25b: {}", e.render(color));
            return ExitCode::from(2);
        }
    };
    with_config(config, cli.command).unwrap_or_else(|e| {
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

/// Log lines to standard error, as text (coloured on a terminal) or JSON.
fn init_logs(format: &LogFormat) {
    let logs = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => {
            logs.with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()).init()
        }
    }
}

/// The commands that read no config: they ask a running op25b, or print.
fn without_config(command: &Command) -> ExitCode {
    match command {
        Command::Stats { socket, json, all } => op25b::binary::client::stats(socket, *json, *all),
        Command::Reload { socket } => op25b::binary::client::reload(socket),
        Command::Events { follow: true, socket } => op25b::binary::client::events(socket),
        Command::Events { follow: false, .. } => {
            eprintln!("op25b: error: op25b events needs --follow (op25b keeps no history of events: read the [events] file for the past)");
            ExitCode::from(2)
        }
        Command::Top { socket, json, n, by, watch } => op25b::binary::client::top(socket, *n, *by, *json, *watch),
        Command::Quarantine { subscriber, duration, socket, all } => {
            op25b::binary::client::quarantine(socket, subscriber, *duration, *all)
        }
        Command::Release { subscriber, socket, all } => op25b::binary::client::release(socket, subscriber, *all),
        Command::Help { command } => help(command.as_deref()),
        Command::Lab { command } => lab(command.clone()),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "op25b", &mut script);
            out!("{}", String::from_utf8_lossy(&script));
            ExitCode::SUCCESS
        }
        Command::Man { subcommand, reference } => man(subcommand, reference.as_deref()),
        Command::Run { .. } | Command::Check { .. } | Command::Replay { .. } => {
            unreachable!("these read a config")
        }
    }
}

/// The commands that read a config: `check`, `replay` and `run`.
fn with_config(config: Config, command: Command) -> anyhow::Result<ExitCode> {
    match command {
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
    }
}

/// `op25b lab ...`: its errors as one line, exit 2 for usage and config, else 1.
fn lab(command: op25b::binary::lab::LabCommand) -> ExitCode {
    match op25b::binary::lab::main(command) {
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
    match op25b::binary::man_page(&text, env!("CARGO_PKG_VERSION")) {
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
