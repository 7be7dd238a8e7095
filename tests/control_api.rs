//! The control socket's HTTP/JSON API against a running op25b between
//! namespaces, as an operator calls it: `curl --unix-socket` on every
//! endpoint, the CLI as its client (exit 0 done, 1 refused, 2 usage;
//! `OP25B_SOCKET`), `op25b events --follow` and a curl follower receiving a
//! real blocked SYN live, and the unit's `ExecReload` command line (parsed
//! from packaging/op25b.service) giving 0 for an accepted config and 1 for a
//! refused one.

#[allow(dead_code)]
mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);

/// Waits (bounded) until op25b answers on its socket.
fn wait_socket(socket: &Path) {
    let deadline = Instant::now() + WAIT;
    while !socket.exists() || std::os::unix::net::UnixStream::connect(socket).is_err() {
        assert!(Instant::now() < deadline, "op25b never answered on {}", socket.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `op25b ARGS` with `OP25B_SOCKET` set (no --socket): (exit code, stdout, stderr).
fn op25b(args: &[&str], socket: &Path) -> (i32, String, String) {
    let out =
        Command::new(env!("CARGO_BIN_EXE_op25b")).args(args).env("OP25B_SOCKET", socket).output().expect("op25b runs");
    let text = |b: &[u8]| String::from_utf8_lossy(b).to_string();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

/// A process following the events stream, its lines arriving on a channel;
/// stopped (by its PID) when dropped.
struct Follower {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Follower {
    fn start(cmd: Command) -> Follower {
        let mut f = Follower::paused(cmd);
        f.resume();
        f
    }

    /// Started, but nobody reads its standard output (a pipe) until
    /// [`Follower::resume`]: once the pipe is full, it stops reading too.
    fn paused(mut cmd: Command) -> Follower {
        let child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("the follower starts");
        Follower { child, lines: mpsc::channel().1 }
    }

    fn resume(&mut self) {
        let out = self.child.stdout.take().expect("its stdout, read once");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        self.lines = lines;
    }

    /// The first line (as JSON) that `pred` accepts, within [`WAIT`].
    fn wait(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
                    if pred(&v) {
                        return v;
                    }
                    seen.push(line);
                }
                Err(_) => panic!("no {what} event in the stream; it gave:\n{}", seen.join("\n")),
            }
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, Signal::SIGTERM); // it may have ended
        let _ = self.child.wait();
    }
}

fn followers(socket: &Path) -> u64 {
    let (status, v) = curl(socket, "GET", "/v1/stats", None);
    assert_eq!(status, 200, "{v}");
    v["events_stream"]["followers"].as_u64().unwrap_or_else(|| panic!("no events_stream.followers: {v}"))
}

/// The HTTP status of `curl -X METHOD URL` (over TCP).
fn curl_status(method: &str, url: &str) -> u16 {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}", "-X", method, url])
        .output()
        .expect("curl runs");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

/// The metrics listener at `metrics` answers, and only reads: none of the
/// socket's API is there.
fn metrics_listener_only_reads(metrics: std::net::SocketAddr) {
    let deadline = Instant::now() + WAIT;
    while curl_status("GET", &format!("http://{metrics}/healthz")) != 200 {
        assert!(Instant::now() < deadline, "nothing answers on {metrics}");
        std::thread::sleep(Duration::from_millis(50));
    }
    for (method, path) in
        [("POST", "/v1/reload"), ("POST", "/v1/quarantine"), ("GET", "/v1/stats"), ("GET", "/v1/events")]
    {
        assert_eq!(
            curl_status(method, &format!("http://{metrics}{path}")),
            404,
            "{method} {path} on the metrics listener"
        );
    }
}

/// GET /v1/stats, and `op25b stats --json` finding the socket by OP25B_SOCKET.
fn stats_endpoint(socket: &Path) {
    let (status, v) = curl(socket, "GET", "/v1/stats", None);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert!(v["stats"]["outbound"]["received"].is_u64(), "{v}");
    let (code, out, err) = op25b(&["stats", "--json"], socket);
    assert_eq!(code, 0, "OP25B_SOCKET names the socket: {err}");
    assert!(serde_json::from_str::<Value>(&out).is_ok_and(|v| v["stats"].is_object()), "{out}");
}

/// POST /v1/quarantine: a subscriber, then one outside subscriber.prefixes,
/// then not an address; the CLI's usage errors.
fn quarantine_endpoint(socket: &Path) {
    let (status, v) =
        curl(socket, "POST", "/v1/quarantine", Some(&format!("{{\"subscriber\":\"{DYN4}\",\"seconds\":600}}")));
    assert_eq!((status, v["quarantined"].as_str(), v["seconds"].as_f64()), (200, Some(DYN4), Some(600.0)), "{v}");
    let (status, v) = curl(socket, "POST", "/v1/quarantine", Some("{\"subscriber\":\"8.8.8.8\"}"));
    assert_eq!(status, 409, "{v}");
    let e = v["error"].as_str().expect("an error line");
    assert!(e.starts_with("8.8.8.8 is not a subscriber here: not in subscriber.prefixes"), "{e}");
    let (code, out, err) = op25b(&["quarantine", "8.8.8.8"], socket);
    assert_eq!((code, out.as_str()), (1, ""), "refused: {err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("not in subscriber.prefixes"), "{err}");
    for args in [&["quarantine", "bogus"][..], &["release", "bogus"], &["quarantine", "100.64.1.10/24"]] {
        let (code, _, err) = op25b(args, socket);
        assert_eq!(code, 2, "{args:?} is a usage error: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }
    let (status, v) = curl(socket, "POST", "/v1/quarantine", Some("{\"subscriber\":\"bogus\"}"));
    assert_eq!(status, 400, "{v}");
    let (status, v) = curl(socket, "POST", "/v1/quarantine", Some("not json"));
    assert_eq!(status, 400, "{v}");
}

/// GET /v1/top: the quarantined list (DYN4), over curl and in `op25b top --json`.
fn top_endpoint(socket: &Path) {
    let (status, v) = curl(socket, "GET", "/v1/top?n=5&by=destinations", None);
    assert_eq!((status, v["by"].as_str()), (200, Some("destinations")), "{v}");
    assert_eq!(v["quarantined"][0]["subscriber"], DYN4, "{v}");
    let (code, out, err) = op25b(&["top", "--json"], socket);
    assert_eq!(code, 0, "{err}");
    let top: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(top["top"].is_array(), "{top}");
    let q = top["quarantined"].as_array().unwrap_or_else(|| panic!("top --json has the quarantined list: {top}"));
    assert_eq!(q.len(), 1, "{top}");
    assert_eq!(q[0]["subscriber"], DYN4, "{top}");
    assert!(q[0]["until"].as_f64().is_some_and(|t| t > 1.7e9), "{top}");
    let (status, v) = curl(socket, "GET", "/v1/top?by=size", None);
    assert_eq!(status, 400, "{v}");
}

/// POST /v1/release: done, then refused (not in quarantine any more).
fn release_endpoint(socket: &Path) {
    let (status, v) = curl(socket, "POST", "/v1/release", Some(&format!("{{\"subscriber\":\"{DYN4}\"}}")));
    assert_eq!((status, v["released"].as_str()), (200, Some(DYN4)), "{v}");
    let (status, v) = curl(socket, "POST", "/v1/release", Some(&format!("{{\"subscriber\":\"{DYN4}\"}}")));
    assert_eq!(status, 409, "{v}");
    let (code, _, err) = op25b(&["release", DYN4], socket);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not in quarantine"), "{err}");
}

/// POST /v1/reload of `config`: accepted, with what was kept; twice.
fn reload_endpoint(socket: &Path, config: &Path) {
    let (status, v) = curl(socket, "POST", "/v1/reload", None);
    assert_eq!((status, v["result"].as_str()), (200, Some("accepted")), "{v}");
    assert_eq!(v["file"], config.display().to_string());
    assert_eq!(v["kept"]["reply_buckets"], true, "the same config keeps the reply buckets: {v}");
    let (code, out, err) = op25b(&["reload"], socket);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("reload accepted: ") && out.contains("(kept: reply buckets"), "{out}");
    let (_, v) = curl(socket, "GET", "/v1/stats", None);
    assert_eq!(v["reloads"]["success"], 2, "{v}");
}

/// Errors are JSON too; the wrong method is not a change of state.
fn errors_are_json(socket: &Path) {
    let (status, v) = curl(socket, "GET", "/v1/nothing", None);
    assert!(status == 404 && v["error"].is_string(), "{status} {v}");
    let (status, v) = curl(socket, "GET", "/v1/reload", None);
    assert!(status == 405 && v["error"].is_string(), "{status} {v}");
    let (status, v) = curl(socket, "POST", "/v1/stats", None);
    assert_eq!(status, 405, "{v}");
}

/// `events` needs --follow; nobody at a socket is exit 2, and a reload that
/// reaches nobody did not happen: a failure (1), for systemctl.
fn cli_usage_and_nobody_there(socket: &Path) {
    let (code, _, err) = op25b(&["events"], socket);
    assert_eq!(code, 2, "{err}");
    let missing = socket_path("missing");
    for args in [&["stats"][..], &["top"], &["events", "--follow"], &["release", DYN4]] {
        let (code, _, err) = op25b(args, &missing);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.starts_with("op25b: error: no op25b answers at "), "{args:?}: {err}");
    }
    let (code, _, err) = op25b(&["reload"], &missing);
    assert_eq!(code, 1, "{err}");
}

#[test]
fn every_endpoint_over_curl_and_the_cli_as_its_client() {
    let socket = socket_path("api");
    let metrics = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port");
    let lab = Lab::start(LabOptions::edit(|p| {
        p.control("socket", toml_path(&socket)).control("metrics", format!("\"{metrics}\"")).abuse("threshold", 1000)
    }));
    wait_socket(&socket);
    metrics_listener_only_reads(metrics);
    let mode = std::fs::metadata(&socket).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()));
    assert_eq!(mode.expect("the socket exists") & 0o777, 0o600, "socket mode");
    stats_endpoint(&socket);
    quarantine_endpoint(&socket);
    top_endpoint(&socket);
    release_endpoint(&socket);
    reload_endpoint(&socket, &lab.config);
    errors_are_json(&socket);
    cli_usage_and_nobody_there(&socket);
    drop(lab);
    assert!(!socket.exists(), "op25b removed its socket");
}

#[test]
fn events_follow_receives_a_blocked_syn_live_without_an_events_file() {
    let socket = socket_path("follow");
    // No [events] file: the stream is fed all the same.
    let lab = Lab::start(LabOptions::edit(|p| p.control("socket", toml_path(&socket)).abuse("threshold", 2)));
    wait_socket(&socket);
    let mut cli = Command::new(env!("CARGO_BIN_EXE_op25b"));
    cli.args(["events", "--follow"]).env("OP25B_SOCKET", &socket);
    let cli = Follower::start(cli);
    let mut raw = Command::new("curl");
    raw.args(["-sSN", "--max-time", "60", "--unix-socket"]).arg(&socket).arg("http://op25b/v1/events");
    let raw = Follower::start(raw);
    let deadline = Instant::now() + WAIT;
    while followers(&socket) < 2 {
        assert!(Instant::now() < deadline, "the followers never subscribed");
        std::thread::sleep(Duration::from_millis(50));
    }

    // A real blocked SYN from the subscriber namespace.
    let e = lab.connect(None, sa(MX4, 25), Duration::from_secs(3)).expect_err("port 25 is blocked");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{DYN4} -> {MX4}:25");
    for f in [&cli, &raw] {
        let b = f.wait("blocked", |e| e["event"] == "blocked");
        assert_eq!((b["subscriber"].as_str(), b["action"].as_str()), (Some(DYN4), Some("reject")), "{b}");
        assert_eq!(b["dst"], format!("{MX4}:25"), "{b}");
        assert!(b["ts"].is_string(), "{b}");
    }
    // A second attempt crosses the threshold: abuse handling's event.
    let _ = lab.connect(None, sa(MX4, 25), Duration::from_secs(3));
    let s = cli.wait("abuse_suspected", |e| e["event"] == "abuse_suspected");
    assert_eq!(s["subscriber"], DYN4, "{s}");
    // A reload, refused: its event says why.
    std::fs::write(&lab.config, lab.policy.clone().subscriber("mtu", 1400).toml()).expect("writing the config");
    let (code, _, err) = op25b(&["reload"], &socket);
    assert_eq!(code, 1, "{err}");
    let r = cli.wait("reload", |e| e["event"] == "reload");
    assert_eq!(r["result"], "failure", "{r}");
    assert!(r["detail"].as_str().is_some_and(|d| d.contains("subscriber.mtu")), "{r}");
    let (_, v) = curl(&socket, "GET", "/v1/stats", None);
    assert_eq!(v["events_stream"]["missed"], 0, "nobody fell behind: {v}");

    // op25b stops: the CLI follower says so and exits 1.
    let mut lab = lab;
    let _ = lab.stop();
    let mut cli = cli;
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = cli.child.try_wait().expect("waiting for the follower") {
            break s;
        }
        assert!(Instant::now() < deadline, "op25b events --follow went on after op25b stopped");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(1), "{status}");
}

#[test]
fn a_follower_that_stops_reading_is_told_what_it_missed_and_the_file_loses_nothing() {
    const ATTEMPTS: usize = 4000;
    let socket = socket_path("lag");
    let file = std::env::temp_dir().join(format!("{}-lag.jsonl", unique_base()));
    struct Remove(PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0); // may not exist
        }
    }
    let _remove = Remove(file.clone());
    let lab = Lab::start(LabOptions::edit(|p| {
        // Every SYN refused at once: none waits for a retransmission.
        p.control("socket", toml_path(&socket))
            .unlimited_replies()
            .events("path", format!("{:?}", file.to_str().expect("utf-8 path")))
            .events("per_subscriber_per_minute", 1_000_000)
    }));
    wait_socket(&socket);
    // Its standard output is a pipe nobody reads: it fills, then the
    // follower stops reading the socket, whose buffers fill in turn.
    let mut cli = Command::new(env!("CARGO_BIN_EXE_op25b"));
    cli.args(["events", "--follow"]).env("OP25B_SOCKET", &socket);
    let mut slow = Follower::paused(cli);
    let deadline = Instant::now() + WAIT;
    while followers(&socket) < 1 {
        assert!(Instant::now() < deadline, "the follower never subscribed");
        std::thread::sleep(Duration::from_millis(50));
    }
    let refused = in_netns(&lab.sub, || {
        (0..ATTEMPTS)
            .filter(|_| {
                let e = std::net::TcpStream::connect(sa(MX4, 25)).expect_err("port 25 is blocked");
                e.kind() == std::io::ErrorKind::ConnectionRefused
            })
            .count()
    });
    assert_eq!(refused, ATTEMPTS, "every attempt refused at once");
    // The file has every one (the events queue holds more than the attempts).
    let blocked_lines = || {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        text.lines().filter(|l| l.contains("\"event\":\"blocked\"")).count()
    };
    let deadline = Instant::now() + WAIT;
    while blocked_lines() < ATTEMPTS {
        assert!(Instant::now() < deadline, "the file has {} of {ATTEMPTS} blocked events", blocked_lines());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Reading again, the follower learns what it missed.
    slow.resume();
    let lagged = slow.wait("lagged", |e| e["event"] == "lagged");
    println!("the slow follower: {lagged}");
    let missed = lagged["missed"].as_u64().expect("missed");
    assert!(missed > 0 && missed < ATTEMPTS as u64, "{lagged}");
    let (_, v) = curl(&socket, "GET", "/v1/stats", None);
    assert!(v["events_stream"]["missed"].as_u64().is_some_and(|n| n >= missed), "counted: {v}");
    assert_eq!(v["stats"]["counters"]["events_dropped"], 0, "{v}");
    assert_eq!(blocked_lines(), ATTEMPTS, "the file lost nothing");
    // And the lines after the gap are the newest attempts.
    let after = slow.wait("blocked", |e| e["event"] == "blocked");
    assert_eq!(after["subscriber"], DYN4, "{after}");
}

/// The unit's ExecReload command, as words, with op25b's path replaced by
/// the binary under test.
fn exec_reload() -> Vec<String> {
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/op25b.service"))
        .expect("packaging/op25b.service");
    let line = unit
        .lines()
        .find_map(|l| l.trim().strip_prefix("ExecReload="))
        .unwrap_or_else(|| panic!("the unit has no ExecReload=:\n{unit}"));
    let mut words: Vec<String> = line.split_whitespace().map(str::to_string).collect();
    assert_eq!(words.first().map(String::as_str), Some("/usr/bin/op25b"), "ExecReload runs op25b: {line}");
    assert!(!line.contains('$'), "no variables to expand, so the words are the command: {line}");
    words[0] = env!("CARGO_BIN_EXE_op25b").into();
    words
}

#[test]
fn the_units_exec_reload_fails_when_op25b_refuses_the_config() {
    let socket = socket_path("unit");
    let lab = Lab::start(LabOptions::edit(|p| p.control("socket", toml_path(&socket))));
    wait_socket(&socket);
    let words = exec_reload();
    // The unit's op25b has its socket where the command looks by default;
    // the lab's is elsewhere, named the way an operator overrides it.
    let run = || {
        let out = Command::new(&words[0]).args(&words[1..]).env("OP25B_SOCKET", &socket).output().expect("runs");
        let text = |b: &[u8]| String::from_utf8_lossy(b).to_string();
        (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
    };
    let rule = "[[rule]]\nname = \"count-587\"\nprotocol = \"tcp\"\ndst_ports = [587]\naction = \"count\"\n";
    std::fs::write(&lab.config, lab.policy.clone().rules(rule).toml()).expect("writing the config");
    let (code, out, err) = run();
    assert_eq!(code, 0, "accepted: {out}{err}");
    assert!(out.starts_with(&format!("reload accepted: {}", lab.config.display())), "{out}");
    // Reloads asked for at once run one after the other, each answered.
    let at_once: Vec<std::process::Child> = (0..4)
        .map(|_| {
            Command::new(&words[0])
                .args(&words[1..])
                .env("OP25B_SOCKET", &socket)
                .stdout(Stdio::null())
                .spawn()
                .expect("runs")
        })
        .collect();
    for child in at_once {
        let out = child.wait_with_output().expect("it ends");
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let (_, v) = curl(&socket, "GET", "/v1/stats", None);
    assert_eq!(v["reloads"]["success"], 5, "{v}");
    let loaded = v["config_loaded_unix"].as_f64().expect("config_loaded_unix");

    std::fs::write(&lab.config, lab.policy.clone().subscriber("tun", "\"other0\"").toml()).expect("writing");
    let (code, out, err) = run();
    assert_eq!(code, 1, "refused: {out}{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("op25b: reload refused, the running config stays in force: "), "{err}");
    assert!(err.contains("subscriber.tun: changed from"), "{err}");

    std::fs::write(&lab.config, "[router\n").expect("writing");
    let (code, _, err) = run();
    assert_eq!(code, 1, "an invalid file is refused: {err}");
    let (_, v) = curl(&socket, "GET", "/v1/stats", None);
    assert_eq!((v["reloads"]["success"].as_u64(), v["reloads"]["failure"].as_u64()), (Some(5), Some(2)), "{v}");
    let r = &v["stats"]["reloads"];
    assert_eq!((r["accepted"].as_u64(), r["refused"].as_u64()), (Some(5), Some(2)), "the stats count them too: {v}");
    // The accepted config is still the one in force.
    assert_eq!(v["config_loaded_unix"].as_f64(), Some(loaded), "{v}");

    // SIGHUP still reloads, as before.
    let r = lab.reload(&lab.policy.toml());
    assert!(r.accepted, "{r}");
}
