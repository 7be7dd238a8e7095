//! The lab's outside SMTP servers: one process listening on every address of
//! the MX and the relay ([`super::def::SERVERS`]) on ports 25, 587 and 465
//! (plain SMTP on all three, no TLS). It greets with the address and port the
//! client reached (`220 203.0.113.25:587 lab ESMTP`), accepts every message
//! and logs it as one JSON line to `mail-NAME.jsonl` in the state directory
//! (NAME: `mx` or `relay`), and each connection to `connections.jsonl`.
//! The tests run the same servers on addresses of their own
//! (`op25b lab serve --dir DIR --listen NAME=ADDR`).
//!
//! Bounded: a line is at most 4 KiB, a message at most 10 MiB, a session
//! idle for 30 s is closed.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use super::def::{ip, SERVERS, SMTP_PORTS};
use super::LabError;

const MAX_LINE: usize = 4096;
const MAX_MESSAGE: usize = 10 << 20;
const IDLE: Duration = Duration::from_secs(30);

/// A message the lab's servers accepted (one line of `mail-NAME.jsonl`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Mail {
    /// When it was accepted (RFC 3339, UTC).
    pub time: String,
    /// `mx` or `relay`.
    pub server: String,
    /// The address the client reached.
    pub local: String,
    /// The port the client reached.
    pub local_port: u16,
    /// The client's address.
    pub peer: String,
    /// The client's port.
    pub peer_port: u16,
    /// The name the client gave in HELO/EHLO.
    pub helo: Option<String>,
    /// The envelope sender.
    pub mail_from: String,
    /// The envelope recipients.
    pub rcpt_tos: Vec<String>,
    /// The message (headers and body), dot-unstuffed, CRLF line ends.
    pub data: String,
}

impl Mail {
    /// The `Subject:` header's value, or "".
    pub fn subject(&self) -> &str {
        self.data
            .lines()
            .take_while(|l| !l.is_empty())
            .find_map(|l| l.get(..8).filter(|h| h.eq_ignore_ascii_case("subject:")).map(|_| l[8..].trim()))
            .unwrap_or("")
    }
}

/// A connection the servers accepted (one line of `connections.jsonl`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Connection {
    /// The address the client reached.
    pub local: String,
    /// The port the client reached.
    pub local_port: u16,
    /// The client's address.
    pub peer: String,
    /// The client's port.
    pub peer_port: u16,
    /// `mx` or `relay`.
    pub server: String,
}

/// The file the messages to server `name` go to.
pub fn mail_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("mail-{name}.jsonl"))
}

/// The file accepted connections go to.
pub fn connections_file(dir: &Path) -> PathBuf {
    dir.join("connections.jsonl")
}

/// The messages server `name` accepted so far (lines that do not parse are skipped).
pub fn read_mail(dir: &Path, name: &str) -> Vec<Mail> {
    let text = std::fs::read_to_string(mail_file(dir, name)).unwrap_or_default();
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// The connections the servers accepted so far.
pub fn read_connections(dir: &Path) -> Vec<Connection> {
    let text = std::fs::read_to_string(connections_file(dir)).unwrap_or_default();
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

fn append(path: &Path, value: &impl Serialize) {
    let line = match serde_json::to_string(value) {
        Ok(l) => l + "\n",
        Err(e) => return tracing::warn!("lab smtp: {e}"),
    };
    let written =
        std::fs::OpenOptions::new().create(true).append(true).open(path).and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        tracing::warn!("lab smtp: writing {}: {e}", path.display());
    }
}

/// Every address of the lab's servers on every SMTP port, each with the
/// server's name: what `op25b lab up --servers` listens on.
pub fn lab_listen() -> Vec<(String, SocketAddr)> {
    let mut out = Vec::new();
    for s in SERVERS {
        for addr in [ip(s.v4), ip(s.v6)] {
            out.extend(SMTP_PORTS.map(|port| (s.name.to_string(), SocketAddr::new(addr, port))));
        }
    }
    out
}

/// `NAME=ADDR` of `op25b lab serve --listen`.
pub fn parse_listen(s: &str) -> Result<(String, SocketAddr), String> {
    let (name, addr) = s.split_once('=').ok_or("want NAME=ADDR")?;
    let ok = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    let addr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    ok.then(|| (name.to_string(), addr)).ok_or_else(|| format!("{name:?}: a name is a-z, 0-9 and -"))
}

/// Binds every `(name, address)` of `listen` (in the calling thread's
/// namespace), calls `ready`, then serves until the process is ended, or
/// for `lifetime` when given. Mail to a listener goes to `mail-NAME.jsonl`.
pub fn serve(
    dir: &Path,
    listen: &[(String, SocketAddr)],
    lifetime: Option<Duration>,
    ready: impl FnOnce(),
) -> Result<(), LabError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| LabError::Smtp(format!("runtime: {e}")))?;
    rt.block_on(async {
        let mut listeners = Vec::new();
        for (name, addr) in listen {
            let l = TcpListener::bind(addr).await.map_err(|e| LabError::Smtp(format!("binding {addr}: {e}")))?;
            listeners.push((name.clone(), l));
        }
        ready();
        let mut tasks = tokio::task::JoinSet::new();
        for (name, l) in listeners {
            let dir = dir.to_path_buf();
            tasks.spawn(async move {
                loop {
                    match l.accept().await {
                        Ok((stream, _)) => {
                            let (dir, name) = (dir.clone(), name.clone());
                            tokio::spawn(async move {
                                if let Err(e) = session(stream, &dir, name).await {
                                    tracing::debug!("lab smtp session: {e}");
                                }
                            });
                        }
                        Err(e) => {
                            tracing::warn!("lab smtp accept: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            });
        }
        match lifetime {
            Some(t) => drop(tokio::time::timeout(t, async { while tasks.join_next().await.is_some() {} }).await),
            None => while tasks.join_next().await.is_some() {},
        }
        Ok(())
    })
}

/// Reads one line (without CR LF); `None` at end of stream, an error past the limit or idle.
async fn line<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> std::io::Result<Option<String>> {
    buf.clear();
    let n = tokio::time::timeout(IDLE, (&mut *r).take(MAX_LINE as u64 + 2).read_until(b'\n', buf))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "idle"))??;
    if n == 0 {
        return Ok(None);
    }
    if !buf.ends_with(b"\n") {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "line too long"));
    }
    let text = String::from_utf8_lossy(buf);
    Ok(Some(text.trim_end_matches(['\r', '\n']).to_string()))
}

/// The address inside `<...>` of `MAIL FROM:<a>` / `RCPT TO:<a>`.
fn path_arg(arg: &str) -> Option<String> {
    let (_, rest) = arg.split_once(':')?;
    let rest = rest.trim();
    let inner = rest.strip_prefix('<').and_then(|r| r.split_once('>')).map(|(a, _)| a).unwrap_or(rest);
    Some(inner.split_whitespace().next().unwrap_or("").to_string())
}

fn plain(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

async fn session(stream: TcpStream, dir: &Path, server: String) -> std::io::Result<()> {
    let (local, peer) = (stream.local_addr()?, stream.peer_addr()?);
    let (lip, pip) = (plain(local.ip()), plain(peer.ip()));
    append(
        &connections_file(dir),
        &Connection {
            local: lip.to_string(),
            local_port: local.port(),
            peer: pip.to_string(),
            peer_port: peer.port(),
            server: server.clone(),
        },
    );
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let mut buf = Vec::new();
    wr.write_all(format!("220 {lip}:{} lab ESMTP\r\n", local.port()).as_bytes()).await?;
    let (mut helo, mut from, mut rcpts): (Option<String>, Option<String>, Vec<String>) = (None, None, Vec::new());
    while let Some(cmd) = line(&mut rd, &mut buf).await? {
        let verb = cmd.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
        let arg = cmd.get(verb.len()..).unwrap_or("").trim();
        let reply: String = match verb.as_str() {
            "EHLO" => {
                helo = Some(arg.to_string());
                format!("250-{lip}:{} lab\r\n250-8BITMIME\r\n250 SIZE {MAX_MESSAGE}", local.port())
            }
            "HELO" => {
                helo = Some(arg.to_string());
                format!("250 {lip}:{} lab", local.port())
            }
            "MAIL" => match path_arg(arg) {
                Some(a) => {
                    (from, rcpts) = (Some(a), Vec::new());
                    "250 OK".into()
                }
                None => "501 syntax: MAIL FROM:<address>".into(),
            },
            "RCPT" if from.is_none() => "503 MAIL first".into(),
            "RCPT" => match path_arg(arg) {
                Some(a) => {
                    rcpts.push(a);
                    "250 OK".into()
                }
                None => "501 syntax: RCPT TO:<address>".into(),
            },
            "DATA" if rcpts.is_empty() => "503 RCPT first".into(),
            "DATA" => {
                wr.write_all(b"354 end data with <CR><LF>.<CR><LF>\r\n").await?;
                let mut data = String::new();
                loop {
                    let Some(l) = line(&mut rd, &mut buf).await? else { return Ok(()) };
                    if l == "." {
                        break;
                    }
                    if data.len() + l.len() > MAX_MESSAGE {
                        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "message too large"));
                    }
                    data.push_str(l.strip_prefix('.').unwrap_or(&l));
                    data.push_str("\r\n");
                }
                let mail = Mail {
                    time: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
                    server: server.clone(),
                    local: lip.to_string(),
                    local_port: local.port(),
                    peer: pip.to_string(),
                    peer_port: peer.port(),
                    helo: helo.clone(),
                    mail_from: from.take().unwrap_or_default(),
                    rcpt_tos: std::mem::take(&mut rcpts),
                    data,
                };
                append(&mail_file(dir, &server), &mail);
                format!("250 OK message accepted by the lab's {server}")
            }
            "RSET" => {
                (from, rcpts) = (None, Vec::new());
                "250 OK".into()
            }
            "NOOP" => "250 OK".into(),
            "QUIT" => {
                wr.write_all(b"221 bye\r\n").await?;
                return Ok(());
            }
            _ => "502 command not implemented".into(),
        };
        wr.write_all(format!("{reply}\r\n").as_bytes()).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_subjects_are_read() {
        assert_eq!(path_arg("FROM:<a@b.example> SIZE=10").as_deref(), Some("a@b.example"));
        assert_eq!(path_arg("TO: <c@d.example>").as_deref(), Some("c@d.example"));
        assert_eq!(path_arg("FROM:<>").as_deref(), Some(""));
        assert_eq!(path_arg("nothing"), None);
        let m = Mail {
            time: String::new(),
            server: "mx".into(),
            local: String::new(),
            local_port: 25,
            peer: String::new(),
            peer_port: 1,
            helo: None,
            mail_from: String::new(),
            rcpt_tos: Vec::new(),
            data: "From: a\r\nsubject: hi there\r\n\r\nSubject: not this\r\n".into(),
        };
        assert_eq!(m.subject(), "hi there");
    }
}
