//! [`PolicyBuilder`]: a config built from typed edits of the lab's, rendered
//! as TOML and compiled by the real config parser, so tests exercise the same
//! path as a file would.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use super::TestRouter;
use crate::config::Config;
use crate::policy::Policy;

/// A config file under construction; starts as config/lab.toml.
#[derive(Debug, Clone)]
pub struct PolicyBuilder {
    name: String,
    router: Vec<(String, String)>,
    subscriber: Vec<(String, String)>,
    upstream: Vec<(String, String)>,
    op25b: Vec<(String, String)>,
    dataplane: Vec<(String, String)>,
    control: Vec<(String, String)>,
    events: Vec<(String, String)>,
    capture: Vec<(String, String)>,
    abuse: Vec<(String, String)>,
    tail: String,
}

fn quote(s: &str) -> String {
    format!("{s:?}")
}

/// A TOML array of strings.
pub fn list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| quote(s)).collect();
    format!("[{}]", quoted.join(", "))
}

fn set(table: &mut Vec<(String, String)>, key: &str, value: String) {
    match table.iter_mut().find(|(k, _)| k == key) {
        Some(entry) => entry.1 = value,
        None => table.push((key.to_string(), value)),
    }
}

impl PolicyBuilder {
    /// The lab config (config/lab.toml), as the namespace lab runs it: built
    /// from the lab's definition ([`crate::lab::def`]).
    pub fn lab() -> PolicyBuilder {
        use crate::lab::def::*;
        let names = Names::default_lab();
        let pairs = |l: &[(&str, String)]| l.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        PolicyBuilder {
            name: "test.toml".to_string(),
            router: pairs(&[("addresses", list(&[ROUTER4, ROUTER6]))]),
            subscriber: pairs(&[
                ("tun", quote(&names.sub_tun)),
                ("netns", quote(&names.sub_ns)),
                ("mtu", "1500".into()),
                ("prefixes", list(&[SUB_NET4, SUB_NET6])),
            ]),
            upstream: pairs(&[("tun", quote(&names.up_tun)), ("netns", quote(&names.inet_ns)), ("mtu", "1500".into())]),
            op25b: pairs(&[
                ("dynamic", list(&[SUB_NET4, SUB_NET6])),
                ("exempt_sources", list(&[STATIC_NET4, STATIC_NET6])),
                ("relays", list(&[&format!("{RELAY4}/32"), &format!("{RELAY6}/128")])),
                ("ports", "[25]".into()),
                ("action", quote("reject")),
                ("block_inbound", "false".into()),
                ("reply_rate", "10".into()),
                ("reply_burst", "20".into()),
            ]),
            dataplane: Vec::new(),
            control: Vec::new(),
            events: Vec::new(),
            capture: Vec::new(),
            abuse: Vec::new(),
            tail: String::new(),
        }
    }

    /// The file name error messages name.
    pub fn named(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    /// Sets `[op25b] key = value` (`value` as TOML: `"banner"`, `4`, `["a"]`).
    pub fn op25b(mut self, key: &str, value: impl ToString) -> Self {
        set(&mut self.op25b, key, value.to_string());
        self
    }

    /// Removes `[op25b] key`, so its default applies.
    pub fn without(mut self, key: &str) -> Self {
        self.op25b.retain(|(k, _)| k != key);
        self
    }

    /// `[op25b] action = "name"`.
    pub fn action(self, name: &str) -> Self {
        self.op25b("action", quote(name))
    }

    /// The lab without the keys it sets to their defaults (`block_inbound`,
    /// `reply_rate`, `reply_burst`): a test states what it relies on.
    pub fn defaults(self) -> Self {
        self.without("block_inbound").without("reply_rate").without("reply_burst")
    }

    /// A reply limit so high no test reaches it.
    pub fn unlimited_replies(self) -> Self {
        self.op25b("reply_rate", 1_000_000).op25b("reply_burst", 1_000_000)
    }

    /// Sets `[router] key = value`.
    pub fn router_key(mut self, key: &str, value: impl ToString) -> Self {
        set(&mut self.router, key, value.to_string());
        self
    }

    /// Sets `[subscriber] key = value`.
    pub fn subscriber(mut self, key: &str, value: impl ToString) -> Self {
        set(&mut self.subscriber, key, value.to_string());
        self
    }

    /// Sets `[upstream] key = value`.
    pub fn upstream(mut self, key: &str, value: impl ToString) -> Self {
        set(&mut self.upstream, key, value.to_string());
        self
    }

    /// The devices: names and namespaces of both sides.
    pub fn devices(self, sub: (&str, Option<&str>), up: (&str, Option<&str>)) -> Self {
        let mut b = self.subscriber("tun", quote(sub.0)).upstream("tun", quote(up.0));
        b.subscriber.retain(|(k, _)| k != "netns");
        b.upstream.retain(|(k, _)| k != "netns");
        if let Some(ns) = sub.1 {
            b = b.subscriber("netns", quote(ns));
        }
        if let Some(ns) = up.1 {
            b = b.upstream("netns", quote(ns));
        }
        b
    }

    /// Sets `[dataplane] key = value`.
    pub fn dataplane(mut self, key: &str, value: impl ToString) -> Self {
        set(&mut self.dataplane, key, value.to_string());
        self
    }

    /// Sets `[control] key = value`.
    pub fn control(mut self, key: &str, value: impl ToString) -> Self {
        set(&mut self.control, key, value.to_string());
        self
    }

    /// Sets `[events] key = value`.
    pub fn events(mut self, key: &str, value: impl ToString) -> Self {
        set(&mut self.events, key, value.to_string());
        self
    }

    /// Sets `[capture] key = value`.
    pub fn capture(mut self, key: &str, value: impl ToString) -> Self {
        set(&mut self.capture, key, value.to_string());
        self
    }

    /// Sets `[abuse] key = value` (the section is there once a key is set).
    pub fn abuse(mut self, key: &str, value: impl ToString) -> Self {
        set(&mut self.abuse, key, value.to_string());
        self
    }

    /// Appends `[sets]` and `[[rule]]` tables (TOML text).
    pub fn rules(mut self, text: &str) -> Self {
        self.tail.push('\n');
        self.tail.push_str(text);
        self
    }

    /// The config file's text.
    pub fn toml(&self) -> String {
        let mut out = String::new();
        let mut table = |name: &str, pairs: &[(String, String)]| {
            if !pairs.is_empty() {
                let _ = writeln!(out, "[{name}]");
                for (k, v) in pairs {
                    let _ = writeln!(out, "{k} = {v}");
                }
                out.push('\n');
            }
        };
        table("router", &self.router);
        table("subscriber", &self.subscriber);
        table("upstream", &self.upstream);
        table("op25b", &self.op25b);
        table("dataplane", &self.dataplane);
        table("control", &self.control);
        table("events", &self.events);
        table("capture", &self.capture);
        table("abuse", &self.abuse);
        out.push_str(&self.tail);
        out
    }

    /// The compiled config; panics with the parser's message if invalid.
    pub fn config(&self) -> Config {
        let text = self.toml();
        Config::parse(Path::new(&self.name), &text).unwrap_or_else(|e| panic!("test config: {e}\n{text}"))
    }

    /// The compiled policy.
    pub fn policy(&self) -> Arc<Policy> {
        Arc::new(self.config().policy)
    }

    /// A clocked router harness over this policy, with fresh state.
    pub fn router(&self) -> TestRouter {
        TestRouter::new(self.policy())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lab_builder_is_config_lab_toml() {
        let file = Config::parse(Path::new("lab.toml"), include_str!("../../config/lab.toml")).unwrap();
        let built = PolicyBuilder::lab().named("lab.toml").config();
        assert_eq!(built.render(), file.render());
        assert_eq!(format!("{:?}", built.subscriber), format!("{:?}", file.subscriber));
        assert_eq!(format!("{:?}", built.upstream), format!("{:?}", file.upstream));
    }

    #[test]
    fn edits_replace_keys_and_errors_name_the_file() {
        let b = PolicyBuilder::lab().action("banner").op25b("banner_sessions", 3);
        let text = b.toml();
        assert_eq!(text.matches("action =").count(), 1, "{text}");
        assert_eq!(b.config().policy.op25b.banner.sessions, 3);
        let bad = PolicyBuilder::lab().named("x.toml").op25b("ports", "[0]");
        let e = Config::parse(Path::new("x.toml"), &bad.toml()).unwrap_err().to_string();
        assert!(e.starts_with("x.toml:") && e.contains("op25b.ports[0]"), "{e}");
    }
}
