//! `/metrics`: the [`Stats`] snapshot in the Prometheus / OpenMetrics text
//! format, encoded by prometheus-client from a collector made at scrape time.
//! Nothing here touches the packet path: the counters are read, not added.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::InfoSnapshot;
use crate::packet::Direction;
use crate::stats::{OutputFile, Stats, BLOCK_ACTIONS};
use crate::{DropReason, ReplyKind};

/// One scrape's figures.
#[derive(Debug)]
struct Scrape {
    stats: Stats,
    info: InfoSnapshot,
}

type Labels<'a> = Vec<(&'static str, &'a str)>;

/// Writes one counter family: a value per label set.
fn counters<'a>(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Labels<'a>, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        m.encode_family(&labels)?.encode_counter::<NoLabelSet, _, u64>(&v, None)?;
    }
    Ok(())
}

/// Writes one gauge family.
fn gauges<'a>(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Labels<'a>, f64)>,
) -> Result<(), std::fmt::Error> {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        m.encode_family(&labels)?.encode_gauge(&v)?;
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.stats;
        let dirs = Direction::ALL;
        counters(
            &mut e,
            "op25b_received_packets",
            "Packets handed to the router, by direction.",
            dirs.iter().map(|d| (vec![("direction", d.name())], s.dir(*d).received)),
        )?;
        let verdicts = dirs.iter().flat_map(|d| {
            let x = s.dir(*d);
            [
                ("forward", x.forwarded),
                ("drop", x.dropped_total()),
                ("reply", x.replied_total()),
                ("terminate", x.terminated),
            ]
            .map(|(v, n)| (vec![("direction", d.name()), ("verdict", v)], n))
        });
        counters(&mut e, "op25b_packets", "Packets by direction and verdict; they add up to received.", verdicts)?;
        counters(
            &mut e,
            "op25b_forwarded_bytes",
            "Bytes forwarded, by direction.",
            dirs.iter().map(|d| (vec![("direction", d.name())], s.dir(*d).forwarded_bytes)),
        )?;
        let drops = dirs.iter().flat_map(|d| {
            DropReason::ALL
                .iter()
                .map(move |r| (vec![("direction", d.name()), ("reason", r.name())], s.dir(*d).dropped[*r as usize]))
        });
        counters(&mut e, "op25b_drops", "Packets dropped, by direction and reason.", drops)?;
        let replies = dirs.iter().flat_map(|d| {
            ReplyKind::ALL
                .iter()
                .map(move |k| (vec![("direction", d.name()), ("kind", k.name())], s.dir(*d).replies[*k as usize]))
        });
        counters(&mut e, "op25b_replies", "Replies the router built, by direction and kind.", replies)?;
        counters(
            &mut e,
            "op25b_blocked",
            "Packets the OP25B fast path blocked, by the action in force.",
            BLOCK_ACTIONS.iter().zip(s.op25b.blocked_by_action).map(|(a, n)| (vec![("action", *a)], n)),
        )?;
        counters(
            &mut e,
            "op25b_redirected_packets",
            "Packets of blocked flows sent to the relay.",
            [(vec![], s.op25b.redirected)],
        )?;
        counters(
            &mut e,
            "op25b_redirect_evictions",
            "Unassured redirect flows evicted (early drop) for a new SYN when the table was full.",
            [(vec![], s.op25b.redirect_evictions)],
        )?;
        counters(
            &mut e,
            "op25b_banner_syn_evictions",
            "Banner sessions still waiting for the client's ACK taken for a new SYN.",
            [(vec![], s.responder.syn_evictions)],
        )?;
        counters(
            &mut e,
            "op25b_banner_source_full",
            "Banner SYNs refused over the subscriber's share of sessions.",
            [(vec![], s.op25b.banner_source_full)],
        )?;
        counters(
            &mut e,
            "op25b_rule_packets",
            "Packets that matched each rule (kept over reloads by rule name).",
            s.rules.iter().map(|r| (vec![("rule", r.name.as_str())], r.packets)),
        )?;
        counters(
            &mut e,
            "op25b_rule_bytes",
            "Bytes that matched each rule.",
            s.rules.iter().map(|r| (vec![("rule", r.name.as_str())], r.bytes)),
        )?;
        counters(
            &mut e,
            "op25b_rule_errors",
            "Faults of each program rule's program (budget exceeded, trap): each answered its on_error verdict.",
            s.rules.iter().map(|r| (vec![("rule", r.name.as_str())], r.errors)),
        )?;
        let devices = ["subscriber", "upstream"];
        type Field = fn(&crate::stats::DeviceStats) -> u64;
        let device_figures: [(&str, &str, Field); 6] = [
            ("op25b_device_rx_packets", "Packets read from each TUN device (a GSO super-packet once).", |d| {
                d.rx_packets
            }),
            ("op25b_device_rx_bytes", "Bytes read from each TUN device.", |d| d.rx_bytes),
            ("op25b_device_rx_errors", "Failed reads on each TUN device.", |d| d.rx_errors),
            ("op25b_device_tx_writes", "Writes to each TUN device (a coalesced UDP GSO packet once).", |d| {
                d.tx_packets
            }),
            ("op25b_device_tx_bytes", "Bytes written to each TUN device.", |d| d.tx_bytes),
            ("op25b_device_tx_errors", "Failed writes to each TUN device.", |d| d.tx_errors),
        ];
        for (name, help, f) in device_figures {
            counters(&mut e, name, help, devices.iter().zip(&s.devices).map(|(n, d)| (vec![("device", *n)], f(d))))?;
        }
        gauges(
            &mut e,
            "op25b_banner_sessions",
            "Banner sessions in progress.",
            [(vec![], s.responder.sessions as f64)],
        )?;
        counters(
            &mut e,
            "op25b_banner_rsts_limited",
            "RSTs of the banner responder not sent for want of a reply token.",
            [(vec![], s.responder.rsts_limited)],
        )?;
        counters(
            &mut e,
            "op25b_events_dropped",
            "Events of blocked connections the full queue did not take.",
            [(vec![], s.events_dropped)],
        )?;
        counters(
            &mut e,
            "op25b_capture_dropped",
            "Packets not forwarded that the capture could not take.",
            [(vec![], s.capture_dropped)],
        )?;
        counters(
            &mut e,
            "op25b_monitored",
            "Packets OP25B would have blocked, forwarded by action monitor.",
            [(vec![], s.op25b.monitored)],
        )?;
        tunnel_metrics(&mut e, s)?;
        let a = &s.abuse;
        gauges(
            &mut e,
            "op25b_abuse_tracked_subscribers",
            "Subscribers in the abuse table (heavy hitters of blocked attempts).",
            [(vec![], a.tracked as f64)],
        )?;
        gauges(
            &mut e,
            "op25b_abuse_suspected_subscribers",
            "Subscribers that crossed an abuse threshold less than a window ago.",
            [(vec![], a.suspected as f64)],
        )?;
        gauges(
            &mut e,
            "op25b_abuse_quarantined_subscribers",
            "Subscribers in quarantine.",
            [(vec![], a.quarantined as f64)],
        )?;
        counters(
            &mut e,
            "op25b_abuse_refused_packets",
            "Packets of subscribers in quarantine refused outside their walled garden.",
            [(vec![], a.refused)],
        )?;
        counters(
            &mut e,
            "op25b_abuse_attempts_dropped",
            "Blocked attempts the full queue to abuse handling did not take.",
            [(vec![], a.attempts_dropped)],
        )?;
        counters(
            &mut e,
            "op25b_write_errors",
            "Failed writes of op25b's own files (full disk, unwritable file), by file.",
            OutputFile::ALL.iter().map(|f| (vec![("file", f.name())], s.write_errors[*f as usize])),
        )?;
        let i = &self.info;
        counters(
            &mut e,
            "op25b_config_reloads",
            "Config reloads, by result.",
            [(vec![("result", "success")], i.reloads_ok), (vec![("result", "failure")], i.reloads_failed)],
        )?;
        gauges(
            &mut e,
            "op25b_config_last_reload_success_timestamp_seconds",
            "When the config in force was loaded (start or reload), Unix time.",
            [(vec![], i.loaded_unix)],
        )?;
        gauges(&mut e, "op25b_start_time_seconds", "When op25b started, Unix time.", [(vec![], i.started_unix)])?;
        gauges(
            &mut e,
            "op25b_build_info",
            "The version op25b was built from (value 1).",
            [(vec![("version", env!("CARGO_PKG_VERSION"))], 1.0)],
        )?;
        Ok(())
    }
}

/// Tunnels by their outermost kind: seen, and blocked (a blocked packet
/// inside, or `tunnels = "block"`).
fn tunnel_metrics(e: &mut DescriptorEncoder<'_>, s: &Stats) -> Result<(), std::fmt::Error> {
    use crate::packet::TunnelKind;
    let rows = |v: [u64; TunnelKind::COUNT]| TunnelKind::ALL.map(|k| (vec![("kind", k.name())], v[k.index()]));
    counters(e, "op25b_tunnel_packets", "Tunnel packets seen, by their outermost kind.", rows(s.tunnels.packets))?;
    counters(
        e,
        "op25b_tunnel_blocked_packets",
        "Tunnel packets blocked (OP25B or IP25B inside, or tunnels = block), by their outermost kind.",
        rows(s.tunnels.blocked),
    )
}

/// The OpenMetrics text of `stats` and `info`.
pub(crate) fn render(stats: Stats, info: InfoSnapshot) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape { stats, info }));
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::packets::syn;
    use crate::testing::PolicyBuilder;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn the_snapshot_as_prometheus_text() {
        let mut t = PolicyBuilder::lab().router();
        for _ in 0..3 {
            let _ = t.out(&syn("100.64.1.10", "203.0.113.25", 25));
        }
        let _ = t.out(&syn("100.64.1.10", "203.0.113.25", 587));
        let gre = |port| {
            let inner = syn("10.0.0.1", "203.0.113.25", port);
            let (src, dst) = ("100.64.1.10".parse().unwrap(), "198.51.100.1".parse().unwrap());
            crate::packet::encap::encapsulate(crate::packet::TunnelKind::Gre, src, dst, 64, &inner, &Default::default())
                .unwrap()
        };
        let _ = t.out(&gre(25));
        let _ = t.out(&gre(587));
        let info = InfoSnapshot { reloads_ok: 2, reloads_failed: 1, loaded_unix: 1_800_000_000.0, started_unix: 1.0 };
        let text = render(t.stats(), info);
        let v = |s: &str| value(&text, s).unwrap_or_else(|| panic!("{s} missing in\n{text}"));
        assert_eq!(v(r#"op25b_received_packets_total{direction="outbound"}"#), 6.0);
        assert_eq!(v(r#"op25b_tunnel_packets_total{kind="gre"}"#), 2.0);
        assert_eq!(v(r#"op25b_tunnel_blocked_packets_total{kind="gre"}"#), 1.0);
        assert_eq!(v(r#"op25b_tunnel_packets_total{kind="vxlan"}"#), 0.0);
        assert_eq!(v(r#"op25b_packets_total{direction="outbound",verdict="reply"}"#), 3.0);
        assert_eq!(v(r#"op25b_packets_total{direction="outbound",verdict="forward"}"#), 2.0);
        assert_eq!(v(r#"op25b_replies_total{direction="outbound",kind="tcp_rst"}"#), 3.0);
        assert_eq!(v(r#"op25b_blocked_total{action="reject"}"#), 3.0);
        assert_eq!(v(r#"op25b_config_reloads_total{result="failure"}"#), 1.0);
        assert_eq!(v("op25b_config_last_reload_success_timestamp_seconds"), 1_800_000_000.0);
        assert!(text.contains("# TYPE op25b_drops counter"), "{text}");
        assert!(text.trim_end().ends_with("# EOF"));
    }
}
