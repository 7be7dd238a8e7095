//! The bodies of op25b's fuzz targets, one function per target taking the
//! fuzzer's bytes. The targets in `fuzz_targets/` only call these; the crate's
//! own `tests/fuzz_regressions.rs` includes this file too (by path, no
//! dependency on this crate) and runs every saved crash input and seed through
//! the same functions, so a regression needs no cargo-fuzz to be tested.
//!
//! Each function panics only when op25b breaks a promise: a panic inside
//! op25b, or a property checked here (a config error that names no line, a
//! reply that is not a well-formed packet, ...).

pub mod router;
pub mod structured;
mod wire;

use std::path::Path;
use std::time::Instant;

use op25b::config::{Config, ConfigError};
use op25b::packet::{Direction, PacketView};
use op25b::tools::spec::PacketSpec;

/// `router_raw`: arbitrary bytes as a sequence of packets (see
/// [`router::Script`]) through a router under one of the fuzzing policies.
pub fn router_raw(data: &[u8]) {
    router::Script::new(data).run();
}

/// `router_structured`: a sequence of well-formed (or deliberately bent)
/// packets described by [`structured::Input`].
pub fn router_structured(data: &[u8]) {
    structured::run(data);
}

/// `config`: arbitrary text through the config parser. Either a config (which
/// renders and drives a router) or an error naming the file and a line of the
/// text: `FILE:LINE: KEY: MESSAGE`, the line between 1 and the text's last.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = Path::new("fuzz.toml");
    match Config::parse(path, text) {
        Ok(config) => {
            let _ = config.render();
            let policy = std::sync::Arc::new(config.policy);
            let mut r = op25b::Router::new(policy);
            let mut reply = vec![0u8; 2048];
            for pkt in router::sample_packets() {
                for dir in Direction::ALL {
                    let mut buf = pkt.clone();
                    let _ = r.handle(Instant::now(), dir, &mut buf, &mut reply, op25b::RxInfo::default());
                }
            }
        }
        Err(e) => {
            let shown = e.to_string();
            let ConfigError::Invalid { file, line, key, message, excerpt } = &e else {
                panic!("parsing text gave a non-parse error: {shown}");
            };
            let lines = text.bytes().filter(|b| *b == b'\n').count() + 1;
            assert_eq!(file, path, "{shown}");
            assert!((1..=lines).contains(line), "line {line} of a {lines}-line text: {shown}");
            assert!(!key.is_empty() && !message.is_empty(), "{shown}");
            assert!(shown.starts_with(&format!("fuzz.toml:{line}: ")), "{shown}");
            assert!(!shown.contains('\n'), "an error is one line: {shown:?}");
            if let Some(x) = excerpt {
                // The excerpt is the error's line of the text, the span inside it.
                let of_line = text.split('\n').nth(line - 1).map(|l| l.trim_end_matches('\r'));
                assert_eq!(of_line, Some(x.text.as_str()), "{shown}");
                assert!(x.span.start <= x.span.end && x.span.end <= x.text.len(), "{shown}: {x:?}");
                assert!(x.text.is_char_boundary(x.span.start) && x.text.is_char_boundary(x.span.end), "{x:?}");
            }
            // The form a person sees: the one line first, whatever the excerpt holds.
            for color in [false, true] {
                let _ = e.render(color);
            }
            let plain = e.render(false);
            assert_eq!(plain.lines().next(), Some(format!("error: {shown}").as_str()), "{plain}");
        }
    }
}

/// `spec`: arbitrary text through the `check --packet` notation. A spec that
/// parses builds a packet (or says why not) that op25b parses back with the
/// addresses, protocol and TTL asked for, and that a router judges with a trace.
pub fn spec(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(spec) = PacketSpec::parse(text) else { return };
    let Ok(bytes) = spec.build() else { return };
    let view = PacketView::parse(&bytes).unwrap_or_else(|e| panic!("{text:?} built an unparsable packet: {e:?}"));
    assert_eq!((view.src, view.dst, view.ttl), (spec.src, spec.dst, spec.ttl), "{text:?}");
    if let Some(len) = spec.len {
        let header = if spec.src.is_ipv4() { 20 } else { 40 };
        let least = header + if spec.protocol == "tcp" { 20 } else { 8 };
        assert_eq!(bytes.len(), len.max(least), "{text:?}: the length asked for, or the least there is");
    }
    let mut buf = bytes;
    let mut r = router::router(0);
    let mut reply = vec![0u8; 2048];
    let (_, trace) = r.handle_traced(Instant::now(), Direction::Outbound, &mut buf, &mut reply);
    assert!(!trace.steps.is_empty(), "{text:?}: an empty trace");
}

/// `replay`: arbitrary bytes as a capture (pcap or pcapng, told apart by
/// their first bytes) through `op25b replay`'s reading entry point,
/// [`op25b::tools::replay::replay_from`]: every record is judged or skipped,
/// and the per-record lines agree with the report.
pub fn replay(data: &[u8]) {
    let mut r = router::router(0);
    let prefixes = r.policy().subscriber_prefixes.clone();
    let opts = op25b::tools::replay::ReplayOptions::default();
    let mut lines = 0u64;
    let mut skipped = 0u64;
    let mut each = |line: &op25b::tools::replay::PacketLine| {
        lines += 1;
        assert_eq!(line.record, lines, "records in order");
        skipped += u64::from(line.verdict == "skipped");
    };
    if let Ok(report) = op25b::tools::replay::replay_from(&mut r, &prefixes, data, &opts, &mut each) {
        let judged: u64 = report.verdicts.values().sum();
        assert_eq!(report.packets, judged + report.skipped, "{report:?}");
        assert_eq!((report.packets, report.skipped), (lines, skipped), "{report:?}");
    }
}
