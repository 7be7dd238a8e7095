//! The lab with an Ethernet upstream (`op25b lab up --upstream veth`): op25b
//! is the router on a veth link instead of writing to an upstream TUN.
//!
//! ```text
//!  netns NAME-sub                op25b run            netns NAME-inet (outside)
//!  (as in the TUN lab) <== TUN ==> op25b ==frames==> op25b-up (op25b's end: no address,
//!                                                     IPv6 off, no forwarding)
//!                                                       | veth
//!                                                     op25b-gw: 192.0.2.1/24, 2001:db8:1::1/64
//!                                                     lo: the MX and the relay (as in the TUN lab)
//!                                                     100.64.0.0/10 via 192.0.2.2 (op25b)
//!                                                     2001:db8:100::/48 via 2001:db8:1::2
//! ```
//!
//! Both ends of the veth live in the outside namespace: op25b's end
//! (`op25b-up`, the name the TUN lab gives its upstream TUN) carries
//! nothing of the host's, so the kernel there leaves its frames alone
//! (docs/UPLINK.md, "Keeping the kernel's stack out"); the other end is the
//! outside's gateway, which reaches op25b by ARP and NDP. Everything else
//! (names, subscriber side, servers, config but its `[upstream]`) is the TUN
//! lab's ([`super::def`]).

use std::net::IpAddr;

use netlink_packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::{LinkUnspec, LinkVeth, RouteMessageBuilder};
use serde::{Deserialize, Serialize};

use super::def::{self, ip, net as prefix, Names, SUB_NET4, SUB_NET6};
use super::net::{self, index_of, with_handle};
use super::LabError;

/// The outside's end of the veth: the gateway op25b routes through.
pub const VETH_GW: &str = "op25b-gw";
/// The gateway's IPv4 address on the link.
pub const GW4: &str = "192.0.2.1";
/// The gateway's IPv6 address on the link.
pub const GW6: &str = "2001:db8:1::1";
/// op25b's IPv4 address on the link.
pub const LINK4: &str = "192.0.2.2";
/// op25b's IPv6 address on the link.
pub const LINK6: &str = "2001:db8:1::2";
/// The link's IPv4 prefix length.
pub const LINK4_LEN: u8 = 24;
/// The link's IPv6 prefix length.
pub const LINK6_LEN: u8 = 64;

/// The kind of upstream the lab gives op25b.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Upstream {
    /// A TUN op25b creates in the outside namespace.
    #[default]
    Tun,
    /// A veth end in the outside namespace: op25b answers ARP and NDP and
    /// routes through the outside's gateway.
    Veth,
}

impl Upstream {
    /// The lab's config for this kind of upstream.
    pub fn config_toml(self, names: &Names) -> String {
        match self {
            Upstream::Tun => def::config_toml(names),
            Upstream::Veth => config_toml(names),
        }
    }

    /// Refuses a user's config whose `[upstream]` is not of this kind.
    pub fn check(self, path: &std::path::Path, cfg: &crate::config::Config) -> Result<(), LabError> {
        let interface = matches!(cfg.upstream.kind, crate::config::DeviceKind::Interface(_));
        match (self, interface) {
            (Upstream::Tun, true) => Err(LabError::Config(format!(
                "{}: upstream.interface: the lab makes a TUN upstream; use `--upstream veth` for an interface",
                path.display()
            ))),
            (Upstream::Veth, false) => Err(LabError::Config(format!(
                "{}: upstream.tun: `--upstream veth` needs interface = \"{}\" (the lab's veth end)",
                path.display(),
                names_up(cfg)
            ))),
            _ => Ok(()),
        }
    }
}

fn names_up(cfg: &crate::config::Config) -> &str {
    if cfg.upstream.tun.is_empty() {
        def::TUN_UP
    } else {
        &cfg.upstream.tun
    }
}

/// The lab's config with the veth upstream: [`def::config_toml`] with its
/// `[upstream]` section replaced.
pub fn config_toml(names: &Names) -> String {
    let tun = def::config_toml(names);
    let section = format!(
        r#"[upstream]
# The upstream: an existing Ethernet interface (the lab's veth end) on which
# op25b is the router itself. The host must leave it alone: no address, no
# forwarding, IPv6 off (op25b refuses to start otherwise).
interface = "{up}"
netns = "{ns}"
mtu = 1500
# op25b's own addresses on the link (it answers ARP and neighbour solicitations).
addresses = ["{LINK4}/{LINK4_LEN}", "{LINK6}/{LINK6_LEN}"]
# The next hops, one per family (the outside's end of the veth).
gateway = ["{GW4}", "{GW6}"]

"#,
        up = names.up_tun,
        ns = names.inet_ns,
    );
    match (tun.find("[upstream]\n"), tun.find("[op25b]\n")) {
        (Some(start), Some(end)) if start < end => format!("{}{section}{}", &tun[..start], &tun[end..]),
        // The TUN lab's config always has both sections (a test checks it).
        _ => tun,
    }
}

/// Makes the veth link in the outside namespace before op25b starts: op25b's
/// end up and bare (IPv6 off, no address), the gateway's end with its
/// addresses, and the outside's routes to the subscribers through op25b.
pub fn make_link(names: &Names) -> Result<(), LabError> {
    let ns = names.inet_ns.clone();
    let up = names.up_tun.clone();
    let nl = |what: String| move |e: rtnetlink::Error| LabError::Netlink(format!("{what}: {e}"));
    {
        let (ns, up) = (ns.clone(), up.clone());
        with_handle(&names.inet_ns, |handle| async move {
            handle
                .link()
                .add(LinkVeth::new(&up, VETH_GW).build())
                .execute()
                .await
                .map_err(nl(format!("veth {up} / {VETH_GW} in {ns}")))
        })?;
    }
    // Before it goes up, so it never gets a link-local address.
    net::sysctl(&ns, &format!("net/ipv6/conf/{up}/disable_ipv6"), "1")?;
    net::sysctl(&ns, &format!("net/ipv4/conf/{up}/forwarding"), "0")?;
    let routes = [(prefix(SUB_NET4), ip(LINK4)), (prefix(SUB_NET6), ip(LINK6))];
    let ns2 = ns.clone();
    with_handle(&ns, |handle| async move {
        let mut index = [0u32; 2];
        for (slot, dev) in index.iter_mut().zip([up.as_str(), VETH_GW]) {
            let found = index_of(&handle, dev).await?;
            *slot = found.ok_or_else(|| LabError::Netlink(format!("no {dev} in {ns2}")))?.0;
            let req = handle.link().set(LinkUnspec::new_with_index(*slot).up().build());
            req.execute().await.map_err(nl(format!("{dev} up in {ns2}")))?;
        }
        let gw = index[1];
        for (a, len) in [(ip(GW4), LINK4_LEN), (ip(GW6), LINK6_LEN)] {
            let mut req = handle.address().add(gw, a, len);
            if a.is_ipv6() {
                req.message_mut().attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
            req.execute().await.map_err(nl(format!("address {a}/{len} on {VETH_GW} in {ns2}")))?;
        }
        for ((dst, len), via) in routes {
            let msg = RouteMessageBuilder::<IpAddr>::new()
                .destination_prefix(dst, len)
                .and_then(|b| b.gateway(via))
                .map_err(|e| LabError::Netlink(format!("route {dst}/{len} via {via}: {e}")))?
                .output_interface(gw)
                .build();
            handle.route().add(msg).execute().await.map_err(nl(format!("route {dst}/{len} via {via} in {ns2}")))?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_veth_labs_config_differs_only_in_its_upstream() {
        let names = Names::new("o25veth").expect("name");
        let text = config_toml(&names);
        assert_ne!(text, def::config_toml(&names), "the [upstream] section was replaced");
        let dir = std::env::temp_dir().join(format!("o25veth-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("lab.toml");
        std::fs::write(&path, &text).expect("write");
        let cfg = crate::config::Config::load(&path);
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = cfg.unwrap_or_else(|e| panic!("{}", e.render(false)));
        let crate::config::DeviceKind::Interface(link) = &cfg.upstream.kind else { panic!("not an interface") };
        assert_eq!(cfg.upstream.tun, def::TUN_UP);
        assert_eq!(cfg.upstream.netns.as_deref(), Some("o25veth-inet"));
        assert_eq!(link.gateways, vec![ip(GW4), ip(GW6)]);
        let tun_cfg_text = def::config_toml(&names);
        let before = |t: &str| t[..t.find("[upstream]").expect("section")].to_string();
        let after = |t: &str| t[t.find("[op25b]").expect("section")..].to_string();
        assert_eq!(before(&text), before(&tun_cfg_text));
        assert_eq!(after(&text), after(&tun_cfg_text));
        assert!(Upstream::Veth.check(&path, &cfg).is_ok());
        assert!(Upstream::Tun.check(&path, &cfg).is_err());
    }
}
