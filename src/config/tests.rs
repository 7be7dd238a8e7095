use super::*;

const GOOD: &str = include_str!("../../config/lab.toml");

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("t.toml"), text)
}

/// The error for `text`, as (line, key, message).
fn error(text: &str) -> (usize, String, String) {
    match parse(text) {
        Err(ConfigError::Invalid { line, key, message, .. }) => (line, key, message),
        Err(e) => panic!("unexpected error kind: {e}"),
        Ok(_) => panic!("config accepted:\n{text}"),
    }
}

/// The lab config with one line replaced.
fn with(old: &str, new: &str) -> String {
    assert!(GOOD.contains(old), "fixture lacks {old:?}");
    GOOD.replacen(old, new, 1)
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).expect("needle in text") + 1
}

#[test]
fn lab_config_is_valid() {
    let c = parse(GOOD).expect("lab config");
    assert_eq!(c.subscriber.tun, "op25b-sub");
    assert_eq!(c.upstream.netns.as_deref(), Some("op25b-lab-inet"));
    assert_eq!(c.policy.address_v4, Some("100.64.0.1".parse().unwrap()));
    assert_eq!(c.policy.op25b.action, Action::Reject);
    assert!(c.policy.op25b.ports.contains(25));
    assert!(!c.policy.op25b.ports.contains(587));
    assert!(c.render().contains("block TCP to port 25"));
}

#[test]
fn minimal_config_takes_defaults() {
    let c = parse(
        r#"
[router]
addresses = ["192.0.2.1"]
[subscriber]
tun = "s"
prefixes = ["100.64.0.0/10"]
[upstream]
tun = "u"
[op25b]
dynamic = ["100.64.0.0/10"]
"#,
    )
    .expect("minimal config");
    assert_eq!(c.subscriber.mtu, DEFAULT_MTU);
    assert_eq!(c.policy.op25b.action, Action::Reject);
    assert_eq!(c.policy.op25b.ports.iter().collect::<Vec<_>>(), vec![25]);
    assert_eq!(c.policy.address_v6, None);
}

#[test]
fn unknown_key_names_line_and_key() {
    let text = with("action = \"reject\"", "action = \"reject\"\nactoin = \"drop\"");
    let (line, key, msg) = error(&text);
    assert_eq!(line, line_of(&text, "actoin"));
    assert!(key.starts_with("op25b"), "{key}");
    assert!(msg.contains("actoin"), "{msg}");
}

#[test]
fn impossible_prefix_is_rejected() {
    let text = with("dynamic = [\"100.64.0.0/10\"", "dynamic = [\"100.64.0.0/33\"");
    let (line, key, msg) = error(&text);
    assert_eq!(line, line_of(&text, "100.64.0.0/33"));
    assert_eq!(key, "op25b.dynamic[0]");
    assert!(msg.contains("not a prefix"), "{msg}");
}

#[test]
fn host_bits_are_rejected_with_a_hint() {
    let (_, key, msg) = error(&with("relays = [\"198.51.100.25/32\"", "relays = [\"198.51.100.25/24\""));
    assert_eq!(key, "op25b.relays[0]");
    assert!(msg.contains("198.51.100.0/24"), "{msg}");
}

#[test]
fn missing_section_is_named() {
    let start = GOOD.find("[op25b]").unwrap();
    let (_, key, msg) = error(&GOOD[..start]);
    assert!(msg.contains("op25b"), "{key}: {msg}");
}

#[test]
fn long_tun_name_is_rejected() {
    let text = with("tun = \"op25b-sub\"", "tun = \"a-name-much-too-long\"");
    let (line, key, _) = error(&text);
    assert_eq!(key, "subscriber.tun");
    assert_eq!(line, line_of(&text, "a-name-much-too-long"));
}

#[test]
fn bad_values() {
    let cases = [
        (with("ports = [25]", "ports = [70000]"), "op25b.ports"),
        (with("ports = [25]", "ports = [0]"), "op25b.ports[0]"),
        (with("action = \"reject\"", "action = \"bounce\""), "op25b.action"),
        (with("mtu = 1500", "mtu = 500"), "subscriber.mtu"),
        (with("\"100.64.0.1\", ", "\"100.64.0.1\", \"100.64.0.2\", "), "router.addresses[1]"),
        (with("\"100.64.0.1\", ", "\"224.0.0.1\", "), "router.addresses[0]"),
        (with("netns = \"op25b-lab-sub\"", "netns = \"../etc\""), "subscriber.netns"),
        (with("prefixes = [\"100.64.0.0/10\", \"2001:db8:100::/48\"]", "prefixes = []"), "subscriber.prefixes"),
        (with("[upstream]\n", "[upstream]\nfoo = 1\n"), "upstream"),
        (
            GOOD.replacen(
                "tun = \"op25b-up\"\nnetns = \"op25b-lab-inet\"",
                "tun = \"op25b-sub\"\nnetns = \"op25b-lab-sub\"",
                1,
            ),
            "upstream.tun",
        ),
    ];
    for (text, want) in cases {
        let (line, key, msg) = error(&text);
        assert!(key.starts_with(want), "want key {want}, got {key}: {msg}");
        assert!(line > 1, "{key}: line {line}");
    }
}

#[test]
fn syntax_error_has_a_line() {
    let text = with("ports = [25]", "ports = [25");
    let (line, _, _) = error(&text);
    assert!(line >= line_of(&text, "ports = [25"), "{line}");
}

const RULE: &str = concat!(
    include_str!("../../tests/fixtures/rules_head.toml"),
    r#"
[[rule]]
name = "limit"
protocol = "tcp"
dst_ports = ["@mail_ports"]
action = "rate-limit"
rate = 5
burst = 10
"#
);

fn with_rules(old: &str, new: &str) -> String {
    assert!(RULE.contains(old), "fixture lacks {old:?}");
    format!("{GOOD}\n{}", RULE.replacen(old, new, 1))
}

#[test]
fn rules_compile_in_file_order() {
    let c = parse(&format!("{GOOD}\n{RULE}")).expect("rules");
    let names: Vec<&str> = c.policy.rules.rules().iter().map(|r| r.name()).collect();
    assert_eq!(names, ["no-telnet", "limit"]);
    let text = c.render();
    assert!(text.contains("no-telnet: outbound tcp src 100.64.0.0/10 dst 192.0.2.0/24,2001:db8:ff::/48 dport 23,6000-6010 flags syn -> reject"), "{text}");
    assert!(text.contains("rate-limit 5/s burst 10"), "{text}");
}

#[test]
fn bad_rules_name_the_rule_and_the_line() {
    let cases = [
        (with_rules("tcp_flags = \"syn\"", "tcp_flag = \"syn\""), "tcp_flag", "rule[0] \"no-telnet\""),
        (with_rules("\"@lab_nets\"", "\"@nope\""), "@nope", "rule[0] \"no-telnet\".dst[0]"),
        (with_rules("\"6000-6010\"", "\"7000-6000\""), "7000-6000", "rule[0] \"no-telnet\".dst_ports[1]"),
        (with_rules("burst = 10\n", ""), "rate-limit", "rule[1] \"limit\".action"),
        (with_rules("action = \"reject\"", "action = \"bounce\""), "bounce", "rule[0] \"no-telnet\".action"),
        (
            with_rules("name = \"limit\"", "name = \"no-telnet\""),
            "name = \"no-telnet\"\nprotocol",
            "rule[1] \"no-telnet\".name",
        ),
        (with_rules("protocol = \"tcp\"\nsrc", "protocol = \"icmp\"\nsrc"), "icmp", "rule[0] \"no-telnet\".protocol"),
        (with_rules("[\"@mail_ports\"]", "[\"@lab_nets\"]"), "@lab_nets\"]\naction", "rule[1] \"limit\".dst_ports[0]"),
        (with_rules("[23, ", "[70000, "), "70000", "rule[0] \"no-telnet\".dst_ports[0]"),
    ];
    for (text, needle, want_key) in cases {
        let (line, key, msg) = error(&text);
        let first = needle.lines().next().unwrap();
        let want_line =
            text.rfind(first).map(|i| text[..i].lines().count() + usize::from(text[..i].ends_with('\n'))).unwrap();
        assert!(key.starts_with(want_key), "want {want_key}, got {key}: {msg}");
        assert_eq!(line, want_line.max(1), "{key}: {msg}");
    }
}

#[test]
fn action_keys_are_validated() {
    let act = |new: &str| with("action = \"reject\"", new);
    let ok =
        parse(&act("action = \"redirect\"\nredirect_to = [\"198.51.100.25:25\", \"[2001:db8:25::25]:25\"]")).unwrap();
    assert_eq!(ok.policy.op25b.redirect_v6, Some("[2001:db8:25::25]:25".parse().unwrap()));
    let ok = parse(&act("action = \"banner\"\nbanner = \"550 no\"\nbanner_sessions = 8")).unwrap();
    assert_eq!((ok.policy.op25b.banner.text.as_str(), ok.policy.op25b.banner.sessions), ("550 no", 8));
    assert!(ok.render().contains("550 no"));
    // The per-subscriber default never exceeds the bound in all.
    let ok = parse(&act("action = \"banner\"\nbanner_sessions = 2")).unwrap();
    assert_eq!(ok.policy.op25b.banner.per_source, 2);
    let ok = parse(&act("action = \"reject\"\nmax_flows = 10")).unwrap();
    assert_eq!(ok.policy.max_flows_per_source, 10);
    let cases = [
        (act("action = \"redirect\""), "op25b.action"),
        (act("action = \"redirect\"\nredirect_to = [\"198.51.100.25\"]"), "op25b.redirect_to[0]"),
        (
            act("action = \"redirect\"\nredirect_to = [\"198.51.100.25:25\", \"198.51.100.26:25\"]"),
            "op25b.redirect_to[1]",
        ),
        (act("action = \"reject\"\nredirect_to = [\"198.51.100.25:25\"]"), "op25b.redirect_to"),
        (act("action = \"banner\"\nbanner = \"250 fine\""), "op25b.banner"),
        (act("action = \"banner\"\nbanner = \"554 two\\nlines\""), "op25b.banner"),
        (act("action = \"drop\"\nbanner = \"554 x\""), "op25b.banner"),
        (act("action = \"banner\"\nbanner_sessions = 0"), "op25b.banner_sessions"),
        (with("reply_rate = 10", "reply_rate = 0"), "op25b.reply_rate"),
        (act("action = \"reject\"\nmax_flows = 0"), "op25b.max_flows"),
        (act("action = \"reject\"\nmax_flows = 10\nmax_flows_per_source = 11"), "op25b.max_flows_per_source"),
        (act("action = \"reject\"\nmax_flows_per_source = 0"), "op25b.max_flows_per_source"),
        (
            act("action = \"banner\"\nbanner_sessions = 8\nbanner_sessions_per_source = 9"),
            "op25b.banner_sessions_per_source",
        ),
        (act("action = \"reject\"\nbanner_sessions_per_source = 2"), "op25b.banner_sessions_per_source"),
    ];
    for (text, want) in cases {
        let (line, key, msg) = error(&text);
        assert!(key.starts_with(want), "want {want}, got {key}: {msg}");
        assert!(line > 1, "{key}: {msg}");
    }
}

#[test]
fn dataplane_keys_are_validated() {
    let dp = |body: &str| format!("{GOOD}\n[dataplane]\n{body}\n");
    let d = parse(&dp("offload = false\nqueue_len = 64\nworkers = 2\nbusy_poll_us = 50")).unwrap().dataplane;
    assert_eq!(
        (d.offload, d.queue_len, d.workers, d.busy_poll),
        (false, 64, Some(2), std::time::Duration::from_micros(50))
    );
    let d = parse(GOOD).unwrap().dataplane;
    assert_eq!((d.offload, d.workers, d.busy_poll), (true, None, std::time::Duration::ZERO));
    for (body, key) in [
        ("queue_len = 8", "dataplane.queue_len"),
        ("workers = 0", "dataplane.workers"),
        ("busy_poll_us = 1000001", "dataplane.busy_poll_us"),
        ("busy_poll = 5", "dataplane"),
    ] {
        let text = dp(body);
        let (line, k, msg) = error(&text);
        assert!(k.starts_with(key), "{body}: want {key}, got {k}: {msg}");
        assert_eq!(line, line_of(&text, body.split(' ').next().unwrap()), "{body}: {msg}");
    }
}

#[test]
fn attach_refuses_a_second_rule_of_the_same_name() {
    use crate::policy::{AttachError, ConfigRule, Place, RuleAction};
    use std::sync::Arc;
    let text = crate::testing::PolicyBuilder::lab().rules("[[rule]]\nname = \"a\"\naction = \"count\"\n").toml();
    let mut c = parse(&text).expect("config");
    let dup = c.policy.attach(&[(Place::Last, Arc::new(ConfigRule::new("a", RuleAction::Count)))]);
    assert!(matches!(dup, Err(AttachError::Duplicate(ref n)) if n == "a"), "{dup:?}");
    assert_eq!(c.policy.rules.len(), 1, "a refused attach leaves the rules as they were");
    assert!(c.policy.attach(&[(Place::Last, Arc::new(ConfigRule::new("b", RuleAction::Count)))]).is_ok());
    assert_eq!(c.policy.rules.len(), 2);
}

#[test]
fn abuse_section_defaults_and_errors_name_the_key() {
    let c = parse(GOOD).unwrap();
    assert!(c.abuse.is_none());
    assert_eq!(c.policy.quarantine_allow, crate::policy::QuarantineAllow::default());
    let c = parse(&format!("{GOOD}\n[abuse]\n")).unwrap();
    assert_eq!(c.abuse, Some(crate::state::abuse::AbuseSettings::default()));
    assert!(c.render().contains("suspect after     30 blocked attempts or 10 destinations in 1m"), "{}", c.render());
    let text = format!(
        "{GOOD}\n[abuse]\nwindow = \"10s\"\nthreshold = 3\non_suspect = \"quarantine\"\nquarantine_for = \"2m\"\nquarantine_allow = [\"udp/53\", \"tcp/1000-1002\", \"@relays\", \"192.0.2.0/24\"]\n"
    );
    let c = parse(&text).unwrap();
    let a = c.abuse.unwrap();
    assert_eq!((a.thresholds.window.as_secs(), a.thresholds.attempts), (10, 3));
    assert_eq!(a.on_suspect, crate::state::abuse::OnSuspect::Quarantine);
    assert_eq!(a.quarantine_for.as_secs(), 120);
    assert_eq!(a.state_file, None, "nothing saved unless asked");
    let g = &c.policy.quarantine_allow;
    assert!(g.udp.contains(53) && !g.tcp.contains(53) && g.tcp.contains(1001) && !g.tcp.contains(1003));
    assert!(g.relays && !g.icmp && g.destinations.contains("192.0.2.7".parse().unwrap()));
    let saved = parse(&format!("{GOOD}\n[abuse]\nstate_file = \"/var/lib/op25b/abuse.state\"\n")).unwrap();
    assert_eq!(
        saved.abuse.as_ref().and_then(|a| a.state_file.as_deref()),
        Some(std::path::Path::new("/var/lib/op25b/abuse.state"))
    );
    assert!(saved.render().contains("state file        /var/lib/op25b/abuse.state"), "{}", saved.render());
    for (bad, key, says) in [
        ("window = \"soon\"", "abuse.window", "is not a duration"),
        ("window = \"0s\"", "abuse.window", "must be between"),
        ("threshold = 0", "abuse.threshold", "at least 1"),
        ("on_suspect = \"ban\"", "abuse.on_suspect", "\"event\" or \"quarantine\""),
        ("quarantine_allow = [\"udp/53\", \"sctp/9\"]", "abuse.quarantine_allow[1]", "is not tcp/PORT"),
        ("quarantine_allow = [\"tcp/9-1\"]", "abuse.quarantine_allow[0]", "FIRST-LAST"),
        ("track = 1", "abuse.track", "between 16"),
        ("tracks = 1", "abuse", "unknown field"),
        ("state_file = \"\"", "abuse.state_file", "needs a path"),
    ] {
        let text = format!("{GOOD}\n[abuse]\n{bad}\n");
        let (line, k, message) = error(&text);
        assert_eq!(line, text.lines().count(), "{bad}: the line of the value");
        assert!(k.starts_with(key), "{bad}: key {k}");
        assert!(message.contains(says), "{bad}: {message}");
    }
}

/// The error and its rendering without colours.
fn rendered(text: &str) -> (usize, String, String, String) {
    let e = parse(text).expect_err("config accepted");
    let plain = e.render(false);
    match e {
        ConfigError::Invalid { line, key, message, .. } => (line, key, message, plain),
        e => panic!("unexpected error kind: {e}"),
    }
}

#[test]
fn syntax_error_in_a_table_names_the_table_and_key() {
    let text = with("ports = [25]", "ports = [25");
    let (line, key, msg, plain) = rendered(&text);
    assert_eq!(key, "op25b.ports", "{msg}");
    assert!(line >= line_of(&text, "ports = [25"), "{line}");
    assert!(plain.starts_with(&format!("error: t.toml:{line}: op25b.ports: ")), "{plain}");
    // A stray character after a value, in a rule: the rule by index and name.
    let text = with_rules("action = \"reject\"", "action = \"reject\" x");
    let (line, key, _, plain) = rendered(&text);
    assert_eq!(key, "rule[0] \"no-telnet\".action");
    assert_eq!(line, text.lines().position(|l| l.ends_with("\"reject\" x")).unwrap() + 1);
    assert!(plain.ends_with("^"), "{plain}");
}

#[test]
fn duplicate_key_and_table_are_named() {
    let text = with("ports = [25]", "ports = [25]\nports = [587]");
    let (line, key, msg, _) = rendered(&text);
    assert_eq!((line, key.as_str()), (line_of(&text, "ports = [587]"), "op25b.ports"));
    assert_eq!(msg, format!("duplicate key op25b.ports: already defined on line {}", line_of(&text, "ports = [25]")));
    let text = format!("{GOOD}\n[upstream]\ntun = \"x\"\n");
    let (line, key, msg, _) = rendered(&text);
    assert_eq!(key, "upstream");
    assert_eq!(line, text.lines().count() - 1);
    assert!(msg.starts_with("duplicate table [upstream]: already defined on line "), "{msg}");
}

#[test]
fn every_missing_section_is_reported_at_once() {
    for empty in ["", "\n", "# nothing yet\n"] {
        let (line, key, msg, plain) = rendered(empty);
        assert_eq!((line, key.as_str()), (1, "(top level)"));
        assert_eq!(msg, "missing sections [router], [subscriber], [upstream], [op25b]");
        assert_eq!(plain.lines().count(), 1, "nothing to point at: {plain}");
    }
    let start = GOOD.find("[op25b]").unwrap();
    let (_, _, msg, _) = rendered(&GOOD[..start]);
    assert_eq!(msg, "missing section [op25b]");
}

#[test]
fn bad_value_is_shown_with_a_caret() {
    let text = with("dynamic = [\"100.64.0.0/10\"", "dynamic = [\"100.64.0.0/33\"");
    let (line, _, _, plain) = rendered(&text);
    let source = text.lines().nth(line - 1).unwrap();
    let col = source.find("\"100.64.0.0/33\"").unwrap();
    let width = line.to_string().len();
    let lines: Vec<&str> = plain.lines().collect();
    assert_eq!(lines.len(), 4, "{plain}");
    assert!(lines[0].starts_with(&format!("error: t.toml:{line}: op25b.dynamic[0]: ")), "{plain}");
    assert_eq!(lines[2], format!("{line} | {source}"));
    // The caret sits under the quoted value, as wide as it.
    assert_eq!(lines[3], format!("{} | {}{}", " ".repeat(width), " ".repeat(col), "^".repeat(15)), "{plain}");
    assert!(!plain.contains('\x1b'), "no colours unless asked");
    let e = parse(&text).unwrap_err();
    assert!(e.render(true).contains("\x1b["), "colours when asked");
    // The one-line form (logs, a refused reload) is unchanged.
    assert_eq!(e.to_string().lines().count(), 1);
}

#[test]
fn tunnel_keys_are_validated() {
    let act = |new: &str| with("action = \"reject\"", &format!("action = \"reject\"\n{new}"));
    let c = parse(GOOD).unwrap();
    assert_eq!(c.policy.op25b.tunnels, TunnelMode::Inspect, "inspect by default");
    assert!(c.render().contains("tunnels           inspect"), "{}", c.render());
    let c = parse(&act("tunnels = \"block\"\ntunnel_endpoints = [\"198.51.100.0/24\"]")).unwrap();
    assert_eq!(c.policy.op25b.tunnels, TunnelMode::Block);
    assert!(c.policy.op25b.tunnel_endpoints.contains("198.51.100.7".parse().unwrap()));
    assert_eq!(parse(&act("tunnels = \"forward\"")).unwrap().policy.op25b.tunnels, TunnelMode::Forward);
    let text = act("tunnels = \"decap\"");
    let (line, key, msg) = error(&text);
    assert_eq!((line, key.as_str()), (line_of(&text, "decap"), "op25b.tunnels"), "{msg}");
    assert!(msg.contains("inspect, block, forward"), "{msg}");
    let text = act("tunnel_endpoints = [\"198.51.100.0/24\"]");
    let (line, key, msg) = error(&text);
    assert_eq!((line, key.as_str()), (line_of(&text, "tunnel_endpoints"), "op25b.tunnel_endpoints"), "{msg}");
    let text = act("tunnels = \"block\"\ntunnel_endpoints = [\"198.51.100.1/24\"]");
    assert_eq!(error(&text).1, "op25b.tunnel_endpoints[0]");
    let c = parse(&with_rules("tcp_flags = \"syn\"", "tunnel = \"gre\"")).unwrap();
    assert!(c.render().contains("tunnel gre -> reject"), "{}", c.render());
    let text = with_rules("tcp_flags = \"syn\"", "tunnel = \"sit\"");
    let (line, key, msg) = error(&text);
    assert_eq!((line, key.as_str()), (line_of(&text, "sit"), "rule[0] \"no-telnet\".tunnel"), "{msg}");
    assert!(msg.contains("any, none, ipip, 6in4"), "{msg}");
}
