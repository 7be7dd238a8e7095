//! Criterion benches of the rule pipeline: ns per packet with 1, 10 and 100
//! config rules, and with 1, 100 and 10,000 prefixes in a rule's sets. The
//! packet passes every rule (the worst case for a linear scan) and is forwarded.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use op25b::testing::lab::MX4;
use op25b::testing::packets::tcp;
use op25b::testing::PolicyBuilder;
use op25b::{Direction, Router, RxInfo, Verdict};

/// `n` rules that look at TCP but never match the benched packet (their
/// destination ports differ), each with `prefixes` source prefixes.
fn router(n: usize, prefixes: usize) -> Router {
    let srcs: Vec<String> =
        (0..prefixes).map(|i| format!("\"{}/32\"", Ipv4Addr::from(0x6440_0000u32 + 2 * i as u32))).collect();
    let mut text = format!("[sets]\nsubs = [{}]\n", srcs.join(", "));
    for i in 0..n {
        text.push_str(&format!(
            "\n[[rule]]\nname = \"r{i}\"\ndirection = \"outbound\"\nprotocol = \"tcp\"\nsrc = [\"@subs\"]\ndst_ports = [{}]\naction = \"drop\"\n",
            10_000 + i
        ));
    }
    Router::new(PolicyBuilder::lab().named("bench.toml").rules(&text).policy())
}

fn bench(c: &mut Criterion) {
    let pkt = tcp("100.64.0.0", 40000, MX4, 587).ack(1).payload(&[0u8; 1460]).build();
    let mut group = c.benchmark_group("rules");
    group.throughput(Throughput::Elements(1));
    let mut reply = vec![0u8; 2048];
    for (rules, prefixes) in [(0, 1), (1, 1), (10, 1), (100, 1), (100, 100), (100, 10_000)] {
        let mut r = router(rules, prefixes);
        let now = Instant::now();
        let mut buf = pkt.clone();
        assert!(matches!(
            r.handle(now, Direction::Outbound, &mut buf.clone(), &mut reply, RxInfo::default()),
            Verdict::Forward { .. }
        ));
        let id = format!("{rules}rules_{prefixes}prefixes");
        group.bench_with_input(BenchmarkId::new("forward_tcp4_1500", id), &rules, |b, _| {
            b.iter(|| {
                let saved = [buf[8], buf[10], buf[11]];
                let v = r.handle(now, Direction::Outbound, black_box(&mut buf), &mut reply, RxInfo::default());
                [buf[8], buf[10], buf[11]] = saved;
                // std's black_box, not a return value (see benches/core.rs).
                let _ = black_box(v);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
