//! `[abuse]`: who OP25B keeps blocking, thresholds, and the quarantine.
//!
//! Optional: without it nothing is tracked (and `op25b top` says so). A
//! reload may change every key but `track`, and may not add or remove the
//! section (both need a restart: the tracker is sized and started once).
//! `state_file` keeps the quarantines and the table across restarts; it is
//! read at start only (a reload changes where the next save goes).

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Ctx};
use crate::policy::{PortSet, PrefixSet, QuarantineAllow};
use crate::state::abuse::{AbuseSettings, OnSuspect, Thresholds};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AbuseSection {
    window: Option<Spanned<String>>,
    threshold: Option<Spanned<u32>>,
    destinations_threshold: Option<Spanned<u32>>,
    on_suspect: Option<Spanned<String>>,
    quarantine_for: Option<Spanned<String>>,
    quarantine_allow: Option<Vec<Spanned<String>>>,
    track: Option<Spanned<u32>>,
    state_file: Option<Spanned<String>>,
}

fn duration(
    cx: &Ctx<'_>,
    v: &Spanned<String>,
    key: &str,
    min: Duration,
    max: Duration,
) -> Result<Duration, ConfigError> {
    let d = humantime::parse_duration(v.get_ref().trim()).map_err(|e| {
        cx.err(&v.span(), key, format!("{:?} is not a duration such as \"60s\" or \"15m\" ({e})", v.get_ref()))
    })?;
    if d < min || d > max {
        return Err(cx.err(
            &v.span(),
            key,
            format!("must be between {} and {}", humantime::format_duration(min), humantime::format_duration(max)),
        ));
    }
    Ok(d)
}

/// One `quarantine_allow` entry: `tcp/PORT`, `udp/PORT`, `tcp/FIRST-LAST`,
/// `icmp`, `@relays`, or a destination prefix or address.
fn allow_entry(text: &str, out: &mut Allow) -> Result<(), String> {
    let text = text.trim();
    match text {
        "@relays" => out.relays = true,
        "icmp" => out.icmp = true,
        _ => {
            if let Some((proto, ports)) = text.split_once('/') {
                let list = match proto {
                    "tcp" => Some(&mut out.tcp),
                    "udp" => Some(&mut out.udp),
                    _ => None,
                };
                if let Some(list) = list {
                    let (a, b) = ports.split_once('-').unwrap_or((ports, ports));
                    let (a, b) = match (a.parse::<u16>(), b.parse::<u16>()) {
                        (Ok(a), Ok(b)) if a > 0 && a <= b => (a, b),
                        _ => return Err(format!("{text:?}: the ports must be PORT or FIRST-LAST, 1 to 65535")),
                    };
                    list.extend(a..=b);
                    return Ok(());
                }
            }
            let net = text
                .parse::<ipnet::IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| format!("{text:?} is not tcp/PORT, udp/PORT, icmp, @relays or a destination prefix"))?;
            if net.trunc() != net {
                return Err(format!("{text:?} has host bits set; did you mean {}?", net.trunc()));
            }
            out.nets.push(net);
        }
    }
    Ok(())
}

#[derive(Default)]
struct Allow {
    tcp: Vec<u16>,
    udp: Vec<u16>,
    icmp: bool,
    relays: bool,
    nets: Vec<ipnet::IpNet>,
}

/// Validates `[abuse]`: the settings, and the walled garden for the policy.
pub(super) fn parse(
    cx: &Ctx<'_>,
    section: Option<&AbuseSection>,
) -> Result<(Option<AbuseSettings>, QuarantineAllow), ConfigError> {
    let Some(a) = section else { return Ok((None, QuarantineAllow::default())) };
    let d = AbuseSettings::default();
    let window = match &a.window {
        Some(w) => duration(cx, w, "abuse.window", Duration::from_secs(1), Duration::from_secs(86_400))?,
        None => d.thresholds.window,
    };
    let threshold = match &a.threshold {
        Some(n) if *n.get_ref() >= 1 => *n.get_ref(),
        Some(n) => return Err(cx.err(&n.span(), "abuse.threshold", "must be at least 1")),
        None => d.thresholds.attempts,
    };
    let destinations = match &a.destinations_threshold {
        Some(n) if *n.get_ref() >= 1 => *n.get_ref(),
        Some(n) => return Err(cx.err(&n.span(), "abuse.destinations_threshold", "must be at least 1")),
        None => d.thresholds.destinations,
    };
    let on_suspect = match a.on_suspect.as_ref().map(|s| (s, s.get_ref().as_str())) {
        None => d.on_suspect,
        Some((_, "event")) => OnSuspect::Event,
        Some((_, "quarantine")) => OnSuspect::Quarantine,
        Some((s, other)) => {
            return Err(cx.err(&s.span(), "abuse.on_suspect", format!("{other:?} is not \"event\" or \"quarantine\"")))
        }
    };
    let quarantine_for = match &a.quarantine_for {
        Some(q) => duration(cx, q, "abuse.quarantine_for", Duration::from_secs(1), Duration::from_secs(30 * 86_400))?,
        None => d.quarantine_for,
    };
    let track = match &a.track {
        Some(n) if (16..=1_048_576).contains(n.get_ref()) => *n.get_ref() as usize,
        Some(n) => return Err(cx.err(&n.span(), "abuse.track", "must be between 16 and 1048576")),
        None => d.track,
    };
    let allow = match &a.quarantine_allow {
        None => QuarantineAllow::default(),
        Some(list) => {
            let mut out = Allow::default();
            for (i, e) in list.iter().enumerate() {
                allow_entry(e.get_ref(), &mut out)
                    .map_err(|m| cx.err(&e.span(), format!("abuse.quarantine_allow[{i}]"), m))?;
            }
            QuarantineAllow {
                tcp: PortSet::new(out.tcp),
                udp: PortSet::new(out.udp),
                icmp: out.icmp,
                relays: out.relays,
                destinations: PrefixSet::new(out.nets),
                written: list.iter().map(|e| e.get_ref().trim().to_string()).collect(),
            }
        }
    };
    let state_file = match &a.state_file {
        Some(p) if p.get_ref().trim().is_empty() => {
            return Err(cx.err(&p.span(), "abuse.state_file", "needs a path (leave the key out to save nothing)"))
        }
        Some(p) => Some(std::path::PathBuf::from(p.get_ref())),
        None => None,
    };
    let settings = AbuseSettings {
        thresholds: Thresholds { window, attempts: threshold, destinations },
        on_suspect,
        quarantine_for,
        track,
        state_file,
    };
    Ok((Some(settings), allow))
}
