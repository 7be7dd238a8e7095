//! Program rules in the running router between namespaces: real TCP clients
//! meet the per-subscriber limit of rules/examples/submission_limit.c (3 new
//! connections to 587 a minute), the limit's map survives a SIGHUP reload of
//! the same program, and a reload with a broken program is refused while the
//! running policy (and its program) stays in force; a program over its
//! instruction budget gives its rule the on_error verdict, is counted, and
//! the router goes on.

#[allow(dead_code)]
mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

/// The example programs, built from source into a directory of this process.
fn examples() -> PathBuf {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("programs-netns-{}", std::process::id()));
    build_examples(&out);
    out
}

fn rule(program: &Path) -> String {
    format!(
        "[[rule]]\nname = \"submission\"\nprotocol = \"tcp\"\ndst_ports = [587]\ntcp_flags = \"syn\"\nprogram = {:?}\n",
        program.display().to_string()
    )
}

/// A program that never returns (it loops until its fuel runs out).
fn looping(dir: &Path) -> PathBuf {
    let source = "#include \"op25b.h\"\nOP25B_RULE { volatile u32 n = 0; for (;;) n++; return 0; }\n";
    compile_program(dir, "looping", source, &["-Wl,--export=__heap_base"])
}

#[test]
fn a_program_limits_real_connections_and_keeps_its_map_over_a_reload() {
    let dir = examples();
    let program = dir.join("submission_limit.wasm");
    // A program over its budget on port 2525: its rule answers on_error (reject), the router goes on.
    let stuck = format!(
        "[[rule]]\nname = \"stuck\"\nprotocol = \"tcp\"\ndst_ports = [2525]\nprogram = {:?}\non_error = \"reject\"\n",
        looping(&dir).display().to_string()
    );
    let mut lab = Lab::start(LabOptions::edit(|p| p.rules(&stuck).rules(&rule(&program))));
    let e = lab.connect(None, sa(MX4, 2525), Duration::from_secs(3)).expect_err("on_error reject");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
    let servers = Servers::start(&lab.up, &[587]);
    let connect = |lab: &Lab| lab.connect(None, sa(MX4, 587), Duration::from_secs(3));
    assert_submissions_limited(&lab, 3);

    // The same program, another rule beside it: the map carries over.
    let text = lab
        .policy
        .clone()
        .rules("[[rule]]\nname = \"count-web\"\nprotocol = \"tcp\"\ndst_ports = [80]\naction = \"count\"\n")
        .toml();
    let r = lab.reload(&text);
    assert!(r.accepted, "{r}");
    assert_eq!(r.counters.get("reload_kept_programs"), 2, "both programs' instances carried over: {}", r.counters);
    let e = connect(&lab).expect_err("still over the limit after the reload");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);

    // A broken program: the reload is refused, naming the file; the running policy stays.
    let broken = dir.join("broken.wasm");
    std::fs::write(&broken, b"\0asm\x01\0\0\0junk").unwrap();
    let r = lab.reload(&lab.policy.clone().rules(&rule(&broken).replace("submission", "broken")).toml());
    assert!(!r.accepted && r.message.contains("broken.wasm"), "{r}");
    let e = connect(&lab).expect_err("the running program still refuses");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);

    drop(servers);
    let c = lab.stop();
    // Both programs' instances carried over the accepted reload; the broken one was refused.
    assert_eq!((c.get("reloads_accepted"), c.get("reloads_refused")), (1, 1), "{c}");
    assert_eq!(c.get("reload_kept_programs"), 2, "{c}");
    let rules = c.json["rules"].as_array().expect("rules in the stats");
    let sub = rules.iter().find(|r| r["name"] == "submission").expect("the program rule's counters");
    assert!(sub["packets"].as_u64().unwrap_or(0) >= 6, "3 accepted and 3 refused SYNs (retransmits may add): {c}");
    assert_eq!(sub["errors"].as_u64(), Some(0), "{c}");
    let stuck = rules.iter().find(|r| r["name"] == "stuck").expect("the stuck rule's counters");
    assert!(stuck["errors"].as_u64().unwrap_or(0) >= 1, "the fault is counted: {c}");
    let _ = std::fs::remove_dir_all(&dir);
}
