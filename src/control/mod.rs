//! The control plane: a thread of its own with a current-thread tokio
//! runtime, beside the data plane and never in its way. It serves the Unix
//! socket's HTTP/JSON API (`api`: stats, top, quarantine, release, reload,
//! the events stream), the only place that changes a running op25b, and the
//! read-only HTTP listener (`/metrics`, `/healthz`), reading the counters
//! through a [`StatsReader`]; the data plane hands it nothing and never
//! waits on it.
//!
//! Both listeners are bound before the thread starts, so a bad address or a
//! socket already in use is a start-up error, not a log line later.

pub mod abuse;
pub mod abuse_state;
mod api;
pub mod capture;
pub mod client;
pub mod events;
mod metrics;
pub mod notify;
mod process;
pub mod stream;
mod writer;

pub use writer::{Failures, WriterThread};

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::config::ControlConfig;
use crate::dataplane::events::EventSender;
use crate::dataplane::StatsReader;
use crate::state::Kept;
use stream::EventStream;

/// A reload asked for on the control socket (`POST /v1/reload`): whoever
/// reloads on SIGHUP runs the same reload and answers with its outcome.
#[derive(Debug)]
pub struct ReloadRequest {
    reply: tokio::sync::oneshot::Sender<ReloadOutcome>,
}

impl ReloadRequest {
    fn new() -> (ReloadRequest, tokio::sync::oneshot::Receiver<ReloadOutcome>) {
        let (reply, rx) = tokio::sync::oneshot::channel();
        (ReloadRequest { reply }, rx)
    }

    /// Tells the caller how the reload went.
    pub fn answer(self, outcome: ReloadOutcome) {
        // The caller may have gone (its connection closed): nothing to tell.
        let _ = self.reply.send(outcome);
    }
}

/// How a reload went.
#[derive(Debug, Clone)]
pub enum ReloadOutcome {
    /// The new config is in force.
    Accepted {
        /// The file.
        file: String,
        /// Which parts of the running state carried over.
        kept: Kept,
    },
    /// The running config stays in force.
    Refused {
        /// Why, in one line (`file:line: key: message`).
        reason: String,
    },
}

/// What the control socket reaches besides the counters: the events queue
/// (what `quarantine` and `release` did), the daemon's reloads, the events
/// stream.
#[derive(Default, Clone)]
pub struct Hooks {
    /// Where `quarantine` and `release` report what they did.
    pub events: Option<EventSender>,
    /// Where `POST /v1/reload` sends its request.
    pub reloads: Option<crossbeam_channel::Sender<ReloadRequest>>,
    /// What `GET /v1/events` follows.
    pub stream: Option<EventStream>,
}

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
    reloads: Option<crossbeam_channel::Sender<ReloadRequest>>,
    stream: Option<EventStream>,
}

impl Shared {
    fn info(&self) -> std::sync::MutexGuard<'_, Info> {
        // A poisoned lock only means a handler panicked; the figures are plain numbers.
        self.info.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The answer to `GET /v1/stats`: one JSON object.
    fn stats_json(&self) -> serde_json::Value {
        let stats = self.stats.stats();
        let info = self.info();
        let now = SystemTime::now();
        let mut v = serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": now.duration_since(info.started).map_or(0.0, |d| d.as_secs_f64()),
            "config": info.config.display().to_string(),
            "config_loaded_unix": unix(info.loaded),
            "reloads": {"success": info.reloads_ok, "failure": info.reloads_failed},
            "stats": stats.to_json(),
        });
        if let Some(s) = &self.stream {
            v["events_stream"] = serde_json::json!({"followers": s.followers(), "missed": s.missed()});
        }
        v
    }

    fn metrics(&self, format: metrics::Format) -> String {
        let info = self.info().snapshot();
        let process =
            process::read().inspect_err(|e| tracing::debug!(error = %e, "metrics: cannot read /proc/self")).ok();
        let queue_drops = self.stats.queue_drops();
        metrics::render(metrics::Scrape { stats: self.stats.stats(), info, process, queue_drops }, format)
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
    /// `None` when `[control]` asks for nothing. `hooks` are what the
    /// socket's requests reach.
    pub fn start(
        cfg: &ControlConfig,
        config: &Path,
        stats: StatsReader,
        hooks: Hooks,
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
        let Hooks { events, reloads, stream } = hooks;
        let shared = Shared { stats, info: Arc::clone(&info), events, reloads, stream };
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
        let (s, stats) = (shared.clone(), shared.stats.clone());
        let app = axum::Router::new()
            .route("/metrics", axum::routing::get(move |headers| metrics_page(s.clone(), headers)))
            .route("/healthz", axum::routing::get(move || healthz(stats.clone())));
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "control plane: metrics server stopped");
            }
        })
    });
    let sock = unix.map(|listener| {
        let app = api::router(shared.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "control plane: the control socket's server stopped");
            }
        })
    });
    stop.notified().await;
    for task in [http, sock].into_iter().flatten() {
        task.abort();
    }
}

/// `/metrics` in the format the `Accept` header prefers.
async fn metrics_page(shared: Shared, headers: axum::http::HeaderMap) -> impl axum::response::IntoResponse {
    use axum::http::header::{ACCEPT, CONTENT_TYPE};
    let accept = headers.get(ACCEPT).and_then(|v| v.to_str().ok());
    let format = metrics::Format::negotiate(accept);
    ([(CONTENT_TYPE, format.content_type())], shared.metrics(format))
}

/// `/healthz`: 200 `ok` while the data plane is alive as the watchdog sees
/// it (both devices present, every worker looping), else 503 and why.
async fn healthz(stats: StatsReader) -> (axum::http::StatusCode, String) {
    match stats.health() {
        Ok(()) => (axum::http::StatusCode::OK, "ok\n".into()),
        Err(why) => (axum::http::StatusCode::SERVICE_UNAVAILABLE, format!("unhealthy: {why}\n")),
    }
}
