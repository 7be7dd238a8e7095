//! Offline tools over the same pipeline the data plane runs: `check --packet`
//! (one synthetic packet with a trace) and `replay` (a pcap file). No devices.

pub mod replay;
pub mod spec;

use crate::router::{ReplyKind, Verdict};

/// The verdict's name as the tools report it: `forward`, `drop` or `reply`.
pub fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::Forward { .. } => "forward",
        Verdict::Drop(_) => "drop",
        Verdict::Reply { .. } => "reply",
        Verdict::Terminate => "terminate",
    }
}

/// Why a packet was not forwarded, by name: the drop reason, the reply kind,
/// or `banner`; `None` when it was forwarded.
pub fn verdict_reason(v: Verdict) -> Option<&'static str> {
    match v {
        Verdict::Forward { .. } => None,
        Verdict::Drop(r) => Some(r.name()),
        Verdict::Reply { kind, .. } => Some(kind.name()),
        Verdict::Terminate => Some("banner"),
    }
}

/// The verdict with its reason, e.g. `drop (spoofed)`, `reply (tcp_rst)`.
pub fn verdict_detail(v: Verdict) -> String {
    match v {
        Verdict::Forward { len } => format!("forward ({len} bytes, TTL decremented)"),
        Verdict::Drop(r) => format!("drop ({})", r.name()),
        Verdict::Reply { kind, len } => format!("reply ({}, {len} bytes: {})", kind.name(), reply_meaning(kind)),
        Verdict::Terminate => "terminate (op25b answers as the server: SMTP banner, then close)".to_string(),
    }
}

fn reply_meaning(kind: ReplyKind) -> &'static str {
    match kind {
        ReplyKind::TcpRst => "the client sees connection refused",
        ReplyKind::TimeExceeded => "ICMP time exceeded from the router",
        ReplyKind::TooBig => "ICMP fragmentation needed / packet too big",
        ReplyKind::EchoReply => "echo reply from the router",
        ReplyKind::Prohibited => "ICMP administratively prohibited",
    }
}
