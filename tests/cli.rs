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

/// Exit status 2 and exactly one stderr line `op25b: error: FILE:LINE: KEY: ...`
/// that mentions `mention`.
fn assert_config_error(out: &Output, file: &Path, line: usize, key: &str, mention: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "exit status; stderr:\n{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "stderr must be one line:\n{stderr}");
    let expect = format!("{}:{line}: {key}: ", file.display());
    assert!(lines[0].contains(&expect), "stderr should contain {expect:?}:\n{stderr}");
    assert!(lines[0].contains(mention), "stderr should mention {mention:?}:\n{stderr}");
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

    // A missing section: serde reports it at the top of the file. (The
    // builder always writes [router]; the test leaves it out.)
    let text: String = lab
        .toml()
        .lines()
        .filter(|l| *l != "[router]" && !l.starts_with("addresses ="))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(!text.contains("[router]") && text.contains("[subscriber]"), "{text}");
    let f = TempConfig::new("nosection", &text);
    let out = op25b(&["check"], &f.0);
    assert_config_error(&out, &f.0, 1, "(top level)", "missing field `router`");

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
    assert!(stderr.contains("No such file or directory"), "the error should give the cause:\n{stderr}");
    assert!(!link_exists(&sub_tun), "device {sub_tun} exists after a failed run");
}
