//! The `op25b` command line: parse arguments, load the config, call the library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use op25b::dataplane::Dataplane;
use op25b::router::Counters;
use op25b::Config;
use signal_hook::consts::{SIGINT, SIGTERM};

#[derive(Parser)]
#[command(
    name = "op25b",
    version,
    about = "Userspace two-TUN router enforcing Outbound Port 25 Blocking"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the TUN devices and route between them until SIGINT or SIGTERM.
    Run {
        /// The config file (TOML).
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Validate a config file and print the compiled policy.
    Check {
        /// The config file (TOML).
        #[arg(short, long)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .init();
    let cli = Cli::parse();
    let config_path = match &cli.command {
        Command::Run { config } | Command::Check { config } => config,
    };
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("op25b: error: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Check { .. } => {
            print!("{}", config.render());
            Ok(())
        }
        Command::Run { .. } => run(&config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("op25b: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: &Config) -> anyhow::Result<()> {
    // Register before the devices exist so an early SIGTERM still cleans up.
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .context("installing signal handlers")?;
    let dp = Dataplane::start(config)?;
    let p = &config.policy;
    let ns = |n: &Option<String>| n.clone().unwrap_or_else(|| "<current>".into());
    tracing::info!(
        subscriber = %config.subscriber.tun,
        subscriber_netns = %ns(&config.subscriber.netns),
        upstream = %config.upstream.tun,
        upstream_netns = %ns(&config.upstream.netns),
        subscriber_prefixes = p.subscriber_prefixes.len(),
        dynamic = p.op25b.dynamic.len(),
        exempt_sources = p.op25b.exempt_sources.len(),
        relays = p.op25b.relays.len(),
        action = %p.op25b.action,
        "op25b running"
    );
    let signal = signals.forever().next().unwrap_or(SIGTERM);
    tracing::info!(signal, "stopping");
    let (tx_errors, rx_errors) = dp.io_errors();
    let counters = dp.stop();
    let summary: Vec<String> = Counters::summary(&counters)
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    tracing::info!(tx_errors, rx_errors, "counters: {}", summary.join(" "));
    Ok(())
}
