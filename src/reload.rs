//! Configuration reload (`op25b run` on SIGHUP): the policy changes while the
//! devices and workers keep running.
//!
//! What a reload changes: `[router]` addresses, `subscriber.prefixes`, all of
//! `[op25b]`, `[sets]` and the `[[rule]]`s. What it cannot change: the devices
//! (`tun`, `netns`, `mtu` of either side), `[dataplane]`, `[control]`, `[events]` and `[capture]`, and whether
//! `[abuse]` is there and its `track` (its other keys may change); a reload that
//! changes them is refused, like an invalid file, and the running policy stays.
//! Quarantines carry over every reload.
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
#[non_exhaustive]
pub enum ReloadError {
    /// The new file is not a valid config.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    /// The rules given in code do not fit the new file (a plugin
    /// placeholder without its rule, or a name taken twice).
    #[error("{file}: {message}")]
    Rules {
        /// The file.
        file: String,
        /// What does not fit.
        message: String,
    },
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

/// What of `[abuse]` only applies at start: whether it is there, and the
/// size of the table.
fn abuse_fixed(c: &Config) -> String {
    c.abuse.as_ref().map_or_else(|| "(none)".to_string(), |a| format!("[abuse] with track = {}", a.track))
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
        ("upstream.interface", format!("{:?}", c.kind), format!("{:?}", d.kind)),
        ("upstream.netns", netns(&c.netns), netns(&d.netns)),
        ("upstream.mtu", c.mtu.to_string(), d.mtu.to_string()),
        ("dataplane", format!("{:?}", running.dataplane), format!("{:?}", new.dataplane)),
        ("control", format!("{:?}", running.control), format!("{:?}", new.control)),
        ("events", format!("{:?}", running.events), format!("{:?}", new.events)),
        ("capture", format!("{:?}", running.capture), format!("{:?}", new.capture)),
        ("abuse", abuse_fixed(running), abuse_fixed(&new)),
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
    use crate::testing::PolicyBuilder;

    fn lab() -> PolicyBuilder {
        PolicyBuilder::lab().named("lab.toml")
    }

    fn redirect(to: &str) -> PolicyBuilder {
        lab().action("redirect").op25b("redirect_to", format!("[{to:?}]"))
    }

    #[test]
    fn each_part_of_the_state_carries_over_while_its_settings_hold() {
        let running = redirect("198.51.100.25:25").config();
        let state = State::new(&running.policy);
        let kept = |new: PolicyBuilder| {
            let r = prepare(&running, &state, new.config()).expect("reload");
            // What `kept` says is what is shared.
            let (replies, flows, _) = state.shares(&r.state);
            assert_eq!((r.kept.reply_buckets, r.kept.flows), (replies, flows));
            r.kept
        };
        let all = Kept { reply_buckets: true, flows: true, sessions: false, rule_buckets: 0, programs: 0 };
        let same = || redirect("198.51.100.25:25");
        // Other prefixes or ports: everything goes on.
        let more = crate::testing::list(&["100.127.0.0/16", "100.64.0.0/10", "2001:db8:100::/48"]);
        assert_eq!(kept(same().op25b("dynamic", more)), all);
        assert_eq!(kept(same().op25b("ports", "[25, 2525]")), all);
        // Another reply limit: only the buckets start afresh.
        assert_eq!(kept(same().op25b("reply_rate", 11)), Kept { reply_buckets: false, ..all });
        // Another redirect target or action: the flows end.
        assert_eq!(kept(redirect("198.51.100.26:25")), Kept { flows: false, ..all });
        assert_eq!(kept(lab().action("banner")), Kept { flows: false, ..all });
        // The banner responder carries over between the same banner settings only.
        let running = lab().action("banner").config();
        let state = State::new(&running.policy);
        let r = prepare(&running, &state, lab().action("banner").op25b("block_inbound", true).config()).unwrap();
        assert!(r.kept.sessions);
        assert!(state.shares(&r.state).2, "the responder (and its deadline) carried over");
        let slower = lab().action("banner").op25b("banner_timeout", 5).config();
        assert!(!prepare(&running, &state, slower).unwrap().kept.sessions);
    }

    #[test]
    fn rate_limit_buckets_carry_over_by_rule_name_and_limit() {
        let rule = |name: &str, rate: u32| {
            format!(
                "[[rule]]\nname = {name:?}\nprotocol = \"tcp\"\naction = \"rate-limit\"\nrate = {rate}\nburst = 1\n"
            )
        };
        let running = lab().rules(&rule("a", 5)).rules(&rule("b", 5)).config();
        let state = State::new(&running.policy);
        let new = lab().rules(&rule("b", 5)).rules(&rule("a", 6)).rules(&rule("c", 5)).config();
        let r = prepare(&running, &state, new).unwrap();
        assert_eq!(r.kept.rule_buckets, 1, "only b: a has another limit, c is new");
    }

    #[test]
    fn device_and_dataplane_changes_are_refused() {
        let running = lab().config();
        let state = State::new(&running.policy);
        let cases = [
            (lab().subscriber("tun", "\"op25b-sub2\""), "subscriber.tun"),
            (lab().subscriber("mtu", 1400), "subscriber.mtu"),
            (lab().upstream("netns", "\"other\""), "upstream.netns"),
            (lab().dataplane("workers", 2), "dataplane"),
        ];
        for (new, want) in cases {
            match prepare(&running, &state, new.config()) {
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

    #[test]
    fn abuse_settings_reload_but_its_presence_and_size_need_a_restart() {
        let running = lab().abuse("threshold", 30).config();
        let state = State::new(&running.policy);
        let key = crate::state::abuse::parse_subscriber("100.64.1.10").unwrap();
        let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
        state.quarantine().start(key, until).unwrap();
        // Thresholds and the garden change; the quarantine carries over whatever else changes.
        let r = prepare(
            &running,
            &state,
            lab().action("drop").abuse("threshold", 5).abuse("quarantine_allow", "[]").config(),
        )
        .expect("reload");
        assert_eq!(r.config.abuse.as_ref().unwrap().thresholds.attempts, 5);
        assert!(std::sync::Arc::ptr_eq(state.quarantine(), r.state.quarantine()));
        assert_eq!(r.state.quarantine().until(key), Some(until));
        for new in [lab(), lab().abuse("track", 100)] {
            match prepare(&running, &state, new.config()) {
                Err(ReloadError::Fixed { key, .. }) => assert_eq!(key, "abuse"),
                other => panic!("expected a refusal, got {other:?}"),
            }
        }
    }
}
