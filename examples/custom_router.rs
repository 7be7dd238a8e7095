//! The whole op25b (devices, workers, signals, reload, control plane, events,
//! abuse handling) with a rule written in Rust: the submission-per-minute
//! rule of examples/custom_rule.rs, at most N new port-587 connections per
//! subscriber a minute, the next ones refused with an RST.
//!
//!   cargo build --example custom_router
//!   target/debug/examples/custom_router run --config config/lab.toml [--stats FILE] [--max N]
//!
//! The rule sits after the config's rules, or in the place of a config
//! placeholder `[[rule]] name = "submission" plugin = "submission-per-minute"`
//! when the config has one. It survives a reload (SIGHUP): the same rule
//! object, with its counts, is attached to the new policy.

#[path = "custom_rule.rs"]
#[allow(dead_code)]
mod custom_rule;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use custom_rule::SubmissionLimit;
use op25b::daemon::{Daemon, Place, Stopped};
use op25b::policy::Rule;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    // The arguments of `op25b run` (and --max); `run` and --log-format are accepted and ignored.
    let (mut config, mut stats, mut max) = (None, None, 3u32);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "run" => {}
            "--config" | "-c" => config = args.next().map(PathBuf::from),
            "--stats" => stats = args.next().map(PathBuf::from),
            "--log-format" => {
                args.next();
            }
            "--max" => match args.next().and_then(|n| n.parse().ok()) {
                Some(n) => max = n,
                None => return usage("--max takes a number"),
            },
            other => return usage(&format!("unknown argument {other}")),
        }
    }
    let Some(config) = config else { return usage("--config FILE is required") };
    let daemon = match Daemon::load(&config) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("custom_router: {e}");
            return ExitCode::from(2);
        }
    };
    let rule = SubmissionLimit::new(max, Duration::from_secs(60), 100_000).rejecting();
    let placeholder =
        std::fs::read_to_string(&config).is_ok_and(|t| t.contains(&format!("plugin = {:?}", rule.name())));
    let place = if placeholder { Place::Plugin(rule.name().to_string()) } else { Place::Last };
    let daemon = daemon.rule(place, rule);
    let daemon = match stats {
        Some(s) => daemon.stats_file(s),
        None => daemon,
    };
    match daemon.run() {
        Ok(Stopped::Signal) => ExitCode::SUCCESS,
        // A lost device: one log line named it; exit 1 so a supervisor restarts.
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("custom_router: error: {e}");
            ExitCode::from(if e.is_deployment_error() { 2 } else { 1 })
        }
    }
}

fn usage(why: &str) -> ExitCode {
    eprintln!("custom_router: {why}\nusage: custom_router run --config FILE [--stats FILE] [--max N]");
    ExitCode::from(2)
}
