//! The events writer: JSON lines of blocked connection attempts and config
//! reloads, on a thread of its own, fed through the bounded queue the data
//! plane sends into without waiting ([`crate::dataplane::events`]).
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
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::writer::{create_dir_of, Failures, WriterThread};
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
                "action": block.action,
                "rule": rule.as_deref().unwrap_or("op25b"),
                "reply": block.reply,
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

/// Opens the output of `cfg` (appending) and starts writing what arrives on
/// `rx`, until every sender is gone (join the thread after that); failed
/// writes are counted in `errors`. `None` without a path.
pub fn start(
    cfg: &EventsConfig,
    rx: Receiver<Event>,
    errors: Arc<WriteErrors>,
) -> Result<Option<WriterThread>, EventsError> {
    let Some(path) = cfg.path.clone() else { return Ok(None) };
    let out: Box<dyn Write + Send> = if path.as_os_str() == "-" {
        Box::new(io::stdout())
    } else {
        let err = |cause| EventsError { path: path.clone(), cause };
        create_dir_of(&path).map_err(err)?;
        Box::new(std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(err)?)
    };
    let limit = cfg.per_subscriber_per_minute;
    let p = path.clone();
    let failures = Failures::new(OutputFile::Events, p, errors);
    let thread = WriterThread::spawn("op25b-events", move || {
        write_loop(rx, io::BufWriter::new(out), Sampler::new(limit), failures)
    })
    .map_err(|cause| EventsError { path, cause })?;
    Ok(Some(thread))
}

fn write_loop(rx: Receiver<Event>, mut out: impl Write, mut sampler: Sampler, mut failures: Failures) {
    while let Ok(event) = rx.recv() {
        if let Some(text) = line(&event, &mut sampler, Instant::now(), SystemTime::now()) {
            failures.check(writeln!(out, "{text}"));
        }
        // Write out what arrived in one go, then flush once.
        while let Ok(event) = rx.try_recv() {
            if let Some(text) = line(&event, &mut sampler, Instant::now(), SystemTime::now()) {
                failures.check(writeln!(out, "{text}"));
            }
        }
        failures.check(out.flush());
        // Let the next burst gather (see the capture writer): one wake-up a batch.
        std::thread::sleep(BATCH);
    }
    failures.check(out.flush());
}

/// How long the writer lets events gather after a batch.
const BATCH: Duration = Duration::from_millis(5);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::Block;

    fn blocked(src: &str) -> Event {
        let block = Block {
            src: src.parse().unwrap(),
            dst: "203.0.113.25:25".parse().unwrap(),
            action: "reject",
            rule: None,
            reply: "tcp_rst",
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
