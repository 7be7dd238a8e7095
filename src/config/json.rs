//! `op25b check --json`: the compiled config as one JSON object.
//!
//! The shape is stable (`format` is bumped if a field changes meaning or goes
//! away; new fields may be added):
//!
//! ```text
//! { "format": 1, "config": PATH,
//!   "router": { "address_v4": ADDR|null, "address_v6": ADDR|null },
//!   "subscriber": { "tun", "netns": NAME|null, "mtu", "prefixes": [PREFIX...] },
//!   "upstream": { "tun", "netns": NAME|null, "mtu" },
//!   "op25b": { "ports": [PORT...], "dynamic", "exempt_sources", "relays": [PREFIX...],
//!              "action": "reject"|"drop"|"icmp"|"banner"|"redirect"|"monitor", "block_inbound",
//!              "redirect_to": [ADDR:PORT...], "banner": { "text", "sessions", "per_source", "idle_s" },
//!              "reply_limit": { "rate", "burst" }, "max_flows", "max_flows_per_source",
//!              "tunnels": "inspect"|"block"|"forward", "tunnel_endpoints": [PREFIX...] },
//!   "abuse": null | { "window_s", "threshold", "destinations_threshold",
//!              "on_suspect": "event"|"quarantine", "quarantine_for_s",
//!              "quarantine_allow": [ENTRY...], "track", "state_file": PATH|null },
//!   "rules": [ { "index": 1.., "name", "direction": "outbound"|"inbound"|null,
//!                "protocol": "tcp"|"udp"|"icmp"|"icmpv6"|"proto N"|null,
//!                "src", "dst": [PREFIX...]|null, "src_ports", "dst_ports": [[FIRST, LAST]...]|null,
//!                "tcp_flags": "syn"|"syn-ack"|"ack"|"rst"|"fin"|null,
//!                "tunnel": "any"|"none"|KIND|null,
//!                "action": "accept"|"drop"|"reject"|"count"|"rate-limit",
//!                "rate", "burst" (rate-limit only), "description" }
//!              | { the same fields without "action", and "program": FILE, "map_size",
//!                "on_error": "continue"|"accept"|"drop"|"reject" } (a program rule) ... ] }
//! ```
//!
//! `null` means "any" in a rule and "none" elsewhere. Rules are in evaluation
//! order; a rule added in Rust (not from the file) has only `index`, `name`
//! and `description`.

use serde_json::{json, Value};

use super::{Config, DeviceConfig};
use crate::policy::{PortSet, PrefixSet, RuleAction};

fn prefixes(ps: &PrefixSet) -> Value {
    ps.nets().iter().map(|n| n.to_string()).collect()
}

/// Port ranges as `[first, last]` pairs, ascending.
fn port_ranges(ps: &PortSet) -> Value {
    let mut out: Vec<Value> = Vec::new();
    let mut it = ps.iter().peekable();
    while let Some(first) = it.next() {
        let mut last = first;
        while it.peek() == Some(&(last.wrapping_add(1))) && last < u16::MAX {
            last = it.next().unwrap_or(last);
        }
        out.push(json!([first, last]));
    }
    Value::Array(out)
}

fn device(d: &DeviceConfig) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    match &d.kind {
        crate::config::DeviceKind::Tun => {
            m.insert("tun".into(), json!(d.tun));
        }
        crate::config::DeviceKind::Interface(l) => {
            m.insert("interface".into(), json!(d.tun));
            let a: Vec<String> = l.addresses.iter().map(|n| n.to_string()).collect();
            let g: Vec<String> = l.gateways.iter().map(|g| g.to_string()).collect();
            m.insert("addresses".into(), json!(a));
            m.insert("gateway".into(), json!(g));
        }
    }
    m.insert("netns".into(), json!(d.netns));
    m.insert("mtu".into(), json!(d.mtu));
    m
}

impl Config {
    /// The compiled config as one JSON object (shape above).
    pub fn to_json(&self) -> Value {
        let p = &self.policy;
        let o = &p.op25b;
        let mut subscriber = device(&self.subscriber);
        subscriber.insert("prefixes".into(), prefixes(&p.subscriber_prefixes));
        let rules: Vec<Value> = p
            .rules
            .rules()
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let program = match r {
                    crate::policy::RuleKind::Program(p) => Some(p),
                    _ => None,
                };
                let Some(c) = r.fields() else {
                    return json!({"index": i + 1, "name": r.name(), "description": r.describe()});
                };
                let mut v = json!({
                    "index": i + 1,
                    "name": c.name,
                    "direction": c.direction.map(|d| d.name()),
                    "protocol": c.protocol.map(crate::packet::protocol_name),
                    "src": c.src.as_ref().map(prefixes),
                    "dst": c.dst.as_ref().map(prefixes),
                    "src_ports": c.src_ports.as_ref().map(port_ranges),
                    "dst_ports": c.dst_ports.as_ref().map(port_ranges),
                    "tcp_flags": c.tcp_flags.map(|f| f.name()),
                    "tunnel": c.tunnel.map(|t| t.name()),
                    "description": r.describe(),
                });
                let action = match c.action {
                    RuleAction::Accept => "accept",
                    RuleAction::Drop => "drop",
                    RuleAction::Reject => "reject",
                    RuleAction::Count => "count",
                    RuleAction::RateLimit(l) => {
                        v["rate"] = json!(l.rate);
                        v["burst"] = json!(l.burst);
                        "rate-limit"
                    }
                };
                match program {
                    Some(p) => {
                        v["program"] = json!(p.file);
                        v["map_size"] = json!(p.program.map_size);
                        v["on_error"] = json!(p.on_error.name());
                    }
                    None => v["action"] = json!(action),
                }
                v
            })
            .collect();
        let redirect_to: Vec<String> = [o.redirect_v4, o.redirect_v6].iter().flatten().map(|a| a.to_string()).collect();
        json!({
            "format": 1,
            "config": self.path.display().to_string(),
            "router": {
                "address_v4": p.address_v4.map(|a| a.to_string()),
                "address_v6": p.address_v6.map(|a| a.to_string()),
            },
            "subscriber": subscriber,
            "upstream": device(&self.upstream),
            "op25b": {
                "ports": o.ports.iter().collect::<Vec<u16>>(),
                "dynamic": prefixes(&o.dynamic),
                "exempt_sources": prefixes(&o.exempt_sources),
                "relays": prefixes(&o.relays),
                "action": o.action.to_string(),
                "block_inbound": o.block_inbound,
                "redirect_to": redirect_to,
                "banner": {
                    "text": o.banner.text,
                    "sessions": o.banner.sessions,
                    "per_source": o.banner.per_source,
                    "idle_s": o.banner.idle.as_secs(),
                },
                "reply_limit": { "rate": p.reply_limit.rate, "burst": p.reply_limit.burst },
                "max_flows": p.max_flows,
                "max_flows_per_source": p.max_flows_per_source,
                "tunnels": o.tunnels.name(),
                "tunnel_endpoints": prefixes(&o.tunnel_endpoints),
            },
            "abuse": self.abuse.as_ref().map(|a| json!({
                "window_s": a.thresholds.window.as_secs_f64(),
                "threshold": a.thresholds.attempts,
                "destinations_threshold": a.thresholds.destinations,
                "on_suspect": match a.on_suspect {
                    crate::state::abuse::OnSuspect::Event => "event",
                    crate::state::abuse::OnSuspect::Quarantine => "quarantine",
                },
                "quarantine_for_s": a.quarantine_for.as_secs_f64(),
                "quarantine_allow": p.quarantine_allow.written,
                "track": a.track,
                "state_file": a.state_file.as_ref().map(|f| f.display().to_string()),
            })),
            "rules": rules,
        })
    }
}
