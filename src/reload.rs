//! Configuration reload (`op25b run` on SIGHUP): the policy changes while the
//! devices and workers keep running.
//!
//! What a reload changes: `[router]` addresses, `subscriber.prefixes`, all of
//! `[op25b]`, `[sets]` and the `[[rule]]`s. What it cannot change: the devices
//! (`tun`, `netns`, `mtu` of either side), `[dataplane]`, `[control]`, whether
//! there is an events file (`events.path`) or a capture (`capture.dropped`),
//! and whether `[abuse]` is there and its `track` (its other keys may
//! change); a reload that changes them is refused, like an invalid file, and
//! the running policy stays; the refusal names the key and both values.
//! `[events]` and `[capture]` otherwise change on reload: a new path or
//! limit takes effect as the daemon reopens the files, which it does on every
//! reload (so `logrotate` works). Quarantines carry over every reload.
//!
//! State: each part of the running state carries over when the settings it
//! was built for are unchanged, and starts afresh otherwise (see
//! [`State::carry_over`]): the reply buckets, the redirect flows, the banner
//! sessions, and the buckets of each rate-limit rule (by name and limit). A
//! part that starts afresh cuts what it held: connections in progress through
//! a redirect or a banner session end. The router's counters go on; per-rule
//! counters carry over by rule name.

use std::path::Path;

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
    #[error("{file}: {error}")]
    Rules {
        /// The file.
        file: String,
        /// What does not fit.
        #[source]
        error: crate::policy::AttachError,
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
fn abuse_fixed(running: &Config, new: &Config) -> (&'static str, String, String) {
    match (&running.abuse, &new.abuse) {
        (Some(a), Some(b)) => ("abuse.track", a.track.to_string(), b.track.to_string()),
        (a, b) => {
            let there = |x: &Option<_>| if x.is_some() { "[abuse]" } else { "(none)" }.to_string();
            ("abuse", there(a), there(b))
        }
    }
}

/// An optional path as a person reads it.
fn path(p: Option<&Path>) -> String {
    p.map_or_else(|| "(none)".to_string(), |p| format!("{:?}", p.display().to_string()))
}

/// Whether an optional output is there: turning one on or off needs a
/// restart (the data plane's queue to its writer is made at start), while
/// its path and limits change on reload.
fn on_off(p: Option<&Path>) -> String {
    p.map_or_else(|| "(none)".to_string(), |_| "a file".to_string())
}

/// The settings that only apply at start, as (key, running, in the file).
/// The upstream's kind in words, for a refused reload's line.
fn upstream_kind(kind: &crate::config::DeviceKind) -> String {
    match kind {
        crate::config::DeviceKind::Tun => "a TUN device (tun)".to_string(),
        crate::config::DeviceKind::Interface(_) => "an Ethernet interface (interface)".to_string(),
    }
}

/// A figure of the Ethernet upstream's link settings, `(none)` for a TUN.
fn link(kind: &crate::config::DeviceKind, f: impl Fn(&crate::config::LinkConfig) -> String) -> String {
    match kind {
        crate::config::DeviceKind::Tun => "(none)".to_string(),
        crate::config::DeviceKind::Interface(l) => f(l),
    }
}

/// `[a, b]` as the config writes it.
fn list<T: std::fmt::Display>(items: &[T]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("\"{i}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

fn fixed(running: &Config, new: &Config) -> Vec<(&'static str, String, String)> {
    let netns = |n: &Option<String>| n.as_deref().map_or_else(|| "(none)".to_string(), |s| format!("{s:?}"));
    let (a, b) = (&running.subscriber, &new.subscriber);
    let (c, d) = (&running.upstream, &new.upstream);
    let (p, q) = (&running.dataplane, &new.dataplane);
    let workers = |w: Option<u16>| w.map_or_else(|| "(from the cores)".to_string(), |w| w.to_string());
    let metrics = |m: Option<std::net::SocketAddr>| m.map_or_else(|| "(none)".to_string(), |m| m.to_string());
    let (events, new_events) = (running.events.path.as_deref(), new.events.path.as_deref());
    let (capture, new_capture) = (running.capture.dropped.as_deref(), new.capture.dropped.as_deref());
    let mut v = vec![
        ("subscriber.tun", format!("{:?}", a.tun), format!("{:?}", b.tun)),
        ("subscriber.netns", netns(&a.netns), netns(&b.netns)),
        ("subscriber.mtu", a.mtu.to_string(), b.mtu.to_string()),
        ("upstream.tun", format!("{:?}", c.tun), format!("{:?}", d.tun)),
        ("upstream.interface", upstream_kind(&c.kind), upstream_kind(&d.kind)),
        ("upstream.addresses", link(&c.kind, |l| list(&l.addresses)), link(&d.kind, |l| list(&l.addresses))),
        ("upstream.gateway", link(&c.kind, |l| list(&l.gateways)), link(&d.kind, |l| list(&l.gateways))),
        ("upstream.netns", netns(&c.netns), netns(&d.netns)),
        ("upstream.mtu", c.mtu.to_string(), d.mtu.to_string()),
        ("dataplane.offload", p.offload.to_string(), q.offload.to_string()),
        ("dataplane.queue_len", p.queue_len.to_string(), q.queue_len.to_string()),
        ("dataplane.workers", workers(p.workers), workers(q.workers)),
        (
            "dataplane.busy_poll",
            humantime::format_duration(p.busy_poll).to_string(),
            humantime::format_duration(q.busy_poll).to_string(),
        ),
        ("control.socket", path(running.control.socket.as_deref()), path(new.control.socket.as_deref())),
        ("control.metrics", metrics(running.control.metrics), metrics(new.control.metrics)),
        abuse_fixed(running, new),
    ];
    // Turning the events or the capture on or off; the path itself may change.
    if on_off(events) != on_off(new_events) {
        v.push(("events.path", path(events), path(new_events)));
    }
    if on_off(capture) != on_off(new_capture) {
        v.push(("capture.dropped", path(capture), path(new_capture)));
    }
    v
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
    if let Some((key, was, now)) = fixed(running, &new).into_iter().find(|(_, was, now)| was != now) {
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
            (lab().dataplane("workers", 2), "dataplane.workers"),
            (lab().control("socket", "\"/run/op25b/other.sock\""), "control.socket"),
            (lab().events("path", "\"/var/log/op25b/events.jsonl\""), "events.path"),
            (lab().capture("dropped", "\"/var/lib/op25b/dropped.pcap\""), "capture.dropped"),
        ];
        for (new, want) in cases {
            match prepare(&running, &state, new.config()) {
                Err(e @ ReloadError::Fixed { key, .. }) => {
                    assert_eq!(key, want);
                    let msg = e.to_string();
                    assert!(msg.starts_with(&format!("lab.toml: {want}: changed from ")), "{msg}");
                    assert!(msg.contains("restart"), "{msg}");
                    assert!(!msg.contains("Config {") && !msg.contains("Some("), "no Rust debug output: {msg}");
                }
                other => panic!("{want}: expected a refusal, got {other:?}"),
            }
        }
    }

    #[test]
    fn events_and_capture_paths_and_limits_change_on_reload() {
        let files = |p: PolicyBuilder, events: &str, pcap: &str| {
            p.events("path", format!("{events:?}")).capture("dropped", format!("{pcap:?}"))
        };
        let running = files(lab(), "/a/events.jsonl", "/a/dropped.pcap").config();
        let state = State::new(&running.policy);
        let new = files(lab(), "/b/events.jsonl", "/b/dropped.pcap")
            .events("per_subscriber_per_minute", 3)
            .capture("max_bytes", 8192)
            .capture("keep", 5)
            .config();
        let r = prepare(&running, &state, new).expect("reload");
        assert_eq!(r.config.events.per_subscriber_per_minute, 3);
        assert_eq!(r.config.capture.keep, 5);
        // Turning one off is refused, in words.
        match prepare(&running, &state, lab().capture("dropped", "\"/a/dropped.pcap\"").config()) {
            Err(e @ ReloadError::Fixed { key: "events.path", .. }) => assert_eq!(
                e.to_string(),
                "lab.toml: events.path: changed from \"/a/events.jsonl\" to (none), which needs a restart of op25b"
            ),
            other => panic!("expected a refusal, got {other:?}"),
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
        for (new, want) in [(lab(), "abuse"), (lab().abuse("track", 100), "abuse.track")] {
            match prepare(&running, &state, new.config()) {
                Err(ReloadError::Fixed { key, .. }) => assert_eq!(key, want),
                other => panic!("expected a refusal, got {other:?}"),
            }
        }
    }
}
