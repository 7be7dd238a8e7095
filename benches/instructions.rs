//! Instruction counts per packet through `Router::handle`, for callgrind
//! (`scripts/callgrind.sh`): unlike timings they do not move with the
//! machine's noise. `instructions CASE N` runs one case N times; the script
//! counts only inside `Router::handle` (callgrind's --toggle-collect) and
//! divides by N.

use std::hint::black_box;
use std::net::Ipv6Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use etherparse::PacketBuilder;
use op25b::{Config, Direction, Router, RxInfo};

fn tcp4(dport: u16, syn: bool, payload: usize) -> Vec<u8> {
    let b = PacketBuilder::ipv4([100, 64, 1, 10], [203, 0, 113, 25], 64).tcp(40000, dport, 1, 64240);
    let b = if syn { b.syn() } else { b.ack(1) };
    let mut v = Vec::new();
    b.write(&mut v, &vec![0; payload]).expect("tcp4");
    v
}

fn tcp6(dport: u16, payload: usize) -> Vec<u8> {
    let src: Ipv6Addr = "2001:db8:100:1::10".parse().expect("v6");
    let dst: Ipv6Addr = "2001:db8:203::25".parse().expect("v6");
    let mut v = Vec::new();
    PacketBuilder::ipv6(src.octets(), dst.octets(), 64)
        .tcp(40000, dport, 1, 64240)
        .ack(1)
        .write(&mut v, &vec![0; payload])
        .expect("tcp6");
    v
}

fn udp4(payload: usize) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ipv4([100, 64, 1, 10], [203, 0, 113, 25], 64)
        .udp(40000, 9)
        .write(&mut v, &vec![0; payload])
        .expect("udp4");
    v
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(case), Some(n)) = (args.get(1), args.get(2).and_then(|n| n.parse::<u64>().ok())) else {
        eprintln!("usage: instructions CASE N (CASE: forward_tcp4 forward_tcp6 forward_udp4 blocked_syn4 blocked_syn4_rst blocked_ack4)");
        std::process::exit(2);
    };
    // Criterion passes --bench when run through `cargo bench`: nothing to do then.
    let pkt = match case.as_str() {
        "forward_tcp4" => tcp4(587, false, 1460),
        "forward_tcp6" => tcp6(587, 1440),
        "forward_udp4" => udp4(36),
        "blocked_syn4" | "blocked_syn4_rst" => tcp4(25, true, 0),
        "blocked_ack4" => tcp4(25, false, 0),
        other => {
            eprintln!("unknown case {other}");
            std::process::exit(2);
        }
    };
    // The lab config; blocked_syn4 soon runs over the reply limit (as a SYN
    // flood would), blocked_syn4_rst lifts it so every SYN builds its RST.
    let mut text = include_str!("../config/lab.toml").to_string();
    if case == "blocked_syn4_rst" {
        text = text
            .replace("reply_rate = 10", "reply_rate = 1000000")
            .replace("reply_burst = 20", "reply_burst = 1000000");
    }
    let cfg = Config::parse(Path::new("lab.toml"), &text).expect("lab config");
    let mut r = Router::new(Arc::new(cfg.policy));
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
