//! The command line: `op25b check` on the lab config and on broken variants
//! of it, and `op25b run` failing cleanly (bad config, missing namespace)
//! without creating anything.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use op25b::testing::PolicyBuilder;

fn lab_toml() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/lab.toml")
}

/// A TOML string.
fn quote(s: &str) -> String {
    format!("{s:?}")
}

/// A temp file, removed on drop.
struct TempConfig(PathBuf);

impl TempConfig {
    fn new(tag: &str, text: &str) -> TempConfig {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "o25c-{}-{}-{tag}.toml",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        TempConfig(path)
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0); // best effort
    }
}

/// Runs op25b with `args`, killing it if it is still running after 10 s.
fn op25b(args: &[&str], config: &Path) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_op25b"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start op25b");
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().expect("waiting for op25b").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill(); // it may have exited just now
            let out = child.wait_with_output().expect("collecting op25b's output");
            panic!("op25b {args:?} still running after 10 s; stderr:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("collecting op25b's output")
}

/// 1-based number of the first line of `text` that starts with `prefix`.
fn line_of(text: &str, prefix: &str) -> usize {
    text.lines().position(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no line starting with {prefix:?}")) + 1
}

/// Exit status 2 and one stderr message `op25b: error: FILE:LINE: KEY: ...`
/// that mentions `mention`, followed by nothing or by the offending line with
/// a caret under the bad value (no colours: stderr is not a terminal).
fn assert_config_error(out: &Output, file: &Path, line: usize, key: &str, mention: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "exit status; stderr:\n{stderr}");
    assert!(!stderr.contains('\x1b'), "no colours when stderr is not a terminal:\n{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    let expect = format!("op25b: error: {}:{line}: {key}: ", file.display());
    assert!(lines[0].starts_with(&expect), "stderr should start with {expect:?}:\n{stderr}");
    assert!(lines[0].contains(mention), "stderr should mention {mention:?}:\n{stderr}");
    match lines.len() {
        1 => {}
        4 => {
            let text = std::fs::read_to_string(file).unwrap();
            let source = text.lines().nth(line - 1).unwrap();
            assert_eq!(lines[2], format!("{line} | {source}"), "{stderr}");
            let caret = lines[3].trim_start_matches(' ').trim_start_matches('|');
            assert!(caret.trim().chars().all(|c| c == '^') && !caret.trim().is_empty(), "{stderr}");
        }
        _ => panic!("stderr must be the message and, if any, the excerpt:\n{stderr}"),
    }
}

/// The caret's columns in an error's excerpt, as the text above it shows them.
fn caret_under(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 4, "{stderr}");
    let (source, caret) = (lines[2], lines[3]);
    let start = caret.find('^').expect("a caret");
    let end = caret.rfind('^').unwrap() + 1;
    source[start..end].to_string()
}

/// `ip` must exist for the checks that nothing was created.
fn require_ip() {
    match Command::new("ip").arg("-V").output() {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("the `ip` command is missing: install iproute2")
        }
        Err(e) => panic!("cannot run `ip -V`: {e}"),
    }
}

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

fn link_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", "dev", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("running `ip link show`")
        .success()
}

/// A lab config whose devices and namespaces carry `tag`, so that nothing else
/// could have created them.
fn tagged_config(tag: char) -> (PolicyBuilder, String, String) {
    // At most 4 + 7 + 1 = 12 bytes, within the 15-byte interface name limit.
    let sub_tun = format!("o25c{}{tag}", std::process::id());
    let sub_ns = format!("o25t-{}-{tag}-sub", std::process::id());
    let up_ns = format!("o25t-{}-{tag}-up", std::process::id());
    let config = PolicyBuilder::lab().devices((&sub_tun, Some(&sub_ns)), ("op25b-up", Some(&up_ns)));
    let text = config.toml();
    assert!(text.contains(&sub_ns) && text.contains(&up_ns) && text.contains(&sub_tun));
    (config, sub_tun, sub_ns)
}

/// `check` accepts the shipped lab config and prints the compiled policy.
#[test]
fn check_accepts_lab_config() {
    let out = op25b(&["check"], &lab_toml());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "check config/lab.toml: {}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for expect in [
        ": OK",
        "100.64.0.1",
        "2001:db8:100::1",
        "op25b-sub (netns op25b-lab-sub, mtu 1500)",
        "block TCP to port 25",
        "100.64.0.0/10, 2001:db8:100::/48",
        "100.64.9.0/24, 2001:db8:100:9::/64",
        "198.51.100.25/32, 2001:db8:25::25/128",
        "reject",
    ] {
        assert!(stdout.contains(expect), "check output lacks {expect:?}:\n{stdout}");
    }
}

/// `check` on broken copies: exit 2, one stderr line naming file, line and key.
#[test]
fn check_rejects_broken_configs() {
    let lab = PolicyBuilder::lab();

    // An unknown key.
    let text = lab.clone().upstream("colour", quote("blue")).toml();
    let f = TempConfig::new("unknown", &text);
    let out = op25b(&["check"], &f.0);
    let line = line_of(&text, "colour =");
    assert_config_error(&out, &f.0, line, "upstream.colour", "unknown field");

    // A prefix length beyond 32.
    let text = lab.clone().op25b("dynamic", r#"["100.64.0.0/33", "2001:db8:100::/48"]"#).toml();
    let f = TempConfig::new("prefix33", &text);
    let out = op25b(&["check"], &f.0);
    let line = line_of(&text, "dynamic =");
    assert_config_error(&out, &f.0, line, "op25b.dynamic[0]", "100.64.0.0/33");

    // A missing section, reported at the top of the file. (The builder always
    // writes [router]; the test leaves it out.)
    let text: String = lab
        .toml()
        .lines()
        .filter(|l| *l != "[router]" && !l.starts_with("addresses ="))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(!text.contains("[router]") && text.contains("[subscriber]"), "{text}");
    let f = TempConfig::new("nosection", &text);
    let out = op25b(&["check"], &f.0);
    assert_config_error(&out, &f.0, 1, "(top level)", "missing section [router]");

    // An interface name longer than 15 bytes.
    let text = lab.subscriber("tun", quote("op25b-sub-much-too-long")).toml();
    let f = TempConfig::new("longtun", &text);
    let out = op25b(&["check"], &f.0);
    let line = line_of(&text, "tun = \"op25b-sub-much-too-long\"");
    assert_config_error(&out, &f.0, line, "subscriber.tun", "op25b-sub-much-too-long");
}

/// `run` with a bad config stops before touching the system: exit 2, one line,
/// no namespace, no device.
#[test]
fn run_with_bad_config_exits_2_and_creates_nothing() {
    require_ip();
    let (config, sub_tun, sub_ns) = tagged_config('b');
    let text = config.op25b("relays", r#"["198.51.100.25/33", "2001:db8:25::25/128"]"#).toml();
    let f = TempConfig::new("runbad", &text);
    let out = op25b(&["run"], &f.0);
    let line = line_of(&text, "relays =");
    assert_config_error(&out, &f.0, line, "op25b.relays[0]", "198.51.100.25/33");
    assert!(!netns_exists(&sub_ns), "netns {sub_ns} exists after a failed run");
    assert!(!link_exists(&sub_tun), "device {sub_tun} exists after a failed run");
}

/// `run` with a namespace that does not exist fails non-zero, naming the namespace,
/// and leaves no device behind.
#[test]
fn run_with_missing_netns_fails_clearly() {
    require_ip();
    let (config, sub_tun, sub_ns) = tagged_config('m');
    assert!(!netns_exists(&sub_ns), "netns {sub_ns} should not exist yet");
    let f = TempConfig::new("runmissing", &config.toml());
    let out = op25b(&["run"], &f.0);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "run with a missing netns must fail; stderr:\n{stderr}");
    assert!(
        stderr.contains(&format!("network namespace \"{sub_ns}\"")) && stderr.contains(&format!("/run/netns/{sub_ns}")),
        "the error should name the missing namespace {sub_ns}:\n{stderr}"
    );
    assert_eq!(stderr.matches("No such file or directory").count(), 1, "the cause, once:\n{stderr}");
    assert!(!link_exists(&sub_tun), "device {sub_tun} exists after a failed run");
}

/// The errors a new user meets first: each names file, line and key, exits 2,
/// and points at the bad spot.
#[test]
fn check_config_errors_name_table_key_and_show_a_caret() {
    let lab = PolicyBuilder::lab();

    // A syntax error inside a table: the table and key, not "(top level)".
    let text = lab.clone().op25b("ports", "[25, 465").toml();
    let f = TempConfig::new("syntax", &text);
    let out = op25b(&["check"], &f.0);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let line: usize = stderr.split(':').nth(3).and_then(|l| l.trim().parse().ok()).expect("a line number");
    assert!(line >= line_of(&text, "ports ="), "{stderr}");
    assert_config_error(&out, &f.0, line, "op25b.ports", "expected");

    // A duplicate key: named, with the line of the first one.
    let text = lab.clone().toml().replacen("[upstream]\n", "[upstream]\nmtu = 1500\nmtu = 1400\n", 1);
    let f = TempConfig::new("dup", &text);
    let out = op25b(&["check"], &f.0);
    let first = line_of(&text, "mtu = 1400") - 1;
    assert_config_error(&out, &f.0, first + 1, "upstream.mtu", &format!("already defined on line {first}"));
    assert_eq!(caret_under(&String::from_utf8_lossy(&out.stderr)), "mtu");

    // An empty file: every missing section at once.
    let f = TempConfig::new("empty", "");
    let out = op25b(&["check"], &f.0);
    assert_config_error(&out, &f.0, 1, "(top level)", "missing sections [router], [subscriber], [upstream], [op25b]");

    // A bad value: the caret is under it.
    let text = lab.op25b("ports", "[25, 0]").toml();
    let f = TempConfig::new("caret", &text);
    let out = op25b(&["check"], &f.0);
    assert_config_error(&out, &f.0, line_of(&text, "ports ="), "op25b.ports[1]", "port 0");
    assert_eq!(caret_under(&String::from_utf8_lossy(&out.stderr)), "0");
}

/// Runs op25b with `args` only (no --config added).
fn op25b_args(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_op25b"))
        .args(args)
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("cannot start op25b")
}

#[test]
fn help_version_and_direction() {
    for args in [&["help", "--help"][..], &["help"], &["help", "check"], &["check", "--help"]] {
        let o = op25b_args(args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    }
    let o = op25b_args(&["help", "check"]);
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(help.contains("rst, fin, psh"), "check --help lists psh:\n{help}");
    assert!(help.contains("Usage: op25b check [OPTIONS]"), "{help}");
    assert!(help.contains("[default: /etc/op25b/op25b.toml]"), "--config defaults to the packaged file:\n{help}");
    assert_eq!(help, String::from_utf8_lossy(&op25b_args(&["check", "--help"]).stdout));
    assert!(help.contains("- outbound") && help.contains("- inbound"), "--direction lists its values:\n{help}");
    assert_eq!(op25b_args(&["help", "nope"]).status.code(), Some(2));

    let o = op25b_args(&["--version"]);
    let v = String::from_utf8_lossy(&o.stdout);
    assert!(v.starts_with(&format!("op25b {}", env!("CARGO_PKG_VERSION"))), "{v}");
    // Built from a git checkout, the commit follows (a crate tarball has none).
    if Path::new(env!("CARGO_MANIFEST_DIR")).join(".git").exists() {
        let g = Command::new("git")
            .args(["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "--short=12", "HEAD"])
            .output()
            .expect("git, in a git checkout");
        assert!(g.status.success(), "git rev-parse: {}", String::from_utf8_lossy(&g.stderr));
        let commit = String::from_utf8_lossy(&g.stdout).trim().to_string();
        assert!(v.contains(&format!("(git {commit})")), "{v} lacks {commit}");
    } else {
        assert_eq!(v.trim(), format!("op25b {}", env!("CARGO_PKG_VERSION")), "not a git checkout");
    }

    // Every command's -V does what its man page says.
    for cmd in ["run", "check", "replay", "stats", "reload", "events"] {
        let page = String::from_utf8_lossy(&op25b_args(&["man", cmd]).stdout).to_string();
        assert!(page.contains("\\fB\\-V\\fR, \\fB\\-\\-version\\fR"), "op25b-{cmd}(1) lists -V:\n{page}");
        let o = op25b_args(&[cmd, "-V"]);
        let out = String::from_utf8_lossy(&o.stdout);
        assert_eq!(o.status.code(), Some(0), "{cmd} -V: {}", String::from_utf8_lossy(&o.stderr));
        assert!(out.starts_with(&format!("op25b-{cmd} {}", env!("CARGO_PKG_VERSION"))), "{cmd} -V: {out}");
    }
    // Usage errors exit 2, whichever command.
    for args in
        [&["release"][..], &["quarantine", "100.64.1.10", "--for", "soon"], &["top", "-n", "x"], &["run", "--nope"]]
    {
        assert_eq!(op25b_args(args).status.code(), Some(2), "{args:?}");
    }

    let lab = lab_toml();
    let lab = lab.to_str().unwrap();
    let spec = "tcp 203.0.113.25:25 -> 100.64.1.10:40000 syn";
    for (dir, want) in [("outbound", 1), ("out", 1), ("inbound", 0)] {
        let o = op25b_args(&["check", "-c", lab, "--packet", spec, "--direction", dir]);
        assert_eq!(o.status.code(), Some(want), "{dir}: {}", String::from_utf8_lossy(&o.stdout));
    }
    let o = op25b_args(&["check", "-c", lab, "--packet", spec, "--direction", "sideways"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("possible values: outbound, inbound"));
}

/// `check --json` without --packet: the compiled config as one object.
#[test]
fn check_json_prints_the_compiled_policy() {
    let rules = "[[rule]]\nname = \"no-telnet\"\ndirection = \"outbound\"\nprotocol = \"tcp\"\ndst = [\"192.0.2.0/24\"]\ndst_ports = [23, \"6000-6010\"]\naction = \"reject\"\n\n[[rule]]\nname = \"limit\"\naction = \"rate-limit\"\nrate = 5\nburst = 10\n";
    let f = TempConfig::new("json", &PolicyBuilder::lab().rules(rules).toml());
    let out = op25b(&["check", "--json"], &f.0);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["format"], 1);
    assert_eq!(v["router"]["address_v4"], "100.64.0.1");
    assert_eq!(v["subscriber"]["prefixes"], serde_json::json!(["100.64.0.0/10", "2001:db8:100::/48"]));
    assert_eq!(v["op25b"]["ports"], serde_json::json!([25]));
    assert_eq!(v["op25b"]["action"], "reject");
    assert_eq!(v["op25b"]["relays"][0], "198.51.100.25/32");
    assert_eq!(v["op25b"]["reply_limit"]["rate"], 10);
    let r = &v["rules"];
    assert_eq!(r.as_array().unwrap().len(), 2);
    assert_eq!(
        (&r[0]["index"], &r[0]["name"], &r[0]["direction"]),
        (&1.into(), &"no-telnet".into(), &"outbound".into())
    );
    assert_eq!(r[0]["dst_ports"], serde_json::json!([[23, 23], [6000, 6010]]));
    assert_eq!(r[0]["src"], serde_json::Value::Null);
    assert_eq!((&r[1]["action"], &r[1]["rate"], &r[1]["burst"]), (&"rate-limit".into(), &5.into(), &10.into()));
    assert_eq!(v["abuse"], serde_json::Value::Null, "no [abuse]");
    let f = TempConfig::new("json-abuse", &PolicyBuilder::lab().action("monitor").abuse("threshold", 7).toml());
    let out = op25b(&["check", "--json"], &f.0);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["op25b"]["action"], "monitor");
    assert_eq!((v["abuse"]["threshold"].as_u64(), v["abuse"]["on_suspect"].as_str()), (Some(7), Some("event")));
    assert_eq!(
        v["abuse"]["quarantine_allow"],
        serde_json::json!(["udp/53", "tcp/53", "tcp/587", "tcp/465", "@relays"])
    );
}

/// A reader that goes away (`op25b check | head`) ends op25b quietly.
#[test]
fn closed_stdout_is_not_a_panic() {
    let lab = lab_toml();
    let lab = lab.to_str().unwrap();
    let f = TempConfig::new("pipe", &PolicyBuilder::lab().toml());
    let capture = std::env::temp_dir().join(format!("o25c-{}-pipe.pcap", std::process::id()));
    // A pcap of one raw IP SYN, for replay.
    let syn = op25b::testing::packets::syn(op25b::testing::lab::DYN4, op25b::testing::lab::MX4, 25);
    let mut pcap = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 101, 0, 0, 0];
    pcap.extend_from_slice(&[0; 8]);
    pcap.extend_from_slice(&(syn.len() as u32).to_le_bytes());
    pcap.extend_from_slice(&(syn.len() as u32).to_le_bytes());
    pcap.extend_from_slice(&syn);
    std::fs::write(&capture, &pcap).unwrap();
    let cap = capture.to_str().unwrap();
    let spec = "tcp 100.64.1.10:40000 -> 203.0.113.25:25 syn";
    let cases: &[(&[&str], i32)] = &[
        (&["check", "-c", lab], 0),
        (&["check", "-c", lab, "--json"], 0),
        (&["check", "-c", lab, "--packet", spec], 0),
        (&["check", "-c", lab, "--packet", spec, "--json"], 0),
        (&["replay", "-c", lab, cap], 0),
        (&["replay", "-c", lab, cap, "--json"], 0),
        (&["replay", "-c", lab, cap, "--jsonl"], 0),
        (&["help"], 0),
        (&["help", "check"], 0),
        (&["check", "--help"], 0),
        (&["--version"], 0),
    ];
    for (args, code) in cases {
        // The read end is closed before op25b starts, so every write gets
        // EPIPE (closing it after the spawn raced with a quick op25b).
        let (read_end, write_end) = nix::unistd::pipe().expect("pipe");
        drop(read_end);
        let child = Command::new(env!("CARGO_BIN_EXE_op25b"))
            .args(*args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(write_end))
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start op25b");
        let out = child.wait_with_output().expect("op25b");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(*code), "{args:?}: {}; stderr:\n{stderr}", out.status);
        assert!(stderr.is_empty(), "{args:?}: quiet, but stderr:\n{stderr}");
    }
    let _ = std::fs::remove_file(&capture); // best effort
    drop(f);
}

/// An error's cause is printed once, not once by the message and again by
/// the chain.
#[test]
fn error_causes_are_printed_once() {
    let missing = std::env::temp_dir().join(format!("o25c-{}-absent", std::process::id()));
    let m = missing.to_str().unwrap();
    let lab = lab_toml();
    let lab = lab.to_str().unwrap();
    for args in [&["check", "-c", m][..], &["run", "-c", m], &["replay", "-c", lab, m], &["stats", "--socket", m]] {
        let o = op25b_args(args);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.matches("No such file or directory").count(), 1, "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    }
}
