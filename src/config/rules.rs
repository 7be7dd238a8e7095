//! `[sets]` and `[[rule]]`: the config's rule language, compiled into
//! [`ConfigRule`]s with prefix tables and port bitmaps.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Ctx};
use crate::packet::Direction;
use crate::packet::{proto, TunnelKind};
use crate::policy::program::{DEFAULT_MAP_SIZE, MAX_MAP_SIZE};
use crate::policy::rules::{ConfigRule, FlagMatch, RuleAction, TunnelMatch};
use crate::policy::Limit;
use crate::policy::{OnError, PluginSlot, Program, ProgramRule, RuleKind};
use crate::policy::{PortSet, PrefixSet};

/// A port-list or set item: a number, "LOW-HIGH", "@set", or a prefix.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub(super) enum Item {
    Int(i64),
    Str(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RuleSection {
    name: Spanned<String>,
    direction: Option<Spanned<String>>,
    protocol: Option<Spanned<String>>,
    src: Option<Vec<Spanned<String>>>,
    dst: Option<Vec<Spanned<String>>>,
    src_ports: Option<Vec<Spanned<Item>>>,
    dst_ports: Option<Vec<Spanned<Item>>>,
    tcp_flags: Option<Spanned<String>>,
    /// `any`, `none` or a tunnel kind: the packet's encapsulation.
    tunnel: Option<Spanned<String>>,
    action: Option<Spanned<String>>,
    rate: Option<Spanned<u32>>,
    burst: Option<Spanned<u32>>,
    /// A WebAssembly program that decides (path relative to the config file).
    program: Option<Spanned<String>>,
    /// What a program rule answers when its program faults.
    on_error: Option<Spanned<String>>,
    /// Entries of a program rule's map.
    map_size: Option<Spanned<u32>>,
    /// A placeholder for a rule given in code, by that rule's name.
    plugin: Option<Spanned<String>>,
}

/// A named set, once its type is known.
enum Set {
    Ports(Vec<(u16, u16)>),
    Prefixes(Vec<IpNet>),
}

pub(super) struct Sets(HashMap<String, Set>);

impl Sets {
    pub(super) fn compile(
        cx: &Ctx<'_>,
        raw: &BTreeMap<String, Spanned<Vec<Spanned<Item>>>>,
    ) -> Result<Sets, ConfigError> {
        let mut out = HashMap::new();
        for (name, items) in raw {
            let key = format!("sets.{name}");
            let list = items.get_ref();
            let looks_like_ports = list.iter().all(|i| match i.get_ref() {
                Item::Int(_) => true,
                Item::Str(s) => parse_port_range(s).is_some(),
            });
            let set = if looks_like_ports && !list.is_empty() {
                let mut ranges = Vec::new();
                for (i, item) in list.iter().enumerate() {
                    ranges.push(port_item(cx, &format!("{key}[{i}]"), item, None)?);
                }
                Set::Ports(ranges.into_iter().flatten().collect())
            } else {
                let mut nets = Vec::new();
                for (i, item) in list.iter().enumerate() {
                    let k = format!("{key}[{i}]");
                    match item.get_ref() {
                        Item::Str(s) if s.starts_with('@') => {
                            return Err(cx.err(&item.span(), k, "a set cannot refer to another set"))
                        }
                        Item::Str(s) => nets.push(prefix(cx, &k, s, &item.span())?),
                        Item::Int(n) => {
                            return Err(cx.err(
                                &item.span(),
                                k,
                                format!("{n} in a set of prefixes: a set holds either ports or prefixes"),
                            ))
                        }
                    }
                }
                Set::Prefixes(nets)
            };
            out.insert(name.clone(), set);
        }
        Ok(Sets(out))
    }
}

fn parse_port_range(s: &str) -> Option<(i64, i64)> {
    let (a, b) = s.split_once('-')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

fn prefix(cx: &Ctx<'_>, key: &str, text: &str, span: &std::ops::Range<usize>) -> Result<IpNet, ConfigError> {
    let text = text.trim();
    let net = text
        .parse::<IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| cx.err(span, key, format!("{text:?} is not a prefix (ADDRESS/LENGTH) or a @set")))?;
    if net.trunc() != net {
        return Err(cx.err(span, key, format!("{text:?} has host bits set; did you mean {}?", net.trunc())));
    }
    Ok(net)
}

/// One port item as inclusive ranges.
fn port_item(
    cx: &Ctx<'_>,
    key: &str,
    item: &Spanned<Item>,
    sets: Option<&Sets>,
) -> Result<Vec<(u16, u16)>, ConfigError> {
    let span = item.span();
    let port = |n: i64| -> Result<u16, ConfigError> {
        u16::try_from(n)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| cx.err(&span, key, format!("{n} is not a port (1 to 65535)")))
    };
    match item.get_ref() {
        Item::Int(n) => Ok(vec![(port(*n)?, port(*n)?)]),
        Item::Str(s) if s.starts_with('@') => match sets.and_then(|sets| sets.0.get(&s[1..])) {
            Some(Set::Ports(r)) => Ok(r.clone()),
            Some(Set::Prefixes(_)) => Err(cx.err(&span, key, format!("{s} is a set of prefixes, not ports"))),
            None => Err(cx.err(&span, key, format!("unknown set {s}"))),
        },
        Item::Str(s) => match parse_port_range(s) {
            Some((a, b)) => {
                let (a, b) = (port(a)?, port(b)?);
                if a > b {
                    return Err(cx.err(&span, key, format!("bad range {s:?}: {a} is above {b}")));
                }
                Ok(vec![(a, b)])
            }
            None => Err(cx.err(&span, key, format!("{s:?} is not a port, a LOW-HIGH range or a @set"))),
        },
    }
}

/// Compiles the `[[rule]]` tables in file order.
pub(super) fn compile(cx: &Ctx<'_>, sets: &Sets, raw: &[Spanned<RuleSection>]) -> Result<Vec<RuleKind>, ConfigError> {
    let mut names = HashSet::new();
    let mut out: Vec<RuleKind> = Vec::with_capacity(raw.len());
    for (i, r) in raw.iter().enumerate() {
        let span = r.span();
        let r = r.get_ref();
        let name = r.name.get_ref().trim().to_string();
        let base = format!("rule[{i}] {name:?}");
        let key = |k: &str| format!("{base}.{k}");
        if name.is_empty() {
            return Err(cx.err(&r.name.span(), key("name"), "a rule needs a name"));
        }
        if !names.insert(name.clone()) {
            return Err(cx.err(&r.name.span(), key("name"), format!("a rule named {name:?} exists already")));
        }
        out.push(match &r.plugin {
            Some(plugin) => plugin_slot(cx, &key, r, name, plugin)?,
            None => rule(cx, sets, &key, &span, r, name)?,
        });
    }
    Ok(out)
}

/// A plugin placeholder: `name` and `plugin` only, the rule given in code decides.
fn plugin_slot(
    cx: &Ctx<'_>,
    key: &dyn Fn(&str) -> String,
    r: &RuleSection,
    name: String,
    plugin: &Spanned<String>,
) -> Result<RuleKind, ConfigError> {
    let others = [
        ("action", r.action.is_some()),
        ("program", r.program.is_some()),
        ("direction", r.direction.is_some()),
        ("protocol", r.protocol.is_some()),
        ("src", r.src.is_some()),
        ("dst", r.dst.is_some()),
        ("src_ports", r.src_ports.is_some()),
        ("dst_ports", r.dst_ports.is_some()),
        ("tcp_flags", r.tcp_flags.is_some()),
        ("tunnel", r.tunnel.is_some()),
        ("rate", r.rate.is_some()),
        ("burst", r.burst.is_some()),
        ("on_error", r.on_error.is_some()),
        ("map_size", r.map_size.is_some()),
    ];
    if let Some((k, _)) = others.iter().find(|(_, given)| *given) {
        return Err(cx.err(
            &plugin.span(),
            key(k),
            "a plugin placeholder takes only `name` and `plugin`: the rule given in code decides",
        ));
    }
    let p = plugin.get_ref().trim();
    if p.is_empty() {
        return Err(cx.err(&plugin.span(), key("plugin"), "a plugin needs the name of the rule given in code"));
    }
    Ok(PluginSlot { name, plugin: p.to_string() }.into())
}

/// A rule with an `action` or a `program`, and what it matches.
fn rule(
    cx: &Ctx<'_>,
    sets: &Sets,
    key: &dyn Fn(&str) -> String,
    span: &Range<usize>,
    r: &RuleSection,
    name: String,
) -> Result<RuleKind, ConfigError> {
    let program = match (&r.program, &r.action) {
        (Some(_), Some(a)) => {
            return Err(cx.err(
                &a.span(),
                key("action"),
                "a rule with a `program` takes its verdict from the program: remove `action`",
            ));
        }
        (Some(p), None) => Some(p),
        (None, Some(_)) => None,
        (None, None) => return Err(cx.err(span, key("action"), "a rule needs an `action`, a `program` or a `plugin`")),
    };
    if program.is_none() {
        if let Some(x) =
            r.on_error.as_ref().map(|x| (x.span(), "on_error")).or(r.map_size.as_ref().map(|x| (x.span(), "map_size")))
        {
            return Err(cx.err(&x.0, key(x.1), format!("{} belongs to a rule with a `program`", x.1)));
        }
    }
    let action = rule_action(cx, key, span, r)?;
    if !matches!(action, RuleAction::RateLimit(_)) {
        if let Some(x) = r.rate.as_ref().map(|x| x.span()).or(r.burst.as_ref().map(|x| x.span())) {
            return Err(cx.err(&x, key("rate"), "rate and burst belong to action = \"rate-limit\""));
        }
    }
    let mut rule = ConfigRule::new(name, action);
    rule.direction = direction(cx, key, r)?;
    if let Some(t) = &r.tunnel {
        rule.tunnel = Some(TunnelMatch::parse(t.get_ref().trim()).ok_or_else(|| {
            let kinds: Vec<&str> = TunnelKind::ALL.iter().map(|k| k.name()).collect();
            cx.err(
                &t.span(),
                key("tunnel"),
                format!("unknown tunnel {:?} (any, none, {})", t.get_ref(), kinds.join(", ")),
            )
        })?);
    }
    rule.protocol = protocol(cx, key, r)?;
    rule.src = rule_prefixes(cx, sets, key, "src", &r.src)?;
    rule.dst = rule_prefixes(cx, sets, key, "dst", &r.dst)?;
    rule.src_ports = rule_ports(cx, sets, key, "src_ports", &r.src_ports)?;
    rule.dst_ports = rule_ports(cx, sets, key, "dst_ports", &r.dst_ports)?;
    if (rule.src_ports.is_some() || rule.dst_ports.is_some())
        && rule.protocol.is_some_and(|p| p != proto::TCP && p != proto::UDP)
    {
        let s = r.protocol.as_ref().map_or(span.clone(), |p| p.span());
        return Err(cx.err(&s, key("protocol"), "ports need protocol tcp, udp or any"));
    }
    if let Some(f) = &r.tcp_flags {
        rule.tcp_flags = Some(FlagMatch::parse(f.get_ref()).ok_or_else(|| {
            cx.err(
                &f.span(),
                key("tcp_flags"),
                format!("unknown flags {:?} (syn, syn-ack, ack, rst, fin)", f.get_ref()),
            )
        })?);
        if rule.protocol != Some(proto::TCP) {
            let s = r.protocol.as_ref().map_or(f.span(), |p| p.span());
            return Err(cx.err(&s, key("protocol"), "tcp_flags needs protocol = \"tcp\""));
        }
    }
    Ok(match program {
        None => rule.into(),
        Some(file) => program_rule(cx, key, r, rule, file)?.into(),
    })
}

/// `action`, with `rate` and `burst` for rate-limit; `count` for a rule with a program.
fn rule_action(
    cx: &Ctx<'_>,
    key: &dyn Fn(&str) -> String,
    span: &Range<usize>,
    r: &RuleSection,
) -> Result<RuleAction, ConfigError> {
    let action_text = r.action.as_ref().map_or("count", |a| a.get_ref().as_str());
    let action_span = r.action.as_ref().map_or(span.clone(), |a| a.span());
    Ok(match action_text {
        "accept" => RuleAction::Accept,
        "drop" => RuleAction::Drop,
        "reject" => RuleAction::Reject,
        "count" => RuleAction::Count,
        "rate-limit" => {
            let (Some(rate), Some(burst)) = (&r.rate, &r.burst) else {
                return Err(cx.err(&action_span, key("action"), "rate-limit needs `rate` (per second) and `burst`"));
            };
            if *rate.get_ref() == 0 || *burst.get_ref() == 0 {
                let s = if *rate.get_ref() == 0 { rate.span() } else { burst.span() };
                return Err(cx.err(&s, key("rate"), "rate and burst must be at least 1"));
            }
            RuleAction::RateLimit(Limit { rate: *rate.get_ref(), burst: *burst.get_ref() })
        }
        other => {
            return Err(cx.err(
                &action_span,
                key("action"),
                format!("unknown action {other:?} (accept, drop, reject, count, rate-limit)"),
            ))
        }
    })
}

fn direction(cx: &Ctx<'_>, key: &dyn Fn(&str) -> String, r: &RuleSection) -> Result<Option<Direction>, ConfigError> {
    Ok(match r.direction.as_ref().map(|d| (d.get_ref().as_str(), d.span())) {
        None | Some(("any", _)) => None,
        Some(("outbound", _)) => Some(Direction::Outbound),
        Some(("inbound", _)) => Some(Direction::Inbound),
        Some((other, s)) => {
            return Err(cx.err(&s, key("direction"), format!("unknown direction {other:?} (outbound, inbound, any)")))
        }
    })
}

fn protocol(cx: &Ctx<'_>, key: &dyn Fn(&str) -> String, r: &RuleSection) -> Result<Option<u8>, ConfigError> {
    Ok(match r.protocol.as_ref().map(|d| (d.get_ref().as_str(), d.span())) {
        None | Some(("any", _)) => None,
        Some(("tcp", _)) => Some(proto::TCP),
        Some(("udp", _)) => Some(proto::UDP),
        Some(("icmp", _)) => Some(proto::ICMP),
        Some(("icmpv6", _)) => Some(proto::ICMPV6),
        Some((other, s)) => {
            return Err(cx.err(
                &s,
                key("protocol"),
                format!("unknown protocol {other:?} (tcp, udp, icmp, icmpv6, any)"),
            ))
        }
    })
}

/// `src` or `dst`: prefixes and `@set`s of prefixes.
fn rule_prefixes(
    cx: &Ctx<'_>,
    sets: &Sets,
    key: &dyn Fn(&str) -> String,
    field: &str,
    list: &Option<Vec<Spanned<String>>>,
) -> Result<Option<PrefixSet>, ConfigError> {
    let Some(list) = list else { return Ok(None) };
    let mut nets = Vec::new();
    for (j, s) in list.iter().enumerate() {
        let k = key(&format!("{field}[{j}]"));
        let text = s.get_ref().trim();
        if let Some(set) = text.strip_prefix('@') {
            match sets.0.get(set) {
                Some(Set::Prefixes(n)) => nets.extend(n.iter().copied()),
                Some(Set::Ports(_)) => {
                    return Err(cx.err(&s.span(), k, format!("{text} is a set of ports, not prefixes")))
                }
                None => return Err(cx.err(&s.span(), k, format!("unknown set {text}"))),
            }
        } else {
            nets.push(prefix(cx, &k, text, &s.span())?);
        }
    }
    Ok(Some(PrefixSet::new(nets)))
}

/// `src_ports` or `dst_ports`: ports, ranges and `@set`s of ports.
fn rule_ports(
    cx: &Ctx<'_>,
    sets: &Sets,
    key: &dyn Fn(&str) -> String,
    field: &str,
    list: &Option<Vec<Spanned<Item>>>,
) -> Result<Option<PortSet>, ConfigError> {
    let Some(list) = list else { return Ok(None) };
    if list.is_empty() {
        // `src_ports = []` reads as "no constraint", like an omitted key.
        return Ok(None);
    }
    let mut all = Vec::new();
    for (j, item) in list.iter().enumerate() {
        all.extend(port_item(cx, &key(&format!("{field}[{j}]")), item, Some(sets))?);
    }
    Ok(Some(PortSet::new(all.into_iter().flat_map(|(a, b)| a..=b))))
}

/// Loads a rule's program (path relative to the config file) and checks it.
fn program_rule(
    cx: &Ctx<'_>,
    key: &dyn Fn(&str) -> String,
    r: &RuleSection,
    matcher: ConfigRule,
    file: &Spanned<String>,
) -> Result<ProgramRule, ConfigError> {
    let on_error = match &r.on_error {
        None => OnError::Continue,
        Some(o) => OnError::parse(o.get_ref()).ok_or_else(|| {
            cx.err(
                &o.span(),
                key("on_error"),
                format!("unknown on_error {:?} (continue, accept, drop, reject)", o.get_ref()),
            )
        })?,
    };
    let map_size = match &r.map_size {
        None => DEFAULT_MAP_SIZE,
        Some(m) if (1..=MAX_MAP_SIZE).contains(&(*m.get_ref() as usize)) => *m.get_ref() as usize,
        Some(m) => {
            return Err(cx.err(&m.span(), key("map_size"), format!("must be between 1 and {MAX_MAP_SIZE} entries")))
        }
    };
    let name = file.get_ref();
    let path = cx.file.parent().unwrap_or(std::path::Path::new("")).join(name);
    let fail = |why: String| cx.err(&file.span(), key("program"), format!("{}: {why}", path.display()));
    let bytes = std::fs::read(&path).map_err(|e| fail(format!("cannot read it: {e}")))?;
    let program = Program::load(&bytes, map_size).map_err(|e| fail(e.to_string()))?;
    crate::state::program::trial(&program).map_err(|e| fail(e.to_string()))?;
    Ok(ProgramRule { matcher, file: name.clone(), program: std::sync::Arc::new(program), on_error })
}

/// For an error inside `rule[N]`, the rule's name from the raw text, so the
/// message can name the rule even when the table failed to deserialize.
pub(super) fn name_of_rule(text: &str, index: usize) -> Option<String> {
    let table: toml::Table = text.parse().ok()?;
    let rule = table.get("rule")?.as_array()?.get(index)?;
    Some(rule.get("name")?.as_str()?.to_string())
}
