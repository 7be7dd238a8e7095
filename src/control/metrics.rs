//! `/metrics`: the [`Stats`] snapshot, the process's own figures and the
//! build, encoded by prometheus-client from a collector made at scrape time,
//! in the format the scraper asks for ([`Format::negotiate`]): the classic
//! Prometheus text (version 0.0.4) by default, OpenMetrics 1.0 when the
//! `Accept` header prefers it. Nothing here touches the packet path: the
//! counters are read, not added.
//!
//! Names follow Prometheus practice: every counter ends in `_total` and says
//! what it counts (packets, bytes, flows, events, ...), values are in base
//! units, and no label names a subscriber.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeCounterValue, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::process::ProcessFigures;
use super::InfoSnapshot;
use crate::stats::figures::{Kind, DEVICES, FIGURES};
use crate::stats::Stats;

/// The git revision op25b was built from (build.rs), or `unknown`.
pub(crate) const REVISION: &str = env!("OP25B_GIT_REVISION");

/// The text format of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// The Prometheus text format, version 0.0.4.
    Classic,
    /// OpenMetrics text, version 1.0.0.
    OpenMetrics,
}

impl Format {
    /// The `Content-Type` of an answer in this format.
    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Format::Classic => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    /// The format an `Accept` header prefers: OpenMetrics when it is listed
    /// (any version this encoder speaks: 1.0.0, 0.0.1 or none) with a
    /// quality above that of the classic text (`text/plain`, `text/*`,
    /// `*/*`); the classic text otherwise, also with no header or one that
    /// names neither. Between equal qualities the first listed wins, as
    /// Prometheus lists its preference first.
    pub(crate) fn negotiate(accept: Option<&str>) -> Format {
        let mut best: Option<(f32, Format)> = None;
        for range in accept.unwrap_or_default().split(',') {
            let Ok(mime) = range.trim().parse::<mime::Mime>() else { continue };
            let param = |name: &str| mime.get_param(name).map(|v| v.as_str().to_string());
            let q = param("q").and_then(|q| q.parse::<f32>().ok()).unwrap_or(1.0);
            let version = param("version");
            let format = match (mime.type_().as_str(), mime.subtype().as_str()) {
                ("application", "openmetrics-text")
                    if matches!(version.as_deref(), None | Some("1.0.0") | Some("0.0.1")) =>
                {
                    Format::OpenMetrics
                }
                ("text", "plain") if matches!(version.as_deref(), None | Some("0.0.4")) => Format::Classic,
                ("text", "*") | ("*", "*") => Format::Classic,
                _ => continue,
            };
            if q > 0.0 && best.is_none_or(|(b, _)| q > b) {
                best = Some((q, format));
            }
        }
        best.map_or(Format::Classic, |(_, f)| f)
    }
}

type Labels<'a> = Vec<(&'static str, &'a str)>;

/// Writes one counter family (`name` without `_total`: the encoder adds it).
fn counters<'a, V: EncodeCounterValue>(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Labels<'a>, V)>,
) -> Result<(), std::fmt::Error> {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        m.encode_family(&labels)?.encode_counter::<NoLabelSet, V, u64>(&v, None)?;
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

/// Writes one gauge family of a single unlabelled value.
fn gauge(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: f64) -> Result<(), std::fmt::Error> {
    gauges(e, name, help, [(vec![], v)])
}

/// Every figure of [`FIGURES`] with a metrics family, in table order.
fn figures(e: &mut DescriptorEncoder<'_>, s: &Stats) -> Result<(), std::fmt::Error> {
    for f in FIGURES.iter().filter(|f| !f.metric.is_empty() && f.present(s)) {
        let rows = f.rows().map(|ix| (f.label_values(ix), (f.read)(s, ix)));
        match f.kind {
            Kind::Counter => counters(e, f.metric, f.help, rows)?,
            Kind::Gauge => gauges(e, f.metric, f.help, rows.map(|(l, v)| (l, v as f64)))?,
        }
    }
    Ok(())
}

/// Per-rule counts, labelled by the rule's name.
fn rule_metrics(e: &mut DescriptorEncoder<'_>, s: &Stats) -> Result<(), std::fmt::Error> {
    type RuleField = fn(&crate::stats::RuleStats) -> u64;
    let rules: [(&str, &str, RuleField); 3] = [
        ("op25b_rule_packets", "Packets that matched each rule (kept over reloads by rule name).", |r| r.packets),
        ("op25b_rule_bytes", "Bytes that matched each rule.", |r| r.bytes),
        (
            "op25b_rule_errors",
            "Faults of each program rule's program (budget exceeded, trap): each answered its on_error verdict.",
            |r| r.errors,
        ),
    ];
    for (name, help, f) in rules {
        counters(e, name, help, s.rules.iter().map(|r| (vec![("rule", r.name.as_str())], f(r))))?;
    }
    Ok(())
}

/// Reloads, the build, and the standard `process_*` figures.
fn service(e: &mut DescriptorEncoder<'_>, i: &InfoSnapshot, p: Option<&ProcessFigures>) -> Result<(), std::fmt::Error> {
    counters(
        e,
        "op25b_config_reloads",
        "Config reloads, by result.",
        [(vec![("result", "success")], i.reloads_ok), (vec![("result", "failure")], i.reloads_failed)],
    )?;
    gauge(
        e,
        "op25b_config_last_reload_success_timestamp_seconds",
        "When the config in force was loaded (start or reload), Unix time.",
        i.loaded_unix,
    )?;
    gauges(
        e,
        "op25b_build_info",
        "The version and git revision op25b was built from (value 1).",
        [(vec![("version", env!("CARGO_PKG_VERSION")), ("revision", REVISION)], 1.0)],
    )?;
    let Some(p) = p else { return Ok(()) };
    counters(e, "process_cpu_seconds", "Total user and system CPU time spent in seconds.", [(vec![], p.cpu_seconds)])?;
    gauge(e, "process_resident_memory_bytes", "Resident memory size in bytes.", p.resident_bytes as f64)?;
    gauge(e, "process_virtual_memory_bytes", "Virtual memory size in bytes.", p.virtual_bytes as f64)?;
    gauge(e, "process_open_fds", "Number of open file descriptors.", p.open_fds as f64)?;
    if let Some(max) = p.max_fds {
        gauge(e, "process_max_fds", "Maximum number of open file descriptors.", max as f64)?;
    }
    gauge(e, "process_threads", "Number of OS threads in the process.", p.threads as f64)?;
    gauge(
        e,
        "process_start_time_seconds",
        "Start time of the process since unix epoch in seconds.",
        p.start_time_seconds,
    )
}

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        figures(&mut e, &self.stats)?;
        rule_metrics(&mut e, &self.stats)?;
        counters(
            &mut e,
            "op25b_device_queue_dropped_packets",
            "Packets the kernel dropped at each TUN device's queue towards op25b (op25b too slow to read): the device's tx_dropped.",
            DEVICES.iter().zip(self.queue_drops).filter_map(|(n, d)| Some((vec![("device", *n)], d?))),
        )?;
        service(&mut e, &self.info, self.process.as_ref())
    }
}

/// One scrape's figures.
#[derive(Debug)]
pub(crate) struct Scrape {
    /// The counters.
    pub(crate) stats: Stats,
    /// Reloads and the config's age.
    pub(crate) info: InfoSnapshot,
    /// `None` when /proc could not be read (the rest is still answered).
    pub(crate) process: Option<ProcessFigures>,
    /// The kernel's queue drops of each device, where readable.
    pub(crate) queue_drops: [Option<u64>; 2],
}

/// The metrics text of `scrape` in `format`.
pub(crate) fn render(scrape: Scrape, format: Format) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = match format {
        Format::Classic => prometheus_client::encoding::prometheus_text::encode(&mut out, &registry),
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &registry),
    };
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

    fn scrape(format: Format) -> String {
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
        let info = InfoSnapshot { reloads_ok: 2, reloads_failed: 1, loaded_unix: 1_800_000_000.0 };
        let process = ProcessFigures {
            cpu_seconds: 1.5,
            resident_bytes: 4096,
            virtual_bytes: 8192,
            open_fds: 9,
            max_fds: Some(1024),
            threads: 5,
            start_time_seconds: 1_700_000_000.0,
        };
        render(Scrape { stats: t.stats(), info, process: Some(process), queue_drops: [Some(7), None] }, format)
    }

    #[test]
    fn the_snapshot_in_both_formats() {
        for format in [Format::Classic, Format::OpenMetrics] {
            let text = scrape(format);
            let v = |s: &str| value(&text, s).unwrap_or_else(|| panic!("{s} missing in\n{text}"));
            assert_eq!(v(r#"op25b_received_packets_total{direction="outbound"}"#), 6.0);
            assert_eq!(v(r#"op25b_tunnel_packets_total{kind="gre"}"#), 2.0);
            assert_eq!(v(r#"op25b_tunnel_blocked_packets_total{kind="gre"}"#), 1.0);
            assert_eq!(v(r#"op25b_tunnel_packets_total{kind="vxlan"}"#), 0.0);
            assert_eq!(v(r#"op25b_packets_total{direction="outbound",verdict="reply"}"#), 3.0);
            assert_eq!(v(r#"op25b_packets_total{direction="outbound",verdict="forward"}"#), 2.0);
            assert_eq!(v(r#"op25b_reply_packets_total{direction="outbound",kind="tcp_rst"}"#), 3.0);
            assert_eq!(v(r#"op25b_blocked_packets_total{action="reject"}"#), 3.0);
            // The three SYNs to port 25 share one 4-tuple: one connection attempt.
            assert_eq!(v(r#"op25b_blocked_connections_total{action="reject"}"#), 1.0);
            assert_eq!(v("op25b_monitored_connections_total"), 0.0);
            assert_eq!(v(r#"op25b_config_reloads_total{result="failure"}"#), 1.0);
            assert_eq!(v("op25b_config_last_reload_success_timestamp_seconds"), 1_800_000_000.0);
            assert_eq!(v("process_cpu_seconds_total"), 1.5);
            assert_eq!(v("process_max_fds"), 1024.0);
            assert_eq!(v(r#"op25b_device_queue_dropped_packets_total{device="subscriber"}"#), 7.0);
            assert!(!text.contains(r#"op25b_device_queue_dropped_packets_total{device="upstream"}"#));
            let info = format!("op25b_build_info{{version=\"{}\",revision=\"{REVISION}\"}}", env!("CARGO_PKG_VERSION"));
            assert_eq!(v(&info), 1.0);
        }
        // Classic: the counter's family is named with `_total`, no EOF.
        let classic = scrape(Format::Classic);
        assert!(classic.contains("# HELP op25b_dropped_packets_total Packets dropped"), "{classic}");
        assert!(classic.contains("# TYPE op25b_dropped_packets_total counter"), "{classic}");
        assert!(!classic.contains("# EOF"));
        // OpenMetrics: the family without it, samples with it, then EOF.
        let om = scrape(Format::OpenMetrics);
        assert!(om.contains("# TYPE op25b_dropped_packets counter"), "{om}");
        assert!(om.trim_end().ends_with("# EOF"));
    }

    #[test]
    fn no_family_is_left_without_help_or_type() {
        let text = scrape(Format::Classic);
        let names = |prefix: &str| -> Vec<String> {
            text.lines().filter_map(|l| l.strip_prefix(prefix)?.split(' ').next().map(str::to_string)).collect()
        };
        let (help, types) = (names("# HELP "), names("# TYPE "));
        assert_eq!(help, types);
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap_or_default();
            assert!(types.iter().any(|t| t == name), "{name} has no TYPE line");
        }
        // No label names a subscriber or an address (`op25b top` does that).
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let labels = l.split_once('{').and_then(|(_, r)| r.split_once('}')).map_or("", |(inner, _)| inner);
            for pair in labels.split(',').filter(|p| !p.is_empty()) {
                let key = pair.split('=').next().unwrap_or_default();
                assert!(
                    [
                        "direction",
                        "verdict",
                        "reason",
                        "kind",
                        "action",
                        "rule",
                        "device",
                        "file",
                        "result",
                        "version",
                        "revision"
                    ]
                    .contains(&key),
                    "label {key} in {l}"
                );
            }
        }
    }

    #[test]
    fn the_format_follows_the_accept_header() {
        use Format::*;
        let cases = [
            (None, Classic),
            (Some(""), Classic),
            (Some("text/plain; version=0.0.4"), Classic),
            (Some("text/plain;version=0.0.4;q=0.5,*/*;q=0.1"), Classic),
            (Some("application/openmetrics-text"), OpenMetrics),
            (Some("application/openmetrics-text; version=1.0.0; charset=utf-8"), OpenMetrics),
            // What Prometheus 2.x sends by default.
            (
                Some("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
                OpenMetrics,
            ),
            (Some("text/plain;version=0.0.4,application/openmetrics-text;version=1.0.0;q=0.9"), Classic),
            (Some("text/plain;q=0.2,application/openmetrics-text;q=0.8"), OpenMetrics),
            // A version this encoder does not speak, or a refusal, is not chosen.
            (Some("application/openmetrics-text; version=2.0.0"), Classic),
            (Some("application/openmetrics-text;q=0"), Classic),
            (Some("application/json"), Classic),
            (Some("garbage,,;;=="), Classic),
        ];
        for (accept, want) in cases {
            assert_eq!(Format::negotiate(accept), want, "{accept:?}");
        }
    }
}
