//! Instruction counts per packet through `Router::handle`, for callgrind
//! (`scripts/callgrind.sh`): unlike timings they do not move with the
//! machine's noise. `instructions CASE N` runs one case N times; the script
//! counts only inside `Router::handle` (callgrind's --toggle-collect) and
//! divides by N.

use std::hint::black_box;
use std::time::Instant;

use op25b::packet::TunnelKind;
use op25b::testing::lab::{DYN4, DYN6, MX4, MX6, RELAY4};
use op25b::testing::packets::{tcp, udp};
use op25b::testing::PolicyBuilder;
use op25b::{Direction, Router, RxInfo};

/// From the dynamic subscriber: an ACK with `payload` zero bytes, or a SYN.
fn tcp4(dport: u16, syn: bool, payload: usize) -> Vec<u8> {
    let b = tcp(DYN4, 40000, MX4, dport).payload(&vec![0; payload]);
    if syn { b.syn() } else { b.ack(1) }.build()
}

/// `redirect_to` of the redirect cases: the lab's relay.
const REDIRECT_TO: &str = r#"["198.51.100.25:25", "[2001:db8:25::25]:25"]"#;

/// The redirect cases: `redirect_data4`, one data segment of an established
/// redirected flow (the forward path of a redirected connection), and
/// `redirect_flood4`, a forged-source SYN (a new subscriber address each
/// time) and the relay's SYN-ACK to it, past the table's bound: what a
/// forger's flood costs. Per iteration.
fn redirect_case(case: &str, n: u64) {
    let mut r = Router::new(PolicyBuilder::lab().action("redirect").op25b("redirect_to", REDIRECT_TO).policy());
    let now = Instant::now();
    let mut reply = vec![0u8; 2048];
    let mut run = |dir, pkt: &[u8], buf: &mut Vec<u8>| {
        buf.clear();
        buf.extend_from_slice(pkt);
        let v = r.handle(now, dir, black_box(buf), &mut reply, RxInfo::default());
        let _ = black_box(v);
    };
    let mut buf = Vec::with_capacity(2048);
    if case == "redirect_data4" {
        run(Direction::Outbound, &tcp(DYN4, 40000, MX4, 25).seq(7).syn().build(), &mut buf);
        run(Direction::Inbound, &tcp(RELAY4, 25, DYN4, 40000).seq(1000).syn().ack(8).build(), &mut buf);
        let data = tcp(DYN4, 40000, MX4, 25).seq(8).ack(1001).payload(&[0; 1460]).build();
        for _ in 0..n {
            run(Direction::Outbound, &data, &mut buf);
        }
        return;
    }
    // Up to 2^20 forged sources from 100.80.0.0 (inside 100.64.0.0/10), built beforehand.
    let forged: Vec<(Vec<u8>, Vec<u8>)> = (0..n as u32)
        .map(|i| {
            let src = std::net::Ipv4Addr::from(0x6450_0000 + (i & 0x000f_ffff)).to_string();
            let syn = tcp(&src, 40000, MX4, 25).seq(i).syn().build();
            let synack = tcp(RELAY4, 25, &src, 40000).seq(!i).syn().ack(i.wrapping_add(1)).build();
            (syn, synack)
        })
        .collect();
    for (syn, synack) in &forged {
        run(Direction::Outbound, syn, &mut buf);
        run(Direction::Inbound, synack, &mut buf);
    }
}

/// A program rule on new connections (`tcp_flags = "syn"`, port_block.wasm
/// of rules/examples): `program_unseen4` is an ACK the rule's fields keep
/// from the program (what every other packet pays for the feature),
/// `program_seen4` a SYN to 587 the program runs on (it counts it);
/// `count_rule_unseen4` the same ACK past a config rule with the same fields
/// and `action = "count"`, for comparison.
fn program_case(case: &str, n: u64) {
    let Some(dir) = std::env::var_os("OP25B_PROGRAMS") else {
        eprintln!("{case}: set OP25B_PROGRAMS to the directory rules/examples/build.sh built into");
        std::process::exit(2);
    };
    let path = std::path::Path::new(&dir).join("port_block.wasm");
    let fields = "[[rule]]\nname = \"new\"\nprotocol = \"tcp\"\ntcp_flags = \"syn\"\n";
    let rule = if case == "count_rule_unseen4" {
        format!("{fields}action = \"count\"\n")
    } else {
        format!("{fields}program = {:?}\n", path.display().to_string())
    };
    let mut r = Router::new(PolicyBuilder::lab().rules(&rule).unlimited_replies().policy());
    let pkt = if case == "program_seen4" { tcp4(587, true, 0) } else { tcp4(587, false, 1460) };
    let now = Instant::now();
    let mut reply = vec![0u8; 2048];
    let mut buf = Vec::with_capacity(2048);
    for _ in 0..n {
        buf.clear();
        buf.extend_from_slice(&pkt);
        let v = r.handle(now, Direction::Outbound, black_box(&mut buf), &mut reply, RxInfo::default());
        let _ = black_box(v);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    const USAGE: &str = "usage: instructions CASE N (CASE: forward_tcp4 forward_tcp6 forward_udp4 blocked_syn4 blocked_syn4_new blocked_syn4_rst blocked_ack4 redirect_data4 redirect_flood4 program_unseen4 program_seen4 count_rule_unseen4 tunnel_gre4 tunnel_gre_blocked4; the program cases read rules/examples' port_block.wasm from $OP25B_PROGRAMS)";
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
    if case == "redirect_data4" || case == "redirect_flood4" {
        redirect_case(case, n);
        return;
    }
    if case == "program_unseen4" || case == "program_seen4" || case == "count_rule_unseen4" {
        program_case(case, n);
        return;
    }
    let pkt = match case.as_str() {
        "forward_tcp4" => tcp4(587, false, 1460),
        "forward_tcp6" => tcp(DYN6, 40000, MX6, 587).ack(1).payload(&[0; 1440]).build(),
        "forward_udp4" => udp(DYN4, 40000, MX4, 9, &[0; 36]),
        "blocked_syn4" | "blocked_syn4_new" | "blocked_syn4_rst" => tcp4(25, true, 0),
        "blocked_ack4" => tcp4(25, false, 0),
        // A tunnel of a dynamic address: GRE around a SYN, judged inside.
        "tunnel_gre4" | "tunnel_gre_blocked4" => {
            let port = if case == "tunnel_gre4" { 587 } else { 25 };
            let inner = tcp("10.0.0.1", 40000, MX4, port).syn().build();
            let (src, dst) = (DYN4.parse().unwrap(), MX4.parse().unwrap());
            op25b::packet::encap::encapsulate(TunnelKind::Gre, src, dst, 64, &inner, &Default::default()).unwrap()
        }
        other => {
            eprintln!("unknown case {other}");
            std::process::exit(2);
        }
    };
    // The lab config; blocked_syn4 soon runs over the reply limit (as a SYN
    // flood would), blocked_syn4_rst lifts it so every SYN builds its RST.
    // blocked_syn4 sends one SYN again and again (a retransmission after the
    // first); blocked_syn4_new gives each SYN a new source port (a new
    // connection attempt each, as a flood of new connections would).
    let mut policy = PolicyBuilder::lab();
    if case == "blocked_syn4_rst" {
        policy = policy.unlimited_replies();
    }
    let mut r = Router::new(policy.policy());
    let now = Instant::now();
    let mut reply = vec![0u8; 2048];
    let mut buf = pkt.clone();
    let new_ports = case == "blocked_syn4_new";
    for i in 0..n {
        if new_ports {
            // The TCP source port (after the 20-byte IPv4 header); the
            // router does not check the TCP checksum on this path. Past
            // 60,000 ports the clock moves beyond the retry window.
            buf[20..22].copy_from_slice(&(1024 + (i % 60_000) as u16).to_be_bytes());
        }
        let at = if new_ports { now + std::time::Duration::from_secs(76 * (i / 60_000)) } else { now };
        let saved = [buf[7], buf[8], buf[10], buf[11]];
        let v = r.handle(at, Direction::Outbound, black_box(&mut buf), &mut reply, RxInfo::default());
        [buf[7], buf[8], buf[10], buf[11]] = saved;
        let _ = black_box(v);
    }
}
