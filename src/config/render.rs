//! `op25b check`'s readable rendering of a compiled [`Config`].

use std::fmt::Write as _;

use super::{Config, DeviceConfig, DeviceKind};
use crate::policy::{Action, Policy, PrefixSet, TunnelMode};

impl Config {
    /// A readable rendering of the compiled config, for `op25b check`.
    pub fn render(&self) -> String {
        let p = &self.policy;
        let mut s = String::new();
        let _ = writeln!(s, "config {}: OK", self.path.display());
        let _ = writeln!(s, "router");
        let _ = writeln!(s, "  address v4        {}", or_no_icmp(p.address_v4.map(|a| a.to_string())));
        let _ = writeln!(s, "  address v6        {}", or_no_icmp(p.address_v6.map(|a| a.to_string())));
        let _ = writeln!(s, "subscriber side     {}", device_line(&self.subscriber));
        let _ = writeln!(s, "  allowed sources   {}", prefix_set_line(&p.subscriber_prefixes));
        let _ = writeln!(s, "upstream side       {}", device_line(&self.upstream));
        let _ = writeln!(s, "op25b");
        let ports: Vec<String> = p.op25b.ports.iter().map(|x| x.to_string()).collect();
        let _ = writeln!(s, "  block TCP to port {} from", ports.join(", "));
        let _ = writeln!(s, "    dynamic         {}", prefix_set_line(&p.op25b.dynamic));
        let _ = writeln!(s, "  except sources    {}", prefix_set_line(&p.op25b.exempt_sources));
        let _ = writeln!(s, "  except relays     {}", prefix_set_line(&p.op25b.relays));
        let _ = writeln!(s, "  action            {} ({})", p.op25b.action, action_line(p));
        let _ = writeln!(
            s,
            "  inbound (IP25B)   {}",
            if p.op25b.block_inbound {
                "new connections to these ports of dynamic addresses dropped"
            } else {
                "not blocked"
            }
        );
        let _ = writeln!(s, "  tunnels           {}", tunnels_line(p));
        let _ = writeln!(
            s,
            "  reply limit       {}/s, burst {} per address (RSTs, ICMP errors, echo replies, banner sessions, new redirects)",
            p.reply_limit.rate, p.reply_limit.burst
        );
        self.render_abuse(&mut s);
        if p.rules.is_empty() {
            let _ = writeln!(s, "rules               (none: everything else is forwarded)");
        } else {
            let _ = writeln!(s, "rules               (in order; first final verdict wins; default forward)");
            for (i, rule) in p.rules.rules().iter().enumerate() {
                let _ = writeln!(s, "  {:>3}. {}", i + 1, rule.describe());
            }
        }
        s
    }

    /// The `[abuse]` lines.
    fn render_abuse(&self, s: &mut String) {
        let p = &self.policy;
        match &self.abuse {
            None => {
                let _ = writeln!(s, "abuse               (off: no [abuse] section)");
            }
            Some(a) => {
                let t = &a.thresholds;
                let _ = writeln!(s, "abuse");
                let _ = writeln!(
                    s,
                    "  suspect after     {} blocked attempts or {} destinations in {} (fixed window per subscriber)",
                    t.attempts,
                    t.destinations,
                    humantime::format_duration(t.window)
                );
                let _ = writeln!(
                    s,
                    "  on suspect        {}",
                    match a.on_suspect {
                        crate::state::abuse::OnSuspect::Event => "event".to_string(),
                        crate::state::abuse::OnSuspect::Quarantine =>
                            format!("event and quarantine for {}", humantime::format_duration(a.quarantine_for)),
                    }
                );
                let _ = writeln!(s, "  quarantine allows {}", p.quarantine_allow.written.join(", "));
                let _ = writeln!(s, "  tracked           {} subscribers at most", a.track);
                if let Some(f) = &a.state_file {
                    let _ = writeln!(
                        s,
                        "  state file        {} (quarantines and the table kept across restarts)",
                        f.display()
                    );
                }
            }
        }
    }
}

/// What the configured blocking action does, in words.
fn action_line(p: &Policy) -> String {
    match p.op25b.action {
        Action::Reject => "SYN answered with TCP RST, other segments dropped".to_string(),
        Action::Drop => "dropped silently".to_string(),
        Action::Icmp => "SYN answered with ICMP administratively prohibited".to_string(),
        Action::Banner => format!(
            "handshake completed by op25b, then {:?}; at most {} sessions, {} per subscriber, {} s idle",
            p.op25b.banner.text,
            p.op25b.banner.sessions,
            p.op25b.banner.per_source,
            p.op25b.banner.idle.as_secs()
        ),
        Action::Redirect => format!(
            "sent to the relay {} (destination NAT, at most {} flows, {} per subscriber)",
            [p.op25b.redirect_v4, p.op25b.redirect_v6]
                .iter()
                .flatten()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            p.max_flows,
            p.max_flows_per_source
        ),
        Action::Monitor => "nothing blocked: would-be blocks forwarded, counted, tracked and reported".to_string(),
    }
}

/// What happens to tunnels, in words.
fn tunnels_line(p: &Policy) -> String {
    match p.op25b.tunnels {
        TunnelMode::Inspect => {
            "inspect: packets inside IP-in-IP, GRE, Teredo, VXLAN, Geneve judged like the subscriber's own".to_string()
        }
        TunnelMode::Block => format!(
            "block: tunnels of dynamic addresses dropped, except with {} (inspected)",
            prefix_set_line(&p.op25b.tunnel_endpoints)
        ),
        TunnelMode::Forward => "forward: tunnels not inspected".to_string(),
    }
}

/// A device: name, namespace, MTU and, for an interface, its addresses.
fn device_line(d: &DeviceConfig) -> String {
    let kind = match &d.kind {
        DeviceKind::Tun => String::new(),
        DeviceKind::Interface(l) => {
            let a: Vec<String> = l.addresses.iter().map(|n| n.to_string()).collect();
            let g: Vec<String> = l.gateways.iter().map(|g| g.to_string()).collect();
            format!(", interface, addresses {}, gateway {}", a.join(" "), g.join(" "))
        }
    };
    format!("{} (netns {}, mtu {}{kind})", d.tun, d.netns.as_deref().unwrap_or("<current>"), d.mtu)
}

/// A prefix set and how many ranges it compiles to.
fn prefix_set_line(ps: &PrefixSet) -> String {
    if ps.is_empty() {
        "(none)".to_string()
    } else {
        let (v4, v6) = ps.ranges();
        let list: Vec<String> = ps.nets().iter().map(|n| n.to_string()).collect();
        format!("{}  [{} prefixes -> {v4} IPv4 + {v6} IPv6 ranges]", list.join(", "), ps.len())
    }
}

fn or_no_icmp(a: Option<String>) -> String {
    a.unwrap_or_else(|| "(none: no ICMP from this family)".into())
}
