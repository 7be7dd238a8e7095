//! Criterion benches of the core: ns per packet through `Router::handle` for the
//! verdicts that matter, with policy tables of 1, 100 and 10,000 prefixes.

use std::hint::black_box;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use op25b::testing::lab::{DYN4, DYN6, MX4, MX6};
use op25b::testing::packets::{tcp, udp};
use op25b::testing::PolicyBuilder;
use op25b::{Direction, Router, RxInfo, Verdict};

/// A TOML array of strings.
fn list(items: impl Iterator<Item = String>) -> String {
    let quoted: Vec<String> = items.map(|s| format!("{s:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

/// The lab policy with `n` extra dynamic, exempt and relay prefixes of each
/// family that the benched packets do not hit (so every lookup searches the
/// whole table).
fn router(n: usize) -> Router {
    let v4 = |base: u32| move |i: usize| format!("{}/32", Ipv4Addr::from(base + 2 * i as u32));
    let v6 = |base: u128| move |i: usize| format!("{}/128", Ipv6Addr::from(base + 2 * i as u128));
    let lab = |prefixes: &'static [&'static str]| prefixes.iter().map(|p| p.to_string());
    let policy = PolicyBuilder::lab()
        .named("bench.toml")
        .op25b(
            "dynamic",
            list(
                lab(&["100.64.0.0/10", "2001:db8:100::/48"])
                    .chain((1..n).map(v4(0x0a00_0000)))
                    .chain((1..n).map(v6(0x2001_0db8_0a00_0000_0000_0000_0000_0000))),
            ),
        )
        .op25b(
            "exempt_sources",
            list(lab(&["100.64.9.0/24", "2001:db8:100:9::/64"]).chain((1..n).map(v4(0x0b00_0000)))),
        )
        .op25b("relays", list(lab(&["198.51.100.25/32", "2001:db8:25::25/128"]).chain((1..n).map(v4(0x0c00_0000)))))
        .policy();
    assert!(policy.op25b.dynamic.len() >= n);
    Router::new(policy)
}

/// From the dynamic subscriber: an ACK with `payload` zero bytes, or a SYN.
fn tcp4(dport: u16, syn: bool, payload: usize) -> Vec<u8> {
    let b = tcp(DYN4, 40000, MX4, dport).payload(&vec![0; payload]);
    if syn { b.syn() } else { b.ack(1) }.build()
}

fn tcp6(dport: u16, payload: usize) -> Vec<u8> {
    tcp(DYN6, 40000, MX6, dport).ack(1).payload(&vec![0; payload]).build()
}

fn udp4(payload: usize) -> Vec<u8> {
    udp(DYN4, 40000, MX4, 9, &vec![0; payload])
}

fn bench(c: &mut Criterion) {
    let cases: [(&str, Vec<u8>); 5] = [
        ("forward_tcp4_1500", tcp4(587, false, 1460)),
        ("forward_tcp6_1500", tcp6(587, 1440)),
        ("forward_udp4_64", udp4(36)),
        ("blocked_syn4_rst", tcp4(25, true, 0)),
        ("blocked_ack4_drop", tcp4(25, false, 0)),
    ];
    let mut group = c.benchmark_group("router");
    group.throughput(Throughput::Elements(1));
    {
        // What the measuring loop costs without the router (restoring the
        // rewritten bytes, black_box): subtract it to get the router's own cost.
        let mut buf = cases[0].1.clone();
        group.bench_function("harness_only", |b| {
            b.iter(|| {
                let saved = [buf[7], buf[8], buf[10], buf[11]];
                black_box(&mut buf);
                [buf[7], buf[8], buf[10], buf[11]] = saved;
                let _ = black_box(Verdict::Forward { len: buf.len() });
            })
        });
    }
    for prefixes in [1usize, 100, 10_000] {
        let mut r = router(prefixes);
        let now = Instant::now();
        let mut reply = vec![0u8; 2048];
        for (name, pkt) in &cases {
            let mut buf = pkt.clone();
            let expect_forward = matches!(
                r.handle(now, Direction::Outbound, &mut buf.clone(), &mut reply, RxInfo::default()),
                Verdict::Forward { .. }
            );
            assert_eq!(expect_forward, name.starts_with("forward"), "{name}");
            group.bench_with_input(BenchmarkId::new(*name, prefixes), &prefixes, |b, _| {
                b.iter(|| {
                    // Forwarding rewrites TTL and checksum in place: restore
                    // those 4 bytes rather than copying the whole packet.
                    let saved = [buf[7], buf[8], buf[10], buf[11]];
                    let v = r.handle(now, Direction::Outbound, black_box(&mut buf), &mut reply, RxInfo::default());
                    [buf[7], buf[8], buf[10], buf[11]] = saved;
                    // std's black_box, not a return value: criterion 0.5 without
                    // `real_blackbox` reads what the closure returns byte by byte
                    // with volatile loads, which cost more than the router here.
                    let _ = black_box(v);
                })
            });
        }
    }
    group.finish();
    abuse_handoff(c);
}

/// A blocked SYN as a worker handles it with `[abuse]` on: the router notes
/// the block, the worker takes it and queues the attempt for the abuse
/// thread (here a thread that drains the queue), against the same SYN with
/// nothing noted.
fn abuse_handoff(c: &mut Criterion) {
    use op25b::state::abuse::{Abuse, AbuseSettings, Attempt, Quarantine};
    use std::sync::Arc;
    let mut group = c.benchmark_group("abuse");
    group.throughput(Throughput::Elements(1));
    let pkt = tcp4(25, true, 0);
    let now = Instant::now();
    let mut reply = vec![0u8; 2048];
    for noted in [false, true] {
        let mut r = Router::new(PolicyBuilder::lab().unlimited_replies().policy());
        r.note_blocks(noted);
        let (tx, rx) = std::sync::mpsc::sync_channel::<Attempt>(op25b::dataplane::events::ATTEMPT_QUEUE);
        // The real abuse thread, thresholds out of reach: what it does with
        // the attempts is what the data plane's run does.
        let mut settings = AbuseSettings::default();
        settings.thresholds.attempts = u32::MAX;
        settings.thresholds.destinations = u32::MAX;
        let abuse = Arc::new(Abuse::new(settings, Arc::new(Quarantine::default())));
        let drain = op25b::control::abuse::start(abuse, rx, None, Default::default()).expect("abuse thread");
        let mut buf = pkt.clone();
        let name = if noted { "blocked_syn4_rst_to_abuse_queue" } else { "blocked_syn4_rst_not_noted" };
        group.bench_function(name, |b| {
            b.iter(|| {
                let v = r.handle(now, Direction::Outbound, black_box(&mut buf), &mut reply, RxInfo::default());
                if let Some(block) = r.take_block() {
                    let a = Attempt { at: now, src: block.src.ip(), dst: block.dst.ip(), monitor: false };
                    let _ = black_box(tx.try_send(a));
                }
                let _ = black_box(v);
            })
        });
        drop(tx);
        drain.join();
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
