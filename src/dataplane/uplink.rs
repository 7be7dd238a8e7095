//! An Ethernet upstream interface: what the host's own stack must not do
//! on it, checked before op25b takes the link.
//!
//! op25b receives the link's frames through AF_PACKET (docs/UPLINK.md),
//! which copies each frame and leaves the original to the kernel. The kernel
//! then must not act on it: no address on the interface (else it answers ARP
//! and NDP for it and takes packets as its own), no forwarding from it (else
//! a second copy of every forwarded packet leaves, or ICMP errors do), no
//! IPv6 on it (else it configures a link-local address, answers neighbour
//! solicitations and sends ICMPv6 errors), and op25b's own link addresses on
//! no interface of that namespace (else the kernel takes packets to them as
//! its own). With all that, the kernel drops the copy without a word
//! (counted in its InAddrErrors / no-route figures).
//!
//! The facts are read in the interface's namespace ([`HostFacts::gather`]);
//! [`HostFacts::judge`] is pure and says in one line what is wrong.

use std::fs::File;
use std::net::IpAddr;

use ipnet::IpNet;
use nix::sched::{setns, CloneFlags};

use super::device::DeviceError;
use crate::config::{DeviceConfig, LinkConfig};

/// Refuses, in one line, an interface upstream the host would also serve.
pub(crate) fn check(cfg: &DeviceConfig, link: &LinkConfig) -> Result<(), DeviceError> {
    let refuse = |reason: String| DeviceError::Uplink { name: cfg.tun.clone(), netns: cfg.netns.clone(), reason };
    let facts = match &cfg.netns {
        None => HostFacts::gather(&cfg.tun),
        Some(ns) => {
            let file = File::open(format!("/run/netns/{ns}"))
                .map_err(|cause| DeviceError::Netns { name: ns.clone(), cause })?;
            std::thread::scope(|s| {
                s.spawn(|| {
                    // Only this thread moves into the namespace.
                    setns(&file, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
                    HostFacts::gather(&cfg.tun)
                })
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("the checking thread panicked")))
            })
        }
    };
    let facts = facts.map_err(|e| refuse(format!("cannot read its settings: {e}")))?;
    facts.judge(&link.addresses, cfg.mtu).map_err(refuse)
}

/// What the host says about the interface and its namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostFacts {
    /// The interface's name.
    pub name: String,
    /// Whether it exists in the namespace.
    pub exists: bool,
    /// Addresses assigned to it.
    pub addresses: Vec<IpAddr>,
    /// Addresses assigned to any interface of the namespace, with the interface's name.
    pub namespace_addresses: Vec<(String, IpAddr)>,
    /// net.ipv4.conf.NAME.forwarding.
    pub forwarding_v4: bool,
    /// net.ipv6.conf.NAME.forwarding.
    pub forwarding_v6: bool,
    /// net.ipv6.conf.NAME.disable_ipv6 (`None`: no IPv6 in this kernel, as good as disabled).
    pub ipv6_disabled: Option<bool>,
    /// The interface's MTU (`None` when it does not exist).
    pub mtu: Option<u32>,
}

/// The MTU of interface `name` in the calling thread's namespace.
fn mtu_of(name: &str) -> Option<u32> {
    use nix::libc;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: plain socket(2), owned at once when valid.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return None;
    }
    // SAFETY: raw is a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: an all-zero ifreq is valid; the name is copied in below, NUL-terminated.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() {
        return None;
    }
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: SIOCGIFMTU reads ifr_name and writes ifru_mtu of a valid ifreq.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU, &mut req) };
    if rc != 0 {
        return None;
    }
    // SAFETY: the kernel filled the mtu member.
    let mtu = unsafe { req.ifr_ifru.ifru_mtu };
    u32::try_from(mtu).ok()
}

impl HostFacts {
    /// Reads the facts for interface `name` in the calling thread's namespace.
    pub(crate) fn gather(name: &str) -> std::io::Result<HostFacts> {
        let sysctl = |path: String| -> std::io::Result<Option<bool>> {
            match std::fs::read_to_string(&path) {
                Ok(s) => Ok(Some(s.trim() != "0")),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            }
        };
        let mut namespace_addresses = Vec::new();
        for ifa in nix::ifaddrs::getifaddrs().map_err(std::io::Error::from)? {
            let Some(sa) = ifa.address else { continue };
            let ip = if let Some(v4) = sa.as_sockaddr_in() {
                IpAddr::V4(v4.ip())
            } else if let Some(v6) = sa.as_sockaddr_in6() {
                IpAddr::V6(v6.ip())
            } else {
                continue;
            };
            namespace_addresses.push((ifa.interface_name, ip));
        }
        let exists = nix::net::if_::if_nametoindex(name).is_ok();
        Ok(HostFacts {
            name: name.to_string(),
            exists,
            addresses: namespace_addresses.iter().filter(|(n, _)| n == name).map(|(_, a)| *a).collect(),
            forwarding_v4: sysctl(format!("/proc/sys/net/ipv4/conf/{name}/forwarding"))?.unwrap_or(false),
            forwarding_v6: sysctl(format!("/proc/sys/net/ipv6/conf/{name}/forwarding"))?.unwrap_or(false),
            ipv6_disabled: sysctl(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"))?,
            mtu: mtu_of(name),
            namespace_addresses,
        })
    }

    /// `Err(one line)` when the host's stack would also handle the link's
    /// traffic, or op25b cannot use the interface; `own`: op25b's addresses,
    /// `mtu`: the upstream MTU op25b forwards to.
    pub(crate) fn judge(&self, own: &[IpNet], mtu: u16) -> Result<(), String> {
        let n = &self.name;
        if !self.exists {
            return Err(format!("interface {n:?} does not exist in that namespace"));
        }
        if let Some(m) = self.mtu.filter(|m| *m < u32::from(mtu)) {
            return Err(format!(
                "its MTU is {m}, below upstream.mtu {mtu} (the default is 1500): set upstream.mtu = {m}, or raise the interface's"
            ));
        }
        if let Some(a) = self.addresses.first() {
            return Err(format!(
                "interface {n} has address {a}: the host would answer for it and take packets as its own \
                 (remove it: ip addr flush dev {n})"
            ));
        }
        if self.forwarding_v4 {
            return Err(format!(
                "net.ipv4.conf.{n}.forwarding is 1: the host would forward a second copy of each packet (set it to 0)"
            ));
        }
        if self.forwarding_v6 {
            return Err(format!(
                "net.ipv6.conf.{n}.forwarding is 1: the host would forward a second copy of each packet (set it to 0)"
            ));
        }
        if self.ipv6_disabled == Some(false) {
            return Err(format!(
                "IPv6 is enabled on {n}: the host would answer neighbour solicitations and send ICMPv6 errors \
                 (sysctl net.ipv6.conf.{n}.disable_ipv6=1)"
            ));
        }
        for net in own {
            if let Some((dev, _)) = self.namespace_addresses.iter().find(|(_, a)| *a == net.addr()) {
                return Err(format!(
                    "{} (upstream.addresses) is also assigned to {dev} in that namespace: the host would take \
                     packets to it as its own",
                    net.addr()
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean() -> HostFacts {
        HostFacts {
            name: "up0".into(),
            exists: true,
            addresses: vec![],
            namespace_addresses: vec![("lo".into(), "127.0.0.1".parse().unwrap())],
            forwarding_v4: false,
            forwarding_v6: false,
            ipv6_disabled: Some(true),
            mtu: Some(1500),
        }
    }

    #[test]
    fn a_quiet_interface_is_accepted() {
        let own: Vec<IpNet> = vec!["198.51.100.2/24".parse().unwrap()];
        assert_eq!(clean().judge(&own, 1500), Ok(()));
        assert_eq!(HostFacts { ipv6_disabled: None, ..clean() }.judge(&own, 1500), Ok(()));
        assert_eq!(HostFacts { mtu: Some(9000), ..clean() }.judge(&own, 1500), Ok(()));
    }

    #[test]
    fn each_way_the_host_would_interfere_is_one_line() {
        let own: Vec<IpNet> = vec!["198.51.100.2/24".parse().unwrap()];
        let cases = [
            (HostFacts { exists: false, ..clean() }, "does not exist"),
            (HostFacts { mtu: Some(1400), ..clean() }, "set upstream.mtu = 1400"),
            (HostFacts { addresses: vec!["192.0.2.9".parse().unwrap()], ..clean() }, "has address 192.0.2.9"),
            (HostFacts { forwarding_v4: true, ..clean() }, "net.ipv4.conf.up0.forwarding is 1"),
            (HostFacts { forwarding_v6: true, ..clean() }, "net.ipv6.conf.up0.forwarding is 1"),
            (HostFacts { ipv6_disabled: Some(false), ..clean() }, "disable_ipv6=1"),
            (
                HostFacts { namespace_addresses: vec![("lo".into(), "198.51.100.2".parse().unwrap())], ..clean() },
                "also assigned to lo",
            ),
        ];
        for (facts, want) in cases {
            let err = facts.judge(&own, 1500).expect_err(want);
            assert!(err.contains(want), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    /// The reads work in the test's own namespace (lo always exists).
    #[test]
    fn gathers_facts_here() {
        let f = HostFacts::gather("lo").expect("gather");
        assert!(f.exists);
        assert_eq!(f.mtu, Some(65536));
        assert!(f.namespace_addresses.iter().any(|(n, _)| n == "lo"));
        assert!(!HostFacts::gather("o25-none-such").expect("gather").exists);
    }
}
