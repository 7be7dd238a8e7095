//! The lab, defined once: its namespaces, devices, addresses, prefixes,
//! servers and the config op25b runs in it. The CLI (`op25b lab`), the
//! tests' harness, [`crate::testing::PolicyBuilder::lab`], the benchmark, the
//! soak and the demo all read it from here; config/lab.toml is
//! [`config_toml`] of the default lab (a test keeps them equal).

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use serde::Serialize;

/// The default lab's name: namespaces `op25b-lab-sub` and `op25b-lab-inet`,
/// state in /run/op25b-lab.
pub const DEFAULT_NAME: &str = "op25b-lab";

/// The subscriber-side TUN (inside the subscriber namespace).
pub const TUN_SUB: &str = "op25b-sub";
/// The upstream TUN (inside the outside namespace).
pub const TUN_UP: &str = "op25b-up";

/// The router's own IPv4 address (source of its ICMP errors).
pub const ROUTER4: &str = "100.64.0.1";
/// The router's own IPv6 address.
pub const ROUTER6: &str = "2001:db8:100::1";
/// A subscriber in the dynamic pool.
pub const DYN4: &str = "100.64.1.10";
/// A subscriber in the dynamic pool, IPv6.
pub const DYN6: &str = "2001:db8:100:1::10";
/// A static (exempt) subscriber.
pub const STATIC4: &str = "100.64.9.10";
/// A static (exempt) subscriber, IPv6.
pub const STATIC6: &str = "2001:db8:100:9::10";
/// The outside mail server (MX).
pub const MX4: &str = "203.0.113.25";
/// The outside mail server, IPv6.
pub const MX6: &str = "2001:db8:203::25";
/// The ISP's relay.
pub const RELAY4: &str = "198.51.100.25";
/// The ISP's relay, IPv6.
pub const RELAY6: &str = "2001:db8:25::25";

/// The subscribers' prefix (anti-spoofing, the dynamic pool, the outside's route back).
pub const SUB_NET4: &str = "100.64.0.0/10";
/// The subscribers' IPv6 prefix.
pub const SUB_NET6: &str = "2001:db8:100::/48";
/// The static customers' prefix (exempt from OP25B).
pub const STATIC_NET4: &str = "100.64.9.0/24";
/// The static customers' IPv6 prefix.
pub const STATIC_NET6: &str = "2001:db8:100:9::/64";

/// The TCP ports the outside SMTP servers listen on.
pub const SMTP_PORTS: [u16; 3] = [25, 587, 465];

/// An address of the definition, parsed. Every constant above parses (a test
/// checks each), so the fallback is never taken.
pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

/// A prefix of the definition as (address, length); see [`ip`].
pub fn net(s: &str) -> (IpAddr, u8) {
    s.parse::<ipnet::IpNet>().map_or((IpAddr::V4(Ipv4Addr::UNSPECIFIED), 32), |n| (n.addr(), n.prefix_len()))
}

/// An outside server of the lab: its name (the file its mail goes to) and addresses.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Server {
    /// `mx` or `relay`.
    pub name: &'static str,
    /// Its IPv4 address.
    pub v4: &'static str,
    /// Its IPv6 address.
    pub v6: &'static str,
}

/// The outside servers: the MX and the ISP's relay.
pub const SERVERS: [Server; 2] =
    [Server { name: "mx", v4: MX4, v6: MX6 }, Server { name: "relay", v4: RELAY4, v6: RELAY6 }];

/// The addresses on `lo` of the subscriber namespace.
pub const SUB_ADDRS: [&str; 4] = [DYN4, STATIC4, DYN6, STATIC6];
/// The addresses on `lo` of the outside namespace.
pub const INET_ADDRS: [&str; 4] = [MX4, RELAY4, MX6, RELAY6];

/// One lab's names: a lab is its name; its namespaces and state directory follow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Names {
    /// The lab's name (`op25b-lab`).
    pub name: String,
    /// The subscriber namespace (`NAME-sub`).
    pub sub_ns: String,
    /// The outside namespace (`NAME-inet`).
    pub inet_ns: String,
    /// The subscriber-side TUN.
    pub sub_tun: String,
    /// The upstream TUN.
    pub up_tun: String,
}

impl Names {
    /// The names of lab `name`; `None` unless the name is 1 to 24 characters of
    /// `a-z`, `0-9` and `-` starting with a letter, and not `op25b` (whose
    /// /run/op25b is the service's).
    pub fn new(name: &str) -> Option<Names> {
        let ok = (1..=24).contains(&name.len())
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && name != "op25b";
        ok.then(|| Names {
            name: name.to_string(),
            sub_ns: format!("{name}-sub"),
            inet_ns: format!("{name}-inet"),
            sub_tun: TUN_SUB.to_string(),
            up_tun: TUN_UP.to_string(),
        })
    }

    /// The default lab.
    pub fn default_lab() -> Names {
        // The default name is valid by construction (checked by a test).
        Names::new(DEFAULT_NAME).unwrap_or_else(|| unreachable!("the default lab name is valid"))
    }

    /// Where the lab keeps its state: `/run/NAME` (root-only tmpfs, gone at reboot).
    pub fn state_dir(&self) -> PathBuf {
        PathBuf::from("/run").join(&self.name)
    }
}

/// Most op25b instances one lab runs (`op25b lab up --instances N`).
pub const MAX_INSTANCES: usize = 8;
/// Subscribers a lab of several instances adds on `lo` of the subscriber
/// namespace (in the dynamic pool, beside [`DYN4`] and [`DYN6`]), so that
/// the multipath hash has sources to spread: [`spread_subscriber`].
pub const SPREAD_SUBSCRIBERS: u8 = 8;
/// The nexthop groups of a lab of several instances (`ip nexthop` ids, the
/// same in both namespaces): IPv4, IPv6.
pub const NH_GROUPS: [u32; 2] = [1, 2];
/// Buckets of each resilient group: the unit in which subscribers move.
pub const NH_BUCKETS: u16 = 128;
/// Seconds a bucket must have been idle before it moves to an instance that
/// came (back): a subscriber's live connections are not moved by a return.
pub const NH_IDLE_TIMER_SECS: u32 = 3;

/// `fib_multipath_hash_seed` of both namespaces: a fixed seed makes the
/// spread of the subscribers over the instances the same on every machine
/// and boot (with 0 the kernel draws one at boot), and the same on both sides.
pub const NH_HASH_SEED: u32 = 0x6f70_3235;

/// Subscriber `i` (0 .. [`SPREAD_SUBSCRIBERS`]) of a lab of several
/// instances: 100.64.1.(20 + i) and 2001:db8:100:(20 + i)::10 (hex), each
/// IPv6 one in a /64 of its own, as op25b keys an IPv6 subscriber.
pub fn spread_subscriber(i: u8) -> [IpAddr; 2] {
    let v6 = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0x20 + u16::from(i), 0, 0, 0, 0x10);
    [IpAddr::V4(Ipv4Addr::new(100, 64, 1, 20 + i)), IpAddr::V6(v6)]
}

/// The nexthop ids of instance `k` (IPv4, IPv6): 100 + k and 200 + k.
pub fn nexthop_ids(k: usize) -> [u32; 2] {
    let k = k as u32;
    [100 + k, 200 + k]
}

impl Names {
    /// Instance `k` of a lab of several: the same namespaces, its own devices
    /// (`op25b-subK`, `op25b-upK`).
    pub fn instance(&self, k: usize) -> Names {
        Names { sub_tun: format!("{TUN_SUB}{k}"), up_tun: format!("{TUN_UP}{k}"), ..self.clone() }
    }

    /// Where instance `k` keeps its config, log and control socket: `/run/NAME/op25b-K`.
    pub fn instance_dir(&self, k: usize) -> PathBuf {
        self.state_dir().join(format!("op25b-{k}"))
    }
}

fn list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

/// The lab's config: config/lab.toml for the default lab, with the lab's
/// namespaces for another. Its keys, values and comments in one place.
pub fn config_toml(names: &Names) -> String {
    let prefixes = list(&[SUB_NET4.into(), SUB_NET6.into()]);
    let exempt = list(&[STATIC_NET4.into(), STATIC_NET6.into()]);
    let relays = list(&[format!("{RELAY4}/32"), format!("{RELAY6}/128")]);
    let routers = list(&[ROUTER4.to_string(), ROUTER6.to_string()]);
    let (sub_tun, sub_ns, up_tun, inet_ns) = (&names.sub_tun, &names.sub_ns, &names.up_tun, &names.inet_ns);
    format!(
        r#"# op25b example configuration: the one the namespace lab (`op25b lab up`) runs.
# Generated by `op25b lab config`, which prints the lab's own definition.
#
# Every prefix and port list below is compiled into lookup tables at start-up;
# a malformed value stops op25b with a message naming this file, the line and the key.

[router]
# The router's own addresses, one per IP family. They are the source of the ICMP
# errors op25b builds (Time Exceeded for traceroute, Fragmentation Needed /
# Packet Too Big) and answer ping.
addresses = {routers}

[subscriber]
# The subscriber-side TUN device (the ISP's access network).
tun = "{sub_tun}"
# Optional: create the device inside this network namespace (/run/netns/NAME).
netns = "{sub_ns}"
# Optional: MTU of the device (default 1500).
mtu = 1500
# Sources allowed to enter from this side (BCP 38 anti-spoofing). Anything else
# arriving on the subscriber TUN is dropped and counted as "spoofed".
prefixes = {prefixes}

[upstream]
# The upstream TUN device (the ISP's uplink, "outside").
tun = "{up_tun}"
netns = "{inet_ns}"
mtu = 1500

[op25b]
# Dynamic-address pools: TCP from these sources to `ports` is blocked ...
dynamic = {prefixes}
# ... unless the source is exempt (static-IP customers, subscribers who opted out) ...
exempt_sources = {exempt}
# ... or the destination is one of the ISP's own mail relays.
relays = {relays}
# Destination ports to block. 587 (submission) and 465 (submissions) must stay open.
ports = [25]
# What a blocked connection gets (docs/PACKET-PATH.md: "How a blocked connection ends"):
#   reject:   TCP RST to the SYN: "connection refused" at once
#   drop:     nothing: the client hangs until its connect timeout
#   icmp:     ICMP administratively prohibited: "no route to host" at once
#   banner:   op25b answers as the server with one SMTP 554 line, then closes
#             (keys: banner, banner_sessions, banner_sessions_per_source, banner_timeout)
#   redirect: the connection goes to the ISP relay instead (keys: redirect_to,
#             max_flows, max_flows_per_source)
action = "reject"
# Also drop new connections from outside to port 25 of dynamic addresses (IP25B).
block_inbound = false
# Per-address limit on what the router sends (RSTs, ICMP errors, echo replies,
# banner sessions, new redirects): tokens per second and burst.
reply_rate = 10
reply_burst = 20
# Tunnels of dynamic addresses (IP in IP, GRE, Teredo, VXLAN, Geneve): "inspect"
# (the default) judges the packets inside like the subscriber's own; "block"
# drops them but those to tunnel_endpoints; "forward" leaves them alone.
# tunnels = "inspect"
"#
    )
}

/// The whole definition as data, for scripts (`op25b lab status --json`).
#[derive(Debug, Serialize)]
pub struct Definition {
    /// Names of this lab.
    pub names: Names,
    /// The state directory.
    pub state_dir: PathBuf,
    /// The router's addresses.
    pub router: [&'static str; 2],
    /// Addresses by role.
    pub dyn4: &'static str,
    /// Dynamic IPv6 subscriber.
    pub dyn6: &'static str,
    /// Static IPv4 subscriber.
    pub static4: &'static str,
    /// Static IPv6 subscriber.
    pub static6: &'static str,
    /// The outside servers.
    pub servers: [Server; 2],
    /// The subscribers' prefixes.
    pub sub_nets: [&'static str; 2],
    /// The static customers' prefixes.
    pub static_nets: [&'static str; 2],
    /// The SMTP servers' ports.
    pub smtp_ports: [u16; 3],
}

impl Definition {
    /// The definition of the lab with these names.
    pub fn of(names: &Names) -> Definition {
        Definition {
            state_dir: names.state_dir(),
            names: names.clone(),
            router: [ROUTER4, ROUTER6],
            dyn4: DYN4,
            dyn6: DYN6,
            static4: STATIC4,
            static6: STATIC6,
            servers: SERVERS,
            sub_nets: [SUB_NET4, SUB_NET6],
            static_nets: [STATIC_NET4, STATIC_NET6],
            smtp_ports: SMTP_PORTS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_lab_toml_is_the_default_labs_config() {
        assert_eq!(config_toml(&Names::default_lab()), include_str!("../../config/lab.toml"));
    }

    #[test]
    fn names_are_checked() {
        assert_eq!(Names::default_lab().sub_ns, "op25b-lab-sub");
        assert_eq!(Names::default_lab().state_dir(), PathBuf::from("/run/op25b-lab"));
        for bad in ["", "op25b", "Lab", "1lab", "a/b", "a b", "abcdefghijklmnopqrstuvwxy"] {
            assert!(Names::new(bad).is_none(), "{bad:?}");
        }
        assert!(Names::new("o25t-1-2").is_some());
    }

    #[test]
    fn every_address_and_prefix_parses() {
        for a in [ROUTER4, ROUTER6, DYN4, DYN6, STATIC4, STATIC6, MX4, MX6, RELAY4, RELAY6] {
            assert_eq!(a.parse::<IpAddr>().map(|p| p.to_string()).as_deref(), Ok(a));
        }
        for n in [SUB_NET4, SUB_NET6, STATIC_NET4, STATIC_NET6] {
            assert_eq!(n.parse::<ipnet::IpNet>().map(|p| p.trunc().to_string()).as_deref(), Ok(n));
        }
        assert_eq!(net(SUB_NET6).1, 48);
    }

    #[test]
    fn instances_derive_from_the_lab() {
        let lab = Names::default_lab();
        let last = lab.instance(MAX_INSTANCES - 1);
        assert!(last.sub_tun.len() <= 15 && last.up_tun.len() <= 15, "{last:?}");
        assert_eq!(
            (last.sub_ns.as_str(), lab.instance_dir(1)),
            ("op25b-lab-sub", PathBuf::from("/run/op25b-lab/op25b-1"))
        );
        let sub: ipnet::IpNet = SUB_NET4.parse().unwrap();
        let sub6: ipnet::IpNet = SUB_NET6.parse().unwrap();
        for i in 0..SPREAD_SUBSCRIBERS {
            let [a, b] = spread_subscriber(i);
            assert!(sub.contains(&a) && sub6.contains(&b) && !SUB_ADDRS.map(ip).contains(&a), "{a} {b}");
        }
        assert_eq!(spread_subscriber(1)[1].to_string(), "2001:db8:100:21::10");
        assert!(nexthop_ids(MAX_INSTANCES)[0] < nexthop_ids(0)[1] && !NH_GROUPS.contains(&nexthop_ids(0)[0]));
    }
}
