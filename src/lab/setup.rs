//! The lab's network, made and removed: its two namespaces with their
//! loopback addresses, then (once op25b has made and raised its TUN devices)
//! the routes through them. Used by `op25b lab up` and the tests' harness.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::def::{ip, net as prefix, Names, DYN4, DYN6, INET_ADDRS, SUB_ADDRS, SUB_NET4, SUB_NET6};
use super::net::{self, Route};
use super::{netns, LabError};

/// IPv6 kept quiet in the lab's namespaces: no duplicate address detection, no
/// router solicitations or advertisements on the devices op25b adds.
const QUIET_V6: [(&str, &str); 6] = [
    ("net.ipv6.conf.all.accept_dad", "0"),
    ("net.ipv6.conf.default.accept_dad", "0"),
    ("net.ipv6.conf.all.accept_ra", "0"),
    ("net.ipv6.conf.default.accept_ra", "0"),
    ("net.ipv6.conf.all.router_solicitations", "0"),
    ("net.ipv6.conf.default.router_solicitations", "0"),
];

/// Creates the lab's namespaces with lo up and the lab's addresses on it, IPv6
/// quiet (`QUIET_V6`). On failure, removes the namespaces it made.
pub fn create_namespaces(names: &Names) -> Result<(), LabError> {
    let made = (|| {
        for (ns, addrs) in [(&names.sub_ns, SUB_ADDRS), (&names.inet_ns, INET_ADDRS)] {
            netns::create(ns)?;
            for (key, value) in QUIET_V6 {
                net::sysctl(ns, key, value)?;
            }
            net::loopback(ns, &addrs.map(ip))?;
        }
        Ok(())
    })();
    if made.is_err() {
        let _ = delete_namespaces(names);
    }
    made
}

/// Deletes the lab's namespaces (those that exist).
pub fn delete_namespaces(names: &Names) -> Result<(), LabError> {
    let sub = netns::delete(&names.sub_ns);
    netns::delete(&names.inet_ns).and(sub)
}

/// Waits up to `within` until both TUN devices are up in their namespaces.
/// `gone` is asked between looks: `Some(why)` (op25b exited) ends the wait.
pub fn wait_devices(names: &Names, within: Duration, mut gone: impl FnMut() -> Option<String>) -> Result<(), LabError> {
    let deadline = Instant::now() + within;
    for (ns, dev) in [(&names.sub_ns, &names.sub_tun), (&names.inet_ns, &names.up_tun)] {
        while !net::link_up(ns, dev)? {
            if let Some(why) = gone() {
                return Err(LabError::Process(format!("{why} before {dev} came up in {ns}")));
            }
            if Instant::now() >= deadline {
                return Err(LabError::Process(format!("{dev} did not come up in {ns} within {within:?}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

/// The routes through op25b: the subscribers' default routes (source: the
/// dynamic address), the outside's routes back to the subscriber prefixes.
/// `advmss_1500`: the outside advertises a 1500-byte path's MSS whatever its
/// device's MTU, as a server behind a wider link would.
pub fn add_routes(names: &Names, advmss_1500: bool) -> Result<(), LabError> {
    add_subscriber_routes(names)?;
    let up = &names.up_tun;
    let (mss4, mss6) = if advmss_1500 { (Some(1460), Some(1440)) } else { (None, None) };
    net::routes(
        &names.inet_ns,
        &[
            Route { dst: prefix(SUB_NET4), dev: up, src: None, advmss: mss4 },
            Route { dst: prefix(SUB_NET6), dev: up, src: None, advmss: mss6 },
        ],
    )
}

/// The subscribers' default routes through op25b's subscriber TUN (source:
/// the dynamic address); the first half of [`add_routes`].
pub fn add_subscriber_routes(names: &Names) -> Result<(), LabError> {
    let any4 = (IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);
    let any6 = (IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 0);
    let sub = &names.sub_tun;
    net::routes(
        &names.sub_ns,
        &[
            Route { dst: any4, dev: sub, src: Some(ip(DYN4)), advmss: None },
            Route { dst: any6, dev: sub, src: Some(ip(DYN6)), advmss: None },
        ],
    )
}
