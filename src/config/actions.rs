//! The `[op25b]` keys of the blocking actions: `banner*`, `redirect_to`,
//! `reply_rate` / `reply_burst`, `max_flows`, `max_flows_per_source`.

use std::net::SocketAddr;
use std::time::Duration;

use super::{ActionName, ConfigError, Ctx, Op25bSection};
use crate::policy::Limit;
use crate::policy::{Op25b, TunnelMode};

/// Default reply limit per address: like Linux's ICMP rate limit, a short
/// burst, then a steady trickle.
pub const DEFAULT_REPLY_RATE: u32 = 10;
/// Default reply burst per address.
pub const DEFAULT_REPLY_BURST: u32 = 20;
/// Default bound of the redirect flow table.
pub const DEFAULT_MAX_FLOWS: u32 = 65_536;
/// Default bound of redirected flows per subscriber: a busy mail client opens a
/// few connections at a time, a zombie thousands.
pub const DEFAULT_MAX_FLOWS_PER_SOURCE: u32 = 64;

/// Validates the action-specific keys into `op25b`.
pub(super) fn apply(cx: &Ctx<'_>, o: &Op25bSection, op25b: &mut Op25b) -> Result<(), ConfigError> {
    let action = *o.action.get_ref();
    let misplaced = |span: std::ops::Range<usize>, key: &str, wants: &str| {
        cx.err(&span, format!("op25b.{key}"), format!("belongs to action = \"{wants}\" (the action is not {wants})"))
    };
    if let Some(b) = &o.banner {
        if action != ActionName::Banner {
            return Err(misplaced(b.span(), "banner", "banner"));
        }
        let text = b.get_ref();
        let ok_code = text.len() >= 3
            && text.as_bytes()[0] == b'5'
            && text.as_bytes()[1..3].iter().all(u8::is_ascii_digit)
            && (text.len() == 3 || text.as_bytes()[3] == b' ');
        if !ok_code {
            return Err(cx.err(
                &b.span(),
                "op25b.banner",
                "must start with a 5xx SMTP reply code and a space, e.g. \"554 5.7.1 ...\"",
            ));
        }
        if text.len() > 510 || text.chars().any(|c| c.is_control() || !c.is_ascii()) {
            return Err(cx.err(
                &b.span(),
                "op25b.banner",
                "must be one line of printable ASCII, at most 510 characters",
            ));
        }
        op25b.banner.text = text.clone();
    }
    if let Some(n) = &o.banner_sessions {
        if action != ActionName::Banner {
            return Err(misplaced(n.span(), "banner_sessions", "banner"));
        }
        if !(1..=4096).contains(n.get_ref()) {
            return Err(cx.err(&n.span(), "op25b.banner_sessions", "must be between 1 and 4096"));
        }
        op25b.banner.sessions = *n.get_ref() as usize;
    }
    if let Some(n) = &o.banner_sessions_per_source {
        if action != ActionName::Banner {
            return Err(misplaced(n.span(), "banner_sessions_per_source", "banner"));
        }
        let max = op25b.banner.sessions as u32;
        if !(1..=max).contains(n.get_ref()) {
            return Err(cx.err(
                &n.span(),
                "op25b.banner_sessions_per_source",
                format!("must be between 1 and banner_sessions ({max})"),
            ));
        }
        op25b.banner.per_source = *n.get_ref() as usize;
    } else {
        op25b.banner.per_source = op25b.banner.per_source.min(op25b.banner.sessions);
    }
    if let Some(t) = &o.banner_timeout {
        if action != ActionName::Banner {
            return Err(misplaced(t.span(), "banner_timeout", "banner"));
        }
        if !(1..=600).contains(t.get_ref()) {
            return Err(cx.err(&t.span(), "op25b.banner_timeout", "must be between 1 and 600 seconds"));
        }
        op25b.banner.idle = Duration::from_secs(u64::from(*t.get_ref()));
    }
    match (&o.redirect_to, action) {
        (Some(list), ActionName::Redirect) => {
            for (i, item) in list.get_ref().iter().enumerate() {
                let key = format!("op25b.redirect_to[{i}]");
                let addr: SocketAddr = item.get_ref().parse().map_err(|_| {
                    cx.err(
                        &item.span(),
                        &key,
                        format!("{:?} is not ADDRESS:PORT (\"[IPv6]:PORT\" for IPv6)", item.get_ref()),
                    )
                })?;
                if addr.port() == 0 || !crate::packet::reply::is_unicast_host(addr.ip()) {
                    return Err(cx.err(&item.span(), &key, format!("{addr} is not a unicast host and port")));
                }
                let slot = if addr.is_ipv4() { &mut op25b.redirect_v4 } else { &mut op25b.redirect_v6 };
                if slot.replace(addr).is_some() {
                    return Err(cx.err(&item.span(), &key, "one target per IP family"));
                }
            }
            if op25b.redirect_v4.is_none() && op25b.redirect_v6.is_none() {
                return Err(cx.err(&list.span(), "op25b.redirect_to", "needs a target, e.g. [\"198.51.100.25:25\"]"));
            }
        }
        (Some(list), _) => return Err(misplaced(list.span(), "redirect_to", "redirect")),
        (None, ActionName::Redirect) => {
            return Err(cx.err(
                &o.action.span(),
                "op25b.action",
                "redirect needs op25b.redirect_to = [\"RELAY:25\", \"[RELAY6]:25\"]",
            ))
        }
        (None, _) => {}
    }
    Ok(())
}

/// The reply limit and the flow-table bounds (in all, per subscriber).
pub(super) fn limits(cx: &Ctx<'_>, o: &Op25bSection) -> Result<(Limit, usize, usize), ConfigError> {
    let positive = |v: &Option<toml::Spanned<u32>>, key: &str, default: u32, max: u32| -> Result<u32, ConfigError> {
        match v {
            None => Ok(default),
            Some(x) if (1..=max).contains(x.get_ref()) => Ok(*x.get_ref()),
            Some(x) => Err(cx.err(&x.span(), format!("op25b.{key}"), format!("must be between 1 and {max}"))),
        }
    };
    let rate = positive(&o.reply_rate, "reply_rate", DEFAULT_REPLY_RATE, 1_000_000)?;
    let burst = positive(&o.reply_burst, "reply_burst", DEFAULT_REPLY_BURST, 1_000_000)?;
    let flows = positive(&o.max_flows, "max_flows", DEFAULT_MAX_FLOWS, 4_000_000)?;
    let per_source = match &o.max_flows_per_source {
        None => DEFAULT_MAX_FLOWS_PER_SOURCE.min(flows),
        Some(x) if (1..=flows).contains(x.get_ref()) => *x.get_ref(),
        Some(x) => {
            return Err(cx.err(
                &x.span(),
                "op25b.max_flows_per_source",
                format!("must be between 1 and max_flows ({flows})"),
            ))
        }
    };
    Ok((Limit { rate, burst }, flows as usize, per_source as usize))
}

/// `tunnels` and `tunnel_endpoints`.
pub(super) fn tunnels(cx: &Ctx<'_>, o: &Op25bSection, op25b: &mut Op25b) -> Result<(), ConfigError> {
    if let Some(t) = &o.tunnels {
        op25b.tunnels = match t.get_ref().as_str() {
            "inspect" => TunnelMode::Inspect,
            "block" => TunnelMode::Block,
            "forward" => TunnelMode::Forward,
            other => {
                return Err(cx.err(
                    &t.span(),
                    "op25b.tunnels",
                    format!("unknown value {other:?} (inspect, block, forward)"),
                ))
            }
        };
    }
    if let Some(e) = &o.tunnel_endpoints {
        if op25b.tunnels != TunnelMode::Block {
            return Err(cx.err(&e.span(), "op25b.tunnel_endpoints", "belongs to tunnels = \"block\""));
        }
        op25b.tunnel_endpoints = super::prefixes(cx, "op25b.tunnel_endpoints", e.get_ref())?;
    }
    Ok(())
}
