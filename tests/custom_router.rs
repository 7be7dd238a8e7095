//! examples/custom_router.rs, the whole op25b with a rule written in Rust,
//! run between namespaces: real TCP clients of one subscriber get their first
//! 3 port-587 connections in a minute and the next are refused (RST); after a
//! SIGHUP reload the rule is still in force, with its counts, and its
//! counters are in the stats beside the config rules'.

#[allow(dead_code)]
mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;

/// Builds the example with the profile of this test and returns its path.
fn example_binary() -> PathBuf {
    let op25b = PathBuf::from(env!("CARGO_BIN_EXE_op25b"));
    let profile_dir = op25b.parent().expect("target/PROFILE");
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "--example", "custom_router"]).current_dir(env!("CARGO_MANIFEST_DIR"));
    if release {
        cmd.arg("--release");
    }
    let out = cmd.output().expect("run cargo build --example custom_router");
    assert!(out.status.success(), "cargo build --example custom_router: {}", String::from_utf8_lossy(&out.stderr));
    let bin = profile_dir.join("examples/custom_router");
    assert!(bin.exists(), "{} after the build", bin.display());
    bin
}

#[test]
fn the_example_router_limits_submissions_and_keeps_its_rule_over_a_reload() {
    let binary = example_binary();
    let count = "[[rule]]\nname = \"count-587\"\nprotocol = \"tcp\"\ndst_ports = [587]\naction = \"count\"\n";
    let opts = LabOptions { binary: Some(binary), ..LabOptions::edit(|p| p.rules(count)) };
    let mut lab = Lab::start(opts);
    let servers = Servers::start(&lab.up, &[587]);
    let connect = |lab: &Lab| lab.connect(None, sa(MX4, 587), Duration::from_secs(3));
    assert_submissions_limited(&lab, 3);

    // SIGHUP: the config is read again and the rule given in code re-attached.
    let text = lab.policy.clone().op25b("ports", "[25, 2525]").toml();
    let r = lab.reload(&text);
    assert!(r.accepted && r.message.contains("rules=2"), "{r}");
    let e = connect(&lab).expect_err("still refused after the reload: the rule kept its counts");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
    // Another subscriber has its own count.
    let s = lab
        .connect(Some(ip(STATIC4)), sa(MX4, 587), Duration::from_secs(3))
        .expect("another subscriber's first connection");
    assert!(read_banner(&s).starts_with("220 "));

    drop(servers);
    let c = lab.stop();
    let rules = c.json["rules"].as_array().expect("rules in the stats");
    let limit = rules.iter().find(|r| r["name"] == "submission-per-minute").expect("the code rule's counters");
    assert!(limit["packets"].as_u64().unwrap_or(0) >= 6, "3 + 1 + 1 + 1 SYNs at least: {c}");
    let counted = rules.iter().find(|r| r["name"] == "count-587").expect("the config rule's counters");
    assert!(counted["packets"].as_u64().unwrap_or(0) >= 6, "{c}");
}

#[test]
fn op25b_run_refuses_a_plugin_placeholder_no_code_gives() {
    let dir = std::env::temp_dir().join(format!("op25b-plugin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("op25b.toml");
    let rules = "[[rule]]\nname = \"submission\"\nplugin = \"submission-per-minute\"\n";
    std::fs::write(&cfg, PolicyBuilder::lab().rules(rules).toml()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_op25b")).args(["run", "--config"]).arg(&cfg).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("rule \"submission\": plugin \"submission-per-minute\" is not given in code"), "{err}");
    // check shows the placeholder.
    let out = Command::new(env!("CARGO_BIN_EXE_op25b")).args(["check", "--config"]).arg(&cfg).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("submission: plugin \"submission-per-minute\" (a rule given in code"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
