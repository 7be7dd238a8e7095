//! Offline tools over the same pipeline the data plane runs: `check --packet`
//! (one synthetic packet with a trace) and `replay` (a pcap file). No devices.

pub mod replay;
pub mod spec;

use std::time::{Duration, Instant};

use crate::policy::Policy;
use crate::router::{ReplyKind, Verdict};
use crate::state::abuse::parse_subscriber;
use crate::state::State;

/// The state the offline tools judge with (`State::offline`), with the
/// subscribers `quarantined` (keys, `state::abuse::parse_subscriber`) in quarantine for
/// the whole run: a capture or a packet says nothing of who op25b had in
/// quarantine, so `--quarantined` tells it.
pub fn offline_state(policy: &Policy, quarantined: &[u64]) -> Result<State, String> {
    let state = State::offline(policy);
    // Longer than any capture; a clock that cannot add it gets a year.
    let now = Instant::now();
    let until = now
        .checked_add(Duration::from_secs(100 * 365 * 86_400))
        .or_else(|| now.checked_add(Duration::from_secs(365 * 86_400)))
        .unwrap_or(now);
    for key in quarantined {
        if state.quarantine().start(*key, until).is_err() {
            return Err(format!("--quarantined: too many subscribers (at most {})", crate::state::MAX_QUARANTINED));
        }
    }
    Ok(state)
}

/// One subscriber of `--quarantined` (clap's value parser): an IPv4
/// address, or an IPv6 address or prefix (its /64).
pub fn quarantined_subscriber(text: &str) -> Result<u64, String> {
    parse_subscriber(text)
        .ok_or_else(|| format!("{text:?} is not a subscriber (an IPv4 address, or an IPv6 address or /64)"))
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
