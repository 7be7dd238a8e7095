//! Decision traces for `op25b check --packet`: the steps the router took and
//! why. The fast path uses [`NoTrace`], which compiles to nothing.

use std::net::IpAddr;

use crate::packet::protocol_name;
use crate::packet::{Fragment, PacketView, Transport};
use crate::policy::RuleVerdict;

/// Collects the steps of a decision; the fast path uses [`NoTrace`], which
/// compiles to nothing.
pub trait Tracer {
    /// Whether steps are recorded (lets the caller pick the explaining path).
    const ON: bool;
    /// Records one step; `detail` is only called when recording.
    fn note(&mut self, stage: &'static str, detail: impl FnOnce() -> String);
}

/// The tracer that records nothing.
#[derive(Debug, Default)]
pub struct NoTrace;

impl Tracer for NoTrace {
    const ON: bool = false;
    #[inline(always)]
    fn note(&mut self, _stage: &'static str, _detail: impl FnOnce() -> String) {}
}

/// One step of a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceStep {
    /// The stage: parse, anti-spoofing, op25b, rule, ...
    pub stage: &'static str,
    /// What happened there.
    pub detail: String,
}

/// The steps of one decision, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trace {
    /// The steps.
    pub steps: Vec<TraceStep>,
}

impl Tracer for Trace {
    const ON: bool = true;
    fn note(&mut self, stage: &'static str, detail: impl FnOnce() -> String) {
        self.steps.push(TraceStep { stage, detail: detail() });
    }
}

pub(crate) fn verdict_text(v: RuleVerdict) -> &'static str {
    match v {
        RuleVerdict::NoMatch => "no match",
        RuleVerdict::Continue => "match, continue",
        RuleVerdict::Accept => "match -> accept",
        RuleVerdict::Drop => "match -> drop",
        RuleVerdict::Reject => "match -> reject",
        RuleVerdict::Limited => "match -> over the rate limit, drop",
    }
}

/// One line describing a parsed packet, for traces.
pub fn describe_view(v: &PacketView) -> String {
    let (sp, dp, extra) = match v.transport {
        Transport::Tcp { src_port, dst_port, flags, .. } => {
            let names = [(0x02, "syn"), (0x10, "ack"), (0x04, "rst"), (0x01, "fin"), (0x08, "psh")];
            let f: Vec<&str> = names.iter().filter(|(b, _)| flags & b != 0).map(|(_, n)| *n).collect();
            (Some(src_port), Some(dst_port), format!(" [{}]", f.join(",")))
        }
        Transport::Udp { src_port, dst_port } => (Some(src_port), Some(dst_port), String::new()),
        Transport::Icmp { icmp_type, code } => (None, None, format!(" type {icmp_type} code {code}")),
        Transport::None => (None, None, String::new()),
    };
    let ep = |a: IpAddr, p: Option<u16>| match (a, p) {
        (IpAddr::V6(a), Some(p)) => format!("[{a}]:{p}"),
        (a, Some(p)) => format!("{a}:{p}"),
        (a, None) => a.to_string(),
    };
    let frag = match v.fragment {
        Fragment::Whole => "",
        Fragment::First => " first-fragment",
        Fragment::Later { .. } => " later-fragment",
    };
    format!(
        "{} {} -> {}{} ttl {} len {}{frag}",
        protocol_name(v.protocol),
        ep(v.src, sp),
        ep(v.dst, dp),
        extra,
        v.ttl,
        v.len
    )
}
