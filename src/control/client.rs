//! `op25b stats`: asks a running op25b over its control socket and prints
//! the answer, as text a person reads or as the JSON it came as.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Why no answer came.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Nobody answers at the socket.
    #[error("no op25b answers at {path}: {source} (is `op25b run` running with [control] socket = {path:?}?)")]
    Connect {
        /// The socket.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The answer was cut or is not what op25b sends.
    #[error("bad answer from {path}: {why}")]
    Answer {
        /// The socket.
        path: String,
        /// What is wrong.
        why: String,
    },
}

/// Sends `command` and returns the JSON answer.
pub fn ask(socket: &Path, command: &str) -> Result<serde_json::Value, ClientError> {
    let path = socket.display().to_string();
    let io = |why: std::io::Error| ClientError::Answer { path: path.clone(), why: why.to_string() };
    let mut s = UnixStream::connect(socket).map_err(|source| ClientError::Connect { path: path.clone(), source })?;
    s.set_read_timeout(Some(Duration::from_secs(5))).map_err(io)?;
    s.write_all(format!("{command}\n").as_bytes()).map_err(io)?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).map_err(io)?;
    let v: serde_json::Value =
        serde_json::from_str(&line).map_err(|e| ClientError::Answer { path: path.clone(), why: e.to_string() })?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        return Err(ClientError::Answer { path, why: e.to_string() });
    }
    Ok(v)
}

/// The answer to `stats` as text: the router's figures, then per direction
/// what happened to the packets, OP25B, the rules and the devices. Zero
/// lines are left out unless `all`.
pub fn render(v: &serde_json::Value, all: bool) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let num = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let secs = v["uptime_seconds"].as_f64().unwrap_or(0.0);
    let _ = writeln!(out, "op25b {}   up {}", v["version"].as_str().unwrap_or("?"), human(secs));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    let loaded = (now - v["config_loaded_unix"].as_f64().unwrap_or(now)).max(0.0);
    let _ = writeln!(
        out,
        "config     {} (loaded {} ago)   reloads {} ok, {} failed",
        v["config"].as_str().unwrap_or("?"),
        human(loaded),
        num(&v["reloads"]["success"]),
        num(&v["reloads"]["failure"])
    );
    let s = &v["stats"];
    let mut line = |label: String, n: u64| {
        if all || n > 0 {
            let _ = writeln!(out, "  {label:<34} {n:>12}");
        }
    };
    for dir in ["outbound", "inbound"] {
        let d = &s[dir];
        line(format!("{dir} received"), num(&d["received"]));
        line(format!("{dir} forwarded"), num(&d["forwarded"]));
        for (map, what) in [("dropped", "drop"), ("replies", "reply")] {
            if let Some(m) = d[map].as_object() {
                for (k, n) in m {
                    line(format!("{dir} {what} {k}"), num(n));
                }
            }
        }
        line(format!("{dir} terminated (banner)"), num(&d["terminated"]));
    }
    if let Some(m) = s["op25b_blocked_by_action"].as_object() {
        for (k, n) in m {
            line(format!("op25b blocked ({k})"), num(n));
        }
    }
    line("op25b redirected".into(), num(&s["counters"]["op25b_redirected"]));
    if let Some(rules) = s["rules"].as_array() {
        for r in rules {
            let name = r["name"].as_str().unwrap_or("?");
            line(format!("rule {name} packets"), num(&r["packets"]));
            line(format!("rule {name} bytes"), num(&r["bytes"]));
        }
    }
    if let Some(m) = s["devices"].as_object() {
        for (dev, d) in m {
            for k in ["rx_packets", "rx_bytes", "rx_errors", "tx_packets", "tx_bytes", "tx_errors"] {
                line(format!("device {dev} {k}"), num(&d[k]));
            }
        }
    }
    out
}

fn human(secs: f64) -> String {
    let s = secs as u64;
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        _ => format!("{} h {} min", s / 3600, s / 60 % 60),
    }
}
