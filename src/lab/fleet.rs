//! The recorded instances of a lab of several, as `down` and `status` see
//! them: stopping them, removing their files, showing them. `lab::instances`
//! builds and revives them; this side needs nothing of `up`.

use std::time::Duration;

use super::def::{Names, MAX_INSTANCES, NH_GROUPS};
use super::state::LabState;
use super::{net, nexthop};

/// Stops the instances `down` found recorded.
pub(super) fn stop(st: &LabState, grace: Duration) {
    for i in &st.instances {
        if let Some(p) = i.op25b {
            if p.alive() {
                outln!("[lab] stopping op25b instance {} (pid {})", i.index, p.pid);
            }
            p.stop(grace);
        }
    }
}

/// Removes the instances' directories and their files, recorded or not.
pub(super) fn remove_files(names: &Names) {
    for k in 0..MAX_INSTANCES {
        let dir = names.instance_dir(k);
        // Everything in it is the instance's: config, log, socket, abuse state.
        for f in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let _ = std::fs::remove_file(f.path());
        }
        let _ = std::fs::remove_dir(&dir);
    }
}

/// Whether every recorded instance runs.
pub(super) fn all_alive(st: &LabState) -> bool {
    st.instances.iter().all(|i| i.op25b.is_some_and(|p| p.alive()))
}

/// `op25b lab status`'s lines for the instances and the groups.
pub(super) fn status(st: &LabState) {
    let names = &st.names;
    for i in &st.instances {
        let running = match i.op25b {
            Some(p) if p.alive() => format!("running, pid {}", p.pid),
            Some(p) => format!("NOT running (pid {} gone)", p.pid),
            None => "not started".to_string(),
        };
        let dev = |ns: &str, dev: &str| match net::link_up(ns, dev) {
            Ok(true) => format!("{dev} up"),
            Ok(false) => format!("{dev} absent"),
            Err(_) => format!("{dev} unknown"),
        };
        outln!(
            "op25b instance {}: {running}; {}, {}; op25b stats --socket {}",
            i.index,
            dev(&names.sub_ns, &i.sub_tun),
            dev(&names.inet_ns, &i.up_tun),
            i.socket.display()
        );
    }
    for ns in [&names.sub_ns, &names.inet_ns] {
        for (family, group) in ["IPv4", "IPv6"].into_iter().zip(NH_GROUPS) {
            let members = match nexthop::members(ns, group) {
                Ok(Some(m)) => format!("{m:?}"),
                Ok(None) => "absent".to_string(),
                Err(e) => format!("unknown ({e})"),
            };
            outln!("netns {ns}: {family} nexthop group {group}: members {members}");
        }
    }
}
