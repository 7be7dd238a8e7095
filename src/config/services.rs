//! The service keys: `[control]` (what listens), `[events]` (the JSON lines
//! of blocked connections) and `[capture]` (the pcap of what was not
//! forwarded). All optional: without them nothing listens and nothing is
//! written. `[control]` is start-only (a reload that changes it is refused);
//! `[events]` and `[capture]` change on reload, but for being turned on or
//! off (see [`crate::reload`]).

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Ctx};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct CaptureSection {
    pub(super) dropped: Option<Spanned<String>>,
    pub(super) max_bytes: Option<Spanned<u64>>,
    pub(super) keep: Option<Spanned<u32>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct EventsSection {
    pub(super) path: Option<Spanned<String>>,
    pub(super) per_subscriber_per_minute: Option<Spanned<u32>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct ControlSection {
    pub(super) socket: Option<Spanned<String>>,
    pub(super) metrics: Option<Spanned<String>>,
}

/// `[capture]`: nothing is captured unless `dropped` is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureConfig {
    /// The pcap file of the packets that were not forwarded.
    pub dropped: Option<PathBuf>,
    /// Size at which the file is rotated.
    pub max_bytes: u64,
    /// Files kept, the one being written included.
    pub keep: usize,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig { dropped: None, max_bytes: 100 * 1024 * 1024, keep: 3 }
    }
}

/// `[events]`: nothing is written unless `path` is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsConfig {
    /// JSON lines go here; `-` is standard output.
    pub path: Option<PathBuf>,
    /// At most this many blocked events per subscriber a minute; the rest counted.
    pub per_subscriber_per_minute: u32,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig { path: None, per_subscriber_per_minute: 10 }
    }
}

/// `[control]`: nothing listens unless set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ControlConfig {
    /// Unix socket for `op25b stats` (mode 0600).
    pub socket: Option<PathBuf>,
    /// HTTP address for /metrics and /healthz.
    pub metrics: Option<std::net::SocketAddr>,
}

/// Validates the three sections.
pub(super) fn parse(
    cx: &Ctx<'_>,
    control: &ControlSection,
    events: &EventsSection,
    capture: &CaptureSection,
) -> Result<(ControlConfig, EventsConfig, CaptureConfig), ConfigError> {
    let control =
        ControlConfig {
            socket: match &control.socket {
                Some(s) if s.get_ref().is_empty() => return Err(cx.err(&s.span(), "control.socket", "needs a path")),
                Some(s) => Some(PathBuf::from(s.get_ref())),
                None => None,
            },
            metrics: match &control.metrics {
                Some(m) => Some(m.get_ref().parse().map_err(|_| {
                    cx.err(&m.span(), "control.metrics", format!("{:?} is not ADDRESS:PORT", m.get_ref()))
                })?),
                None => None,
            },
        };
    let events = EventsConfig {
        path: match &events.path {
            Some(p) if p.get_ref().is_empty() => return Err(cx.err(&p.span(), "events.path", "needs a path or \"-\"")),
            Some(p) => Some(PathBuf::from(p.get_ref())),
            None => None,
        },
        per_subscriber_per_minute: match &events.per_subscriber_per_minute {
            None => EventsConfig::default().per_subscriber_per_minute,
            Some(n) if (1..=1_000_000).contains(n.get_ref()) => *n.get_ref(),
            Some(n) => {
                return Err(cx.err(&n.span(), "events.per_subscriber_per_minute", "must be between 1 and 1000000"))
            }
        },
    };
    let capture = CaptureConfig {
        dropped: match &capture.dropped {
            Some(p) if p.get_ref().is_empty() => return Err(cx.err(&p.span(), "capture.dropped", "needs a path")),
            Some(p) => Some(PathBuf::from(p.get_ref())),
            None => None,
        },
        max_bytes: match &capture.max_bytes {
            None => CaptureConfig::default().max_bytes,
            Some(n) if *n.get_ref() >= 4096 => *n.get_ref(),
            Some(n) => return Err(cx.err(&n.span(), "capture.max_bytes", "must be at least 4096")),
        },
        keep: match &capture.keep {
            None => CaptureConfig::default().keep,
            Some(n) if (1..=1000).contains(n.get_ref()) => *n.get_ref() as usize,
            Some(n) => return Err(cx.err(&n.span(), "capture.keep", "must be between 1 and 1000")),
        },
    };
    Ok((control, events, capture))
}
