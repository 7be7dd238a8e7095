//! `op25b check --packet` and `op25b replay`: the router judging packets
//! without devices.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use op25b::binary::tools::{self, replay, spec::PacketSpec};
use op25b::{Config, Direction, Router, Verdict};

use super::cli::DirectionArg;
use super::quit_on_write_error;

pub(crate) fn check_packet(
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
pub(crate) enum ReplayOutput {
    Text,
    Json,
    Lines,
}

pub(crate) fn run_replay(
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
