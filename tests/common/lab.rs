//! The [`Lab`]: namespaces, topology and one `op25b run` child, removed on drop.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::kill;
pub use nix::sys::signal::Signal;
use nix::unistd::Pid;
use op25b::lab::{setup, Names};
pub use op25b::testing::PolicyBuilder;
use serde_json::Value;
use socket2::{Domain, Protocol, Socket, Type};

use super::*;

/// How a lab's op25b is configured.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// The config, before the lab names its devices and namespaces: by
    /// default the lab's with the keys it sets to their defaults left out
    /// (`block_inbound`, `reply_rate`, `reply_burst`), so a test states
    /// what it relies on.
    pub policy: PolicyBuilder,
    /// Let the upstream hosts advertise a 1500-byte path MSS whatever their
    /// device's MTU, as a server behind a wider link would: the subscriber then
    /// sends full-size segments and only path MTU discovery can shrink them.
    pub upstream_advmss_1500: bool,
    /// Run op25b with `--log-format json`.
    pub log_json: bool,
    /// Extra environment of the op25b process (`NOTIFY_SOCKET`, ...).
    pub env: Vec<(String, String)>,
    /// A command that runs op25b: its words come before op25b's path and
    /// arguments (`setpriv --reuid=65534 ...`). Each must `exec` the next, so
    /// that the child's PID is op25b's (signals go there).
    pub wrapper: Vec<String>,
    /// op25b's `--stats` file instead of the lab's own (then [`Lab::stop`]
    /// cannot read it: use [`Lab::stop_status`]).
    pub stats_file: Option<PathBuf>,
    /// Another binary that takes op25b's `run` arguments (a router built on
    /// `op25b::daemon`, such as examples/custom_router.rs); op25b by default.
    pub binary: Option<PathBuf>,
    /// Give op25b a control socket of the lab's own ([`Lab::socket`]).
    pub control_socket: bool,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            policy: PolicyBuilder::lab().defaults(),
            upstream_advmss_1500: false,
            log_json: false,
            env: Vec::new(),
            wrapper: Vec::new(),
            stats_file: None,
            binary: None,
            control_socket: false,
        }
    }
}

impl LabOptions {
    /// The default lab with the config edited by `f`
    /// (`LabOptions::edit(|p| p.action("drop"))`).
    pub fn edit(f: impl FnOnce(PolicyBuilder) -> PolicyBuilder) -> LabOptions {
        let d = LabOptions::default();
        LabOptions { policy: f(d.policy), ..d }
    }

    /// These options with a control socket of the lab's own ([`Lab::socket`]).
    #[allow(dead_code)] // Not every test file that uses the harness asks for one.
    pub fn with_socket(self) -> LabOptions {
        LabOptions { control_socket: true, ..self }
    }
}

/// The counters op25b wrote to its `--stats` file when it stopped.
#[derive(Debug)]
pub struct Counters {
    /// The whole object: `counters` (every figure by name), `outbound`,
    /// `inbound` (verdicts by direction) and `rules`.
    pub json: Value,
}

impl Counters {
    /// A counter by its flat name (`op25b_blocked`, `reply_tcp_rst`, ...).
    /// op25b writes every name, zeros included, so a missing name is a
    /// misspelt one and fails the test.
    pub fn get(&self, name: &str) -> u64 {
        self.json["counters"][name].as_u64().unwrap_or_else(|| panic!("op25b wrote no counter {name:?}: {self}"))
    }

    /// The figures of one direction (`"outbound"` or `"inbound"`).
    pub fn dir(&self, name: &str) -> &Value {
        let d = &self.json[name];
        assert!(d.is_object(), "op25b wrote no {name:?} object: {}", self.json);
        d
    }
}

/// The non-zero counters as `name=value` words, for assertion messages.
impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(map) = self.json["counters"].as_object() else {
            return write!(f, "{}", self.json);
        };
        let words: Vec<String> =
            map.iter().filter(|(_, v)| v.as_u64() != Some(0)).map(|(k, v)| format!("{k}={v}")).collect();
        write!(f, "counters: {}", words.join(" "))
    }
}

/// `reloads_accepted` and `reloads_refused`.
fn reloads(c: &Counters) -> (usize, usize) {
    let n = |name| usize::try_from(c.get(name)).expect("a count fits usize");
    (n("reloads_accepted"), n("reloads_refused"))
}

/// What op25b made of a reload ([`Lab::reload`]), as its counters say.
#[derive(Debug)]
pub struct Reloaded {
    /// op25b put the config in force (`reloads_accepted` rose), or refused
    /// it (`reloads_refused` rose) and kept the running one.
    pub accepted: bool,
    /// The counters right after the reload (`reload_kept_*`, ...).
    #[allow(dead_code)] // Not every test file that reloads reads them.
    pub counters: Counters,
    /// The line op25b logged about it: what an operator reads (the file,
    /// line and key of a refusal), not how a test learns the outcome.
    pub message: String,
}

impl fmt::Display for Reloaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let outcome = if self.accepted { "accepted" } else { "refused" };
        write!(f, "{outcome}: {}", self.message)
    }
}

/// The counters of op25b process `pid` now: asks for them with SIGUSR1 and
/// reads the JSON it writes to its `--stats` file `path` (removed first, so
/// what is read is the answer). Fails the test, showing `log()`, if none
/// comes within [`PROCESS_WAIT`].
pub fn counters_of(pid: u32, path: &Path, log: &dyn Fn() -> String) -> Counters {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => panic!("removing {}: {e}", path.display()),
    }
    let pid = Pid::from_raw(i32::try_from(pid).expect("pids fit in i32"));
    kill(pid, Signal::SIGUSR1).unwrap_or_else(|e| panic!("SIGUSR1 to op25b: {e}"));
    let deadline = Instant::now() + PROCESS_WAIT;
    loop {
        // Written beside its name, then renamed: a file that is there is whole.
        if let Ok(text) = std::fs::read_to_string(path) {
            let json = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("op25b's stats in {} are not JSON ({e}):\n{text}", path.display()));
            return Counters { json };
        }
        assert!(
            Instant::now() < deadline,
            "op25b wrote no counters to {} within {PROCESS_WAIT:?} of SIGUSR1; its log:\n{}",
            path.display(),
            log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asks for the counters of op25b process `pid` ([`counters_of`]) until
/// `done` holds for them; fails the test, saying `what`, after [`PROCESS_WAIT`].
pub fn wait_counters_of(
    pid: u32,
    path: &Path,
    log: &dyn Fn() -> String,
    what: &str,
    done: impl Fn(&Counters) -> bool,
) -> Counters {
    let deadline = Instant::now() + PROCESS_WAIT;
    loop {
        let c = counters_of(pid, path, log);
        if done(&c) {
            return c;
        }
        assert!(Instant::now() < deadline, "waited {PROCESS_WAIT:?} for {what}; last {c}; its log:\n{}", log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A namespace pair with the test topology and an `op25b run` child between
/// them. Dropping it stops the child and deletes the namespaces and files.
pub struct Lab {
    /// Subscriber namespace.
    pub sub: String,
    /// Upstream namespace.
    pub up: String,
    namespaces: Vec<String>,
    child: Option<Child>,
    files: Vec<PathBuf>,
    log: PathBuf,
    stats: PathBuf,
    /// The config file op25b runs with (for `op25b check --config`).
    pub config: PathBuf,
    /// What `config` was written from: the test's policy with the lab's
    /// devices and namespaces (edit it for [`Lab::reload`]).
    pub policy: PolicyBuilder,
    /// How op25b is started (again, by [`Lab::restart`]).
    opts: LabOptions,
    /// The lab's names (namespaces, devices) for its set-up.
    names: Names,
    /// op25b's control socket, when [`LabOptions::control_socket`] asked for one.
    socket: Option<PathBuf>,
}

impl Lab {
    /// Builds the topology and starts op25b; panics (after cleaning up) on failure.
    pub fn start(opts: LabOptions) -> Lab {
        preflight(true);
        let base = unique_base();
        let dir = std::env::temp_dir();
        // The lab's own definition and set-up (`op25b lab`), under a name of
        // the test's and with the harness's device names.
        let names = Names {
            sub_tun: SUB_TUN.to_string(),
            up_tun: UP_TUN.to_string(),
            ..Names::new(&base).unwrap_or_else(|| panic!("{base:?} is no lab name"))
        };
        let (sub, up) = (names.sub_ns.clone(), names.inet_ns.clone());
        let socket = opts.control_socket.then(|| dir.join(format!("{base}.sock")));
        let mut policy = opts.policy.clone().devices((SUB_TUN, Some(sub.as_str())), (UP_TUN, Some(up.as_str())));
        if let Some(s) = &socket {
            policy = policy.control("socket", toml_path(s));
        }
        let mut lab = Lab {
            sub,
            up,
            namespaces: Vec::new(),
            child: None,
            files: Vec::new(),
            log: dir.join(format!("{base}.log")),
            stats: dir.join(format!("{base}-stats.json")),
            config: dir.join(format!("{base}.toml")),
            policy,
            opts: LabOptions::default(),
            names: names.clone(),
            socket: socket.clone(),
        };
        lab.namespaces = vec![lab.sub.clone(), lab.up.clone()];
        setup::create_namespaces(&names).unwrap_or_else(|e| panic!("creating the lab's namespaces: {e}"));

        let config = lab.config.clone();
        lab.files.push(config.clone());
        std::fs::write(&config, lab.policy.toml()).unwrap_or_else(|e| panic!("writing {}: {e}", config.display()));
        // op25b writes the stats beside their final name, then renames.
        let tmp_name = format!(".{}.tmp", lab.stats.file_name().map(|n| n.to_string_lossy()).unwrap_or_default());
        lab.files.extend([lab.stats.clone(), lab.stats.with_file_name(tmp_name)]);
        lab.files.push(lab.log.clone());
        // op25b removes its socket when it stops; not when it is killed.
        lab.files.extend(socket);
        lab.launch(&opts, false);
        lab.opts = opts;
        lab
    }

    /// Starts op25b with `opts` (appending to its log when `append`), waits
    /// for its devices and routes through them.
    fn launch(&mut self, opts: &LabOptions, append: bool) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(append)
            .write(true)
            .truncate(!append)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("opening {}: {e}", self.log.display()));
        let log_format = if opts.log_json { "json" } else { "text" };
        let stats_arg = opts.stats_file.clone().unwrap_or_else(|| self.stats.clone());
        let bin = opts.binary.clone().unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_op25b")));
        let bin = bin.as_path();
        let mut cmd = match opts.wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let child = cmd
            .args(["--log-format", log_format])
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .arg("--stats")
            .arg(&stats_arg)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start op25b: {e}"));
        self.child = Some(child);

        let names = self.names.clone();
        let waited = setup::wait_devices(&names, PROCESS_WAIT, || {
            let status = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            status.map(|s| format!("op25b exited ({s})"))
        });
        if let Err(e) = waited {
            panic!("{e}; op25b's log:\n{}", self.log_text());
        }
        setup::add_routes(&names, opts.upstream_advmss_1500).unwrap_or_else(|e| panic!("the lab's routes: {e}"));
    }

    /// Stops op25b (SIGTERM; it must exit cleanly) and, `down` later, starts
    /// it again with the same config file and options, as `systemctl
    /// restart` would; its log goes on in the same file.
    #[allow(dead_code)] // Not every test file that uses the harness restarts it.
    pub fn restart(&mut self, down: Duration) {
        let mut child = self.child.take().expect("op25b is running");
        let status = terminate(&mut child);
        assert!(
            status.is_some_and(|s| s.success()),
            "op25b did not exit cleanly after SIGTERM ({status:?}); its log:\n{}",
            self.log_text()
        );
        std::thread::sleep(down);
        self.relaunch();
    }

    /// Starts op25b again after it exited (see [`Lab::wait_exit`]), with the
    /// same config file and options; its log goes on in the same file.
    #[allow(dead_code)]
    pub fn relaunch(&mut self) {
        assert!(self.child.is_none(), "op25b is still running");
        let opts = self.opts.clone();
        self.launch(&opts, true);
    }

    /// op25b's control socket ([`LabOptions::with_socket`]).
    #[allow(dead_code)] // Not every test file that uses the harness asks for one.
    pub fn socket(&self) -> &Path {
        self.socket.as_deref().expect("a lab started with LabOptions::with_socket")
    }

    /// `ip -n SUB ARGS`.
    pub fn sub_ip(&self, args: &[&str]) {
        ip_cmd(&[&["-n", self.sub.as_str()], args].concat());
    }

    /// `ip -n UP ARGS`.
    #[allow(dead_code)] // Not every test file that uses the harness changes the outside.
    pub fn up_ip(&self, args: &[&str]) {
        ip_cmd(&[&["-n", self.up.as_str()], args].concat());
    }

    /// Rewrites op25b's config file with `text`, sends SIGHUP and waits
    /// (bounded) until op25b counts the reload, accepted or refused, in its
    /// own counters ([`Lab::counters_now`]).
    pub fn reload(&self, text: &str) -> Reloaded {
        let outcome_lines =
            |log: &str| log.lines().filter(|l| l.contains("config reload")).map(str::to_string).collect::<Vec<_>>();
        // The log goes on across restarts, the counters start again.
        let logged = outcome_lines(&self.log_text()).len();
        let before = reloads(&self.counters_now());
        std::fs::write(&self.config, text).unwrap_or_else(|e| panic!("writing {}: {e}", self.config.display()));
        self.signal(Signal::SIGHUP);
        let counters = self.wait_counters("op25b to count the reload", |c| reloads(c) != before);
        let accepted = reloads(&counters).0 > before.0;
        // op25b logs the outcome before it counts it.
        let message = outcome_lines(&self.log_text()).into_iter().nth(logged).unwrap_or_else(|| {
            panic!("op25b counted a reload but logged no line about it; its log:\n{}", self.log_text())
        });
        let r = Reloaded { accepted, counters, message };
        println!("reload: {r}");
        r
    }

    /// op25b's counters now ([`counters_of`] its `--stats` file).
    pub fn counters_now(&self) -> Counters {
        counters_of(self.pid(), &self.stats_path(), &|| self.log_text())
    }

    /// Asks for op25b's counters until `done` holds for them
    /// ([`wait_counters_of`]).
    pub fn wait_counters(&self, what: &str, done: impl Fn(&Counters) -> bool) -> Counters {
        wait_counters_of(self.pid(), &self.stats_path(), &|| self.log_text(), what, done)
    }

    /// Where op25b writes its counters (`--stats`).
    fn stats_path(&self) -> PathBuf {
        self.opts.stats_file.clone().unwrap_or_else(|| self.stats.clone())
    }

    /// op25b's process id.
    #[allow(dead_code)] // Not every test file that uses the harness signals it.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("op25b is running").id()
    }

    /// op25b's stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `ip netns exec SUB ping ARGS`: (exit success, stdout + stderr).
    pub fn ping(&self, args: &[&str]) -> (bool, String) {
        let out = output("ip", &[&["netns", "exec", self.sub.as_str(), "ping"], args].concat());
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        println!("$ ping {}\n{}", args.join(" "), text.trim_end());
        (out.status.success(), text)
    }

    /// A TCP client in the subscriber namespace, from `src` (or the route's
    /// source hint, the dynamic address), with a connect timeout. Prints how
    /// long the connect took (for the reader; tests never assert on timing).
    pub fn connect(&self, src: Option<IpAddr>, dst: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        let t0 = Instant::now();
        let result = in_netns(&self.sub, || -> io::Result<TcpStream> {
            let sock = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
            if let Some(src) = src {
                sock.bind(&SocketAddr::new(src, 0).into())?;
            }
            sock.connect_timeout(&dst.into(), timeout)?;
            let stream: TcpStream = sock.into();
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            stream.set_write_timeout(Some(Duration::from_secs(5)))?;
            Ok(stream)
        });
        let from = src.map_or_else(|| "default source".to_string(), |s| s.to_string());
        match &result {
            Ok(_) => println!("connect {from} -> {dst}: connected in {:?}", t0.elapsed()),
            Err(e) => println!("connect {from} -> {dst}: {:?} ({e}) after {:?}", e.kind(), t0.elapsed()),
        }
        result
    }

    /// CPU time (user + system) op25b has used so far, from /proc/PID/stat.
    pub fn cpu_time(&self) -> Duration {
        let pid = self.child.as_ref().expect("op25b is running").id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("op25b's /proc stat");
        // Fields after the command name (which may hold spaces) start at ") ".
        let rest = &stat[stat.rfind(") ").expect("stat format") + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here.
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // USER_HZ: 100 on Linux unless getconf says otherwise.
        let hz = Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<u64>().ok())
            .unwrap_or(100)
            .max(1);
        Duration::from_micros(ticks * 1_000_000 / hz)
    }

    /// op25b's resident memory (VmRSS) now, in KiB, from /proc/PID/status.
    #[allow(dead_code)] // Not every test file that uses the harness reads it.
    pub fn vm_rss_kib(&self) -> u64 {
        let pid = self.child.as_ref().expect("op25b is running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("op25b's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in op25b's /proc status")
    }

    /// Sends `signal` to op25b.
    #[allow(dead_code)]
    pub fn signal(&self, signal: Signal) {
        let pid = Pid::from_raw(i32::try_from(self.pid()).expect("pids fit in i32"));
        kill(pid, signal).unwrap_or_else(|e| panic!("{signal} to op25b: {e}"));
        if signal == Signal::SIGSTOP {
            // The signal is delivered, not yet obeyed: wait until every
            // thread is stopped, so nothing reads the devices afterwards.
            let tasks = format!("/proc/{}/task", self.pid());
            let stopped = || {
                std::fs::read_dir(&tasks).into_iter().flatten().flatten().all(|t| {
                    let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
                    stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('T'))
                })
            };
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while !stopped() {
                assert!(std::time::Instant::now() < deadline, "op25b did not stop on SIGSTOP within 5 s");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// Waits up to `within` for op25b to exit by itself: its exit status and
    /// how long the wait took, or `None` if it is still running.
    #[allow(dead_code)]
    pub fn wait_exit(&mut self, within: Duration) -> Option<(std::process::ExitStatus, Duration)> {
        let t0 = Instant::now();
        loop {
            let child = self.child.as_mut().expect("op25b was already stopped");
            if let Some(status) = child.try_wait().unwrap_or_else(|e| panic!("waiting for op25b: {e}")) {
                self.child = None;
                return Some((status, t0.elapsed()));
            }
            if t0.elapsed() >= within {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Deletes namespace `ns` of this lab now, so the lab does not delete it again.
    #[allow(dead_code)]
    pub fn delete_netns(&mut self, ns: &str) {
        op25b::lab::netns::delete(ns).unwrap_or_else(|e| panic!("deleting namespace {ns}: {e}"));
        self.namespaces.retain(|n| n != ns);
    }

    /// Sends SIGTERM and returns op25b's exit status (None: it had to be killed),
    /// reading no counters.
    #[allow(dead_code)]
    pub fn stop_status(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take().expect("op25b was already stopped");
        terminate(&mut child)
    }

    /// Sends SIGTERM, waits for op25b to exit cleanly and returns the final
    /// counters it wrote to its `--stats` file.
    pub fn stop(&mut self) -> Counters {
        let mut child = self.child.take().expect("op25b was already stopped");
        let status = terminate(&mut child);
        assert!(
            status.is_some_and(|s| s.success()),
            "op25b did not exit cleanly after SIGTERM ({status:?}); its log:\n{}",
            self.log_text()
        );
        let text = std::fs::read_to_string(&self.stats).unwrap_or_else(|e| {
            panic!("op25b wrote no stats to {} ({e}); its log:\n{}", self.stats.display(), self.log_text())
        });
        let json = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("op25b's stats in {} are not JSON ({e}):\n{text}", self.stats.display()));
        Counters { json }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
        if std::thread::panicking() {
            eprintln!("--- op25b log ({}) ---\n{}", self.log.display(), self.log_text());
        }
        for ns in self.namespaces.drain(..).rev() {
            if let Err(e) = op25b::lab::netns::delete(&ns) {
                eprintln!("cleanup: deleting namespace {ns}: {e}");
            }
        }
        for f in &self.files {
            let _ = std::fs::remove_file(f); // may not exist if start failed early
        }
    }
}

/// SIGTERM, wait up to [`PROCESS_WAIT`], then SIGKILL. Returns the exit status if
/// the process exited by itself.
fn terminate(child: &mut Child) -> Option<std::process::ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("pids fit in i32"));
    if let Err(e) = kill(pid, Signal::SIGTERM) {
        eprintln!("cleanup: SIGTERM to op25b ({pid}): {e}");
    }
    let deadline = Instant::now() + PROCESS_WAIT;
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                eprintln!("cleanup: waiting for op25b: {e}");
                break;
            }
        }
    }
    eprintln!("cleanup: op25b ({pid}) ignored SIGTERM for {PROCESS_WAIT:?}; killing it");
    let _ = child.kill(); // fails only if it exited meanwhile
    let _ = child.wait();
    None
}
