//! `op25b lab demo` and `op25b lab traffic`: real connections and mail from
//! the lab's subscriber namespace, each against what OP25B should do.
//!
//! Everything runs on a thread inside the subscriber namespace (sockets
//! bound to the lab's subscriber addresses), bounded in time: a connect
//! waits 3 s at the most, a greeting 1 s, a traceroute probe 1 s.

use std::io::IsTerminal as _;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

use super::def::{self, ip, Names, Server, DYN4, DYN6, MX4, RELAY4, ROUTER4, ROUTER6, STATIC4, STATIC6};
use super::state::LabState;
use super::{netns, probe, smtp, LabError};

/// A refused connection counts as "fast" under this (an RST from op25b takes
/// about a millisecond, a silent drop the whole connect timeout).
const FAST_MS: f64 = 500.0;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const REPLY_TIMEOUT: Duration = Duration::from_secs(1);
const MX: Server = def::SERVERS[0];
const RELAY: Server = def::SERVERS[1];

/// What one connection attempt did (`op25b lab traffic` prints these).
#[derive(Debug, Serialize)]
struct Attempt {
    src: IpAddr,
    dst: IpAddr,
    port: u16,
    /// connected, refused, timeout, unreachable or error.
    result: &'static str,
    errno: Option<i32>,
    error: Option<String>,
    /// The connect() alone, in milliseconds.
    ms: f64,
    /// The server's first line.
    banner: Option<String>,
}

/// The kind of a failed connect: what the network said.
fn kind(e: &std::io::Error) -> &'static str {
    match e.raw_os_error().map(Errno::from_raw) {
        _ if e.kind() == std::io::ErrorKind::TimedOut => "timeout",
        Some(Errno::ECONNREFUSED) => "refused",
        Some(Errno::ETIMEDOUT) => "timeout",
        // ICMP unreachable and (IPv4) admin prohibited; ICMPv6 prohibited is EACCES.
        Some(Errno::EHOSTUNREACH | Errno::ENETUNREACH | Errno::EHOSTDOWN | Errno::EACCES) => "unreachable",
        _ => "error",
    }
}

fn millis(since: Instant) -> f64 {
    (since.elapsed().as_secs_f64() * 1e6).round() / 1e3
}

/// Connects from `src` to `dst:port`: the stream, or the failure as an [`Attempt`].
async fn open(src: IpAddr, dst: IpAddr, port: u16) -> (Attempt, Option<BufReader<TcpStream>>) {
    let mut a = Attempt { src, dst, port, result: "error", errno: None, error: None, ms: 0.0, banner: None };
    let sock = match dst {
        IpAddr::V4(_) => TcpSocket::new_v4(),
        IpAddr::V6(_) => TcpSocket::new_v6(),
    };
    let sock = match sock.and_then(|s| s.bind(SocketAddr::new(src, 0)).map(|()| s)) {
        Ok(s) => s,
        Err(e) => {
            // socket() or bind() failed: not a network verdict.
            (a.errno, a.error) = (e.raw_os_error(), Some(e.to_string()));
            return (a, None);
        }
    };
    let t0 = Instant::now();
    let res = tokio::time::timeout(CONNECT_TIMEOUT, sock.connect(SocketAddr::new(dst, port))).await;
    a.ms = millis(t0);
    let res = res.unwrap_or_else(|_| Err(std::io::Error::from(std::io::ErrorKind::TimedOut)));
    match res {
        Ok(stream) => {
            a.result = "connected";
            (a, Some(BufReader::new(stream)))
        }
        Err(e) => {
            (a.result, a.errno, a.error) = (kind(&e), e.raw_os_error(), Some(e.to_string()));
            (a, None)
        }
    }
}

/// One connection, with the server's greeting.
async fn connect(src: IpAddr, dst: IpAddr, port: u16) -> Attempt {
    let (mut a, stream) = open(src, dst, port).await;
    if let Some(mut s) = stream {
        let mut line = String::new();
        if let Ok(Ok(n)) = tokio::time::timeout(REPLY_TIMEOUT, s.read_line(&mut line)).await {
            a.banner = (n > 0).then(|| line.trim_end().to_string());
        }
    }
    a
}

/// An SMTP reply (its lines joined), or an error past [`REPLY_TIMEOUT`].
async fn reply(s: &mut BufReader<TcpStream>) -> std::io::Result<(u16, String)> {
    let mut text = String::new();
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout(REPLY_TIMEOUT, s.read_line(&mut line)).await??;
        let line = line.trim_end();
        if n == 0 || line.len() < 3 {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad reply {line:?}")));
        }
        text = if text.is_empty() { line.to_string() } else { format!("{text} {}", &line[4.min(line.len())..]) };
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok((line[..3].parse().unwrap_or(0), text));
        }
    }
}

/// Sends one message from `src` to `dst:port`: (accepted, rejected, refused,
/// timeout, unreachable or error; the last reply or the error; milliseconds).
async fn send(src: IpAddr, dst: IpAddr, port: u16, subject: &str) -> (&'static str, String, f64) {
    let t0 = Instant::now();
    let (a, stream) = open(src, dst, port).await;
    let Some(mut s) = stream else { return (a.result, a.error.unwrap_or_default(), millis(t0)) };
    let (from, to) = ("alice@subscriber.example", "bob@outside.example");
    let body = format!("From: <{from}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n\r\nsent through the op25b lab\r\n.");
    let cmds = [
        "EHLO subscriber.lab".to_string(),
        format!("MAIL FROM:<{from}>"),
        format!("RCPT TO:<{to}>"),
        "DATA".into(),
        body,
    ];
    let mut outcome = reply(&mut s).await;
    for cmd in cmds {
        match outcome {
            Ok((code, _)) if code < 400 => {}
            _ => break,
        }
        outcome = match s.get_mut().write_all(format!("{cmd}\r\n").as_bytes()).await {
            Ok(()) => reply(&mut s).await,
            Err(e) => Err(e),
        };
    }
    let ms = millis(t0);
    match outcome {
        Ok((code, text)) => (if code == 250 { "accepted" } else { "rejected" }, text, ms),
        Err(e) => (kind(&e), e.to_string(), ms),
    }
}

/// Runs `f` in the lab's subscriber namespace, in a runtime of its own.
fn in_lab<T: Send>(names: &Names, f: impl AsyncFnOnce() -> T + Send) -> Result<T, LabError> {
    if !netns::exists(&names.sub_ns) {
        return Err(LabError::Usage(format!("the lab {} is not up: op25b lab up --servers", names.name)));
    }
    netns::within(&names.sub_ns, || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
        let rt = rt.map_err(|e| LabError::Process(format!("runtime: {e}")))?;
        Ok(rt.block_on(f()))
    })
}

/// `op25b lab traffic`: the five connections, one JSON line each.
pub fn traffic(names: &Names) -> Result<(), LabError> {
    let cases = [(DYN4, MX4, 25), (DYN4, MX4, 587), (DYN4, RELAY4, 25), (STATIC4, MX4, 25), (DYN6, MX.v6, 25)];
    for a in in_lab(names, async || {
        let mut out = Vec::new();
        for (src, dst, port) in cases {
            out.push(connect(ip(src), ip(dst), port).await);
        }
        out
    })? {
        outln!("{}", serde_json::to_string(&a).map_err(|e| LabError::State(e.to_string()))?);
    }
    Ok(())
}

/// One row of the table: a case, what OP25B should make of it, what happened.
#[derive(Default)]
struct Row {
    case: String,
    expect: String,
    seen: String,
    /// How long it took, where that tells something.
    ms: Option<f64>,
    /// The check's outcome; `None` for a row that only informs.
    ok: Option<bool>,
    detail: String,
}

/// The table: its rows as they come, numbered, and how many checks passed.
struct Table {
    names: Names,
    color: bool,
    cases: usize,
    checks: usize,
    failed: usize,
}

impl Table {
    /// The next numbered case.
    fn case(&mut self, row: Row) {
        self.cases += 1;
        self.row(&self.cases.to_string(), row);
    }

    fn row(&mut self, label: &str, r: Row) {
        let verdict = match r.ok {
            None => "info".to_string(),
            Some(ok) => {
                self.checks += 1;
                self.failed += usize::from(!ok);
                let (word, color) = if ok { ("OK  ", 32) } else { ("FAIL", 31) };
                if self.color {
                    format!("\x1b[{color}m{word}\x1b[0m")
                } else {
                    word.to_string()
                }
            }
        };
        let (case, expect, seen, detail) = (r.case, r.expect, r.seen, r.detail);
        let ms = r.ms.map_or(String::new(), |ms| format!("{ms:.1}"));
        outln!("{label:<3} {case:<40} {expect:<20} {seen:<20} {ms:>8}  {verdict} {detail}");
    }
}

fn server_name(s: Server) -> &'static str {
    if s.name == "mx" {
        "MX"
    } else {
        "relay"
    }
}

/// `op25b lab demo`: the table; 0 when every check is as expected, else 1.
pub fn demo(names: &Names) -> Result<u8, LabError> {
    let state = LabState::load(names)?.filter(|s| s.servers.is_some_and(|p| p.alive()));
    let Some(names) = state.map(|s| s.names) else {
        let name = &names.name;
        return Err(LabError::Usage(format!("the lab {name} is not up with its SMTP servers: op25b lab up --servers")));
    };
    let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let mut t = Table { names, color, cases: 0, checks: 0, failed: 0 };
    outln!("MX = outside mail server {} / {}, relay = ISP relay {} / {}", MX.v4, MX.v6, RELAY.v4, RELAY.v6);
    outln!("router = op25b's own addresses {ROUTER4} / {ROUTER6}; refused must take < {FAST_MS} ms");
    outln!("");
    outln!("{:<3} {:<40} {:<20} {:<20} {:>8}  {:<4} detail", "#", "case", "expected", "seen", "ms", "");
    let before = smtp::read_connections(&t.names.state_dir()).len();
    connections(&mut t)?;
    traceroutes(&mut t)?;
    mail(&mut t)?;
    server_log(&mut t, before);
    pings(&mut t)?;
    outln!("checks: {} of {} as expected", t.checks - t.failed, t.checks);
    Ok(if t.failed == 0 { 0 } else { 1 })
}

/// A dynamic subscriber to MX:25 is refused at once (IPv4 and IPv6); to
/// MX:587, MX:465 and the relay's 25 it connects, and a static one to MX:25.
fn connections(t: &mut Table) -> Result<(), LabError> {
    let subscribers =
        [("dynamic", DYN4, false), ("static", STATIC4, false), ("dynamic", DYN6, true), ("static", STATIC6, true)];
    let dynamic_cases = [(MX, 25, false), (MX, 587, true), (MX, 465, true), (RELAY, 25, true)];
    for (kind, src, v6) in subscribers {
        let cases = if kind == "dynamic" { &dynamic_cases[..] } else { &[(MX, 25, true)][..] };
        for &(server, port, passes) in cases {
            let dst = if v6 { server.v6 } else { server.v4 };
            let a = in_lab(&t.names, async || connect(ip(src), ip(dst), port).await)?;
            let case = format!("{kind} {src} -> {}:{port}", server_name(server));
            let (error, banner) = (a.error.unwrap_or_default(), a.banner.unwrap_or_default());
            let row = if passes {
                let ok = a.result == "connected" && banner.starts_with(&format!("220 {dst}:{port} "));
                let seen = if a.result == "connected" && !ok { "connected?" } else { a.result };
                let detail = if a.result == "connected" { format!("banner: {banner}") } else { error };
                Row { expect: "connected".into(), seen: seen.into(), ok: Some(ok), detail, ..Row::default() }
            } else {
                let ok = a.result == "refused" && a.ms < FAST_MS;
                let seen = match a.result {
                    "refused" if ok => "refused (fast)",
                    "refused" => "refused (slow)",
                    other => other,
                };
                let detail = match (ok, a.result) {
                    (true, _) => "RST at once".to_string(),
                    (false, "connected") => format!("passed op25b! banner: {banner}"),
                    _ => error,
                };
                Row { expect: "refused (fast)".into(), seen: seen.into(), ok: Some(ok), detail, ..Row::default() }
            };
            t.case(Row { case, ms: Some(a.ms), ..row });
        }
    }
    Ok(())
}

/// The first hop towards the MX is op25b's own address (IPv4 and IPv6).
fn traceroutes(t: &mut Table) -> Result<(), LabError> {
    for (family, src, dst, router) in [(4, DYN4, MX4, ROUTER4), (6, DYN6, MX.v6, ROUTER6)] {
        let hops = netns::within(&t.names.sub_ns, || Ok(probe::traceroute(ip(src), ip(dst), 3)))?;
        let first = hops.first().cloned().unwrap_or_else(|| "*".into());
        t.case(Row {
            case: format!("traceroute -{family} -> {dst}"),
            expect: format!("hop1 {router}"),
            seen: format!("hop1 {first}"),
            ok: Some(first == router),
            detail: format!("path: {}", hops.join(" ")),
            ..Row::default()
        });
    }
    Ok(())
}

/// Mail from a dynamic subscriber: through MX:587 and the relay's 25 it
/// arrives where it was sent; straight to MX:25 it is refused.
fn mail(t: &mut Table) -> Result<(), LabError> {
    let dir = t.names.state_dir();
    for (server, port, expect) in [(MX, 587, "mx"), (RELAY, 25, "relay"), (MX, 25, "refused")] {
        // Of this run alone: a lab's servers keep the mail of every run.
        let subject = format!("demo case {} ({})", t.cases + 1, humantime::format_rfc3339_nanos(SystemTime::now()));
        let (result, detail, ms) = in_lab(&t.names, async || send(ip(DYN4), ip(server.v4), port, &subject).await)?;
        let case = format!("mail dynamic {DYN4} -> {}:{port}", server_name(server));
        let (expect, seen) = if expect == "refused" {
            (expect.to_string(), result.to_string())
        } else if result == "accepted" {
            let at: Vec<&str> = def::SERVERS
                .iter()
                .filter(|s| smtp::read_mail(&dir, s.name).iter().any(|m| m.subject() == subject))
                .map(|s| s.name)
                .collect();
            (format!("at {expect}"), format!("at {}", if at.is_empty() { "nowhere".into() } else { at.join(" ") }))
        } else {
            (format!("at {expect}"), result.to_string())
        };
        t.case(Row { case, ok: Some(seen == expect), expect, seen, ms: Some(ms), detail });
    }
    Ok(())
}

/// The outside servers' view of this demo (the connections after the first
/// `before`): exactly the 10 that should pass (8 connects, 2 messages), not
/// one from a dynamic address to MX:25.
fn server_log(t: &mut Table, before: usize) {
    let mut conns = smtp::read_connections(&t.names.state_dir());
    conns.drain(..before.min(conns.len()));
    let leaked = conns
        .iter()
        .filter(|c| [DYN4, DYN6].contains(&c.peer.as_str()) && c.server == "mx" && c.local_port == 25)
        .count();
    let row = Row {
        case: "outside servers' connection log".into(),
        expect: "10 conns".into(),
        seen: format!("{} conns", conns.len()),
        ok: Some(conns.len() == 10 && leaked == 0),
        detail: format!("{leaked} from a dynamic source to MX:25"),
        ..Row::default()
    };
    t.row("S", row);
}

/// Informational, not counted: op25b answers ping on its own addresses.
fn pings(t: &mut Table) -> Result<(), LabError> {
    for (family, router) in [(4, ROUTER4), (6, ROUTER6)] {
        let answer = netns::within(&t.names.sub_ns, || Ok(probe::ping(ip(router))))?;
        let (seen, detail) = match answer {
            Some(ms) => ("reply", format!("from {router}: time={ms:.3} ms")),
            None => ("no reply", String::new()),
        };
        let case = format!("ping -{family} {router} (router)");
        t.row("i", Row { case, expect: "reply".into(), seen: seen.into(), detail, ..Row::default() });
    }
    Ok(())
}
