//! `op25b lab up|down|status|exec|mail|reload|serve`: the lab's life cycle
//! over its state file.

use std::ffi::OsString;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::def::{self, Definition, Names, SERVERS, SMTP_PORTS};
use super::kernel::{self, RouterKind};
use super::state::{self, LabState, Proc};
use super::veth::{self, Upstream};
use super::{netns, setup, smtp, LabError};

/// How long `up` waits for the servers to listen and the devices to come up.
pub(super) const START_WAIT: Duration = Duration::from_secs(10);
/// How long `down` gives a process after SIGTERM.
pub(super) const STOP_GRACE: Duration = Duration::from_secs(10);

/// `op25b lab up`'s options.
#[derive(Debug, Default)]
pub struct UpOptions {
    /// Start the SMTP servers.
    pub servers: bool,
    /// The user's config instead of the lab's.
    pub config: Option<PathBuf>,
    /// The router binary instead of this op25b.
    pub bin: Option<PathBuf>,
    /// `op25b run --stats FILE`.
    pub stats: Option<PathBuf>,
    /// What forwards.
    pub router: RouterKind,
    /// The kind of upstream op25b gets.
    pub upstream: Upstream,
}

pub(super) fn say(text: impl std::fmt::Display) {
    outln!("[lab] {text}");
}

fn files(dir: &Path) -> [PathBuf; 8] {
    [
        "lab.json",
        "op25b.toml",
        "op25b.log",
        "op25b.sock",
        "servers.log",
        "servers.ready",
        "connections.jsonl",
        "lab.json.tmp",
    ]
    .map(|f| dir.join(f))
}

pub(super) fn this_exe() -> Result<PathBuf, LabError> {
    std::env::current_exe().map_err(|e| LabError::Process(format!("finding this program: {e}")))
}

/// Whether the recorded lab runs whole: namespaces, op25b, the servers it started.
pub(super) fn healthy(s: &LabState) -> bool {
    s.namespaces.iter().all(|n| netns::exists(n))
        && (s.kernel_router || s.op25b.is_some_and(|p| p.alive()) || !s.instances.is_empty())
        && s.servers.is_none_or(|p| p.alive())
        && super::fleet::all_alive(s)
}

/// The config op25b will run: its text, and the lab names with the config's devices.
fn run_config(
    names: &Names,
    source: Option<&Path>,
    socket: &Path,
    upstream: Upstream,
) -> Result<(String, Names), LabError> {
    let (text, names) = match source {
        None => (upstream.config_toml(names), names.clone()),
        Some(path) => {
            let cfg = crate::config::Config::load(path).map_err(|e| LabError::Config(e.render(false)))?;
            upstream.check(path, &cfg)?;
            for (side, dev, ns) in
                [("subscriber", &cfg.subscriber, &names.sub_ns), ("upstream", &cfg.upstream, &names.inet_ns)]
            {
                if dev.netns.as_deref() != Some(ns.as_str()) {
                    return Err(LabError::Config(format!(
                        "{}: {side}.netns: the lab {} needs \"{ns}\" here (it is {:?})",
                        path.display(),
                        names.name,
                        dev.netns.as_deref().unwrap_or("absent")
                    )));
                }
            }
            let text = std::fs::read_to_string(path).map_err(|e| LabError::io(path, e))?;
            let names =
                Names { sub_tun: cfg.subscriber.tun.clone(), up_tun: cfg.upstream.tun.clone(), ..names.clone() };
            (text, names)
        }
    };
    let has_control = text.lines().any(|l| l.trim_start().starts_with("[control]"));
    let mut text = text;
    if !has_control {
        let s = socket.display();
        text.push_str(&format!("\n# Added by op25b lab: op25b stats --socket {s}\n[control]\nsocket = \"{s}\"\n"));
    }
    Ok((text, names))
}

/// A usage error unless this process runs as root: namespaces, their mounts
/// and TUN devices need CAP_SYS_ADMIN and CAP_NET_ADMIN.
pub(super) fn need_root(what: &str) -> Result<(), LabError> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(LabError::Usage(format!("op25b lab {what} must run as root (network namespaces and TUN devices)")))
    }
}

/// `op25b lab up`.
pub fn up(names: &Names, opts: &UpOptions) -> Result<(), LabError> {
    need_root("up")?;
    match LabState::load(names) {
        Ok(Some(s))
            if healthy(&s)
                && s.instances.is_empty()
                && (s.servers.is_some() || !opts.servers)
                && s.upstream == opts.upstream =>
        {
            say(format!("lab {} already up (op25b pid {}); nothing to do", names.name, s.op25b.map_or(0, |p| p.pid)));
            return Ok(());
        }
        Ok(None) if !netns::exists(&names.sub_ns) && !netns::exists(&names.inet_ns) => {}
        _ => {
            say("partial lab found: tearing it down first");
            down(names, None)?;
        }
    }
    let dir = names.state_dir();
    state::make_dir(&dir)?;
    let mut st = LabState::new(names);
    let socket = dir.join("op25b.sock");
    let (text, names) = match run_config(names, opts.config.as_deref(), &socket, opts.upstream) {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_dir(&dir);
            return Err(e);
        }
    };
    let names = if opts.router == RouterKind::Kernel { kernel::names(&names) } else { names };
    st.names = names.clone();
    st.kernel_router = opts.router == RouterKind::Kernel;
    st.upstream = opts.upstream;
    // Absolute, so `reload` finds it from any directory.
    st.source_config = opts.config.as_ref().map(|c| std::fs::canonicalize(c).unwrap_or_else(|_| c.clone()));
    st.socket = (!st.kernel_router && text.contains(&format!("socket = \"{}\"", socket.display()))).then_some(socket);
    std::fs::write(&st.config, &text).map_err(|e| LabError::io(&st.config, e))?;
    let started = start(&names, &mut st, opts);
    if let Err(e) = started {
        for (what, file) in [("op25b", "op25b.log"), ("the SMTP servers", "servers.log")] {
            let log = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
            if !log.trim().is_empty() {
                eprintln!("[lab] {what}'s log:\n{}", indent(&log));
            }
        }
        say(format!("up failed ({e}): tearing down"));
        down(&names, None)?;
        return Err(e);
    }
    let router = match st.op25b {
        Some(p) => format!("op25b pid {}", p.pid),
        None => "the kernel forwards".into(),
    };
    say(format!("lab {} is up: {router}, state in {}", names.name, dir.display()));
    say(format!("try: op25b lab exec{} -- ping -c1 {}", name_arg(&names), def::MX4));
    Ok(())
}

fn name_arg(names: &Names) -> String {
    if names.name == def::DEFAULT_NAME {
        String::new()
    } else {
        format!(" --name {}", names.name)
    }
}

pub(super) fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}

fn start(names: &Names, st: &mut LabState, opts: &UpOptions) -> Result<(), LabError> {
    let dir = names.state_dir();
    st.namespaces = vec![names.sub_ns.clone(), names.inet_ns.clone()];
    st.save()?;
    say(format!("creating netns {} (subscribers) and {} (outside)", names.sub_ns, names.inet_ns));
    setup::create_namespaces(names)?;
    if opts.upstream == Upstream::Veth {
        say(format!(
            "making the upstream link in {}: veth {} (op25b's) / {} ({} {})",
            names.inet_ns,
            names.up_tun,
            veth::VETH_GW,
            veth::GW4,
            veth::GW6
        ));
        veth::make_link(names)?;
    }
    if opts.servers {
        let ports: Vec<String> = SMTP_PORTS.iter().map(u16::to_string).collect();
        say(format!("starting the SMTP servers (ports {}) in {}", ports.join(" "), names.inet_ns));
        let log = open_log(&dir.join("servers.log"))?;
        let mut cmd = Command::new(this_exe()?);
        cmd.args(["lab", "serve", "--name", &names.name]);
        let child = spawn_in(&mut cmd, &names.inet_ns, log)?;
        st.servers = Proc::of(child);
        st.save()?;
        let ready = dir.join("servers.ready");
        wait(START_WAIT, "the SMTP servers to listen", || ready.exists(), || gone(st.servers, "the SMTP servers"))?;
    }
    if st.kernel_router {
        say(format!("kernel router: netns {} (veth, ip_forward, nftables)", kernel::router_ns(names)));
        return kernel::build(names, st);
    }
    let bin = match &opts.bin {
        Some(b) => b.clone(),
        None => this_exe()?,
    };
    say(format!(
        "starting op25b: {} run --config {} (log: {})",
        bin.display(),
        st.config.display(),
        dir.join("op25b.log").display()
    ));
    let log = open_log(&dir.join("op25b.log"))?;
    let mut cmd = Command::new(&bin);
    cmd.arg("run").arg("--config").arg(&st.config).env("NO_COLOR", "1");
    if let Some(stats) = &opts.stats {
        cmd.arg("--stats").arg(stats);
    }
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
    let child = spawn_logged(&mut cmd, log)?;
    st.op25b = Proc::of(child.id());
    st.save()?;
    setup::wait_devices(names, START_WAIT, || gone(st.op25b, "op25b"))?;
    say("adding routes");
    match opts.upstream {
        Upstream::Tun => setup::add_routes(names, false)?,
        // The outside's routes go through the gateway, made with the link.
        Upstream::Veth => setup::add_subscriber_routes(names)?,
    }
    // A moment for op25b to fail on what it does after raising the devices.
    std::thread::sleep(Duration::from_millis(300));
    if let Some(why) = gone(st.op25b, "op25b").or_else(|| st.servers.and_then(|p| gone(Some(p), "the SMTP servers"))) {
        return Err(LabError::Process(why));
    }
    Ok(())
}

pub(super) fn open_log(path: &Path) -> Result<File, LabError> {
    File::create(path).map_err(|e| LabError::io(path, e))
}

/// `Some("NAME exited")` once the recorded process is gone.
pub(super) fn gone(p: Option<Proc>, name: &str) -> Option<String> {
    match p {
        Some(p) if p.alive() => None,
        _ => Some(format!("{name} exited")),
    }
}

pub(super) fn wait(
    within: Duration,
    what: &str,
    mut done: impl FnMut() -> bool,
    mut gone: impl FnMut() -> Option<String>,
) -> Result<(), LabError> {
    let t0 = std::time::Instant::now();
    while !done() {
        if let Some(why) = gone() {
            return Err(LabError::Process(format!("{why} while waiting for {what}")));
        }
        if t0.elapsed() >= within {
            return Err(LabError::Process(format!("timed out after {within:?} waiting for {what}")));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Spawns `cmd` inside namespace `ns` in a process group of its own, output to `log`.
pub(super) fn spawn_in(cmd: &mut Command, ns: &str, log: File) -> Result<u32, LabError> {
    let file = netns::open(ns)?;
    // SAFETY: between fork and exec the child calls only setns(2), which is
    // async-signal-safe, on a descriptor opened before the fork.
    unsafe {
        cmd.pre_exec(move || setns(&file, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from));
    }
    Ok(spawn_logged(cmd, log)?.id())
}

/// `op25b lab down`.
pub fn down(names: &Names, save_log: Option<&Path>) -> Result<(), LabError> {
    need_root("down")?;
    let dir = names.state_dir();
    let st = match LabState::load(names) {
        Ok(s) => s,
        Err(e) => {
            say(format!("{e}: removing the lab by its names"));
            None
        }
    };
    if let Some(st) = &st {
        for (p, what) in [(st.op25b, "op25b"), (st.servers, "the SMTP servers")] {
            if let Some(p) = p {
                if p.alive() {
                    say(format!("stopping {what} (pid {})", p.pid));
                }
                p.stop(STOP_GRACE);
            }
        }
        super::fleet::stop(st, STOP_GRACE);
    }
    if let Some(to) = save_log {
        let from = dir.join("op25b.log");
        if from.exists() {
            std::fs::copy(&from, to).map_err(|e| LabError::io(to, e))?;
            say(format!("op25b log saved to {}", to.display()));
        }
    }
    let namespaces = match &st {
        Some(st) => st.namespaces.clone(),
        None => vec![names.sub_ns.clone(), names.inet_ns.clone()],
    };
    for ns in namespaces.iter().filter(|n| netns::exists(n)) {
        let left = netns::pids(ns);
        if !left.is_empty() {
            say(format!("processes still inside {ns} (not the lab's, left alone): {left:?}"));
        }
        say(format!("deleting netns {ns}"));
        netns::delete(ns)?;
    }
    if dir.exists() {
        super::fleet::remove_files(names);
        for f in
            files(&dir).iter().chain(SERVERS.iter().map(|s| smtp::mail_file(&dir, s.name)).collect::<Vec<_>>().iter())
        {
            let _ = std::fs::remove_file(f);
        }
        if std::fs::remove_dir(&dir).is_err() {
            say(format!("state dir {} not empty: left in place", dir.display()));
        }
    }
    say(format!("lab {} is down", names.name));
    Ok(())
}

/// `op25b lab status`: 0 when the lab is up whole, else 1.
pub fn status(names: &Names, json: bool) -> Result<u8, LabError> {
    let st = LabState::load(names)?;
    let names = st.as_ref().map_or_else(|| names.clone(), |s| s.names.clone());
    let up = st.as_ref().is_some_and(healthy);
    let dir = names.state_dir();
    if json {
        let v = serde_json::json!({
            "definition": Definition::of(&names),
            "upstream": st.as_ref().map(|s| s.upstream).unwrap_or_default(),
            "up": up,
            "state": st,
            "op25b_running": st.as_ref().and_then(|s| s.op25b).is_some_and(|p| p.alive()),
            "servers_running": st.as_ref().and_then(|s| s.servers).is_some_and(|p| p.alive()),
            "mail": SERVERS.iter().map(|s| (s.name, smtp::read_mail(&dir, s.name).len())).collect::<std::collections::BTreeMap<_, _>>(),
        });
        outln!("{v:#}");
        return Ok(if up { 0 } else { 1 });
    }
    outln!("lab {}: {}", names.name, if up { "up" } else { "NOT up" });
    outln!("state dir: {}", dir.display());
    let several = st.as_ref().is_some_and(|s| !s.instances.is_empty());
    for (ns, dev) in [(&names.sub_ns, &names.sub_tun), (&names.inet_ns, &names.up_tun)].into_iter().filter(|_| !several)
    {
        if netns::exists(ns) {
            let link = match super::net::link_up(ns, dev) {
                Ok(true) => "up",
                Ok(false) => "absent or down",
                Err(_) => "unknown",
            };
            outln!("netns {ns}: present, {dev} {link}");
        } else {
            outln!("netns {ns}: absent");
        }
    }
    if let Some(st) = st.as_ref().filter(|_| several) {
        super::fleet::status(st);
    }
    for (p, what) in st.as_ref().map(|s| [(s.op25b, "op25b"), (s.servers, "SMTP servers")]).into_iter().flatten() {
        if several && what == "op25b" {
            continue;
        }
        match p {
            Some(p) if p.alive() => outln!("{what}: running, pid {}", p.pid),
            Some(p) => outln!("{what}: NOT running (pid {} gone)", p.pid),
            None => outln!("{what}: not started"),
        }
    }
    if let Some(socket) = st.as_ref().and_then(|s| s.socket.as_ref()) {
        outln!("control socket: {} (op25b stats --socket {})", socket.display(), socket.display());
    }
    for s in SERVERS {
        let n = smtp::read_mail(&dir, s.name).len();
        if st.as_ref().is_some_and(|s| s.servers.is_some()) {
            outln!("mail at {}: {n}", s.name);
        }
    }
    let log = std::fs::read_to_string(dir.join("op25b.log")).unwrap_or_default();
    if !log.is_empty() {
        let lines: Vec<&str> = log.lines().collect();
        outln!("op25b log, last lines:");
        out!("{}", indent(&lines[lines.len().saturating_sub(15)..].join("\n")));
    }
    Ok(if up { 0 } else { 1 })
}

/// `op25b lab exec`: replaces this process with the command, in the namespace.
pub fn exec(names: &Names, outside: bool, command: &[OsString]) -> Result<u8, LabError> {
    need_root("exec")?;
    let ns = if outside { &names.inet_ns } else { &names.sub_ns };
    if !netns::exists(ns) {
        return Err(LabError::Usage(format!("the lab {} is not up (no namespace {ns}): op25b lab up", names.name)));
    }
    let (prog, args) = command.split_first().ok_or_else(|| LabError::Usage("no command given".into()))?;
    let file = netns::open(ns)?;
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| LabError::Netns(format!("entering {ns}: {e}")))?;
    let e = Command::new(prog).args(args).exec();
    Err(LabError::Process(format!("{}: {e}", prog.to_string_lossy())))
}

/// `op25b lab mail`.
pub fn mail(names: &Names, json: bool) -> Result<(), LabError> {
    let dir = names.state_dir();
    for s in SERVERS {
        let msgs = smtp::read_mail(&dir, s.name);
        if json {
            for m in &msgs {
                outln!("{}", serde_json::to_string(m).map_err(|e| LabError::State(e.to_string()))?);
            }
            continue;
        }
        let plural = if msgs.len() == 1 { "" } else { "s" };
        outln!("{} ({}, {}): {} message{plural}", s.name, s.v4, s.v6, msgs.len());
        for m in &msgs {
            let local = if m.local.contains(':') { format!("[{}]", m.local) } else { m.local.clone() };
            let to: Vec<String> = m.rcpt_tos.iter().map(|r| format!("<{r}>")).collect();
            outln!(
                "  to {local}:{} from {}  <{}> -> {}  {:?}",
                m.local_port,
                m.peer,
                m.mail_from,
                to.join(", "),
                m.subject()
            );
        }
    }
    Ok(())
}

/// `op25b lab reload`: 0 when op25b put the config in force, 1 when it refused it.
pub fn reload(names: &Names, config: Option<&Path>) -> Result<u8, LabError> {
    let st = LabState::load(names)?
        .ok_or_else(|| LabError::Usage(format!("the lab {} is not up: op25b lab up", names.name)))?;
    if let Some(i) = st.instances.first() {
        return Err(LabError::Usage(format!(
            "the lab {} runs several op25b instances: reload each with op25b reload --socket {}",
            names.name,
            i.socket.display()
        )));
    }
    let op25b = st.op25b.filter(Proc::alive).ok_or_else(|| LabError::Usage("op25b is not running".into()))?;
    let source = config.map(Path::to_path_buf).or_else(|| st.source_config.clone());
    let socket = names.state_dir().join("op25b.sock");
    // Written as given (line numbers stay the file's); op25b validates it.
    let text = match &source {
        Some(p) => std::fs::read_to_string(p).map_err(|e| LabError::io(p, e))?,
        None => st.upstream.config_toml(&st.names),
    };
    let text = if text.lines().any(|l| l.trim_start().starts_with("[control]")) {
        text
    } else {
        let s = socket.display();
        format!("{text}\n# Added by op25b lab: op25b stats --socket {s}\n[control]\nsocket = \"{s}\"\n")
    };
    let log_path = names.state_dir().join("op25b.log");
    let outcomes = || -> Vec<String> {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        log.lines().filter(|l| l.contains("config reload")).map(str::to_string).collect()
    };
    let before = outcomes().len();
    std::fs::write(&st.config, text).map_err(|e| LabError::io(&st.config, e))?;
    kill(Pid::from_raw(op25b.pid as i32), Signal::SIGHUP).map_err(|e| LabError::Process(format!("SIGHUP: {e}")))?;
    let mut line = None;
    wait(
        Duration::from_secs(5),
        "op25b to log the reload",
        || {
            line = outcomes().get(before).cloned();
            line.is_some()
        },
        || gone(Some(op25b), "op25b"),
    )?;
    let line = line.unwrap_or_default();
    // Without the timestamp: "INFO op25b: config reloaded: ...".
    let shown = line.split_once(' ').map_or(line.as_str(), |(_, rest)| rest).trim_start();
    outln!("{shown}");
    Ok(if line.contains("config reloaded") { 0 } else { 1 })
}

/// `op25b lab serve`: the SMTP servers, in the namespace this process was
/// started in: the lab's, or those of `listen` logging to `dir`.
pub fn serve(
    names: &Names,
    dir: Option<PathBuf>,
    listen: Vec<(String, std::net::SocketAddr)>,
    lifetime: Option<Duration>,
) -> Result<(), LabError> {
    let dir = dir.unwrap_or_else(|| names.state_dir());
    let listen = if listen.is_empty() { smtp::lab_listen() } else { listen };
    let ready = dir.join("servers.ready");
    smtp::serve(&dir, &listen, lifetime, || {
        if let Err(e) = std::fs::write(&ready, "") {
            tracing::error!("writing {}: {e}", ready.display());
        }
    })
}

/// Starts `cmd` in a process group of its own, both its outputs to `log`.
pub(super) fn spawn_logged(cmd: &mut Command, log: File) -> Result<std::process::Child, LabError> {
    let err = log.try_clone().map_err(|e| LabError::Process(format!("log file: {e}")))?;
    cmd.stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| LabError::Process(format!("starting {}: {e}", Path::new(cmd.get_program()).display())))
}
