//! The CLI's commands that ask a running op25b over its control socket
//! (`op25b stats`, `top`, `quarantine`, `release`, `reload`, `events`), and
//! the text they print. Exit status: 0 done, 1 failed or refused, 2 a usage
//! error (op25b says 400) or no op25b at the socket.

mod http;
mod many;
pub mod merge;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

pub use http::{follow, request, request_each, Call, ClientError};

use crate::state::abuse::parse_subscriber;

/// The socket the unit's op25b listens on (`[control] socket` of the packaged config).
pub const DEFAULT_SOCKET: &str = "/run/op25b/op25b.sock";

/// `GET /v1/stats`.
pub fn ask_stats(socket: &Path) -> Result<serde_json::Value, ClientError> {
    request(socket, "GET", "/v1/stats", None)
}

/// Reports `e` in one line and gives its exit status.
fn failed(e: &ClientError) -> ExitCode {
    eprintln!("op25b: error: {e}");
    e.exit_code()
}

/// `op25b stats`: the counters as text, or as the JSON they came as.
pub fn stats(socket: &Path, json: bool, all: bool) -> ExitCode {
    match ask_stats(socket) {
        Ok(v) => {
            let text = if json { format!("{v}\n") } else { render(&v, all) };
            say(&text);
            ExitCode::SUCCESS
        }
        Err(e) => failed(&e),
    }
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
    for f in ["events", "capture", "stats", "abuse_state"] {
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
    if let Some(m) = s["neighbours"].as_object() {
        for (k, n) in m {
            line(format!("upstream neighbours {k}"), num(n));
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

/// Writes `text` to standard output; false when it cannot be written (the
/// reader went away: `op25b ... | head`), which is no reason to panic.
fn say(text: &str) -> bool {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).and_then(|()| out.flush()).is_ok()
}

/// The sockets as given, each once (a socket named twice would count its
/// instance twice).
fn distinct(sockets: &[PathBuf]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::with_capacity(sockets.len());
    for s in sockets {
        if !out.contains(s) {
            out.push(s.clone());
        }
    }
    out
}

/// `op25b top`: asks once (or every second with `watch`) and prints; over
/// several sockets, one view merged from all their instances.
pub fn top(sockets: &[PathBuf], n: usize, by: TopBy, json: bool, watch: bool) -> ExitCode {
    match distinct(sockets).as_slice() {
        [one] => top_one(one, n, by, json, watch),
        many => many::top(many, n, by, json, watch),
    }
}

/// The merged `top` of several instances as `op25b top --json` prints it,
/// and the worst exit status of those that did not answer (0 when all did).
pub fn top_merged(sockets: &[PathBuf], n: usize, by: TopBy) -> (serde_json::Value, u8) {
    many::ask_top(&distinct(sockets), n, by)
}

/// The merged `top` as the table a person reads.
pub fn render_merged(v: &serde_json::Value, now: std::time::SystemTime) -> String {
    many::render_merged(v, now)
}

fn top_one(socket: &Path, n: usize, by: TopBy, json: bool, watch: bool) -> ExitCode {
    let by = match by {
        TopBy::Attempts => "attempts",
        TopBy::Destinations => "destinations",
    };
    show_top(watch, || {
        let answer = request(socket, "GET", &format!("/v1/top?n={n}&by={by}"), None).map_err(|e| failed(&e))?;
        // The JSON is the socket's answer whole: the rows and who is in quarantine.
        let text = if json { format!("{answer}\n") } else { render_top(&answer, std::time::SystemTime::now()) };
        Ok((text, 0))
    })
}

/// Prints what `fetch` gives (text and exit status) once, or every second
/// with `watch` (on a terminal, from a cleared screen, like top(1)); a
/// reader that goes away (a closed pipe) ends it quietly.
pub(super) fn show_top(watch: bool, mut fetch: impl FnMut() -> Result<(String, u8), ExitCode>) -> ExitCode {
    use std::io::IsTerminal;
    let tty = std::io::stdout().is_terminal();
    loop {
        let (text, status) = match fetch() {
            Ok(answer) => answer,
            Err(code) => return code,
        };
        let mut out = std::io::stdout().lock();
        if watch && tty {
            let _ = write!(out, "\x1b[H\x1b[2J");
        }
        if out.write_all(text.as_bytes()).and_then(|()| out.flush()).is_err() {
            return ExitCode::SUCCESS;
        }
        drop(out);
        if !watch || (!tty && !say("\n")) {
            return ExitCode::from(status);
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
    let rows = v["top"].as_array().cloned().unwrap_or_default();
    let quarantined = v["quarantined"].as_array().cloned().unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(out, "op25b top: {}", top_summary(v, quarantined.len()));
    top_rows(&mut out, &rows, &quarantined, now, None);
    out
}

/// `N tracked, N suspected, N in quarantine; window ...`: the head of `top`.
pub(super) fn top_summary(v: &serde_json::Value, quarantined: usize) -> String {
    let num = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    format!(
        "{} tracked, {} suspected, {quarantined} in quarantine; window {} s, suspect at {} attempts or {} destinations",
        num(&v["tracked"]),
        num(&v["suspected"]),
        v["window_seconds"].as_f64().unwrap_or(0.0),
        num(&v["threshold"]),
        num(&v["destinations_threshold"]),
    )
}

/// The text of the `ON` column for a row (`true`) or a quarantine line.
pub(super) type HoldersColumn<'a> = dyn Fn(&serde_json::Value, bool) -> String + 'a;

/// The rows of `top` and the quarantine lines, as a person reads them; `on`
/// adds a last column (the instances that hold a row or a quarantine).
pub(super) fn top_rows(
    out: &mut String,
    rows: &[serde_json::Value],
    quarantined: &[serde_json::Value],
    now: f64,
    on: Option<&HoldersColumn<'_>>,
) {
    use std::fmt::Write as _;
    let num = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let seen = |t: &serde_json::Value| t.as_f64().map_or_else(|| "-".to_string(), |t| ago(t, now));
    let _ = write!(
        out,
        "{:<24} {:<11} {:>8} {:>6} {:>10} {:>9}  {:<14} ",
        "SUBSCRIBER", "STATE", "ATTEMPTS", "DESTS", "TOTAL", "ALL DESTS", "FIRST SEEN"
    );
    let _ = writeln!(out, "{}", if on.is_some() { format!("{:<14} ON", "LAST SEEN") } else { "LAST SEEN".into() });
    if rows.is_empty() {
        let _ = writeln!(out, "(no blocked attempts yet)");
    }
    for r in rows {
        let _ = write!(
            out,
            "{:<24} {:<11} {:>8} {:>6} {:>10} {:>9}  {:<14} ",
            r["subscriber"].as_str().unwrap_or("?"),
            r["state"].as_str().unwrap_or("?"),
            num(&r["attempts"]),
            num(&r["destinations"]),
            num(&r["total"]),
            num(&r["total_destinations"]),
            seen(&r["first_seen"]),
        );
        let _ = match on {
            Some(on) => writeln!(out, "{:<14} {}", seen(&r["last_seen"]), on(r, true)),
            None => writeln!(out, "{}", seen(&r["last_seen"])),
        };
    }
    for q in quarantined {
        let left = (q["until"].as_f64().unwrap_or(now) - now).max(0.0);
        let who = q["subscriber"].as_str().unwrap_or("?");
        let _ = match on {
            Some(on) => writeln!(out, "in quarantine: {who} for {} more (on {})", human(left), on(q, false)),
            None => writeln!(out, "in quarantine: {who} for {} more", human(left)),
        };
    }
}

/// A subscriber as the user gave it, checked before anything is asked.
fn subscriber(text: &str) -> Result<&str, ExitCode> {
    let text = text.trim();
    match parse_subscriber(text) {
        Some(_) => Ok(text),
        None => {
            eprintln!("op25b: error: {text:?} is not a subscriber (an IPv4 address, or an IPv6 address or /64)");
            Err(ExitCode::from(2))
        }
    }
}

/// `op25b quarantine SUBSCRIBER [--for DURATION]`; over several sockets,
/// on the instances that hold the subscriber (or on all).
pub fn quarantine(sockets: &[PathBuf], subscriber_text: &str, duration: Option<Duration>, all: bool) -> ExitCode {
    let who = match subscriber(subscriber_text) {
        Ok(w) => w,
        Err(code) => return code,
    };
    match distinct(sockets).as_slice() {
        [one] => quarantine_one(one, who, duration),
        many => many::act(many, &many::Act { who, release: false, duration, all }),
    }
}

/// `op25b release SUBSCRIBER`; over several sockets, on the instances that
/// hold its quarantine (or on all).
pub fn release(sockets: &[PathBuf], subscriber_text: &str, all: bool) -> ExitCode {
    let who = match subscriber(subscriber_text) {
        Ok(w) => w,
        Err(code) => return code,
    };
    match distinct(sockets).as_slice() {
        [one] => release_one(one, who),
        many => many::act(many, &many::Act { who, release: true, duration: None, all }),
    }
}

fn quarantine_one(socket: &Path, who: &str, duration: Option<Duration>) -> ExitCode {
    let body = serde_json::json!({"subscriber": who, "seconds": duration.map(|d| d.as_secs_f64())});
    match request(socket, "POST", "/v1/quarantine", Some(&body)) {
        Ok(v) => {
            let secs = v["seconds"].as_f64().unwrap_or(0.0);
            say(&format!("{} in quarantine for {}\n", v["quarantined"].as_str().unwrap_or(who), human(secs)));
            ExitCode::SUCCESS
        }
        Err(e) => failed(&e),
    }
}

fn release_one(socket: &Path, who: &str) -> ExitCode {
    match request(socket, "POST", "/v1/release", Some(&serde_json::json!({"subscriber": who}))) {
        Ok(v) => {
            say(&format!("{} released from quarantine\n", v["released"].as_str().unwrap_or(who)));
            ExitCode::SUCCESS
        }
        Err(e) => failed(&e),
    }
}

/// What a reload kept, as the words `op25b reload` prints.
fn kept_words(kept: &serde_json::Value) -> String {
    let mut words = Vec::new();
    for (key, what) in
        [("reply_buckets", "reply buckets"), ("flows", "redirect flows"), ("sessions", "banner sessions")]
    {
        if kept[key].as_bool() == Some(true) {
            words.push(what.to_string());
        }
    }
    for (key, what) in [("rule_buckets", "rate-limit rule buckets"), ("programs", "program rule instances")] {
        let n = kept[key].as_u64().unwrap_or(0);
        if n > 0 {
            words.push(format!("{n} {what}"));
        }
    }
    if words.is_empty() {
        "nothing of the running state".into()
    } else {
        words.join(", ")
    }
}

/// `op25b reload`: asks the running op25b to reload its config file and
/// prints the outcome; 0 accepted, 1 refused (the running config stays).
pub fn reload(socket: &Path) -> ExitCode {
    match request(socket, "POST", "/v1/reload", None) {
        Ok(v) => {
            say(&format!(
                "reload accepted: {} (kept: {})\n",
                v["file"].as_str().unwrap_or("?"),
                kept_words(&v["kept"])
            ));
            ExitCode::SUCCESS
        }
        Err(ClientError::Refused { body, message, .. }) if body["result"] == "refused" => {
            eprintln!("op25b: reload refused, the running config stays in force: {message}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("op25b: error: {e}");
            // Whatever went wrong, the reload did not happen: a reload's caller
            // (systemctl reload) needs a failure, never a usage status.
            ExitCode::FAILURE
        }
    }
}

/// `op25b events --follow`: the events, one JSON object a line, as they happen.
pub fn events(socket: &Path) -> ExitCode {
    let out = std::io::stdout();
    let mut reader_gone = false;
    let result = follow(socket, "/v1/events", |line| {
        let mut o = out.lock();
        // A reader gone (a closed pipe) ends the following, quietly.
        reader_gone = writeln!(o, "{line}").and_then(|()| o.flush()).is_err();
        !reader_gone
    });
    match result {
        Ok(()) if reader_gone => ExitCode::SUCCESS,
        Ok(()) => {
            eprintln!("op25b: error: the events stream ended: op25b stopped");
            ExitCode::FAILURE
        }
        Err(e) => failed(&e),
    }
}
