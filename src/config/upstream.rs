//! The `[upstream]` section: a TUN (`tun = "NAME"`, created by op25b) or an
//! existing Ethernet interface (`interface = "NAME"`, a veth end or a NIC)
//! on which op25b is the router itself, with its own addresses on that link
//! (`addresses`) and its next hops (`gateway`).

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use super::{device, ConfigError, Ctx, DeviceConfig};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UpstreamSection {
    tun: Option<Spanned<String>>,
    interface: Option<Spanned<String>>,
    netns: Option<Spanned<String>>,
    mtu: Option<Spanned<u16>>,
    addresses: Option<Spanned<Vec<Spanned<String>>>>,
    gateway: Option<Spanned<Vec<Spanned<String>>>>,
}

/// What kind of device a side uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceKind {
    /// A TUN device op25b creates (IP packets, no link layer).
    Tun,
    /// An existing Ethernet interface op25b sends and receives frames on.
    Interface(LinkConfig),
}

/// op25b's place on an Ethernet upstream link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkConfig {
    /// Own addresses with their on-link prefixes (`192.0.2.2/24`).
    pub addresses: Vec<IpNet>,
    /// Next hops, at most one per family (an IPv6 one may be link-local).
    pub gateways: Vec<IpAddr>,
}

/// Validates the section against the subscriber device already validated.
pub(super) fn parse(
    cx: &Ctx<'_>,
    up: &Spanned<UpstreamSection>,
    subscriber: &DeviceConfig,
) -> Result<DeviceConfig, ConfigError> {
    let s = up.get_ref();
    let dev = parse_kind(cx, up)?;
    let (key, name) = match (&s.tun, &s.interface) {
        (Some(t), _) => ("upstream.tun", t),
        (None, Some(i)) => ("upstream.interface", i),
        (None, None) => return Ok(dev),
    };
    if subscriber.tun == dev.tun && subscriber.netns == dev.netns {
        let msg = format!("{:?} is also the subscriber device in the same namespace", dev.tun);
        return Err(cx.err(&name.span(), key, msg));
    }
    Ok(dev)
}

fn parse_kind(cx: &Ctx<'_>, up: &Spanned<UpstreamSection>) -> Result<DeviceConfig, ConfigError> {
    let s = up.get_ref();
    match (&s.tun, &s.interface) {
        (Some(tun), None) => {
            if let Some(a) = &s.addresses {
                return Err(cx.err(
                    &a.span(),
                    "upstream.addresses",
                    "only with `interface` (a TUN has no link to answer on)",
                ));
            }
            if let Some(g) = &s.gateway {
                return Err(cx.err(&g.span(), "upstream.gateway", "only with `interface` (a TUN has no next hop)"));
            }
            device(cx, "upstream", "tun", tun, &s.netns, &s.mtu)
        }
        (None, Some(name)) => {
            let mut dev = device(cx, "upstream", "interface", name, &s.netns, &s.mtu)?;
            dev.kind = DeviceKind::Interface(link(cx, up, s)?);
            Ok(dev)
        }
        (Some(_), Some(i)) => {
            Err(cx.err(&i.span(), "upstream.interface", "give either `tun` or `interface`, not both"))
        }
        (None, None) => Err(cx.err(&up.span(), "upstream", "needs `tun = \"NAME\"` or `interface = \"NAME\"`")),
    }
}

fn link(cx: &Ctx<'_>, up: &Spanned<UpstreamSection>, s: &UpstreamSection) -> Result<LinkConfig, ConfigError> {
    let Some(list) = &s.addresses else {
        return Err(cx.err(
            &up.span(),
            "upstream.addresses",
            "an interface upstream needs op25b's own addresses on that link",
        ));
    };
    let mut addresses = Vec::with_capacity(list.get_ref().len());
    for (i, a) in list.get_ref().iter().enumerate() {
        let key = format!("upstream.addresses[{i}]");
        let net: IpNet = a.get_ref().parse().map_err(|_| {
            cx.err(
                &a.span(),
                &key,
                format!("{:?} is not an address with its prefix length (\"192.0.2.2/24\")", a.get_ref()),
            )
        })?;
        if !crate::packet::reply::is_unicast_host(net.addr()) {
            return Err(cx.err(&a.span(), &key, format!("{} is not a unicast address", net.addr())));
        }
        if addresses.iter().any(|n: &IpNet| n.addr() == net.addr()) {
            return Err(cx.err(&a.span(), &key, format!("{} is listed twice", net.addr())));
        }
        addresses.push(net);
    }
    if addresses.is_empty() {
        return Err(cx.err(&list.span(), "upstream.addresses", "needs at least one address"));
    }
    let Some(list) = &s.gateway else {
        return Err(cx.err(
            &up.span(),
            "upstream.gateway",
            "an interface upstream needs its next hop (one per IP family)",
        ));
    };
    let mut gateways: Vec<IpAddr> = Vec::with_capacity(2);
    for (i, g) in list.get_ref().iter().enumerate() {
        let key = format!("upstream.gateway[{i}]");
        let ip: IpAddr = g
            .get_ref()
            .parse()
            .map_err(|_| cx.err(&g.span(), &key, format!("{:?} is not an IP address", g.get_ref())))?;
        let link_local6 = matches!(ip, IpAddr::V6(a) if (a.segments()[0] & 0xffc0) == 0xfe80);
        if !link_local6 && !crate::packet::reply::is_unicast_host(ip) {
            return Err(cx.err(&g.span(), &key, format!("{ip} is not a unicast address")));
        }
        if gateways.iter().any(|o| o.is_ipv6() == ip.is_ipv6()) {
            return Err(cx.err(&g.span(), &key, "one gateway per IP family"));
        }
        if addresses.iter().any(|n| n.addr() == ip) {
            return Err(cx.err(&g.span(), &key, format!("{ip} is one of op25b's own addresses")));
        }
        let reachable = link_local6 || addresses.iter().any(|n| n.contains(&ip));
        if !reachable {
            return Err(cx.err(
                &g.span(),
                &key,
                format!("{ip} is not inside any of upstream.addresses' prefixes: it cannot be on the link"),
            ));
        }
        gateways.push(ip);
    }
    if gateways.is_empty() {
        return Err(cx.err(&list.span(), "upstream.gateway", "needs at least one gateway"));
    }
    Ok(LinkConfig { addresses, gateways })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, ConfigError, DeviceKind};

    const BASE: &str = r#"
[router]
addresses = ["192.0.2.1"]
[subscriber]
tun = "s"
prefixes = ["100.64.0.0/10"]
[op25b]
dynamic = ["100.64.0.0/10"]
[upstream]
"#;

    fn parse(upstream: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("t.toml"), &format!("{BASE}{upstream}\n"))
    }

    /// (line, key, message) of the error for an `[upstream]` body.
    fn error(upstream: &str) -> (usize, String, String) {
        match parse(upstream) {
            Err(ConfigError::Invalid { line, key, message, .. }) => (line, key, message),
            Err(e) => panic!("unexpected error kind: {e}"),
            Ok(_) => panic!("accepted: {upstream}"),
        }
    }

    const GOOD: &str = r#"interface = "veth-up"
netns = "edge"
addresses = ["198.51.100.2/24", "2001:db8:1::2/64"]
gateway = ["198.51.100.1", "fe80::1"]"#;

    #[test]
    fn an_interface_upstream_with_addresses_and_gateways() {
        let c = parse(GOOD).expect("valid");
        assert_eq!(c.upstream.tun, "veth-up");
        let DeviceKind::Interface(link) = &c.upstream.kind else { panic!("{:?}", c.upstream.kind) };
        assert_eq!(link.addresses.len(), 2);
        assert_eq!(
            link.gateways,
            vec!["198.51.100.1".parse::<std::net::IpAddr>().unwrap(), "fe80::1".parse().unwrap()]
        );
        assert!(c
            .render()
            .contains("interface, addresses 198.51.100.2/24 2001:db8:1::2/64, gateway 198.51.100.1 fe80::1"));
        assert_eq!(c.to_json()["upstream"]["interface"], "veth-up");
        // A TUN upstream is unchanged.
        assert_eq!(parse("tun = \"u\"").unwrap().upstream.kind, DeviceKind::Tun);
    }

    #[test]
    fn the_interface_and_its_link_are_start_only() {
        let running = parse(GOOD).expect("valid");
        let state = crate::state::State::new(&running.policy);
        let moved = parse(&GOOD.replace("198.51.100.1", "198.51.100.9")).expect("valid");
        match crate::reload::prepare(&running, &state, moved) {
            Err(crate::reload::ReloadError::Fixed { key, .. }) => assert_eq!(key, "upstream.gateway"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        let same = parse(GOOD).expect("valid");
        assert!(crate::reload::prepare(&running, &state, same).is_ok());
    }

    #[test]
    fn each_mistake_names_its_line_and_key() {
        let header = BASE.lines().count();
        let cases: [(&str, &str, usize); 11] = [
            ("netns = \"x\"", "upstream", 0),
            ("tun = \"u\"\ninterface = \"e\"", "upstream.interface", 2),
            ("tun = \"u\"\naddresses = [\"198.51.100.2/24\"]", "upstream.addresses", 2),
            ("tun = \"u\"\ngateway = [\"198.51.100.1\"]", "upstream.gateway", 2),
            ("interface = \"e\"\ngateway = [\"198.51.100.1\"]", "upstream.addresses", 0),
            ("interface = \"e\"\naddresses = [\"198.51.100.2/24\"]", "upstream.gateway", 0),
            ("interface = \"e\"\naddresses = [\"198.51.100.2\"]\ngateway = []", "upstream.addresses[0]", 2),
            (
                "interface = \"e\"\naddresses = [\"198.51.100.2/24\"]\ngateway = [\"203.0.113.1\"]",
                "upstream.gateway[0]",
                3,
            ),
            (
                "interface = \"e\"\naddresses = [\"198.51.100.2/24\"]\ngateway = [\"198.51.100.1\", \"198.51.100.3\"]",
                "upstream.gateway[1]",
                3,
            ),
            (
                "interface = \"e\"\naddresses = [\"198.51.100.2/24\"]\ngateway = [\"198.51.100.2\"]",
                "upstream.gateway[0]",
                3,
            ),
            (
                "interface = \"s\"\naddresses = [\"198.51.100.2/24\"]\ngateway = [\"198.51.100.1\"]",
                "upstream.interface",
                1,
            ),
        ];
        for (body, want, line) in cases {
            let (got_line, key, msg) = error(body);
            assert_eq!(key, want, "{body}: {msg}");
            if line > 0 {
                assert_eq!(got_line, header + line, "{body}: {key}: {msg}");
            }
        }
    }
}
