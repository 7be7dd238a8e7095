//! A lab of several op25b instances (`op25b lab up --instances N`): the
//! same two namespaces, N `op25b run` processes each with its own pair of
//! TUN devices (`op25b-subK`, `op25b-upK`), config, log and control socket
//! (`/run/NAME/op25b-K/`), and the kernel's multipath routing between them.
//!
//! ```text
//!  netns NAME-sub                                                 netns NAME-inet
//!  default nhid 1 (v4), 2 (v6)      op25b-sub0 <=> op25b 0 <=> op25b-up0    100.64.0.0/10 nhid 1
//!    resilient group, hash: source  op25b-sub1 <=> op25b 1 <=> op25b-up1    2001:db8:100::/48 nhid 2
//!                                   ...                                     hash: destination
//! ```
//!
//! Each namespace has one nexthop object per instance and family (out of
//! the instance's device) and one resilient group per family. The multipath
//! hash takes the source address only on the subscriber side
//! (`fib_multipath_hash_policy = 3`, `fib_multipath_hash_fields = 0x1`) and
//! the destination address only on the outside (`0x2`): both directions of a
//! subscriber's traffic meet the same bucket number, so the same instance
//! as long as both groups have the same members in the same order.
//!
//! Nexthop objects rather than a multipath route (RTA_MULTIPATH): when an
//! instance dies its TUN devices go, and the kernel removes their nexthops
//! from the groups, which keep serving the others. An IPv4 multipath route
//! is deleted whole when one of its devices goes, and an IPv6 one takes no
//! device-only nexthops. A resilient group moves only the buckets of the
//! member that went; an instance that comes back (`up` again) is given
//! buckets that were idle for [`NH_IDLE_TIMER_SECS`], so a subscriber returns
//! once it has been quiet that long, and live connections are not moved.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use rtnetlink::RouteMessageBuilder;

use super::def::{self, Names, DYN4, DYN6, MAX_INSTANCES, NH_BUCKETS, NH_GROUPS, NH_IDLE_TIMER_SECS};
use super::kernel::RouterKind;
use super::nexthop::{self, Resilient};
use super::run::{
    gone, indent, need_root, open_log, say, spawn_in, spawn_logged, this_exe, wait, UpOptions, START_WAIT,
};
use super::state::{self, Instance, LabState, Proc};
use super::veth::Upstream;
use super::{net, netns, setup, LabError};

/// The resilient groups' settings.
const RESILIENT: Resilient =
    Resilient { buckets: NH_BUCKETS, idle_timer_secs: NH_IDLE_TIMER_SECS, unbalanced_timer_secs: 0 };

/// `fib_multipath_hash_fields` bits (linux/ip.h): the source, the destination address.
const HASH_SRC_IP: &str = "1";
const HASH_DST_IP: &str = "2";

/// `op25b lab up --instances N`: builds the lab with N instances; on a lab
/// of N instances some of which died, starts those again and gives them
/// back their place in the groups.
pub fn up(names: &Names, n: usize, opts: &UpOptions) -> Result<(), LabError> {
    need_root("up")?;
    if !(2..=MAX_INSTANCES).contains(&n) {
        return Err(LabError::Usage(format!("--instances {n}: from 1 to {MAX_INSTANCES}")));
    }
    if opts.config.is_some() || opts.stats.is_some() {
        return Err(LabError::Usage("--config and --stats are for a lab of one op25b, not with --instances".into()));
    }
    if opts.router != RouterKind::Op25b || opts.upstream != Upstream::Tun {
        return Err(LabError::Usage(
            "--router kernel and --upstream veth are for a lab of one router, not with --instances".into(),
        ));
    }
    match LabState::load(names) {
        Ok(Some(s))
            if s.instances.len() == n
                && s.namespaces.iter().all(|ns| netns::exists(ns))
                && s.servers.is_none_or(|p| p.alive())
                && (s.servers.is_some() || !opts.servers) =>
        {
            let dead: Vec<usize> =
                s.instances.iter().filter(|i| !i.op25b.is_some_and(|p| p.alive())).map(|i| i.index).collect();
            if dead.is_empty() {
                say(format!("lab {} already up with {n} instances; nothing to do", names.name));
                return Ok(());
            }
            return revive(s, &dead, opts);
        }
        Ok(None) if !netns::exists(&names.sub_ns) && !netns::exists(&names.inet_ns) => {}
        _ => {
            say("partial or other lab found: tearing it down first");
            super::run::down(names, None)?;
        }
    }
    let mut st = LabState::new(names);
    state::make_dir(&names.state_dir())?;
    if let Err(e) = build(names, n, &mut st, opts) {
        show_logs(&st);
        say(format!("up failed ({e}): tearing down"));
        super::run::down(names, None)?;
        return Err(e);
    }
    say(format!("lab {} is up with {n} op25b instances, state in {}", names.name, names.state_dir().display()));
    for i in &st.instances {
        say(format!("  instance {}: pid {}, op25b stats --socket {}", i.index, pid(i), i.socket.display()));
    }
    Ok(())
}

fn pid(i: &Instance) -> u32 {
    i.op25b.map_or(0, |p| p.pid)
}

fn build(names: &Names, n: usize, st: &mut LabState, opts: &UpOptions) -> Result<(), LabError> {
    st.namespaces = vec![names.sub_ns.clone(), names.inet_ns.clone()];
    st.save()?;
    say(format!("creating netns {} (subscribers) and {} (outside)", names.sub_ns, names.inet_ns));
    setup::create_namespaces(names)?;
    let spread: Vec<IpAddr> = (0..def::SPREAD_SUBSCRIBERS).flat_map(def::spread_subscriber).collect();
    net::loopback(&names.sub_ns, &spread)?;
    for (ns, field) in [(&names.sub_ns, HASH_SRC_IP), (&names.inet_ns, HASH_DST_IP)] {
        for family in ["ipv4", "ipv6"] {
            net::sysctl(ns, &format!("net.{family}.fib_multipath_hash_policy"), "3")?;
            net::sysctl(ns, &format!("net.{family}.fib_multipath_hash_fields"), field)?;
        }
        net::sysctl(ns, "net.ipv4.fib_multipath_hash_seed", &def::NH_HASH_SEED.to_string())?;
    }
    if opts.servers {
        start_servers(names, st)?;
    }
    for k in 0..n {
        start_instance(names, st, k, opts.bin.as_ref())?;
    }
    say("adding nexthops, resilient groups and routes");
    set_groups(names, st)?;
    routes(names)?;
    settle(st)
}

/// A moment for the instances to fail on what they do after raising their devices.
fn settle(st: &LabState) -> Result<(), LabError> {
    std::thread::sleep(Duration::from_millis(300));
    for i in &st.instances {
        if let Some(why) = gone(i.op25b, &format!("op25b instance {}", i.index)) {
            return Err(LabError::Process(why));
        }
    }
    match st.servers.and_then(|p| gone(Some(p), "the SMTP servers")) {
        Some(why) => Err(LabError::Process(why)),
        None => Ok(()),
    }
}

/// Starts the instances in `dead` again and puts them back in the groups.
fn revive(mut st: LabState, dead: &[usize], opts: &UpOptions) -> Result<(), LabError> {
    let names = st.names.clone();
    let started = (|| {
        for &k in dead {
            say(format!("instance {k} is not running: starting it again"));
            start_instance(&names, &mut st, k, opts.bin.as_ref())?;
        }
        set_groups(&names, &st)?;
        // The kernel removed the routes with a group that lost its last member.
        routes(&names)?;
        settle(&st)
    })();
    if let Err(e) = started {
        show_logs(&st);
        return Err(e);
    }
    say(format!(
        "lab {} is up again; an idle subscriber moves back after {NH_IDLE_TIMER_SECS} s without traffic",
        names.name
    ));
    Ok(())
}

fn show_logs(st: &LabState) {
    let dirs = st.instances.iter().map(|i| (format!("op25b instance {}", i.index), i.dir.join("op25b.log")));
    let servers = std::iter::once(("the SMTP servers".to_string(), st.names.state_dir().join("servers.log")));
    for (what, file) in dirs.chain(servers) {
        let log = std::fs::read_to_string(file).unwrap_or_default();
        if !log.trim().is_empty() {
            eprintln!("[lab] {what}'s log:\n{}", indent(&log));
        }
    }
}

fn start_servers(names: &Names, st: &mut LabState) -> Result<(), LabError> {
    let dir = names.state_dir();
    say(format!("starting the SMTP servers in {}", names.inet_ns));
    let log = open_log(&dir.join("servers.log"))?;
    let mut cmd = Command::new(this_exe()?);
    cmd.args(["lab", "serve", "--name", &names.name]);
    st.servers = Proc::of(spawn_in(&mut cmd, &names.inet_ns, log)?);
    st.save()?;
    let ready = dir.join("servers.ready");
    wait(START_WAIT, "the SMTP servers to listen", || ready.exists(), || gone(st.servers, "the SMTP servers"))
}

/// Writes instance `k`'s config (the lab's, with its devices and a control
/// socket in its directory) and starts it; returns once its devices are up.
fn start_instance(names: &Names, st: &mut LabState, k: usize, bin: Option<&PathBuf>) -> Result<(), LabError> {
    let inst = names.instance(k);
    let dir = names.instance_dir(k);
    state::make_dir(&dir)?;
    let socket = dir.join("op25b.sock");
    let config = dir.join("op25b.toml");
    let s = socket.display();
    let state = dir.join("abuse.state");
    let text = format!(
        "{}\n# Added by op25b lab: op25b stats --socket {s}\n[control]\nsocket = \"{s}\"\n\n\
         # Each instance keeps its own abuse table and quarantines, and its own file.\n\
         [abuse]\nstate_file = \"{}\"\n",
        def::config_toml(&inst),
        state.display()
    );
    std::fs::write(&config, text).map_err(|e| LabError::io(&config, e))?;
    let record = Instance {
        index: k,
        sub_tun: inst.sub_tun.clone(),
        up_tun: inst.up_tun.clone(),
        dir: dir.clone(),
        socket,
        op25b: None,
    };
    match st.instances.get_mut(k) {
        Some(slot) => *slot = record,
        None => st.instances.push(record),
    }
    st.save()?;
    let bin = match bin {
        Some(b) => b.clone(),
        None => this_exe()?,
    };
    say(format!("starting op25b instance {k}: {} run --config {}", bin.display(), config.display()));
    let mut cmd = Command::new(&bin);
    cmd.arg("run").arg("--config").arg(&config).env("NO_COLOR", "1");
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
    let child = spawn_logged(&mut cmd, open_log(&dir.join("op25b.log"))?)?;
    let proc = Proc::of(child.id());
    st.instances[k].op25b = proc;
    st.save()?;
    setup::wait_devices(&inst, START_WAIT, || gone(proc, &format!("op25b instance {k}")))
}

/// In both namespaces: a nexthop per running instance and family, and the
/// groups made of them (in instance order, the same on both sides).
fn set_groups(names: &Names, st: &LabState) -> Result<(), LabError> {
    for (ns, outside) in [(&names.sub_ns, false), (&names.inet_ns, true)] {
        let mut members: [Vec<u32>; 2] = [Vec::new(), Vec::new()];
        for i in st.instances.iter().filter(|i| i.op25b.is_some_and(|p| p.alive())) {
            let dev = if outside { &i.up_tun } else { &i.sub_tun };
            let index = ifindex(ns, dev)?.ok_or_else(|| LabError::Netlink(format!("no device {dev} in {ns}")))?;
            for (family, id) in def::nexthop_ids(i.index).into_iter().enumerate() {
                nexthop::add_device(ns, id, index, family == 1)?;
                members[family].push(id);
            }
        }
        for (group, members) in NH_GROUPS.into_iter().zip(&members) {
            if !members.is_empty() {
                nexthop::set_group(ns, group, members, RESILIENT)?;
            }
        }
    }
    Ok(())
}

fn ifindex(ns: &str, dev: &str) -> Result<Option<u32>, LabError> {
    let dev = dev.to_string();
    net::with_handle(ns, |handle| async move { Ok(net::index_of(&handle, &dev).await?.map(|(i, _)| i)) })
}

/// The routes over the groups (made or replaced): the subscribers' default
/// routes (source: the dynamic address, as in the lab of one), the outside's
/// routes back to the subscriber prefixes.
fn routes(names: &Names) -> Result<(), LabError> {
    let any4 = (IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
    let any6 = (IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0);
    let [g4, g6] = NH_GROUPS;
    let sub = [(any4, g4, Some(def::ip(DYN4))), (any6, g6, Some(def::ip(DYN6)))];
    let inet = [(def::net(def::SUB_NET4), g4, None), (def::net(def::SUB_NET6), g6, None)];
    for (ns, list) in [(&names.sub_ns, sub), (&names.inet_ns, inet)] {
        net::with_handle(ns, |handle| async move {
            for ((dst, len), group, src) in list {
                let mut b = RouteMessageBuilder::<IpAddr>::new()
                    .destination_prefix(dst, len)
                    .map_err(|e| LabError::Netlink(format!("route {dst}/{len}: {e}")))?
                    .nhid(group);
                if let Some(src) = src {
                    b = b.pref_source(src).map_err(|e| LabError::Netlink(format!("route source {src}: {e}")))?;
                }
                let what = format!("route {dst}/{len} nhid {group} in {ns}");
                handle.route().add(b.build()).replace().execute().await.map_err(|e| net::nl(&what, e))?;
            }
            Ok(())
        })?;
    }
    Ok(())
}
