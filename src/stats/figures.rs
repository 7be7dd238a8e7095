//! Every figure of a [`Stats`] snapshot, described once in [`FIGURES`]: its
//! name in the text (the log line, `op25b run --stats`, the JSON's
//! `counters`), its place in the JSON, its metrics family, help, unit, kind,
//! labels and how to read it. [`Stats::pairs`], [`Stats::to_json`] and the
//! metrics collector are generated from the table.
//!
//! A template names a label by `{key}`; labels a template leaves out are
//! summed over (`drop_{reason}` adds both directions).

use serde_json::{Map, Value};

use super::{OutputFile, Stats, BLOCK_ACTIONS};
use crate::packet::{Direction, TunnelKind};
use crate::{DropReason, ReplyKind};

/// A counter only grows; a gauge is a level now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic.
    Counter,
    /// A level.
    Gauge,
}

/// What a figure counts; its metrics name says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Packets.
    Packets,
    /// Bytes.
    Bytes,
    /// Connection attempts.
    Connections,
    /// Flows.
    Flows,
    /// Banner sessions.
    Sessions,
    /// Subscribers.
    Subscribers,
    /// Queued events or attempts.
    Events,
    /// Failed operations.
    Errors,
    /// Requests, probes, resolutions, next hops, frames: the name says which.
    Operations,
    /// Table entries.
    Entries,
}

/// A label and its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Label {
    /// `direction`: outbound, inbound.
    Direction,
    /// `verdict`: forward, drop, reply, terminate.
    Verdict,
    /// `reason`: a [`DropReason`].
    Reason,
    /// `kind`: a [`ReplyKind`].
    Reply,
    /// `action`: [`BLOCK_ACTIONS`].
    Action,
    /// `file`: an [`OutputFile`].
    File,
    /// `kind`: a [`TunnelKind`].
    Tunnel,
    /// `device`: subscriber, upstream.
    Device,
    /// `reason`: why a neighbour frame was ignored.
    Ignored,
}

/// The verdict label's values.
pub const VERDICTS: [&str; 4] = ["forward", "drop", "reply", "terminate"];
/// The device label's values, by device index.
pub const DEVICES: [&str; 2] = ["subscriber", "upstream"];
const IGNORED: [&str; 3] = ["unsolicited", "not_ours", "malformed"];

impl Label {
    /// The label's name in metrics and in templates (`{key}`).
    pub fn key(self) -> &'static str {
        match self {
            Label::Direction => "direction",
            Label::Verdict => "verdict",
            Label::Reason | Label::Ignored => "reason",
            Label::Reply | Label::Tunnel => "kind",
            Label::Action => "action",
            Label::File => "file",
            Label::Device => "device",
        }
    }

    /// How many values it takes.
    pub fn count(self) -> usize {
        match self {
            Label::Direction | Label::Device => 2,
            Label::Verdict => VERDICTS.len(),
            Label::Reason => DropReason::COUNT,
            Label::Reply => ReplyKind::COUNT,
            Label::Action => BLOCK_ACTIONS.len(),
            Label::File => OutputFile::COUNT,
            Label::Tunnel => TunnelKind::COUNT,
            Label::Ignored => IGNORED.len(),
        }
    }

    /// Its `i`th value.
    pub fn value(self, i: usize) -> &'static str {
        match self {
            Label::Direction => Direction::ALL[i].name(),
            Label::Verdict => VERDICTS[i],
            Label::Reason => DropReason::ALL[i].name(),
            Label::Reply => ReplyKind::ALL[i].name(),
            Label::Action => BLOCK_ACTIONS[i],
            Label::File => OutputFile::ALL[i].name(),
            Label::Tunnel => TunnelKind::ALL[i].name(),
            Label::Device => DEVICES[i],
            Label::Ignored => IGNORED[i],
        }
    }
}

/// Reads a figure's value at the label values' indices (in `labels` order).
pub type Read = fn(&Stats, [usize; 2]) -> u64;

/// One figure.
#[derive(Debug, Clone, Copy)]
pub struct Figure {
    /// Name in the text and the JSON's `counters`; empty when not there.
    pub text: &'static str,
    /// Place in the JSON, keys joined by `.`; empty when only in `counters`.
    pub json: &'static str,
    /// Metrics family (a counter without `_total`); empty when none.
    pub metric: &'static str,
    /// The metric's help.
    pub help: &'static str,
    /// What it counts.
    pub unit: Unit,
    /// Counter or gauge.
    pub kind: Kind,
    /// Its labels, at most two.
    pub labels: &'static [Label],
    /// Present only with an Ethernet upstream's neighbour table.
    pub neighbours: bool,
    /// In the text, row by row with the neighbouring figures so marked
    /// (`tunnel_packets_gre tunnel_blocked_gre ...`).
    pub interleaved: bool,
    /// How to read it.
    pub read: Read,
}

impl Figure {
    /// Whether `s` has this figure.
    pub fn present(&self, s: &Stats) -> bool {
        !self.neighbours || s.neighbours.is_some()
    }

    /// Every combination of label indices, the first label outermost.
    pub fn rows(&self) -> impl Iterator<Item = [usize; 2]> + '_ {
        let n = |k: usize| self.labels.get(k).map_or(1, |l| l.count());
        (0..n(0)).flat_map(move |a| (0..n(1)).map(move |b| [a, b]))
    }

    /// The `(key, value)` labels of row `ix`.
    pub fn label_values(&self, ix: [usize; 2]) -> Vec<(&'static str, &'static str)> {
        self.labels.iter().zip(ix).map(|(l, i)| (l.key(), l.value(i))).collect()
    }

    /// `template` with `{key}` replaced by the row's values; sums over the rest.
    fn fill(&self, template: &str, ix: [usize; 2]) -> String {
        let mut out = template.to_string();
        for (key, value) in self.label_values(ix) {
            out = out.replace(&format!("{{{key}}}"), value);
        }
        out
    }

    /// `(name, value)` over `template`, labels it leaves out summed, in row order.
    fn expand(&self, s: &Stats, template: &str) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = Vec::new();
        for ix in self.rows() {
            let (name, v) = (self.fill(template, ix), (self.read)(s, ix));
            match out.iter_mut().find(|(n, _)| *n == name) {
                Some((_, t)) => *t += v,
                None => out.push((name, v)),
            }
        }
        out
    }
}

const fn fig(text: &'static str, json: &'static str, metric: &'static str, help: &'static str) -> Figure {
    Figure {
        text,
        json,
        metric,
        help,
        unit: Unit::Packets,
        kind: Kind::Counter,
        labels: &[],
        neighbours: false,
        interleaved: false,
        read: |_, _| 0,
    }
}

impl Figure {
    const fn unit(mut self, unit: Unit) -> Figure {
        self.unit = unit;
        self
    }
    const fn gauge(mut self) -> Figure {
        self.kind = Kind::Gauge;
        self
    }
    const fn labels(mut self, labels: &'static [Label]) -> Figure {
        self.labels = labels;
        self
    }
    const fn read(mut self, read: Read) -> Figure {
        self.read = read;
        self
    }
    const fn interleaved(mut self) -> Figure {
        self.interleaved = true;
        self
    }
    const fn neighbour(mut self) -> Figure {
        self.neighbours = true;
        self.unit = Unit::Operations;
        self
    }
}

use Label::{Action, Device, Direction as Dir, File, Reason, Reply, Tunnel};

/// Every figure, in the order of the text; metrics families follow it too.
#[rustfmt::skip]
pub static FIGURES: &[Figure] = &[
    fig("received_{direction}", "{direction}.received", "op25b_received_packets", "Packets handed to the router, by direction.")
        .labels(&[Dir]).read(|s, [d, _]| s.directions[d].received),
    fig("forwarded_{direction}", "{direction}.forwarded", "", "").labels(&[Dir]).read(|s, [d, _]| s.directions[d].forwarded),
    fig("", "", "op25b_packets", "Packets by direction and verdict; they add up to received.")
        .labels(&[Dir, Label::Verdict]).read(|s, [d, v]| {
            let x = &s.directions[d];
            [x.forwarded, x.dropped_total(), x.replied_total(), x.terminated][v]
        }),
    fig("", "{direction}.forwarded_bytes", "op25b_forwarded_bytes", "Bytes forwarded, by direction.")
        .unit(Unit::Bytes).labels(&[Dir]).read(|s, [d, _]| s.directions[d].forwarded_bytes),
    fig("op25b_blocked", "op25b_blocked_by_action.{action}", "op25b_blocked_packets", "Packets the OP25B fast path blocked, by the action in force.")
        .labels(&[Action]).read(|s, [a, _]| s.op25b.blocked_by_action[a]),
    fig("op25b_blocked_connections", "op25b_blocked_connections_by_action.{action}", "op25b_blocked_connections",
        "Connection attempts the OP25B fast path blocked (a SYN and its retransmissions once), by the action in force.")
        .unit(Unit::Connections).labels(&[Action]).read(|s, [a, _]| s.op25b.blocked_connections_by_action[a]),
    fig("op25b_redirected", "", "op25b_redirected_packets", "Packets of blocked flows sent to the relay.").read(|s, _| s.op25b.redirected),
    fig("op25b_terminated", "{direction}.terminated", "", "").labels(&[Dir]).read(|s, [d, _]| s.directions[d].terminated),
    fig("op25b_banner_source_full", "", "op25b_banner_refused_packets", "Banner SYNs refused over the subscriber's share of sessions.")
        .read(|s, _| s.op25b.banner_source_full),
    fig("op25b_redirect_evictions", "", "op25b_redirect_evicted_flows",
        "Unassured redirect flows evicted (early drop) for a new SYN when the table was full.")
        .unit(Unit::Flows).read(|s, _| s.op25b.redirect_evictions),
    fig("op25b_monitored", "", "op25b_monitored_packets", "Packets OP25B would have blocked, forwarded by action monitor.")
        .read(|s, _| s.op25b.monitored),
    fig("op25b_monitored_connections", "", "op25b_monitored_connections",
        "Connection attempts OP25B would have blocked (a SYN and its retransmissions once), forwarded by action monitor.")
        .unit(Unit::Connections).read(|s, _| s.op25b.monitored_connections),
    fig("reply_{kind}", "{direction}.replies.{kind}", "op25b_reply_packets", "Reply packets the router built, by direction and kind.")
        .labels(&[Dir, Reply]).read(|s, [d, k]| s.directions[d].replies[k]),
    fig("drop_{reason}", "{direction}.dropped.{reason}", "op25b_dropped_packets", "Packets dropped, by direction and reason.")
        .labels(&[Dir, Reason]).read(|s, [d, r]| s.directions[d].dropped[r]),
    fig("responder_rsts_limited", "", "op25b_banner_limited_rst_packets", "RSTs of the banner responder not sent for want of a reply token.")
        .read(|s, _| s.responder.rsts_limited),
    fig("events_dropped", "", "op25b_dropped_events", "Events of blocked connections the full queue to the events writer did not take.")
        .unit(Unit::Events).read(|s, _| s.events_dropped),
    fig("capture_dropped", "", "op25b_capture_dropped_packets", "Packets not forwarded that the capture could not take.")
        .read(|s, _| s.capture_dropped),
    fig("abuse_tracked", "", "op25b_abuse_tracked_subscribers", "Subscribers in the abuse table (heavy hitters of blocked attempts).")
        .unit(Unit::Subscribers).gauge().read(|s, _| s.abuse.tracked),
    fig("abuse_suspected", "", "op25b_abuse_suspected_subscribers", "Subscribers that crossed an abuse threshold less than a window ago.")
        .unit(Unit::Subscribers).gauge().read(|s, _| s.abuse.suspected),
    fig("abuse_quarantined", "", "op25b_abuse_quarantined_subscribers", "Subscribers in quarantine.")
        .unit(Unit::Subscribers).gauge().read(|s, _| s.abuse.quarantined),
    fig("abuse_refused", "", "op25b_abuse_refused_packets", "Packets of subscribers in quarantine refused outside their walled garden.")
        .read(|s, _| s.abuse.refused),
    fig("abuse_attempts_dropped", "", "op25b_abuse_dropped_attempts", "Blocked attempts the full queue to abuse handling did not take.")
        .unit(Unit::Events).read(|s, _| s.abuse.attempts_dropped),
    fig("{file}_write_errors", "", "op25b_write_errors", "Failed writes of op25b's own files (full disk, unwritable file), by file.")
        .unit(Unit::Errors).labels(&[File]).read(|s, [f, _]| s.write_errors[f]),
    fig("responder_ring_overflows", "", "", "").read(|s, _| s.responder.ring_overflows),
    fig("responder_syn_evictions", "", "op25b_banner_evicted_sessions", "Banner sessions still waiting for the client's ACK taken for a new SYN.")
        .unit(Unit::Sessions).read(|s, _| s.responder.syn_evictions),
    fig("", "", "op25b_banner_sessions", "Banner sessions in progress.").unit(Unit::Sessions).gauge().read(|s, _| s.responder.sessions),
    fig("tunnel_packets_{kind}", "tunnels.{kind}.packets", "op25b_tunnel_packets", "Tunnel packets seen, by their outermost kind.")
        .labels(&[Tunnel]).read(|s, [k, _]| s.tunnels.packets[k]),
    fig("tunnel_blocked_{kind}", "tunnels.{kind}.blocked", "op25b_tunnel_blocked_packets",
        "Tunnel packets blocked (OP25B or IP25B inside, or tunnels = block), by their outermost kind.")
        .labels(&[Tunnel]).interleaved().read(|s, [k, _]| s.tunnels.blocked[k]),
    fig("{device}_rx_packets", "devices.{device}.rx_packets", "op25b_device_rx_packets", "Packets read from each TUN device (a GSO super-packet once).")
        .labels(&[Device]).read(|s, [d, _]| s.devices[d].rx_packets),
    fig("{device}_tx_packets", "devices.{device}.tx_packets", "op25b_device_tx_packets", "Packets written to each TUN device (a coalesced UDP GSO packet once).")
        .labels(&[Device]).interleaved().read(|s, [d, _]| s.devices[d].tx_packets),
    fig("{device}_rx_errors", "devices.{device}.rx_errors", "op25b_device_rx_errors", "Failed reads on each TUN device.")
        .unit(Unit::Errors).labels(&[Device]).interleaved().read(|s, [d, _]| s.devices[d].rx_errors),
    fig("{device}_tx_errors", "devices.{device}.tx_errors", "op25b_device_tx_errors", "Failed writes to each TUN device.")
        .unit(Unit::Errors).labels(&[Device]).interleaved().read(|s, [d, _]| s.devices[d].tx_errors),
    fig("", "devices.{device}.rx_bytes", "op25b_device_rx_bytes", "Bytes read from each TUN device.")
        .unit(Unit::Bytes).labels(&[Device]).read(|s, [d, _]| s.devices[d].rx_bytes),
    fig("", "devices.{device}.tx_bytes", "op25b_device_tx_bytes", "Bytes written to each TUN device.")
        .unit(Unit::Bytes).labels(&[Device]).read(|s, [d, _]| s.devices[d].tx_bytes),
    fig("", "devices.{device}.batches", "", "").unit(Unit::Operations).labels(&[Device]).read(|s, [d, _]| s.devices[d].batches),
    fig("reloads_accepted", "reloads.accepted", "", "").unit(Unit::Operations).read(|s, _| s.reloads.accepted),
    fig("reloads_refused", "reloads.refused", "", "").unit(Unit::Operations).read(|s, _| s.reloads.refused),
    fig("reload_kept_reply_buckets", "reloads.kept.reply_buckets", "", "").unit(Unit::Entries).gauge()
        .read(|s, _| s.reloads.kept.reply_buckets),
    fig("reload_kept_flows", "reloads.kept.flows", "", "").unit(Unit::Entries).gauge().read(|s, _| s.reloads.kept.flows),
    fig("reload_kept_sessions", "reloads.kept.sessions", "", "").unit(Unit::Entries).gauge().read(|s, _| s.reloads.kept.sessions),
    fig("reload_kept_rule_buckets", "reloads.kept.rule_buckets", "", "").unit(Unit::Entries).gauge()
        .read(|s, _| s.reloads.kept.rule_buckets),
    fig("reload_kept_programs", "reloads.kept.programs", "", "").unit(Unit::Entries).gauge().read(|s, _| s.reloads.kept.programs),
    fig("neighbour_answered", "neighbours.answered", "op25b_neighbour_answered_requests",
        "ARP requests and neighbour solicitations for op25b's own upstream addresses, answered.")
        .neighbour().read(|s, _| nb(s).answered),
    fig("neighbour_probes", "neighbours.probes", "op25b_neighbour_probes",
        "ARP requests and neighbour solicitations sent to resolve next hops (first resolutions and re-probes).")
        .neighbour().read(|s, _| nb(s).probes),
    fig("neighbour_resolved", "neighbours.resolved", "op25b_neighbour_resolutions", "Next hops resolved by an answer to a probe.")
        .neighbour().read(|s, _| nb(s).resolved),
    fig("neighbour_reprobes", "neighbours.reprobes", "op25b_neighbour_reprobes", "Resolved next hops whose trust expired, probed again.")
        .neighbour().read(|s, _| nb(s).reprobes),
    fig("neighbour_expired", "neighbours.expired", "op25b_neighbour_expired_entries", "On-link next hops forgotten after a reachable time unused.")
        .neighbour().unit(Unit::Entries).read(|s, _| nb(s).expired),
    fig("neighbour_failed", "neighbours.failed", "op25b_neighbour_failed_resolutions", "Next hops given up after the last unanswered probe.")
        .neighbour().read(|s, _| nb(s).failed),
    fig("neighbour_{reason}", "neighbours.{reason}", "op25b_neighbour_ignored_frames",
        "ARP and neighbour-discovery frames ignored: answers no probe asked for, requests for other addresses, malformed.")
        .neighbour().labels(&[Label::Ignored]).read(|s, [r, _]| { let n = nb(s); [n.unsolicited, n.not_ours, n.malformed][r] }),
    fig("neighbour_held", "neighbours.held", "op25b_neighbour_held_packets", "Packets held while their next hop was resolved.")
        .neighbour().unit(Unit::Packets).read(|s, _| nb(s).held),
    fig("neighbour_held_dropped", "neighbours.held_dropped", "op25b_neighbour_hold_dropped_packets",
        "Packets dropped for want of a place to wait (the next hop's or the table's hold queue full).")
        .neighbour().unit(Unit::Packets).read(|s, _| nb(s).held_dropped),
    fig("neighbour_unreachable", "neighbours.unreachable", "op25b_neighbour_unreachable_packets",
        "Held packets whose next hop never answered (their senders get ICMP host unreachable).")
        .neighbour().unit(Unit::Packets).read(|s, _| nb(s).unreachable),
    fig("neighbour_table_full", "neighbours.table_full", "op25b_neighbour_table_full_next_hops",
        "New next hops that met a full neighbour table (an on-link entry evicted, or the packet dropped).")
        .neighbour().read(|s, _| nb(s).table_full),
    fig("neighbour_evicted", "neighbours.evicted", "op25b_neighbour_evicted_entries", "On-link entries evicted to make room.")
        .neighbour().unit(Unit::Entries).read(|s, _| nb(s).evicted),
    fig("", "neighbours.entries", "op25b_neighbour_entries", "Entries in the neighbour table, gateways included.")
        .neighbour().unit(Unit::Entries).gauge().read(|s, _| nb(s).entries),
];

fn nb(s: &Stats) -> super::NeighbourStats {
    s.neighbours.unwrap_or_default()
}

/// The text pairs of `s`, in table order.
pub(super) fn pairs(s: &Stats) -> Vec<(String, u64)> {
    let (mut out, mut run) = (Vec::new(), Vec::<Vec<(String, u64)>>::new());
    let flush = |out: &mut Vec<(String, u64)>, run: &mut Vec<Vec<(String, u64)>>| {
        let rows = run.iter().map(Vec::len).max().unwrap_or(0);
        out.extend((0..rows).flat_map(|i| run.iter().filter_map(move |f| f.get(i).cloned())));
        run.clear();
    };
    for f in FIGURES.iter().filter(|f| !f.text.is_empty() && f.present(s)) {
        if !f.interleaved {
            flush(&mut out, &mut run);
        }
        run.push(f.expand(s, f.text));
    }
    flush(&mut out, &mut run);
    out
}

/// The JSON of `s`: `counters` (the pairs), every figure at its place, the rules.
pub(super) fn json(s: &Stats) -> Value {
    let mut root = Map::new();
    let counters: Map<String, Value> = pairs(s).into_iter().map(|(k, v)| (k, v.into())).collect();
    root.insert("counters".into(), counters.into());
    for f in FIGURES.iter().filter(|f| !f.json.is_empty() && f.present(s)) {
        for (path, v) in f.expand(s, f.json) {
            let mut keys: Vec<&str> = path.split('.').collect();
            let last = keys.pop().unwrap_or_default();
            let mut map = &mut root;
            for k in keys {
                let entry = map.entry(k).or_insert_with(|| Value::Object(Map::new()));
                let Value::Object(m) = entry else { unreachable!("a figure's path crosses a value") };
                map = m;
            }
            map.insert(last.to_string(), v.into());
        }
    }
    root.entry("neighbours").or_insert(Value::Null);
    let rules = s
        .rules
        .iter()
        .map(|r| serde_json::json!({"name": r.name, "packets": r.packets, "bytes": r.bytes, "errors": r.errors}));
    root.insert("rules".into(), rules.collect::<Vec<_>>().into());
    root.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_says_what_it_counts() {
        for f in FIGURES.iter().filter(|f| !f.metric.is_empty()) {
            let word = match f.unit {
                Unit::Packets => "packets",
                Unit::Bytes => "bytes",
                Unit::Connections => "connections",
                Unit::Flows => "flows",
                Unit::Sessions => "sessions",
                Unit::Subscribers => "subscribers",
                Unit::Events => "",
                Unit::Errors => "errors",
                Unit::Operations => "",
                Unit::Entries => "entries",
            };
            assert!(f.metric.contains(word), "{} is in {:?}", f.metric, f.unit);
            assert!(!f.help.is_empty(), "{} has no help", f.metric);
            let placeholders = |t: &str| t.matches('{').count();
            assert!(placeholders(f.text) <= f.labels.len() && placeholders(f.json) <= f.labels.len(), "{}", f.metric);
        }
    }

    #[test]
    fn reload_outcomes_are_figures() {
        let r = super::super::Reloads::default();
        r.accepted(super::super::KeptStats { programs: 2, flows: 1, ..Default::default() });
        r.refused();
        r.refused();
        let s = Stats { reloads: r.get(), ..Default::default() };
        let pairs = s.pairs();
        let get = |n: &str| pairs.iter().find(|(k, _)| k == n).map(|(_, v)| *v);
        assert_eq!((get("reloads_accepted"), get("reloads_refused")), (Some(1), Some(2)));
        assert_eq!((get("reload_kept_programs"), get("reload_kept_flows")), (Some(2), Some(1)));
        let j = s.to_json();
        assert_eq!(j["reloads"]["kept"]["programs"], 2);
        assert_eq!(j["counters"]["reloads_refused"], 2);
    }
}
