//! Instruction counts per packet through `Router::handle`, for callgrind
//! (`scripts/callgrind.sh`): unlike timings they do not move with the
//! machine's noise. `instructions CASE N` runs one case N times; the script
//! counts only inside `Router::handle` (callgrind's --toggle-collect) and
//! divides by N.

use std::hint::black_box;
use std::time::Instant;

use op25b::testing::lab::{DYN4, DYN6, MX4, MX6};
use op25b::testing::packets::{tcp, udp};
use op25b::testing::PolicyBuilder;
use op25b::{Direction, Router, RxInfo};

/// From the dynamic subscriber: an ACK with `payload` zero bytes, or a SYN.
fn tcp4(dport: u16, syn: bool, payload: usize) -> Vec<u8> {
    let b = tcp(DYN4, 40000, MX4, dport).payload(&vec![0; payload]);
    if syn { b.syn() } else { b.ack(1) }.build()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    const USAGE: &str = "usage: instructions CASE N (CASE: forward_tcp4 forward_tcp6 forward_udp4 blocked_syn4 blocked_syn4_rst blocked_ack4)";
    // `cargo bench` passes --bench, `cargo test --all-targets` nothing: only
    // scripts/callgrind.sh runs a case, so there is nothing to do then.
    if args.get(1).is_none_or(|a| a.starts_with("--")) {
        eprintln!("{USAGE}");
        return;
    }
    let (Some(case), Some(n)) = (args.get(1), args.get(2).and_then(|n| n.parse::<u64>().ok())) else {
        eprintln!("{USAGE}");
        std::process::exit(2);
    };
    let pkt = match case.as_str() {
        "forward_tcp4" => tcp4(587, false, 1460),
        "forward_tcp6" => tcp(DYN6, 40000, MX6, 587).ack(1).payload(&[0; 1440]).build(),
        "forward_udp4" => udp(DYN4, 40000, MX4, 9, &[0; 36]),
        "blocked_syn4" | "blocked_syn4_rst" => tcp4(25, true, 0),
        "blocked_ack4" => tcp4(25, false, 0),
        other => {
            eprintln!("unknown case {other}");
            std::process::exit(2);
        }
    };
    // The lab config; blocked_syn4 soon runs over the reply limit (as a SYN
    // flood would), blocked_syn4_rst lifts it so every SYN builds its RST.
    let mut policy = PolicyBuilder::lab();
    if case == "blocked_syn4_rst" {
        policy = policy.unlimited_replies();
    }
    let mut r = Router::new(policy.policy());
    let now = Instant::now();
    let mut reply = vec![0u8; 2048];
    let mut buf = pkt.clone();
    for _ in 0..n {
        let saved = [buf[7], buf[8], buf[10], buf[11]];
        let v = r.handle(now, Direction::Outbound, black_box(&mut buf), &mut reply, RxInfo::default());
        [buf[7], buf[8], buf[10], buf[11]] = saved;
        let _ = black_box(v);
    }
}
