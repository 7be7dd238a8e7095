//! The memory of the redirect flow table, measured: a router with
//! `action = "redirect"` and the default `max_flows` takes a flood of SYNs
//! from forged subscriber sources (each answered by the relay's SYN-ACK, as
//! a relay with SYN cookies does), and the process's resident memory
//! (VmRSS) is read before the first redirected packet, after the flood, and
//! after a second flood as large. The figure for the table in docs/SECURITY.md comes
//! from this run.
//!
//! `cargo run --release --example redirect_flood [SYNS] [MAX_FLOWS]`
//! (defaults: 100,000 forged SYNs, 65,536 flows). Linux only (/proc).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use op25b::testing::lab::{DYN4, MX4, RELAY4};
use op25b::testing::packets::tcp;
use op25b::testing::PolicyBuilder;
use op25b::{Direction, DropReason, Router, RxInfo, Verdict};

fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status (Linux only)");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// A router and its buffers: packets in, verdicts out.
struct Feeder {
    router: Router,
    buf: Vec<u8>,
    reply: Vec<u8>,
}

impl Feeder {
    fn handle(&mut self, now: Instant, dir: Direction, pkt: &[u8]) -> Verdict {
        self.buf[..pkt.len()].copy_from_slice(pkt);
        self.router.handle(now, dir, &mut self.buf[..pkt.len()], &mut self.reply, RxInfo::default())
    }

    /// `syns` SYNs from new forged sources, numbered from `base`, each
    /// answered by the relay; how many the table refused.
    fn flood(&mut self, t0: Instant, syns: u64, base: u32) -> u64 {
        let mut refused = 0;
        for i in base..base + syns as u32 {
            // A new dynamic source for each SYN (from 100.80.0.0, inside
            // 100.64.0.0/10); 10 us apart, the flood lasts a second per
            // 100,000 SYNs, well inside a forged flow's lifetime.
            let now = t0 + Duration::from_micros(u64::from(i) * 10);
            let src = Ipv4Addr::from(0x6450_0000 + (i & 0x000f_ffff)).to_string();
            match self.handle(now, Direction::Outbound, &tcp(&src, 40000, MX4, 25).seq(i).syn().build()) {
                Verdict::Forward { .. } => {
                    let synack = tcp(RELAY4, 25, &src, 40000).seq(!i).syn().ack(i.wrapping_add(1)).build();
                    let _ = self.handle(now, Direction::Inbound, &synack);
                }
                Verdict::Drop(DropReason::ConntrackFull) => refused += 1,
                other => panic!("forged SYN {i}: {other:?}"),
            }
        }
        refused
    }
}

fn main() {
    let args: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let syns = args.first().copied().unwrap_or(100_000);
    let max_flows = args.get(1).copied().unwrap_or(65_536);
    let policy = PolicyBuilder::lab()
        .action("redirect")
        .op25b("redirect_to", r#"["198.51.100.25:25", "[2001:db8:25::25]:25"]"#)
        .op25b("max_flows", max_flows)
        .policy();
    let mut f = Feeder { router: Router::new(policy), buf: vec![0; 2048], reply: vec![0; 2048] };
    let t0 = Instant::now();
    let before = vm_rss_kib();

    // One real connection, established before the flood.
    let real = |seq: u32| tcp(DYN4, 40000, MX4, 25).seq(seq);
    let _ = f.handle(t0, Direction::Outbound, &real(7).syn().build());
    let _ = f.handle(t0, Direction::Inbound, &tcp(RELAY4, 25, DYN4, 40000).seq(1000).syn().ack(8).build());
    let _ = f.handle(t0, Direction::Outbound, &real(8).ack(1001).build());

    let refused = f.flood(t0, syns, 0);
    let after = vm_rss_kib();
    let refused2 = f.flood(t0, syns, syns as u32);
    let again = vm_rss_kib();
    let s = f.router.stats();
    println!("max_flows {max_flows}, {syns} forged SYNs (each with the relay's SYN-ACK) per flood");
    println!("VmRSS before the first redirected packet: {:.1} MiB", mib(before));
    println!("VmRSS after the flood:                    {:.1} MiB (+{:.1} MiB)", mib(after), mib(after - before));
    println!("VmRSS after a second flood as large:      {:.1} MiB", mib(again));
    println!("refused as conntrack_full: {refused} then {refused2}; redirected packets: {}", s.op25b.redirected);
    println!("{}", s.summary());
}
