//! Criterion benches of the core: ns per packet through `Router::handle` for the
//! verdicts that matter, with policy tables of 1, 100 and 10,000 prefixes.

use std::hint::black_box;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use etherparse::PacketBuilder;
use op25b::{Config, Direction, Router, Verdict};

const LAB: &str = include_str!("../config/lab.toml");

/// The lab policy with `n` extra dynamic, exempt and relay prefixes of each
/// family that the benched packets do not hit (so every lookup searches the
/// whole table).
fn router(n: usize) -> Router {
    let v4 = |i: usize, base: u32| format!("\"{}/32\"", Ipv4Addr::from(base + 2 * i as u32));
    let v6 = |i: usize, base: u128| format!("\"{}/128\"", Ipv6Addr::from(base + 2 * i as u128));
    let extra = |f: &dyn Fn(usize) -> String| (1..n).map(f).collect::<Vec<_>>().join(", ");
    let dyn4 = extra(&|i| v4(i, 0x0a00_0000));
    let exempt4 = extra(&|i| v4(i, 0x0b00_0000));
    let relay4 = extra(&|i| v4(i, 0x0c00_0000));
    let dyn6 = extra(&|i| v6(i, 0x2001_0db8_0a00_0000_0000_0000_0000_0000));
    let sep = |s: &str| {
        if s.is_empty() {
            String::new()
        } else {
            format!(", {s}")
        }
    };
    let text = LAB
        .replacen(
            "dynamic = [\"100.64.0.0/10\", \"2001:db8:100::/48\"]",
            &format!("dynamic = [\"100.64.0.0/10\", \"2001:db8:100::/48\"{}{}]", sep(&dyn4), sep(&dyn6)),
            1,
        )
        .replacen(
            "exempt_sources = [\"100.64.9.0/24\"",
            &format!("exempt_sources = [\"100.64.9.0/24\"{}", sep(&exempt4)),
            1,
        )
        .replacen("relays = [\"198.51.100.25/32\"", &format!("relays = [\"198.51.100.25/32\"{}", sep(&relay4)), 1);
    let cfg = Config::parse(Path::new("bench.toml"), &text).expect("bench config");
    assert!(cfg.policy.op25b.dynamic.len() >= n);
    Router::new(Arc::new(cfg.policy))
}

fn tcp4(dport: u16, syn: bool, payload: usize) -> Vec<u8> {
    let b = PacketBuilder::ipv4([100, 64, 1, 10], [203, 0, 113, 25], 64).tcp(40000, dport, 1, 64240);
    let b = if syn { b.syn() } else { b.ack(1) };
    let mut v = Vec::new();
    b.write(&mut v, &vec![0; payload]).unwrap();
    v
}

fn tcp6(dport: u16, payload: usize) -> Vec<u8> {
    let src: Ipv6Addr = "2001:db8:100:1::10".parse().unwrap();
    let dst: Ipv6Addr = "2001:db8:203::25".parse().unwrap();
    let mut v = Vec::new();
    PacketBuilder::ipv6(src.octets(), dst.octets(), 64)
        .tcp(40000, dport, 1, 64240)
        .ack(1)
        .write(&mut v, &vec![0; payload])
        .unwrap();
    v
}

fn udp4(payload: usize) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ipv4([100, 64, 1, 10], [203, 0, 113, 25], 64)
        .udp(40000, 9)
        .write(&mut v, &vec![0; payload])
        .unwrap();
    v
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
            let expect_forward =
                matches!(r.handle(now, Direction::Outbound, &mut buf.clone(), &mut reply), Verdict::Forward { .. });
            assert_eq!(expect_forward, name.starts_with("forward"), "{name}");
            group.bench_with_input(BenchmarkId::new(*name, prefixes), &prefixes, |b, _| {
                b.iter(|| {
                    // Forwarding rewrites TTL and checksum in place: restore
                    // those 4 bytes rather than copying the whole packet.
                    let saved = [buf[7], buf[8], buf[10], buf[11]];
                    let v = r.handle(now, Direction::Outbound, black_box(&mut buf), &mut reply);
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
}

criterion_group!(benches, bench);
criterion_main!(benches);
