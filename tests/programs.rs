//! Program rules (`[[rule]] program = "FILE.wasm"`): the example programs of
//! rules/examples built from their C source (rules/examples/build.sh, which
//! needs clang and wasm-ld: scripts/setup.sh installs them), run through the
//! router; faults answered with `on_error` and counted; programs refused at
//! load; the map carried over a reload of the same program.

#[allow(dead_code)] // Only the program builders of the shared harness are needed here.
#[allow(unused_imports)]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::{build_examples, compile_program};
use op25b::config::Config;
use op25b::state::State;
use op25b::testing::lab::DYN4;
use op25b::testing::packets::tcp;
use op25b::testing::{PolicyBuilder, TestRouter};
use op25b::{DropReason, ReplyKind, Verdict};

const MX: &str = "203.0.113.25";
const SUB2: &str = "100.64.1.11";

fn out_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("programs")
}

/// The example programs, built once per test process from their source.
fn examples() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let out = out_dir().join(format!("examples-{}", std::process::id()));
        build_examples(&out);
        out
    })
}

fn example(name: &str) -> String {
    examples().join(format!("{name}.wasm")).display().to_string()
}

/// Builds a program from C text ([`compile_program`]) into this process's directory.
fn compile(name: &str, source: &str, extra: &[&str]) -> String {
    let dir = out_dir().join(format!("own-{}", std::process::id()));
    compile_program(&dir, name, source, extra).display().to_string()
}

fn builder(rules: &str) -> PolicyBuilder {
    PolicyBuilder::lab().named("programs.toml").rules(rules)
}

fn syn(src: &str, sport: u16, dport: u16) -> Vec<u8> {
    tcp(src, sport, MX, dport).syn().build()
}

const SUBMISSION: &str = r#"
[[rule]]
name = "submission"
protocol = "tcp"
dst_ports = [587]
tcp_flags = "syn"
program = "PATH"
map_size = 64
"#;

#[test]
fn a_port_based_program_rejects_counts_and_lets_go_on() {
    let rules = format!("[[rule]]\nname = \"ports\"\nprotocol = \"tcp\"\nprogram = {:?}\n", example("port_block"));
    let mut r = builder(&rules).router();
    let (v, _) = r.out(&syn(DYN4, 40000, 2525));
    assert!(matches!(v, Verdict::Reply { kind: ReplyKind::TcpRst, .. }), "2525 is on the program's list: {v:?}");
    assert!(matches!(r.out(&syn(DYN4, 40001, 587)).0, Verdict::Forward { .. }), "587 is counted, not decided");
    let ack = tcp(DYN4, 40001, MX, 587).ack(1).build();
    assert!(matches!(r.out(&ack).0, Verdict::Forward { .. }));
    let s = r.stats();
    let rule = s.rule("ports").unwrap();
    assert_eq!(rule.packets, 2, "the rejected SYN and the counted one; the ACK is no match");
    assert_eq!(rule.errors, 0);
}

#[test]
fn a_program_keeps_per_subscriber_state_in_its_map() {
    let mut r = builder(&SUBMISSION.replace("PATH", &example("submission_limit"))).router();
    for i in 0..3 {
        assert!(matches!(r.out(&syn(DYN4, 40000 + i, 587)).0, Verdict::Forward { .. }), "SYN {i}");
    }
    assert!(
        matches!(r.out(&syn(DYN4, 40003, 587)).0, Verdict::Reply { kind: ReplyKind::TcpRst, .. }),
        "the 4th in a minute"
    );
    assert!(matches!(r.out(&syn(SUB2, 40000, 587)).0, Verdict::Forward { .. }), "another subscriber has its own count");
    assert!(matches!(r.out(&syn(DYN4, 40004, 465)).0, Verdict::Forward { .. }), "the fields let only 587 through");
    r.advance(Duration::from_secs(61));
    assert!(matches!(r.out(&syn(DYN4, 40005, 587)).0, Verdict::Forward { .. }), "a new minute");
    let s = r.stats();
    assert_eq!(s.rule("submission").unwrap().packets, 6);
}

#[test]
fn the_map_survives_a_reload_of_the_same_program_and_not_of_another() {
    let text = SUBMISSION.replace("PATH", &example("submission_limit"));
    let old = builder(&text).policy();
    let state = Arc::new(State::new(&old));
    let mut r = TestRouter::with_state(Arc::clone(&old), Arc::clone(&state));
    for i in 0..3 {
        assert!(matches!(r.out(&syn(DYN4, 40000 + i, 587)).0, Verdict::Forward { .. }));
    }
    assert_eq!(state.program_map_len(0), Some(1));

    // The same program under the same name: its map carries over, the 4th SYN is refused.
    let same = builder(&text).rules("[[rule]]\nname = \"other\"\naction = \"count\"\n").policy();
    let (carried, kept) = state.carry_over(&old, &same);
    assert_eq!(kept.programs, 1);
    let mut r = TestRouter::with_state(same, Arc::new(carried));
    assert!(matches!(r.out(&syn(DYN4, 40003, 587)).0, Verdict::Reply { kind: ReplyKind::TcpRst, .. }));

    // Another map size is another program: it starts afresh.
    let other = builder(&text.replace("map_size = 64", "map_size = 65")).policy();
    let (fresh, kept) = state.carry_over(&old, &other);
    assert_eq!(kept.programs, 0);
    assert_eq!(fresh.program_map_len(0), Some(0));
    let mut r = TestRouter::with_state(other, Arc::new(fresh));
    assert!(matches!(r.out(&syn(DYN4, 40004, 587)).0, Verdict::Forward { .. }));
}

const LOOP: &str = r#"#include "op25b.h"
OP25B_RULE { volatile u32 n = 0; for (;;) n++; return 0; }
"#;
const TRAP: &str = r#"#include "op25b.h"
OP25B_RULE { return *(volatile const u8 *)0xfffffff0u; }
"#;
const BAD_VERDICT: &str = r#"#include "op25b.h"
OP25B_RULE { return 7; }
"#;
const HEAP: &[&str] = &["-Wl,--export=__heap_base"];

fn faulty(name: &str, source: &str, on_error: Option<&str>) -> TestRouter {
    let path = compile(name, source, HEAP);
    let mut rules = format!("[[rule]]\nname = \"faulty\"\nprotocol = \"tcp\"\nprogram = {path:?}\n");
    if let Some(v) = on_error {
        rules.push_str(&format!("on_error = {v:?}\n"));
    }
    builder(&rules).router()
}

#[test]
fn a_program_over_its_budget_or_trapping_answers_on_error_and_is_counted() {
    for (name, source) in [("loop", LOOP), ("trap", TRAP), ("verdict", BAD_VERDICT)] {
        let mut r = faulty(name, source, None);
        assert!(matches!(r.out(&syn(DYN4, 40000, 587)).0, Verdict::Forward { .. }), "{name}: on_error continue");
        assert!(matches!(r.out(&syn(DYN4, 40001, 587)).0, Verdict::Forward { .. }), "{name}: still running");
        let s = r.stats();
        assert_eq!(s.rule("faulty").unwrap().errors, 2, "{name}");
        assert_eq!(s.rule("faulty").unwrap().packets, 0, "{name}: continue is no match");

        let mut r = faulty(name, source, Some("drop"));
        assert_eq!(r.out(&syn(DYN4, 40000, 587)).0, Verdict::Drop(DropReason::RuleDrop), "{name}: on_error drop");
        assert_eq!(r.stats().rule("faulty").unwrap().errors, 1);
    }
}

/// A module (hand-assembled) with `rule`, `memory` and `__heap_base`
/// whose start function is `unreachable`.
const TRAP_AT_START: &[u8] = &[
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
    0x01, 0x0d, 0x02, 0x60, 0x05, 0x7f, 0x7f, 0x7f, 0x7e, 0x7e, 0x01, 0x7f, 0x60, 0x00, 0x00, // types
    0x03, 0x03, 0x02, 0x00, 0x01, // functions: rule, start
    0x05, 0x03, 0x01, 0x00, 0x01, // one page of memory
    0x06, 0x07, 0x01, 0x7f, 0x00, 0x41, 0x80, 0x08, 0x0b, // __heap_base = 1024
    0x07, 0x1f, 0x03, 0x04, 0x72, 0x75, 0x6c, 0x65, 0x00, 0x00, 0x06, 0x6d, 0x65, 0x6d, 0x6f, 0x72, 0x79, 0x02, 0x00,
    0x0b, 0x5f, 0x5f, 0x68, 0x65, 0x61, 0x70, 0x5f, 0x62, 0x61, 0x73, 0x65, 0x03, 0x00, // exports
    0x08, 0x01, 0x01, // start: function 1
    0x0a, 0x0a, 0x02, 0x04, 0x00, 0x41, 0x00, 0x0b, 0x03, 0x00, 0x00, 0x0b, // code: return 0; unreachable
];

fn refused(rules: &str) -> String {
    let text = builder(rules).toml();
    let e = Config::parse(Path::new("programs.toml"), &text).expect_err("a bad program is refused");
    e.to_string().lines().next().unwrap_or_default().to_string()
}

#[test]
fn a_bad_program_is_refused_with_one_line_naming_the_file_and_why() {
    let dir = out_dir().join(format!("bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rule = |p: &str| format!("[[rule]]\nname = \"x\"\nprogram = {p:?}\n");

    let junk = dir.join("junk.wasm");
    std::fs::write(&junk, b"not wasm").unwrap();
    let line = refused(&rule(&junk.display().to_string()));
    assert!(line.contains("junk.wasm: not a valid WebAssembly module"), "{line}");
    assert!(line.contains("rule[0] \"x\".program"), "{line}");

    let big = dir.join("big.wasm");
    std::fs::write(&big, vec![0u8; (1 << 20) + 1]).unwrap();
    let line = refused(&rule(&big.display().to_string()));
    assert!(line.contains("big.wasm: the program is 1048577 bytes, more than the 1048576 allowed"), "{line}");

    let line = refused(&rule(&dir.join("absent.wasm").display().to_string()));
    assert!(line.contains("absent.wasm: cannot read it"), "{line}");

    let no_heap = compile("no_heap", BAD_VERDICT, &[]);
    let line = refused(&rule(&no_heap));
    assert!(line.contains("does not export the global `__heap_base`"), "{line}");

    let other_import = compile(
        "import",
        "extern int getpid(void);\n__attribute__((export_name(\"rule\"))) int rule(const char *p, unsigned n, \
         unsigned d, unsigned long long s, long long t) { return getpid(); }\n",
        &["-Wl,--export=__heap_base", "-Wl,--allow-undefined"],
    );
    let line = refused(&rule(&other_import));
    assert!(line.contains("imports env.getpid, which op25b does not offer"), "{line}");

    let wrong_type = compile(
        "wrong_type",
        "__attribute__((export_name(\"rule\"))) int rule(int x) { return x; }\n",
        &["-Wl,--export=__heap_base"],
    );
    let line = refused(&rule(&wrong_type));
    assert!(line.contains("exports `rule` with the wrong type"), "{line}");

    // Valid, with every export, but its start function traps: the trial
    // instance at load refuses it, not the data plane.
    let trap_at_start = dir.join("trap_at_start.wasm");
    std::fs::write(&trap_at_start, TRAP_AT_START).unwrap();
    let line = refused(&rule(&trap_at_start.display().to_string()));
    assert!(line.contains("trap_at_start.wasm: cannot be instantiated"), "{line}");

    let both = format!("{}action = \"drop\"\n", rule(&example("port_block")));
    let line = refused(&both);
    assert!(line.contains("takes its verdict from the program: remove `action`"), "{line}");
}

#[test]
fn a_program_path_is_relative_to_the_config_file() {
    let dir = out_dir().join(format!("rel-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    std::fs::copy(examples().join("port_block.wasm"), dir.join("rules/limit.wasm")).unwrap();
    let text = builder("[[rule]]\nname = \"ports\"\nprogram = \"rules/limit.wasm\"\n").toml();
    let config = Config::parse(&dir.join("op25b.toml"), &text).unwrap();
    let mut r = TestRouter::new(Arc::new(config.policy));
    assert!(matches!(r.out(&syn(DYN4, 40000, 2525)).0, Verdict::Reply { kind: ReplyKind::TcpRst, .. }));
}

const BIN: &str = env!("CARGO_BIN_EXE_op25b");

fn op25b(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).env("NO_COLOR", "1").output().expect("run op25b")
}

fn text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A config in its own directory, the programs in rules/ beside it.
fn config_dir(test: &str, rules: &str) -> PathBuf {
    let dir = out_dir().join(format!("cli-{test}-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    for p in ["port_block", "submission_limit"] {
        std::fs::copy(examples().join(format!("{p}.wasm")), dir.join(format!("rules/{p}.wasm"))).unwrap();
    }
    let path = dir.join("op25b.toml");
    std::fs::write(&path, builder(rules).toml()).unwrap();
    path
}

const CLI_RULES: &str = r#"
[[rule]]
name = "ports"
protocol = "tcp"
program = "rules/port_block.wasm"

[[rule]]
name = "submission"
protocol = "tcp"
dst_ports = [587]
tcp_flags = "syn"
program = "rules/submission_limit.wasm"
"#;

#[test]
fn check_packet_runs_the_programs_and_traces_their_verdicts() {
    let cfg = config_dir("check", CLI_RULES);
    let cfg = cfg.to_str().unwrap();
    let o = op25b(&["check", "--config", cfg]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("1. ports: tcp -> program rules/port_block.wasm (map 65536, on_error continue)"),
        "{}",
        text(&o)
    );

    let o = op25b(&["check", "--config", cfg, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let sub = &v["rules"][1];
    assert_eq!(sub["program"], "rules/submission_limit.wasm", "{v}");
    assert_eq!(sub["dst_ports"], serde_json::json!([[587, 587]]), "{v}");
    assert_eq!(sub["on_error"], "continue", "{v}");
    assert!(sub.get("action").is_none(), "{v}");

    let o = op25b(&["check", "--config", cfg, "--packet", "tcp 100.64.1.10:40000 -> 203.0.113.25:2525 syn"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("program        rules/port_block.wasm: returned match -> reject"), "{t}");
    assert!(t.contains("rule           #1 ports: match -> reject"), "{t}");
    assert!(t.contains("verdict    reply (tcp_rst"), "{t}");

    let o = op25b(&["check", "--config", cfg, "--packet", "tcp 100.64.1.10:40000 -> 203.0.113.25:587 syn"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("program        rules/submission_limit.wasm: returned match, continue"), "{t}");
}

#[test]
fn check_refuses_a_bad_program_with_exit_2() {
    let cfg = config_dir("bad", CLI_RULES);
    std::fs::write(cfg.parent().unwrap().join("rules/port_block.wasm"), b"\0asm junk").unwrap();
    let o = op25b(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let first = String::from_utf8_lossy(&o.stderr).lines().next().unwrap_or_default().to_string();
    assert!(
        first.contains("rule[0] \"ports\".program: ")
            && first.contains("rules/port_block.wasm: not a valid WebAssembly module"),
        "{first}"
    );
}

#[test]
fn replay_runs_the_programs_with_their_state() {
    use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
    let cfg = config_dir("replay", CLI_RULES);
    let input = cfg.parent().unwrap().join("in.pcap");
    let header = PcapHeader { datalink: pcap_file::DataLink::RAW, ..PcapHeader::default() };
    let mut w = PcapWriter::with_header(std::fs::File::create(&input).unwrap(), header).unwrap();
    // Five new submissions from one subscriber within a second: the limit is 3 a minute.
    let frames: Vec<Vec<u8>> = (0..5).map(|i| syn(DYN4, 40000 + i, 587)).collect();
    for (i, f) in frames.iter().enumerate() {
        w.write_packet(&PcapPacket::new(Duration::from_millis(i as u64 * 100), f.len() as u32, f)).unwrap();
    }
    drop(w);
    let o = op25b(&["replay", "--config", cfg.to_str().unwrap(), input.to_str().unwrap(), "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["verdicts"]["forward"], 3, "{v}");
    assert_eq!(v["verdicts"]["reply"], 2, "{v}");
    let rules = v["rules"].as_array().unwrap();
    let sub = rules.iter().find(|r| r["name"] == "submission").unwrap();
    assert_eq!(sub["packets"], 5, "{v}");
}
