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
    #[error("no op25b answers at {path}: {cause} (is `op25b run` running with [control] socket = {path:?}?)")]
    Connect {
        /// The socket.
        path: String,
        /// The cause (in the message, not a `source()`: a chain prints it once).
        cause: std::io::Error,
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
    let mut s = UnixStream::connect(socket).map_err(|cause| ClientError::Connect { path: path.clone(), cause })?;
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
    // Packets, then connection attempts (a SYN and its retransmissions once).
    for (what, key) in [("packets", "op25b_blocked_by_action"), ("connections", "op25b_blocked_connections_by_action")]
    {
        if let Some(m) = s[key].as_object() {
            for (k, n) in m {
                line(format!("op25b blocked {what} ({k})"), num(n));
            }
        }
    }
    line("op25b redirected".into(), num(&s["counters"]["op25b_redirected"]));
    line("op25b monitored packets (would block)".into(), num(&s["counters"]["op25b_monitored"]));
    line("op25b monitored connections".into(), num(&s["counters"]["op25b_monitored_connections"]));
    for k in ["tracked", "suspected", "quarantined", "refused", "attempts_dropped"] {
        line(format!("abuse {k}"), num(&s["counters"][format!("abuse_{k}").as_str()]));
    }
    for f in ["events", "capture", "stats"] {
        line(format!("{f} file write errors"), num(&s["counters"][format!("{f}_write_errors").as_str()]));
    }
    if let Some(rules) = s["rules"].as_array() {
        for r in rules {
            let name = r["name"].as_str().unwrap_or("?");
            line(format!("rule {name} packets"), num(&r["packets"]));
            line(format!("rule {name} bytes"), num(&r["bytes"]));
            // Only program rules have errors: the line is left out at 0 even with `all`.
            if num(&r["errors"]) > 0 {
                line(format!("rule {name} program errors"), num(&r["errors"]));
            }
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

/// What `op25b top` sorts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TopBy {
    /// Blocked attempts in the window.
    Attempts,
    /// Distinct destinations in the window.
    Destinations,
}

fn exit_for(e: &ClientError) -> std::process::ExitCode {
    match e {
        ClientError::Connect { .. } => std::process::ExitCode::from(2),
        _ => std::process::ExitCode::FAILURE,
    }
}

/// Writes `text` to standard output; false when it cannot be written (the
/// reader went away: `op25b ... | head`), which is no reason to panic.
fn say(text: &str) -> bool {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).and_then(|()| out.flush()).is_ok()
}

/// `op25b top`: asks once (or every second with `watch`) and prints.
pub fn top(socket: &Path, n: usize, by: TopBy, json: bool, watch: bool) -> std::process::ExitCode {
    use std::io::IsTerminal;
    let by = match by {
        TopBy::Attempts => "attempts",
        TopBy::Destinations => "destinations",
    };
    let tty = std::io::stdout().is_terminal();
    loop {
        let answer = match ask(socket, &format!("top {n} {by}")) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("op25b: error: {e}");
                return exit_for(&e);
            }
        };
        let text =
            if json { format!("{}\n", answer["top"]) } else { render_top(&answer, std::time::SystemTime::now()) };
        let mut out = std::io::stdout().lock();
        if watch && tty {
            // Home and clear, like top(1).
            let _ = write!(out, "\x1b[H\x1b[2J");
        }
        if out.write_all(text.as_bytes()).and_then(|()| out.flush()).is_err() {
            // The reader went away (a closed pipe): nothing more to say.
            return std::process::ExitCode::SUCCESS;
        }
        drop(out);
        if !watch {
            return std::process::ExitCode::SUCCESS;
        }
        if !tty && !say("\n") {
            return std::process::ExitCode::SUCCESS;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn ago(unix: f64, now: f64) -> String {
    let s = (now - unix).max(0.0);
    if s < 1.0 {
        "now".into()
    } else {
        format!("{} ago", human(s))
    }
}

/// The answer to `top` as the table a person reads.
pub fn render_top(v: &serde_json::Value, now: std::time::SystemTime) -> String {
    use std::fmt::Write as _;
    let now = now.duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    let num = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let rows = v["top"].as_array().cloned().unwrap_or_default();
    let quarantined = v["quarantined"].as_array().cloned().unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "op25b top: {} tracked, {} suspected, {} in quarantine; window {} s, suspect at {} attempts or {} destinations",
        num(&v["tracked"]),
        num(&v["suspected"]),
        quarantined.len(),
        v["window_seconds"].as_f64().unwrap_or(0.0),
        num(&v["threshold"]),
        num(&v["destinations_threshold"]),
    );
    let _ = writeln!(
        out,
        "{:<24} {:<11} {:>8} {:>6} {:>10} {:>9}  {:<14} LAST SEEN",
        "SUBSCRIBER", "STATE", "ATTEMPTS", "DESTS", "TOTAL", "ALL DESTS", "FIRST SEEN"
    );
    if rows.is_empty() {
        let _ = writeln!(out, "(no blocked attempts yet)");
    }
    for r in &rows {
        let _ = writeln!(
            out,
            "{:<24} {:<11} {:>8} {:>6} {:>10} {:>9}  {:<14} {}",
            r["subscriber"].as_str().unwrap_or("?"),
            r["state"].as_str().unwrap_or("?"),
            num(&r["attempts"]),
            num(&r["destinations"]),
            num(&r["total"]),
            num(&r["total_destinations"]),
            ago(r["first_seen"].as_f64().unwrap_or(now), now),
            ago(r["last_seen"].as_f64().unwrap_or(now), now),
        );
    }
    for q in &quarantined {
        let left = (q["until"].as_f64().unwrap_or(now) - now).max(0.0);
        let _ = writeln!(out, "in quarantine: {} for {} more", q["subscriber"].as_str().unwrap_or("?"), human(left));
    }
    out
}

/// `op25b quarantine SUBSCRIBER [--for DURATION]`.
pub fn quarantine(socket: &Path, subscriber: &str, duration: Option<Duration>) -> std::process::ExitCode {
    let command = match duration {
        Some(d) => format!("quarantine {} {}", subscriber.trim(), d.as_secs_f64()),
        None => format!("quarantine {}", subscriber.trim()),
    };
    match ask(socket, &command) {
        Ok(v) => {
            let secs = v["seconds"].as_f64().unwrap_or(0.0);
            say(&format!("{} in quarantine for {}\n", v["quarantined"].as_str().unwrap_or(subscriber), human(secs)));
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("op25b: error: {e}");
            exit_for(&e)
        }
    }
}

/// `op25b release SUBSCRIBER`.
pub fn release(socket: &Path, subscriber: &str) -> std::process::ExitCode {
    match ask(socket, &format!("release {}", subscriber.trim())) {
        Ok(v) => {
            say(&format!("{} released from quarantine\n", v["released"].as_str().unwrap_or(subscriber)));
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("op25b: error: {e}");
            exit_for(&e)
        }
    }
}
