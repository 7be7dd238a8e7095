//! The events writer: JSON lines of blocked connection attempts and config
//! reloads, on a thread of its own, fed through the bounded queue the data
//! plane sends into without waiting ([`crate::dataplane::events`]). Each
//! line goes to the `[events]` file and to the control socket's followers
//! ([`super::stream`], published without waiting).
//!
//! Sampling: at most `per_subscriber_per_minute` blocked events of one
//! subscriber (an IPv4 address or an IPv6 /64) in each minute from its first;
//! the rest are counted and the subscriber's next written event says how
//! many were suppressed. The sampling table is bounded: past
//! [`MAX_SUBSCRIBERS`] entries, those whose minute is over are dropped, and
//! if none is, the table starts again (a flood of forged sources cannot grow
//! it; its only effect is that sampling forgets counts it could not keep).

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::stream::EventStream;
use super::writer::{create_dir_of, Failures, WriterThread, SWITCH_WAIT};
use crate::config::EventsConfig;
use crate::dataplane::events::Event;
use crate::state::subscriber_key;
use crate::stats::{OutputFile, WriteErrors};

/// Most subscribers the sampling table tracks at once.
pub const MAX_SUBSCRIBERS: usize = 65_536;

const MINUTE: Duration = Duration::from_secs(60);

/// Why the writer could not start.
#[derive(Debug, thiserror::Error)]
#[error("events.path {path}: {cause}")]
pub struct EventsError {
    path: PathBuf,
    cause: io::Error,
}

/// Per-subscriber sampling state.
#[derive(Debug, Default)]
pub(crate) struct Sampler {
    limit: u32,
    /// Subscriber -> (start of its minute, written in it, suppressed since the last written).
    seen: HashMap<String, (Instant, u32, u64)>,
}

impl Sampler {
    pub(crate) fn new(limit: u32) -> Sampler {
        Sampler { limit, seen: HashMap::new() }
    }

    /// Whether to write the event of `subscriber` at `now`, and how many
    /// of its events were suppressed before it.
    pub(crate) fn admit(&mut self, subscriber: &str, now: Instant) -> Option<u64> {
        if !self.seen.contains_key(subscriber) && self.seen.len() >= MAX_SUBSCRIBERS {
            self.seen.retain(|_, (start, _, suppressed)| now.duration_since(*start) < MINUTE || *suppressed > 0);
            if self.seen.len() >= MAX_SUBSCRIBERS {
                self.seen.clear();
            }
        }
        let e = self.seen.entry(subscriber.to_string()).or_insert((now, 0, 0));
        if now.duration_since(e.0) >= MINUTE {
            e.0 = now;
            e.1 = 0;
        }
        if e.1 >= self.limit {
            e.2 += 1;
            return None;
        }
        e.1 += 1;
        Some(std::mem::take(&mut e.2))
    }
}

/// The subscriber an address belongs to, as the limits count it
/// ([`subscriber_key`]): the IPv4 address, or the IPv6 /64.
fn subscriber(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(_) => format!("{}/64", std::net::Ipv6Addr::from(u128::from(subscriber_key(addr)) << 64)),
    }
}

/// One event as its JSON line, or `None` when sampling suppresses it.
pub(crate) fn line(event: &Event, sampler: &mut Sampler, now: Instant, at: SystemTime) -> Option<String> {
    let ts = humantime::format_rfc3339_millis(at).to_string();
    let v = match event {
        Event::Blocked { block, rule } => {
            let who = subscriber(block.src.ip());
            let suppressed = sampler.admit(&who, now)?;
            let mut v = serde_json::json!({
                "ts": ts,
                "event": "blocked",
                "subscriber": who,
                "src": block.src.to_string(),
                "dst": block.dst.to_string(),
                "proto": "tcp",
                "action": block.action.name(),
                "rule": rule.as_deref().unwrap_or("op25b"),
                "reply": block.reply.name(),
            });
            if let Some(tunnel) = &block.tunnel {
                // The subscriber sent the tunnel: its source has no port;
                // `dst` is the inner destination it dialled.
                v["src"] = block.src.ip().to_string().into();
                v["tunnel"] = tunnel.kind.name().into();
                v["tunnel_depth"] = tunnel.depth.into();
                v["outer_dst"] = tunnel.outer_dst.to_string().into();
                v["inner_src"] = tunnel.inner_src.to_string().into();
                v["inner_dst"] = block.dst.to_string().into();
            }
            if suppressed > 0 {
                v["suppressed"] = suppressed.into();
            }
            v
        }
        Event::Abuse(e) => {
            let mut v = super::abuse::event_json(e);
            v["ts"] = ts.into();
            v
        }
        Event::Reload { ok, detail } => serde_json::json!({
            "ts": ts,
            "event": "reload",
            "result": if *ok { "success" } else { "failure" },
            "detail": detail,
        }),
    };
    Some(v.to_string())
}

/// An events output, open: the file (appending) or standard output, and
/// the sampling limit to write it with.
pub struct EventsOutput {
    out: Box<dyn Write + Send>,
    path: PathBuf,
    limit: u32,
}

impl EventsOutput {
    /// Opens the output of `cfg` (appending; its directory is created);
    /// `None` without a path.
    pub fn open(cfg: &EventsConfig) -> Result<Option<EventsOutput>, EventsError> {
        let Some(path) = cfg.path.clone() else { return Ok(None) };
        let out: Box<dyn Write + Send> = if path.as_os_str() == "-" {
            Box::new(io::stdout())
        } else {
            let err = |cause| EventsError { path: path.clone(), cause };
            create_dir_of(&path).map_err(err)?;
            Box::new(std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(err)?)
        };
        Ok(Some(EventsOutput { out, path, limit: cfg.per_subscriber_per_minute }))
    }
}

/// A new output for the writer, and where it says it took it.
type Switch = (EventsOutput, std::sync::mpsc::SyncSender<()>);

/// The running events writer.
pub struct EventsWriter {
    thread: WriterThread,
    switch: std::sync::mpsc::Sender<Switch>,
}

/// A new output handed to the writer ([`EventsWriter::request`]).
pub struct PendingSwitch {
    done: std::sync::mpsc::Receiver<()>,
    path: PathBuf,
}

impl PendingSwitch {
    /// Waits (up to two seconds) until the writer has flushed the old file
    /// and taken the new one, so that no line goes to the old file after
    /// this returns.
    pub fn wait(self) {
        if self.done.recv_timeout(SWITCH_WAIT).is_err() {
            tracing::warn!(file = %self.path.display(), "the events writer is busy; it takes the reopened file after its current write");
        }
    }
}

impl EventsWriter {
    /// Hands `output` to the writer (a reload or a log rotation: the file
    /// opened again, or another path, or another limit); it takes it before
    /// it writes its next event (a reload sends one: its own line goes to
    /// the new file), or within a tenth of a second when idle. `None` when
    /// the writer has ended (op25b is stopping).
    pub fn request(&self, output: EventsOutput) -> Option<PendingSwitch> {
        let (done_tx, done) = std::sync::mpsc::sync_channel(1);
        let path = output.path.clone();
        self.switch.send((output, done_tx)).ok()?;
        Some(PendingSwitch { done, path })
    }

    /// [`EventsWriter::request`], then [`PendingSwitch::wait`].
    #[cfg(test)]
    pub fn switch(&self, output: EventsOutput) {
        if let Some(p) = self.request(output) {
            p.wait();
        }
    }

    /// Waits for the writer to finish: every sender must be gone first.
    pub fn join(self) {
        drop(self.switch);
        self.thread.join();
    }
}

/// Opens the output of `cfg` (appending) and starts writing what arrives on
/// `rx`, and publishing it to `stream` (the control socket's followers),
/// until every sender is gone (join the thread after that); failed writes
/// are counted in `errors`. `None` with neither a path nor a stream.
pub fn start(
    cfg: &EventsConfig,
    rx: Receiver<Event>,
    errors: Arc<WriteErrors>,
    stream: Option<EventStream>,
) -> Result<Option<EventsWriter>, EventsError> {
    let output = EventsOutput::open(cfg)?;
    if output.is_none() && stream.is_none() {
        return Ok(None);
    }
    let limit = cfg.per_subscriber_per_minute;
    let name = cfg.path.clone().unwrap_or_else(|| "the events stream".into());
    let file =
        output.map(|o| (io::BufWriter::new(o.out), Failures::new(OutputFile::Events, o.path, Arc::clone(&errors))));
    let (switch, switches) = std::sync::mpsc::channel();
    let out = Output { file, stream, errors };
    let thread = WriterThread::spawn("op25b-events", move || write_loop(rx, &switches, out, Sampler::new(limit)))
        .map_err(|cause| EventsError { path: name, cause })?;
    Ok(Some(EventsWriter { thread, switch }))
}

/// Where the lines go: the file, the followers of the control socket.
struct Output {
    file: Option<(io::BufWriter<Box<dyn Write + Send>>, Failures)>,
    stream: Option<EventStream>,
    /// Where a file taken at a reopen counts its failed writes.
    errors: Arc<WriteErrors>,
}

impl Output {
    fn put(&mut self, event: &Event, sampler: &mut Sampler) {
        let followed = self.stream.as_ref().is_some_and(EventStream::followed);
        if self.file.is_none() && !followed {
            return;
        }
        let Some(text) = line(event, sampler, Instant::now(), SystemTime::now()) else { return };
        if let Some((out, failures)) = &mut self.file {
            failures.check(writeln!(out, "{text}"));
        }
        if let Some(s) = &self.stream {
            s.publish(&text);
        }
    }

    fn flush(&mut self) {
        if let Some((out, failures)) = &mut self.file {
            failures.check(out.flush());
        }
    }

    /// The file written from now on (a reload or a log rotation): what was
    /// written goes out to the old file first, whole lines only.
    fn switch(&mut self, next: EventsOutput) {
        self.flush();
        let out = io::BufWriter::new(next.out);
        match &mut self.file {
            Some((old, failures)) => {
                *old = out;
                failures.reopened(next.path);
            }
            None => {
                self.file = Some((out, Failures::new(OutputFile::Events, next.path, Arc::clone(&self.errors))));
            }
        }
    }
}

fn write_loop(
    rx: Receiver<Event>,
    switches: &std::sync::mpsc::Receiver<Switch>,
    mut out: Output,
    mut sampler: Sampler,
) {
    loop {
        let first = match rx.recv_timeout(TICK) {
            Ok(event) => Some(event),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        // A reopen takes effect between two batches, and before a reload's
        // own event: the reload hands over the file before it sends the
        // event, so the event may arrive in the middle of a batch whose
        // start found no file waiting.
        take_switches(switches, &mut out, &mut sampler);
        let Some(event) = first else { continue };
        out.put(&event, &mut sampler);
        // Write out what arrived in one go, then flush once.
        while let Ok(event) = rx.try_recv() {
            if matches!(event, Event::Reload { .. }) {
                take_switches(switches, &mut out, &mut sampler);
            }
            out.put(&event, &mut sampler);
        }
        out.flush();
        // Let the next burst gather (see the capture writer): one wake-up a batch.
        std::thread::sleep(BATCH);
    }
    out.flush();
}

/// Takes the files handed over since the last look (the last one wins).
fn take_switches(switches: &std::sync::mpsc::Receiver<Switch>, out: &mut Output, sampler: &mut Sampler) {
    while let Ok((next, done)) = switches.try_recv() {
        sampler.limit = next.limit;
        out.switch(next);
        let _ = done.try_send(()); // the reload may have stopped waiting
    }
}

/// How often an idle writer looks for a reopened file.
const TICK: Duration = Duration::from_millis(100);

/// How long the writer lets events gather after a batch.
const BATCH: Duration = Duration::from_millis(5);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Action;
    use crate::router::{Block, BlockAction, BlockReply};

    fn blocked(src: &str) -> Event {
        let block = Block {
            src: src.parse().unwrap(),
            dst: "203.0.113.25:25".parse().unwrap(),
            action: BlockAction::Op25b(Action::Reject),
            rule: None,
            reply: BlockReply::TcpRst,
            tunnel: None,
        };
        Event::Blocked { block, rule: None }
    }

    #[test]
    fn one_line_per_blocked_attempt_with_its_fields() {
        let mut s = Sampler::new(10);
        let t = Instant::now();
        let v: serde_json::Value =
            serde_json::from_str(&line(&blocked("100.64.1.10:40000"), &mut s, t, SystemTime::UNIX_EPOCH).unwrap())
                .unwrap();
        assert_eq!(v["ts"], "1970-01-01T00:00:00.000Z");
        assert_eq!(
            (v["event"].as_str(), v["subscriber"].as_str(), v["src"].as_str(), v["dst"].as_str()),
            (Some("blocked"), Some("100.64.1.10"), Some("100.64.1.10:40000"), Some("203.0.113.25:25"))
        );
        assert_eq!(
            (v["action"].as_str(), v["rule"].as_str(), v["reply"].as_str()),
            (Some("reject"), Some("op25b"), Some("tcp_rst"))
        );
        assert!(v.get("suppressed").is_none());
        let v6: serde_json::Value =
            serde_json::from_str(&line(&blocked("[2001:db8:100:1::10]:40000"), &mut s, t, SystemTime::now()).unwrap())
                .unwrap();
        assert_eq!(v6["subscriber"], "2001:db8:100:1::/64");
        assert_eq!(v6["src"], "[2001:db8:100:1::10]:40000");
    }

    #[test]
    fn sampling_bounds_each_subscriber_and_reports_what_it_suppressed() {
        let mut s = Sampler::new(10);
        let t0 = Instant::now();
        let written = (0..1000)
            .filter(|i| line(&blocked(&format!("100.64.1.10:{}", 1000 + i)), &mut s, t0, SystemTime::now()).is_some())
            .count();
        assert_eq!(written, 10);
        // Another subscriber (another /64 for IPv6) has its own share.
        assert!(line(&blocked("100.64.1.11:1"), &mut s, t0, SystemTime::now()).is_some());
        // A minute later the next event says how many were left out.
        let t1 = t0 + MINUTE;
        let v: serde_json::Value =
            serde_json::from_str(&line(&blocked("100.64.1.10:5"), &mut s, t1, SystemTime::now()).unwrap()).unwrap();
        assert_eq!(v["suppressed"], 990);
    }

    #[test]
    fn a_switch_after_a_rename_puts_every_line_in_exactly_one_file() {
        let dir = std::env::temp_dir().join(format!("op25b-events-switch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("events.jsonl");
        let cfg = EventsConfig { path: Some(path.clone()), per_subscriber_per_minute: 1_000_000 };
        let (tx, rx) = std::sync::mpsc::sync_channel(crate::dataplane::events::QUEUE);
        let writer = start(&cfg, rx, Arc::default(), None).expect("starts").expect("configured");
        let rotated = dir.join("events.jsonl.1");
        let sender = std::thread::spawn(move || {
            for port in 1000..3000u16 {
                tx.send(blocked(&format!("100.64.1.10:{port}"))).expect("the writer runs");
                // A steady stream, so that the switch falls in the middle of it.
                std::thread::sleep(Duration::from_micros(200));
            }
        });
        // Rotate while the sender is busy, as logrotate does: rename, reopen.
        while std::fs::metadata(&path).map_or(0, |m| m.len()) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::fs::rename(&path, &rotated).unwrap();
        writer.switch(EventsOutput::open(&cfg).unwrap().unwrap());
        sender.join().unwrap();
        writer.join();
        let srcs = |p: &std::path::Path| -> Vec<String> {
            let text = std::fs::read_to_string(p).unwrap();
            assert!(text.is_empty() || text.ends_with('\n'), "whole lines only");
            text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["src"].to_string()).collect()
        };
        let (old, new) = (srcs(&rotated), srcs(&path));
        assert!(!old.is_empty(), "lines before the switch stay in the renamed file");
        assert!(!new.is_empty(), "lines after it go to the new file");
        let mut all: Vec<String> = old.into_iter().chain(new).collect();
        assert_eq!(all.len(), 2000);
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 2000, "each event once");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_flood_of_sources_keeps_the_table_bounded() {
        let mut s = Sampler::new(1);
        let t = Instant::now();
        for i in 0..(MAX_SUBSCRIBERS as u32 + 10_000) {
            let src = std::net::SocketAddr::new(IpAddr::V4((0x6440_0000 + i).into()), 1);
            let _ = line(&blocked(&src.to_string()), &mut s, t, SystemTime::now());
        }
        assert!(s.seen.len() <= MAX_SUBSCRIBERS);
    }
    #[test]
    fn a_block_inside_a_tunnel_names_the_tunnel_and_the_inner_ends() {
        let mut t = crate::testing::PolicyBuilder::lab().router();
        t.router.note_blocks(true);
        let inner = crate::testing::packets::tcp("10.0.0.1", 1234, "203.0.113.25", 25).syn().build();
        let (src, dst) = ("100.64.1.10".parse().unwrap(), "198.51.100.1".parse().unwrap());
        let pkt = crate::packet::encap::encapsulate(
            crate::packet::TunnelKind::Vxlan,
            src,
            dst,
            64,
            &inner,
            &Default::default(),
        )
        .unwrap();
        let _ = t.out(&pkt);
        let block = t.router.take_block().expect("a block noted");
        let mut s = Sampler::new(10);
        let text = line(&Event::Blocked { block, rule: None }, &mut s, Instant::now(), SystemTime::now()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!((v["subscriber"].as_str(), v["src"].as_str()), (Some("100.64.1.10"), Some("100.64.1.10")), "{v}");
        assert_eq!((v["tunnel"].as_str(), v["tunnel_depth"].as_u64()), (Some("vxlan"), Some(1)), "{v}");
        assert_eq!(v["outer_dst"], "198.51.100.1", "{v}");
        assert_eq!(
            (v["inner_src"].as_str(), v["inner_dst"].as_str()),
            (Some("10.0.0.1:1234"), Some("203.0.113.25:25"))
        );
        assert_eq!(
            (v["dst"].as_str(), v["action"].as_str(), v["reply"].as_str()),
            (Some("203.0.113.25:25"), Some("reject"), Some("none"))
        );
    }
}
