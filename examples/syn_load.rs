//! Blocked SYNs for the benchmark and the soak, run inside a lab's
//! subscriber namespace (`op25b lab exec -- syn_load ...`); one JSON line on
//! standard output.
//!
//!   syn_load probe COUNT PORT DST4 DST6
//!     COUNT connections to DST:PORT, IPv4 and IPv6 alternating, 20 ms apart;
//!     one refused (RST) within 2 s counts as answered:
//!     {"sent_v4", "answered_v4", "sent_v6", "answered_v6", "median_ms", "max_ms"}
//!   syn_load flood PPS SECS DST PORT
//!     SYNs to DST:PORT (IPv4) from forged sources in 100.64.200.0/24 (random hosts,
//!     ports and sequence numbers; inside the subscriber prefixes and the
//!     dynamic pool, so a router blocks every one), PPS a second for SECS
//!     seconds at most, on a raw socket (IPPROTO_RAW: the IP header is ours):
//!     {"sent", "secs", "pps", "errors"}
//!
//! Packets are built with etherparse (`op25b::testing::packets`).

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use op25b::testing::packets::tcp;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Distinct SYNs, built before the clock starts and sent round robin.
const POOL: usize = 4096;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["probe", count, port, dst4, dst6] => (|| Some(probe(count.parse().ok()?, port.parse().ok()?, [dst4, dst6])))(),
        ["flood", pps, secs, dst, port] => (|| flood(pps.parse().ok()?, secs.parse().ok()?, dst, port.parse().ok()?))(),
        _ => None,
    };
    match out {
        Some(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        None => {
            eprintln!("usage: syn_load probe COUNT PORT DST4 DST6 | syn_load flood PPS SECS DST PORT");
            ExitCode::from(2)
        }
    }
}

fn probe(count: u32, port: u16, dsts: [&str; 2]) -> serde_json::Value {
    let (mut sent, mut answered, mut times) = ([0u32; 2], [0u32; 2], Vec::new());
    for i in 0..count as usize {
        let fam = i % 2;
        let Ok(ip) = dsts[fam].parse::<IpAddr>() else { break };
        let dst = SocketAddr::new(ip, port);
        sent[fam] += 1;
        let t0 = Instant::now();
        match TcpStream::connect_timeout(&dst, Duration::from_secs(2)) {
            Ok(_) => eprintln!("syn_load: {dst} accepted (expected a refusal)"),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                answered[fam] += 1;
                times.push(t0.elapsed().as_secs_f64() * 1000.0);
            }
            Err(e) => eprintln!("syn_load: {dst}: {e}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    times.sort_by(f64::total_cmp);
    let round = |v: f64| (v * 100.0).round() / 100.0;
    serde_json::json!({
        "sent_v4": sent[0], "answered_v4": answered[0], "sent_v6": sent[1], "answered_v6": answered[1],
        "median_ms": times.get(times.len() / 2).map_or(-1.0, |&t| round(t)),
        "max_ms": times.last().map_or(-1.0, |&t| round(t)),
    })
}

/// A small xorshift generator: forged sources need variety, not quality.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn flood(pps: u64, secs: f64, dst: &str, port: u16) -> Option<serde_json::Value> {
    let ip: IpAddr = dst.parse().ok().filter(IpAddr::is_ipv4)?;
    let mut seed = u64::from(std::process::id()) | 1 << 40;
    let pool: Vec<Vec<u8>> = (0..POOL)
        .map(|_| {
            let r = next(&mut seed);
            let src = format!("100.64.200.{}", 1 + r % 254);
            tcp(&src, 1024 + (r >> 8) as u16 % 64_000, dst, port).seq((r >> 24) as u32).syn().build()
        })
        .collect();
    let sock = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(255)))
        .map_err(|e| eprintln!("syn_load: raw socket: {e}"))
        .ok()?;
    let to = SockAddr::from(SocketAddr::new(ip, 0));
    let (mut sent, mut errors) = (0u64, 0u64);
    let t0 = Instant::now();
    let end = Duration::from_secs_f64(secs);
    while t0.elapsed() < end {
        // As many as are due, at most 256 at once: a late start is no burst.
        let due = ((t0.elapsed().as_secs_f64() * pps as f64) as u64).min(sent + 256);
        while sent < due {
            // A full queue (ENOBUFS) is counted; the pace goes on.
            errors += u64::from(sock.send_to(&pool[sent as usize % POOL], &to).is_err());
            sent += 1;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let ok = sent - errors;
    Some(serde_json::json!({
        "sent": ok, "secs": (elapsed * 1000.0).round() / 1000.0, "pps": (ok as f64 / elapsed).round(), "errors": errors,
    }))
}
