//! The lab with the kernel as its router (`op25b lab up --router kernel`):
//! the same subscriber and outside namespaces, addresses and routes back as
//! the op25b lab, but a third namespace, NAME-rtr, forwards between them over
//! two veth pairs (`ip_forward`) and enforces OP25B as one nftables table:
//! what a user would run instead of op25b, and the benchmark's reference.
//!
//! ```text
//!  NAME-sub                         NAME-rtr                          NAME-inet
//!  veth-rtr 100.64.0.2/30 ==veth== veth-sub 100.64.0.1/30
//!           2001:db8:100::2/64      2001:db8:100::1/64
//!                                  veth-up 198.51.100.253/30 ==veth== veth-rtr 198.51.100.254/30
//!                                          2001:db8:ff::1/64                   2001:db8:ff::2/64
//! ```
//!
//! The policy goes in through the `nft` binary: the crates that speak
//! nftables' netlink (rustables, nftnl) would spell each match of the rule as
//! raw payload offsets and masks, and the `nftables` crate runs `nft` itself.

use std::io::Write as _;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};

use netlink_packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::{LinkUnspec, LinkVeth, RouteMessageBuilder};

use super::def::{ip, net as prefix, Names, DYN4, DYN6, RELAY4, RELAY6, STATIC_NET4, STATIC_NET6, SUB_NET4, SUB_NET6};
use super::net::{index_of, sysctl, with_handle};
use super::state::LabState;
use super::{netns, LabError};

/// What forwards between the lab's subscriber and outside namespaces.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum RouterKind {
    /// `op25b run` (or the program given with --bin) between two TUN devices.
    #[default]
    Op25b,
    /// The kernel in a namespace of its own (veth, ip_forward, nftables).
    Kernel,
}

/// The veth end inside the subscriber and the outside namespace (both so named).
const TO_ROUTER: &str = "veth-rtr";

/// The link addresses: (namespace side, router side) per link and family, with
/// the prefix length.
const SUB_LINK: [(&str, &str, u8); 2] = [("100.64.0.2", "100.64.0.1", 30), ("2001:db8:100::2", "2001:db8:100::1", 64)];
const UP_LINK: [(&str, &str, u8); 2] =
    [("198.51.100.254", "198.51.100.253", 30), ("2001:db8:ff::2", "2001:db8:ff::1", 64)];

/// The router namespace of a lab.
pub fn router_ns(names: &Names) -> String {
    format!("{}-rtr", names.name)
}

/// The lab's names with the veth ends where the op25b lab has its TUNs.
pub fn names(names: &Names) -> Names {
    Names { sub_tun: TO_ROUTER.into(), up_tun: TO_ROUTER.into(), ..names.clone() }
}

/// The OP25B policy of the lab's config as an nftables table.
pub fn nft_rules() -> String {
    let reject = "counter reject with tcp reset";
    format!(
        "table inet op25b {{\n  chain forward {{\n    type filter hook forward priority filter; policy accept;\n    \
         tcp dport 25 ip saddr {SUB_NET4} ip saddr != {STATIC_NET4} ip daddr != {RELAY4} {reject}\n    \
         tcp dport 25 ip6 saddr {SUB_NET6} ip6 saddr != {STATIC_NET6} ip6 daddr != {RELAY6} {reject}\n  }}\n}}\n"
    )
}

/// Builds the router namespace, the veth pairs, addresses, routes and the
/// policy, once the subscriber and outside namespaces exist. The namespace
/// is recorded in `st` before it is made.
pub fn build(names: &Names, st: &mut LabState) -> Result<(), LabError> {
    let rtr = router_ns(names);
    st.namespaces.push(rtr.clone());
    st.save()?;
    netns::create(&rtr)?;
    for key in ["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"] {
        sysctl(&rtr, key, "1")?;
    }
    for key in ["net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.accept_dad"] {
        sysctl(&rtr, key, "0")?;
    }
    let any = [prefix("0.0.0.0/0"), prefix("::/0")];
    let sub_side = [(ip(SUB_LINK[0].1), Some(ip(DYN4))), (ip(SUB_LINK[1].1), Some(ip(DYN6)))];
    let inet_side = [(ip(UP_LINK[0].1), None), (ip(UP_LINK[1].1), None)];
    let subs = [prefix(SUB_NET4), prefix(SUB_NET6)];
    for (ns, end, link, dsts, via) in
        [(&names.sub_ns, "veth-sub", SUB_LINK, any, sub_side), (&names.inet_ns, "veth-up", UP_LINK, subs, inet_side)]
    {
        veth_pair(&rtr, end, ns)?;
        let ours: Vec<(IpAddr, u8)> = link.iter().map(|(_, r, len)| (ip(r), *len)).collect();
        let theirs: Vec<(IpAddr, u8)> = link.iter().map(|(n, _, len)| (ip(n), *len)).collect();
        configure(&rtr, end, &ours, &[])?;
        let routes: Vec<_> = dsts.iter().zip(via).map(|(dst, (gw, src))| (*dst, gw, src)).collect();
        configure(ns, TO_ROUTER, &theirs, &routes)?;
    }
    // The router's routes: the subscribers behind veth-sub, the rest of the world behind veth-up.
    let back = [(subs[0], ip(SUB_LINK[0].0), None), (subs[1], ip(SUB_LINK[1].0), None)];
    configure(&rtr, "veth-sub", &[], &back)?;
    let out = [(any[0], ip(UP_LINK[0].0), None), (any[1], ip(UP_LINK[1].0), None)];
    configure(&rtr, "veth-up", &[], &out)?;
    nft(&rtr, &nft_rules())
}

/// A veth pair in `rtr`: `end` stays, its peer goes to `ns` as [`TO_ROUTER`].
fn veth_pair(rtr: &str, end: &str, ns: &str) -> Result<(), LabError> {
    let target = netns::open(ns)?;
    let peer = format!("{end}-p");
    with_handle(rtr, |h| async move {
        let fail = |what: &str, e| LabError::Netlink(format!("{what} in {rtr}: {e}"));
        h.link().add(LinkVeth::new(end, &peer).build()).execute().await.map_err(|e| fail("veth", e))?;
        let (index, _) = index_of(&h, &peer).await?.ok_or_else(|| LabError::Netlink(format!("no {peer} in {rtr}")))?;
        let moved = LinkUnspec::new_with_index(index).setns_by_fd(target.as_raw_fd()).name(TO_ROUTER).build();
        h.link().set(moved).execute().await.map_err(|e| fail("moving the veth peer", e))
    })
}

/// Sets `dev` in `ns` up with `addrs` (IPv6 without duplicate address
/// detection) and adds `routes` (destination, gateway, preferred source).
fn configure(
    ns: &str,
    dev: &str,
    addrs: &[(IpAddr, u8)],
    routes: &[((IpAddr, u8), IpAddr, Option<IpAddr>)],
) -> Result<(), LabError> {
    with_handle(ns, |h| async move {
        let fail = |what: String, e| LabError::Netlink(format!("{what} in {ns}: {e}"));
        let (index, _) = index_of(&h, dev).await?.ok_or_else(|| LabError::Netlink(format!("no {dev} in {ns}")))?;
        h.link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| fail(format!("{dev} up"), e))?;
        for &(a, len) in addrs {
            let mut req = h.address().add(index, a, len);
            if a.is_ipv6() {
                req.message_mut().attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
            req.execute().await.map_err(|e| fail(format!("address {a}/{len} on {dev}"), e))?;
        }
        for &((dst, len), via, src) in routes {
            let bad = |e| LabError::Netlink(format!("route {dst}/{len}: {e:?}"));
            let mut b = RouteMessageBuilder::<IpAddr>::new()
                .destination_prefix(dst, len)
                .map_err(bad)?
                .gateway(via)
                .map_err(bad)?
                .output_interface(index);
            if let Some(src) = src {
                b = b.pref_source(src).map_err(bad)?;
            }
            h.route().add(b.build()).execute().await.map_err(|e| fail(format!("route {dst}/{len} via {via}"), e))?;
        }
        Ok(())
    })
}

/// `nft -f -` with `rules`, inside namespace `ns`.
fn nft(ns: &str, rules: &str) -> Result<(), LabError> {
    let fail = |e: String| LabError::Process(format!("nft -f - in {ns}: {e} (Debian: apt-get install nftables)"));
    netns::within(ns, || {
        // The child is forked from this thread, inside `ns`.
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| fail(e.to_string()))?;
        child.stdin.take().map(|mut s| s.write_all(rules.as_bytes())).transpose().map_err(|e| fail(e.to_string()))?;
        let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(fail(String::from_utf8_lossy(&out.stderr).trim().to_string()))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rules_name_the_labs_prefixes_and_relays() {
        let r = nft_rules();
        for s in [SUB_NET4, SUB_NET6, STATIC_NET4, STATIC_NET6, RELAY4, RELAY6] {
            assert!(r.contains(s), "{s} missing from {r}");
        }
        assert_eq!(r.matches("reject with tcp reset").count(), 2);
    }
}
