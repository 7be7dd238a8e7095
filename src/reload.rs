//! Configuration reload (`op25b run` on SIGHUP): the policy changes while the
//! devices and workers keep running.
//!
//! What a reload changes: `[router]` addresses, `subscriber.prefixes`, all of
//! `[op25b]`, `[sets]` and the `[[rule]]`s. What it cannot change: the devices
//! (`tun`, `netns`, `mtu` of either side) and `[dataplane]`; a reload that
//! changes them is refused, like an invalid file, and the running policy stays.
//!
//! State: the reply buckets, redirect flows and banner sessions belong to the
//! settings they were built for (action, ports, banner and redirect settings,
//! reply limit, flow bounds). When a reload leaves those unchanged, the new
//! policy takes the running state over, so connections in progress go on;
//! otherwise it starts afresh. The router's counters go on; per-rule counters
//! start again with the new rules.

use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::policy::Policy;

/// Why a reload was refused. The running policy stays in force.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new file is not a valid config.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    /// The new file changes a setting that only applies at start.
    #[error("{file}: {key}: changed from {was} to {now}, which needs a restart of op25b")]
    Fixed {
        /// The file.
        file: String,
        /// The setting.
        key: &'static str,
        /// Its running value.
        was: String,
        /// Its value in the file.
        now: String,
    },
}

/// What a reload will do.
#[derive(Debug)]
pub struct Reload {
    /// The new config, its policy ready to be put in force.
    pub config: Config,
    /// True when the new policy took over the running state (reply buckets,
    /// redirect flows, banner sessions).
    pub kept_state: bool,
}

/// Checks `new` against the running config and prepares the policy to switch to.
pub fn prepare(running: &Config, mut new: Config) -> Result<Reload, ReloadError> {
    let fixed = |key: &'static str, was: String, now: String| ReloadError::Fixed {
        file: new.path.display().to_string(),
        key,
        was,
        now,
    };
    let opt = |n: &Option<String>| n.as_deref().map_or_else(|| "(none)".to_string(), |s| format!("{s:?}"));
    for (name, was, now) in
        [("subscriber", &running.subscriber, &new.subscriber), ("upstream", &running.upstream, &new.upstream)]
    {
        if was.tun != now.tun {
            let key = if name == "subscriber" { "subscriber.tun" } else { "upstream.tun" };
            return Err(fixed(key, format!("{:?}", was.tun), format!("{:?}", now.tun)));
        }
        if was.netns != now.netns {
            let key = if name == "subscriber" { "subscriber.netns" } else { "upstream.netns" };
            return Err(fixed(key, opt(&was.netns), opt(&now.netns)));
        }
        if was.mtu != now.mtu {
            let key = if name == "subscriber" { "subscriber.mtu" } else { "upstream.mtu" };
            return Err(fixed(key, was.mtu.to_string(), now.mtu.to_string()));
        }
    }
    if running.dataplane != new.dataplane {
        return Err(fixed("dataplane", format!("{:?}", running.dataplane), format!("{:?}", new.dataplane)));
    }
    let kept_state = same_state_settings(&running.policy, &new.policy);
    if kept_state {
        new.policy.runtime = Arc::clone(&running.policy.runtime);
    }
    Ok(Reload { config: new, kept_state })
}

/// Whether two policies build the same runtime state.
fn same_state_settings(a: &Policy, b: &Policy) -> bool {
    let (x, y) = (&a.op25b, &b.op25b);
    x.action == y.action
        && x.ports == y.ports
        && x.banner == y.banner
        && x.redirect_v4 == y.redirect_v4
        && x.redirect_v6 == y.redirect_v6
        && a.reply_limit == b.reply_limit
        && a.max_flows == b.max_flows
        && a.max_flows_per_source == b.max_flows_per_source
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const LAB: &str = include_str!("../config/lab.toml");

    fn config(old: &str, new: &str) -> Config {
        assert!(LAB.contains(old), "lab config lacks {old:?}");
        Config::parse(Path::new("lab.toml"), &LAB.replacen(old, new, 1)).expect("config")
    }

    #[test]
    fn policy_changes_apply_and_keep_state_when_they_can() {
        let running = Config::parse(Path::new("lab.toml"), LAB).unwrap();
        // Other prefixes: the state goes on.
        let r = prepare(&running, config("dynamic = [", "dynamic = [\"100.127.0.0/16\", ")).unwrap();
        assert!(r.kept_state);
        assert!(Arc::ptr_eq(&r.config.policy.runtime, &running.policy.runtime));
        assert!(r.config.policy.op25b.dynamic.len() > running.policy.op25b.dynamic.len());
        // Another port to block: the banner/redirect state no longer fits.
        let r = prepare(&running, config("ports = [25]", "ports = [25, 2525]")).unwrap();
        assert!(!r.kept_state);
        assert!(!Arc::ptr_eq(&r.config.policy.runtime, &running.policy.runtime));
        let r = prepare(&running, config("reply_rate = 10", "reply_rate = 11")).unwrap();
        assert!(!r.kept_state);
    }

    #[test]
    fn device_and_dataplane_changes_are_refused() {
        let running = Config::parse(Path::new("lab.toml"), LAB).unwrap();
        let cases = [
            (config("tun = \"op25b-sub\"", "tun = \"op25b-sub2\""), "subscriber.tun"),
            (config("mtu = 1500", "mtu = 1400"), "subscriber.mtu"),
            (config("netns = \"op25b-lab-inet\"", "netns = \"other\""), "upstream.netns"),
            (config("reply_burst = 20", "reply_burst = 20\n\n[dataplane]\nworkers = 2"), "dataplane"),
        ];
        for (new, want) in cases {
            match prepare(&running, new) {
                Err(e @ ReloadError::Fixed { key, .. }) => {
                    assert_eq!(key, want);
                    let msg = e.to_string();
                    assert!(msg.starts_with(&format!("lab.toml: {want}: changed from ")), "{msg}");
                    assert!(msg.contains("restart"), "{msg}");
                }
                other => panic!("{want}: expected a refusal, got {other:?}"),
            }
        }
    }
}
