//! Configuration reload (`op25b run` on SIGHUP): the policy changes while the
//! devices and workers keep running.
//!
//! What a reload changes: `[router]` addresses, `subscriber.prefixes`, all of
//! `[op25b]`, `[sets]` and the `[[rule]]`s. What it cannot change: the devices
//! (`tun`, `netns`, `mtu` of either side) and `[dataplane]`; a reload that
//! changes them is refused, like an invalid file, and the running policy stays.
//!
//! State: each part of the running state carries over when the settings it
//! was built for are unchanged, and starts afresh otherwise (see
//! [`State::carry_over`]): the reply buckets, the redirect flows, the banner
//! sessions, and the buckets of each rate-limit rule (by name and limit). A
//! part that starts afresh cuts what it held: connections in progress through
//! a redirect or a banner session end. The router's counters go on; per-rule
//! counters carry over by rule name.

use crate::config::{Config, ConfigError};
pub use crate::state::Kept;
use crate::state::State;

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
    /// The state to run it with: the running state's parts that carry over.
    pub state: State,
    /// Which parts of the running state carried over.
    pub kept: Kept,
}

/// Checks `new` against the running config (whose state is `state`) and
/// prepares the policy and state to switch to.
pub fn prepare(running: &Config, state: &State, new: Config) -> Result<Reload, ReloadError> {
    let netns = |n: &Option<String>| n.as_deref().map_or_else(|| "(none)".to_string(), |s| format!("{s:?}"));
    let (a, b) = (&running.subscriber, &new.subscriber);
    let (c, d) = (&running.upstream, &new.upstream);
    // The settings that only apply at start, as (key, running, in the file).
    let fixed = [
        ("subscriber.tun", format!("{:?}", a.tun), format!("{:?}", b.tun)),
        ("subscriber.netns", netns(&a.netns), netns(&b.netns)),
        ("subscriber.mtu", a.mtu.to_string(), b.mtu.to_string()),
        ("upstream.tun", format!("{:?}", c.tun), format!("{:?}", d.tun)),
        ("upstream.netns", netns(&c.netns), netns(&d.netns)),
        ("upstream.mtu", c.mtu.to_string(), d.mtu.to_string()),
        ("dataplane", format!("{:?}", running.dataplane), format!("{:?}", new.dataplane)),
    ];
    if let Some((key, was, now)) = fixed.into_iter().find(|(_, was, now)| was != now) {
        return Err(ReloadError::Fixed { file: new.path.display().to_string(), key, was, now });
    }
    let (state, kept) = state.carry_over(&running.policy, &new.policy);
    Ok(Reload { config: new, state, kept })
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

    /// The lab config with several replacements.
    fn edited(edits: &[(&str, &str)]) -> Config {
        let mut text = LAB.to_string();
        for (old, new) in edits {
            assert!(text.contains(old), "lab config lacks {old:?}");
            text = text.replacen(old, new, 1);
        }
        Config::parse(Path::new("lab.toml"), &text).expect("config")
    }

    #[test]
    fn each_part_of_the_state_carries_over_while_its_settings_hold() {
        let redirect = ("action = \"reject\"", "action = \"redirect\"\nredirect_to = [\"198.51.100.25:25\"]");
        let banner = ("action = \"reject\"", "action = \"banner\"");
        let running = edited(&[redirect]);
        let kept = |new: Config| {
            let r = prepare(&running, new).expect("reload");
            let (old, fresh) = (&running.policy.runtime, &r.config.policy.runtime);
            // What `kept` says is what is shared.
            assert_eq!(r.kept.reply_buckets, Arc::ptr_eq(&old.replies, &fresh.replies));
            assert_eq!(r.kept.flows, Arc::ptr_eq(&old.conntrack, &fresh.conntrack));
            r.kept
        };
        let all = Kept { reply_buckets: true, flows: true, sessions: false };
        // Other prefixes or ports: everything goes on.
        assert_eq!(kept(edited(&[redirect, ("dynamic = [", "dynamic = [\"100.127.0.0/16\", ")])), all);
        assert_eq!(kept(edited(&[redirect, ("ports = [25]", "ports = [25, 2525]")])), all);
        // Another reply limit: only the buckets start afresh.
        let r = kept(edited(&[redirect, ("reply_rate = 10", "reply_rate = 11")]));
        assert_eq!(r, Kept { reply_buckets: false, ..all });
        // Another redirect target or action: the flows end.
        let other = ("action = \"reject\"", "action = \"redirect\"\nredirect_to = [\"198.51.100.26:25\"]");
        assert_eq!(kept(edited(&[other])), Kept { flows: false, ..all });
        assert_eq!(kept(edited(&[banner])), Kept { flows: false, ..all });
        // The banner responder carries over between the same banner settings only.
        let running = edited(&[banner]);
        let r = prepare(&running, edited(&[banner, ("block_inbound = false", "block_inbound = true")])).unwrap();
        assert!(r.kept.sessions);
        let (old, fresh) = (&running.policy.runtime.responder, &r.config.policy.runtime.responder);
        assert!(Arc::ptr_eq(old.as_ref().unwrap(), fresh.as_ref().unwrap()));
        let (old, fresh) = (&running.policy.runtime.responder_deadline, &r.config.policy.runtime.responder_deadline);
        assert!(Arc::ptr_eq(old.as_ref().unwrap(), fresh.as_ref().unwrap()), "the deadline goes with its responder");
        let slower = ("action = \"reject\"", "action = \"banner\"\nbanner_timeout = 5");
        assert!(!prepare(&running, edited(&[slower])).unwrap().kept.sessions);
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
