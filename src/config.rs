//! The config file: serde types for the TOML text, validated into a [`Config`]
//! (device settings plus a compiled [`Policy`]).
//!
//! Every error names the file, the line and the key, in one line:
//! `lab.toml:31: op25b.dynamic[1]: "100.64.0.0/33" is not a prefix ...`.
//! Unknown keys are errors, so a typo cannot silently disable a block.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Range;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use crate::policy::{Action, Banner, Op25b, Pipeline, Policy, PortSet, PrefixSet, TunnelMode};
use std::sync::Arc;

mod abuse;
mod actions;
mod json;
pub(crate) mod man;
mod render;
mod report;
mod rules;
mod services;
mod upstream;

pub use crate::state::abuse::{AbuseSettings, OnSuspect, Thresholds};
pub use report::Excerpt;
pub use services::{CaptureConfig, ControlConfig, EventsConfig};
use services::{CaptureSection, ControlSection, EventsSection};
pub use upstream::{DeviceKind, LinkConfig};

/// The Linux limit on interface names (IFNAMSIZ - 1).
pub(crate) const MAX_IFNAME: usize = 15;
/// Default device MTU.
pub(crate) const DEFAULT_MTU: u16 = 1500;
/// Smallest MTU accepted: IPv6 needs 1280 (RFC 8200 5).
pub(crate) const MIN_MTU: u16 = 1280;

/// A config that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {cause}")]
    Read {
        /// The file.
        file: PathBuf,
        /// The I/O error (in the message, not a `source()`: a chain prints it once).
        cause: std::io::Error,
    },
    /// A syntax error, an unknown or missing key, or a value that is not allowed.
    #[error("{file}:{line}: {key}: {message}")]
    Invalid {
        /// The file.
        file: PathBuf,
        /// 1-based line of the offending value (or of the table that lacks a key).
        line: usize,
        /// Dotted key path, e.g. `op25b.dynamic[1]`.
        key: String,
        /// What is wrong.
        message: String,
        /// The offending line, with the bad value marked (see [`ConfigError::render`]).
        excerpt: Option<Excerpt>,
    },
}

impl ConfigError {
    /// The error for a person: `error: FILE:LINE: KEY: MESSAGE` (the
    /// one-line form), then the offending line with a caret under the bad
    /// value. `color`: ANSI colours, for a terminal.
    pub fn render(&self, color: bool) -> String {
        match self {
            ConfigError::Invalid { line, excerpt, .. } => {
                report::render(&self.to_string(), *line, excerpt.as_ref(), color)
            }
            ConfigError::Read { .. } => report::render(&self.to_string(), 0, None, color),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    router: RouterSection,
    subscriber: SubscriberSection,
    upstream: Spanned<upstream::UpstreamSection>,
    op25b: Op25bSection,
    #[serde(default)]
    dataplane: DataplaneSection,
    #[serde(default)]
    control: ControlSection,
    #[serde(default)]
    events: EventsSection,
    #[serde(default)]
    capture: CaptureSection,
    abuse: Option<abuse::AbuseSection>,
    #[serde(default)]
    sets: std::collections::BTreeMap<String, Spanned<Vec<Spanned<rules::Item>>>>,
    #[serde(default, rename = "rule")]
    rules: Vec<Spanned<rules::RuleSection>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouterSection {
    addresses: Spanned<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscriberSection {
    tun: Spanned<String>,
    netns: Option<Spanned<String>>,
    mtu: Option<Spanned<u16>>,
    prefixes: Spanned<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Op25bSection {
    dynamic: Vec<Spanned<String>>,
    #[serde(default)]
    exempt_sources: Vec<Spanned<String>>,
    #[serde(default)]
    relays: Vec<Spanned<String>>,
    ports: Option<Vec<Spanned<u16>>>,
    #[serde(default = "default_action")]
    action: Spanned<ActionName>,
    banner: Option<Spanned<String>>,
    banner_sessions: Option<Spanned<u32>>,
    banner_sessions_per_source: Option<Spanned<u32>>,
    banner_timeout: Option<Spanned<u32>>,
    redirect_to: Option<Spanned<Vec<Spanned<String>>>>,
    block_inbound: Option<bool>,
    reply_rate: Option<Spanned<u32>>,
    reply_burst: Option<Spanned<u32>>,
    max_flows: Option<Spanned<u32>>,
    max_flows_per_source: Option<Spanned<u32>>,
    tunnels: Option<Spanned<String>>,
    tunnel_endpoints: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DataplaneSection {
    offload: Option<bool>,
    workers: Option<Spanned<u16>>,
    queue_len: Option<Spanned<u32>>,
    busy_poll_us: Option<Spanned<u32>>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum ActionName {
    Reject,
    Drop,
    Icmp,
    Banner,
    Redirect,
    Monitor,
}

fn default_action() -> Spanned<ActionName> {
    Spanned::new(0..0, ActionName::Reject)
}

/// One TUN device as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceConfig {
    /// Interface name.
    pub tun: String,
    /// Network namespace to create it in (`/run/netns/NAME`), if any.
    pub netns: Option<String>,
    /// MTU.
    pub mtu: u16,
    /// A TUN op25b creates, or an existing Ethernet interface (upstream only).
    pub kind: DeviceKind,
}

/// Data-plane tuning (`[dataplane]`, all optional).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataplaneConfig {
    /// Use the virtio-net header (GSO/GRO) when the kernel offers it.
    pub offload: bool,
    /// Transmit queue length of both TUN devices, in packets.
    pub queue_len: u32,
    /// Worker threads per direction (TUN queues per device); `None` = from the
    /// number of cores.
    pub workers: Option<u16>,
    /// How long a worker keeps polling its queue after the last packet before
    /// it sleeps; zero sleeps at once.
    pub busy_poll: std::time::Duration,
}

/// Default TUN transmit queue: room for bursts while a worker is descheduled
/// on a busy machine (the kernel's default is 500).
pub(crate) const DEFAULT_QUEUE_LEN: u32 = 1000;

/// A validated config.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from.
    pub path: PathBuf,
    /// The subscriber-side device.
    pub subscriber: DeviceConfig,
    /// The upstream device.
    pub upstream: DeviceConfig,
    /// The compiled policy.
    pub policy: Policy,
    /// Data-plane tuning.
    pub dataplane: DataplaneConfig,
    /// The control plane: what listens, where.
    pub control: ControlConfig,
    /// Events of blocked connections and reloads.
    pub events: EventsConfig,
    /// The capture of packets not forwarded.
    pub capture: CaptureConfig,
    /// Abuse handling (`[abuse]`), when configured.
    pub abuse: Option<crate::state::abuse::AbuseSettings>,
}

/// Turns spans into line numbers and builds errors.
struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Ctx<'_> {
    fn line(&self, span: &Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text.as_bytes()[..end].iter().filter(|b| **b == b'\n').count() + 1
    }

    fn err(&self, span: &Range<usize>, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_path_buf(),
            line: self.line(span),
            key: key.into(),
            message: message.into(),
            excerpt: report::excerpt(self.text, span),
        }
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|cause| ConfigError::Read { file: path.to_path_buf(), cause })?;
        Config::parse(path, &text)
    }

    /// Validates config text; `path` is only used in messages.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let cx = Ctx { file: path, text };
        let file = file_config(&cx)?;
        let (address_v4, address_v6) = router_addresses(&cx, &file.router)?;
        let subscriber =
            device(&cx, "subscriber", "tun", &file.subscriber.tun, &file.subscriber.netns, &file.subscriber.mtu)?;
        let upstream = upstream::parse(&cx, &file.upstream, &subscriber)?;

        let subscriber_prefixes = prefixes(&cx, "subscriber.prefixes", file.subscriber.prefixes.get_ref())?;
        if subscriber_prefixes.is_empty() {
            return Err(cx.err(
                &file.subscriber.prefixes.span(),
                "subscriber.prefixes",
                "needs at least one prefix: no subscriber source would be allowed",
            ));
        }
        let o = &file.op25b;
        let mut op25b = op25b_section(&cx, o)?;
        actions::apply(&cx, o, &mut op25b)?;
        actions::tunnels(&cx, o, &mut op25b)?;
        let (reply_limit, max_flows, max_flows_per_source) = actions::limits(&cx, o)?;
        let sets = rules::Sets::compile(&cx, &file.sets)?;
        let compiled = rules::compile(&cx, &sets, &file.rules)?;
        let pipeline = Pipeline::new(compiled);
        let (abuse, quarantine_allow) = abuse::parse(&cx, file.abuse.as_ref())?;
        let policy = Policy {
            address_v4,
            address_v6,
            subscriber_prefixes,
            subscriber_mtu: subscriber.mtu,
            upstream_mtu: upstream.mtu,
            op25b,
            rules: Arc::new(pipeline),
            reply_limit,
            max_flows,
            max_flows_per_source,
            quarantine_allow,
        };
        let dataplane = dataplane(&cx, &file.dataplane)?;
        let (control, events, capture) = services::parse(&cx, &file.control, &file.events, &file.capture)?;
        Ok(Config {
            path: path.to_path_buf(),
            subscriber,
            upstream,
            policy,
            dataplane,
            control,
            events,
            capture,
            abuse,
        })
    }
}

/// The TOML text as [`FileConfig`]; errors name the key (and a rule by its name).
fn file_config(cx: &Ctx<'_>) -> Result<FileConfig, ConfigError> {
    let text = cx.text;
    let de = toml::Deserializer::parse(text).map_err(|e| toml_error(cx, e, String::new()))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        // `Spanned` wrappers show up in the path as a private field.
        let mut key = e.path().to_string().replace(".$__serde_spanned_private_value", "");
        // Name the rule, not only its index.
        if let Some(rest) = key.strip_prefix("rule[") {
            if let Some((n, tail)) = rest.split_once(']') {
                if let Some(name) = n.parse().ok().and_then(|n| rules::name_of_rule(text, n)) {
                    key = format!("rule[{n}] {name:?}{tail}");
                }
            }
        }
        toml_error(cx, e.into_inner(), key)
    })
}

/// `router.addresses`: one unicast address per IP family.
fn router_addresses(cx: &Ctx<'_>, router: &RouterSection) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>), ConfigError> {
    let mut address_v4 = None;
    let mut address_v6 = None;
    if router.addresses.get_ref().is_empty() {
        return Err(cx.err(&router.addresses.span(), "router.addresses", "needs at least one address"));
    }
    for (i, a) in router.addresses.get_ref().iter().enumerate() {
        let key = format!("router.addresses[{i}]");
        let addr: IpAddr = a
            .get_ref()
            .parse()
            .map_err(|_| cx.err(&a.span(), &key, format!("{:?} is not an IP address", a.get_ref())))?;
        if !crate::packet::reply::is_unicast_host(addr) {
            return Err(cx.err(&a.span(), &key, format!("{addr} is not a unicast address")));
        }
        let slot_taken = match addr {
            IpAddr::V4(v4) => address_v4.replace(v4).is_some(),
            IpAddr::V6(v6) => address_v6.replace(v6).is_some(),
        };
        if slot_taken {
            return Err(cx.err(&a.span(), &key, "one address per IP family"));
        }
    }
    Ok((address_v4, address_v6))
}

/// `[op25b]` before its actions and tunnels: who is blocked, on which ports, how.
fn op25b_section(cx: &Ctx<'_>, o: &Op25bSection) -> Result<Op25b, ConfigError> {
    let ports = match &o.ports {
        None => vec![25],
        Some(list) => {
            let mut out = Vec::with_capacity(list.len());
            for (i, p) in list.iter().enumerate() {
                if *p.get_ref() == 0 {
                    return Err(cx.err(&p.span(), format!("op25b.ports[{i}]"), "port 0 is not a port"));
                }
                out.push(*p.get_ref());
            }
            out
        }
    };
    Ok(Op25b {
        dynamic: prefixes(cx, "op25b.dynamic", &o.dynamic)?,
        exempt_sources: prefixes(cx, "op25b.exempt_sources", &o.exempt_sources)?,
        relays: prefixes(cx, "op25b.relays", &o.relays)?,
        ports: PortSet::new(ports),
        action: match *o.action.get_ref() {
            ActionName::Reject => Action::Reject,
            ActionName::Drop => Action::Drop,
            ActionName::Icmp => Action::Icmp,
            ActionName::Banner => Action::Banner,
            ActionName::Redirect => Action::Redirect,
            ActionName::Monitor => Action::Monitor,
        },
        block_inbound: o.block_inbound.unwrap_or(false),
        redirect_v4: None,
        redirect_v6: None,
        banner: Banner::default(),
        tunnels: TunnelMode::Inspect,
        tunnel_endpoints: PrefixSet::default(),
    })
}

/// `[dataplane]`, all optional.
fn dataplane(cx: &Ctx<'_>, d: &DataplaneSection) -> Result<DataplaneConfig, ConfigError> {
    let queue_len = match &d.queue_len {
        None => DEFAULT_QUEUE_LEN,
        Some(q) if (16..=1_000_000).contains(q.get_ref()) => *q.get_ref(),
        Some(q) => return Err(cx.err(&q.span(), "dataplane.queue_len", "must be between 16 and 1000000 packets")),
    };
    let workers = match &d.workers {
        None => None,
        Some(w) if (1..=64).contains(w.get_ref()) => Some(*w.get_ref()),
        Some(w) => return Err(cx.err(&w.span(), "dataplane.workers", "must be between 1 and 64")),
    };
    let busy_poll = match &d.busy_poll_us {
        None => std::time::Duration::ZERO,
        Some(b) if *b.get_ref() <= 1_000_000 => std::time::Duration::from_micros(u64::from(*b.get_ref())),
        Some(b) => {
            return Err(cx.err(&b.span(), "dataplane.busy_poll_us", "must be between 0 and 1000000 microseconds"))
        }
    };
    Ok(DataplaneConfig { offload: d.offload.unwrap_or(true), queue_len, workers, busy_poll })
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render())
    }
}

/// The sections every config has.
const REQUIRED_SECTIONS: [&str; 4] = ["router", "subscriber", "upstream", "op25b"];

fn toml_error(cx: &Ctx<'_>, e: toml::de::Error, key: String) -> ConfigError {
    let span = e.span().unwrap_or(0..0);
    let mut message = e.message().trim().replace('\n', " ");
    if !key.is_empty() && key != "." {
        return cx.err(&span, key, message);
    }
    // Top level: a missing section (serde names only the first: name all), or
    // a syntax error, which comes with a position but no key.
    if message.starts_with("missing field") {
        if let Ok(table) = cx.text.parse::<toml::Table>() {
            let missing: Vec<String> =
                REQUIRED_SECTIONS.iter().filter(|s| !table.contains_key(**s)).map(|s| format!("[{s}]")).collect();
            if !missing.is_empty() {
                let what = if missing.len() == 1 { "section" } else { "sections" };
                let mut e = cx.err(&(0..0), "(top level)", format!("missing {what} {}", missing.join(", ")));
                if let ConfigError::Invalid { excerpt, .. } = &mut e {
                    // Nothing in the file to point at.
                    *excerpt = None;
                }
                return e;
            }
        }
        return cx.err(&span, "(top level)", message);
    }
    let duplicate = message == "duplicate key";
    let (key, first) = report::locate(cx.text, span.start, duplicate);
    if duplicate {
        let table = report::excerpt(cx.text, &span).is_some_and(|e| e.text.trim_start().starts_with('['));
        let what = if table { format!("table [{key}]") } else { format!("key {key}") };
        message = match first {
            Some(l) => format!("duplicate {what}: already defined on line {l}"),
            None => format!("duplicate {what}"),
        };
    }
    cx.err(&span, key, message)
}

fn device(
    cx: &Ctx<'_>,
    section: &str,
    key: &str,
    tun: &Spanned<String>,
    netns: &Option<Spanned<String>>,
    mtu: &Option<Spanned<u16>>,
) -> Result<DeviceConfig, ConfigError> {
    let name = tun.get_ref();
    let bad_char = |s: &str| s.chars().any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if name.is_empty() || name.len() > MAX_IFNAME || bad_char(name) || name == "." || name == ".." {
        return Err(cx.err(
            &tun.span(),
            format!("{section}.{key}"),
            format!("{name:?} is not a valid interface name (1 to {MAX_IFNAME} bytes, no '/', ':' or spaces)"),
        ));
    }
    if let Some(ns) = netns {
        let n = ns.get_ref();
        if n.is_empty() || n.len() > 255 || n.contains('/') || n == "." || n == ".." || bad_char(n) {
            return Err(cx.err(&ns.span(), format!("{section}.netns"), format!("{n:?} is not a namespace name")));
        }
    }
    let mtu_value = match mtu {
        None => DEFAULT_MTU,
        Some(m) if *m.get_ref() < MIN_MTU => {
            return Err(cx.err(
                &m.span(),
                format!("{section}.mtu"),
                format!("{} is below {MIN_MTU}, the smallest MTU IPv6 allows", m.get_ref()),
            ))
        }
        Some(m) => *m.get_ref(),
    };
    Ok(DeviceConfig {
        tun: name.clone(),
        netns: netns.as_ref().map(|n| n.get_ref().clone()),
        mtu: mtu_value,
        kind: DeviceKind::Tun,
    })
}

fn prefixes(cx: &Ctx<'_>, key: &str, list: &[Spanned<String>]) -> Result<PrefixSet, ConfigError> {
    let mut nets = Vec::with_capacity(list.len());
    let mut seen = HashSet::new();
    for (i, s) in list.iter().enumerate() {
        let key = format!("{key}[{i}]");
        let text = s.get_ref().trim();
        let net: IpNet = match text.parse::<IpNet>() {
            Ok(n) => n,
            // A bare address means a host prefix.
            Err(_) => match text.parse::<IpAddr>() {
                Ok(a) => IpNet::from(a),
                Err(_) => {
                    return Err(cx.err(
                        &s.span(),
                        key,
                        format!("{text:?} is not a prefix (ADDRESS/LENGTH, length at most 32 for IPv4, 128 for IPv6)"),
                    ))
                }
            },
        };
        if net.trunc() != net {
            return Err(cx.err(&s.span(), key, format!("{text:?} has host bits set; did you mean {}?", net.trunc())));
        }
        if !seen.insert(net) {
            return Err(cx.err(&s.span(), key, format!("{net} is listed twice")));
        }
        nets.push(net);
    }
    Ok(PrefixSet::new(nets))
}

#[cfg(test)]
mod tests;
