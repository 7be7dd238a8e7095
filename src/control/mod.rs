//! The control plane: a thread of its own with a current-thread tokio
//! runtime, beside the data plane and never in its way. It serves the Unix
//! socket (`op25b stats`) and HTTP (`/metrics`, `/healthz`), reading the
//! counters through a [`StatsReader`]; the data plane hands it nothing and
//! never waits on it.
//!
//! Both listeners are bound before the thread starts, so a bad address or a
//! socket already in use is a start-up error, not a log line later.

pub mod abuse;
pub mod abuse_state;
pub mod capture;
pub mod client;
pub mod events;
mod metrics;
pub mod notify;
mod writer;

pub use writer::{Failures, WriterThread};

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::config::ControlConfig;
use crate::dataplane::events::EventSender;
use crate::dataplane::StatsReader;
use crate::state::abuse::{parse_subscriber, subscriber_name, AbuseEvent};

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The Unix socket could not be made.
    #[error("control.socket {path}: {cause}")]
    Socket {
        /// The socket's path.
        path: PathBuf,
        /// The cause (in the message, not a `source()`: a chain prints it once).
        cause: io::Error,
    },
    /// Another op25b answers on the socket.
    #[error("control.socket {0}: another op25b is listening there")]
    InUse(PathBuf),
    /// The metrics address could not be bound.
    #[error("control.metrics {addr}: {cause}")]
    Metrics {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause (in the message, not a `source()`: a chain prints it once).
        cause: io::Error,
    },
    /// The control thread or its runtime could not start.
    #[error("cannot start the control plane: {0}")]
    Start(io::Error),
}

/// What the control plane knows besides the counters.
#[derive(Debug)]
struct Info {
    started: SystemTime,
    config: PathBuf,
    loaded: SystemTime,
    reloads_ok: u64,
    reloads_failed: u64,
}

/// A copy of [`Info`]'s figures for one answer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct InfoSnapshot {
    pub(crate) reloads_ok: u64,
    pub(crate) reloads_failed: u64,
    /// When the config in force was loaded, Unix seconds.
    pub(crate) loaded_unix: f64,
    /// When op25b started, Unix seconds.
    pub(crate) started_unix: f64,
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

impl Info {
    fn snapshot(&self) -> InfoSnapshot {
        InfoSnapshot {
            reloads_ok: self.reloads_ok,
            reloads_failed: self.reloads_failed,
            loaded_unix: unix(self.loaded),
            started_unix: unix(self.started),
        }
    }
}

/// What the handlers read.
#[derive(Clone)]
struct Shared {
    stats: StatsReader,
    info: Arc<Mutex<Info>>,
    /// Where `quarantine` and `release` report what they did.
    events: Option<EventSender>,
}

impl Shared {
    fn info(&self) -> std::sync::MutexGuard<'_, Info> {
        // A poisoned lock only means a handler panicked; the figures are plain numbers.
        self.info.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The answer to `stats` on the socket: one JSON object.
    fn stats_json(&self) -> serde_json::Value {
        let stats = self.stats.stats();
        let info = self.info();
        let now = SystemTime::now();
        serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": now.duration_since(info.started).map_or(0.0, |d| d.as_secs_f64()),
            "config": info.config.display().to_string(),
            "config_loaded_unix": unix(info.loaded),
            "reloads": {"success": info.reloads_ok, "failure": info.reloads_failed},
            "stats": stats.to_json(),
        })
    }

    /// One request: `stats`, `top N attempts|destinations`, `release
    /// SUBSCRIBER`, `quarantine SUBSCRIBER [SECONDS]`.
    fn command(&self, line: &str) -> serde_json::Value {
        let words: Vec<&str> = line.split_whitespace().collect();
        let err = |m: String| serde_json::json!({ "error": m });
        let abuse = self.stats.abuse();
        match (words.as_slice(), abuse) {
            (["stats"], _) => self.stats_json(),
            (["top" | "release" | "quarantine", ..], None) => {
                err("abuse handling is off: the running config has no [abuse] section".into())
            }
            (["top", n, by], Some(a)) => match (n.parse::<usize>(), *by) {
                (Ok(n), "attempts" | "destinations") => abuse::top_json(a, n, *by == "destinations"),
                _ => err(format!("usage: top N attempts|destinations, not {line:?}")),
            },
            (["release", who], Some(a)) => match parse_subscriber(who) {
                None => err(format!("{who:?} is not a subscriber (an IPv4 address, or an IPv6 address or /64)")),
                Some(key) => match a.release(key) {
                    Some(e) => {
                        abuse::report(e, self.events.as_ref());
                        serde_json::json!({"released": subscriber_name(key)})
                    }
                    None => err(format!("{} is not in quarantine", subscriber_name(key))),
                },
            },
            (["quarantine", who, rest @ ..], Some(a)) if rest.len() <= 1 => {
                let duration = match rest.first().map(|s| s.parse::<f64>()) {
                    None => None,
                    Some(Ok(s)) if s > 0.0 && s <= 30.0 * 86_400.0 => Some(std::time::Duration::from_secs_f64(s)),
                    Some(_) => return err(format!("usage: quarantine SUBSCRIBER [SECONDS], not {line:?}")),
                };
                let Some(key) = parse_subscriber(who) else {
                    return err(format!("{who:?} is not a subscriber (an IPv4 address, or an IPv6 address or /64)"));
                };
                let e = a.quarantine(key, std::time::Instant::now(), duration);
                let answer = match &e {
                    AbuseEvent::QuarantineStarted { duration, .. } => serde_json::json!({
                        "quarantined": subscriber_name(key),
                        "seconds": duration.as_secs_f64(),
                    }),
                    _ => err(format!("{} not quarantined: the quarantine set is full", subscriber_name(key))),
                };
                abuse::report(e, self.events.as_ref());
                answer
            }
            _ => err(format!(
                "unknown command {line:?}; try \"stats\", \"top N attempts|destinations\", \"release SUBSCRIBER\" or \"quarantine SUBSCRIBER [SECONDS]\""
            )),
        }
    }

    fn metrics(&self) -> String {
        let info = self.info().snapshot();
        metrics::render(self.stats.stats(), info)
    }
}

/// The running control plane.
pub struct Control {
    thread: Option<std::thread::JoinHandle<()>>,
    shutdown: Arc<tokio::sync::Notify>,
    info: Arc<Mutex<Info>>,
    socket: Option<PathBuf>,
}

/// Binds the Unix socket at `path` (mode 0600). A stale socket file (nobody
/// answers on it) is replaced; a live one is an error.
fn bind_socket(path: &Path) -> Result<std::os::unix::net::UnixListener, ControlError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |cause| ControlError::Socket { path: path.to_path_buf(), cause };
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ControlError::InUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    listener.set_nonblocking(true).map_err(err)?;
    Ok(listener)
}

impl Control {
    /// Starts the control plane for `cfg`, reading counters through `stats`;
    /// `None` when `[control]` asks for nothing.
    /// `events` gets the events of `op25b quarantine` and `op25b release`.
    pub fn start(
        cfg: &ControlConfig,
        config: &Path,
        stats: StatsReader,
        events: Option<EventSender>,
    ) -> Result<Option<Control>, ControlError> {
        if cfg.socket.is_none() && cfg.metrics.is_none() {
            return Ok(None);
        }
        let socket = cfg.socket.as_deref().map(bind_socket).transpose()?;
        let metrics = match cfg.metrics {
            Some(addr) => {
                let l = std::net::TcpListener::bind(addr).map_err(|cause| ControlError::Metrics { addr, cause })?;
                l.set_nonblocking(true).map_err(|cause| ControlError::Metrics { addr, cause })?;
                Some(l)
            }
            None => None,
        };
        let now = SystemTime::now();
        let info = Arc::new(Mutex::new(Info {
            started: now,
            config: config.to_path_buf(),
            loaded: now,
            reloads_ok: 0,
            reloads_failed: 0,
        }));
        let shared = Shared { stats, info: Arc::clone(&info), events };
        let shutdown = Arc::new(tokio::sync::Notify::new());
        let stop = Arc::clone(&shutdown);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build().map_err(ControlError::Start)?;
        let thread = std::thread::Builder::new()
            .name("op25b-control".into())
            .spawn(move || runtime.block_on(serve(shared, socket, metrics, stop)))
            .map_err(ControlError::Start)?;
        Ok(Some(Control { thread: Some(thread), shutdown, info, socket: cfg.socket.clone() }))
    }

    /// Notes a config reload and its result.
    pub fn reloaded(&self, ok: bool) {
        let mut i = self.info.lock().unwrap_or_else(|e| e.into_inner());
        if ok {
            i.reloads_ok += 1;
            i.loaded = SystemTime::now();
        } else {
            i.reloads_failed += 1;
        }
    }

    /// Stops serving and removes the socket file.
    pub fn stop(mut self) {
        self.shutdown.notify_one();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("the control plane panicked");
            }
        }
        if let Some(path) = &self.socket {
            if let Err(e) = std::fs::remove_file(path) {
                tracing::warn!(socket = %path.display(), error = %e, "cannot remove the control socket");
            }
        }
    }
}

async fn serve(
    shared: Shared,
    socket: Option<std::os::unix::net::UnixListener>,
    metrics: Option<std::net::TcpListener>,
    stop: Arc<tokio::sync::Notify>,
) {
    let unix = socket.map(tokio::net::UnixListener::from_std).transpose();
    let tcp = metrics.map(tokio::net::TcpListener::from_std).transpose();
    let (unix, tcp) = match (unix, tcp) {
        (Ok(u), Ok(t)) => (u, t),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "control plane: cannot register the listeners");
            return;
        }
    };
    let http = tcp.map(|listener| {
        let s = shared.clone();
        let app = axum::Router::new()
            .route("/metrics", axum::routing::get(move || metrics_page(s.clone())))
            .route("/healthz", axum::routing::get(|| async { "ok\n" }));
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "control plane: metrics server stopped");
            }
        })
    });
    let sock = unix.map(|listener| tokio::spawn(socket_loop(listener, shared.clone())));
    stop.notified().await;
    for task in [http, sock].into_iter().flatten() {
        task.abort();
    }
}

async fn metrics_page(shared: Shared) -> impl axum::response::IntoResponse {
    let body = shared.metrics();
    ([(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
}

async fn socket_loop(listener: tokio::net::UnixListener, shared: Shared) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(answer(stream, shared.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "control socket: accept failed");
                tokio::task::yield_now().await;
            }
        }
    }
}

/// One request line, one JSON answer line.
async fn answer(stream: tokio::net::UnixStream, shared: Shared) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    // A request is one short line; more is not read.
    let mut lines = BufReader::new(read.take(256));
    let reply = match lines.read_line(&mut line).await {
        Ok(_) => shared.command(line.trim()),
        Err(e) => serde_json::json!({"error": e.to_string()}),
    };
    let _ = write.write_all(format!("{reply}\n").as_bytes()).await; // the client may be gone
}
