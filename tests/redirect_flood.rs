//! The redirect flow table under a flood of forged sources (issue 12), end
//! to end: a subscriber sends SYNs from thousands of forged addresses inside
//! `subscriber.prefixes` (hand-built packets on raw sockets in the
//! subscriber namespace) to an outside port 25, op25b redirects each to the
//! relay, and the relay (a real listener in the upstream namespace, with the
//! kernel's SYN cookies) answers every one. Real connections, IPv4 and
//! IPv6, must reach the relay during the flood and right after it, and
//! connections established before it must keep working.
//!
//! Needs root and iproute2, like every namespace test (see `common::Lab`).

// The shared harness has helpers other test files use.
#[allow(dead_code)]
mod common;

use std::io::{self, BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use op25b::testing::packets::tcp;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

const SMTP: u16 = 25;
const CONNECT: Duration = Duration::from_secs(3);
/// `op25b.redirect_to`: the relay, one per IP family.
const REDIRECT_TO: &str = r#"["198.51.100.25:25", "[2001:db8:25::25]:25"]"#;
/// A small table, so the flood overruns it ten times.
const MAX_FLOWS: u32 = 128;
const FORGED: u32 = 10 * MAX_FLOWS;
/// Between two forged SYNs: the flood lasts about 3 s, and a real handshake
/// has some 100 newer SYNs' time (a quarter of a second) to complete before
/// its half-open flow would be the oldest.
const GAP: Duration = Duration::from_micros(2500);
/// The flood stops by itself after this, whatever happens.
const FLOOD_LIMIT: Duration = Duration::from_secs(15);
/// Between two real connections during the flood.
const PAUSE: Duration = Duration::from_millis(150);

/// The forged source of SYN `i`: alternately an IPv4 address from
/// 100.80.0.0 and an address in a /64 of its own under 2001:db8:100::/48,
/// all inside the lab's subscriber prefixes and dynamic pools.
fn forged(i: u32) -> (IpAddr, IpAddr) {
    if i % 2 == 0 {
        (IpAddr::V4(Ipv4Addr::from(0x6450_0000 + i)), ip(MX4))
    } else {
        (ip(&format!("2001:db8:100:{:x}::1", 0x1000 + i)), ip(MX6))
    }
}

/// Sends the forged SYNs from raw sockets in the calling thread's namespace
/// (IPPROTO_RAW: the IP header is ours, source included); returns how many
/// went out. Bounded in count and time.
fn flood() -> io::Result<u32> {
    let raw = |domain| Socket::new(domain, Type::RAW, Some(Protocol::from(255)));
    let (v4, v6) = (raw(Domain::IPV4)?, raw(Domain::IPV6)?);
    let end = Instant::now() + FLOOD_LIMIT;
    let mut sent = 0;
    for i in 0..FORGED {
        if Instant::now() > end {
            break;
        }
        let (src, dst) = forged(i);
        let syn = tcp(&src.to_string(), 40000, &dst.to_string(), SMTP).seq(i.wrapping_mul(2_654_435_761)).syn().build();
        let sock = if src.is_ipv4() { &v4 } else { &v6 };
        sock.send_to(&syn, &SockAddr::from(SocketAddr::new(dst, 0)))?;
        sent += 1;
        std::thread::sleep(GAP);
    }
    Ok(sent)
}

/// One line from the server.
fn line(stream: &TcpStream) -> io::Result<String> {
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line.trim_end().to_string())
}

/// A real connection from the dynamic subscriber to the MX (redirected to
/// the relay): connect, the banner, some data and the server's count of it.
/// An error says which step failed.
fn real_connection(lab: &Lab, mx: &str) -> Result<(), String> {
    let dst = sa(mx, SMTP);
    let stream = lab.connect(None, dst, CONNECT).map_err(|e| format!("connect to {dst}: {e}"))?;
    let banner = line(&stream).map_err(|e| format!("{dst}: the banner: {e}"))?;
    if banner != BANNER {
        return Err(format!("{dst}: banner {banner:?}"));
    }
    let reply = send_bulk(stream, 4000);
    if reply.trim_end() != "250 received 4000" {
        return Err(format!("{dst}: the server's count: {reply:?}"));
    }
    Ok(())
}

/// action = "redirect", max_flows = 128: 1,280 forged SYNs, each answered
/// by the relay with a SYN-ACK, fill the table ten times over. New flows
/// take the slots of unassured (forged) ones, so real connections of both
/// families complete during the flood and right after it, and the two
/// established before it still carry data. Nothing is refused as
/// `conntrack_full`.
#[test]
fn real_redirected_connections_survive_a_forged_source_flood() {
    let mut lab = Lab::start(LabOptions::edit(|p| {
        p.action("redirect").op25b("redirect_to", REDIRECT_TO).op25b("max_flows", MAX_FLOWS)
    }));
    // The relay and the MX: one dual-stack listener on port 25 in the
    // upstream namespace holds both addresses; which one a connection
    // reached is its local address.
    let servers = Servers::start(&lab.up, &[SMTP]);
    let rss_before = lab.vm_rss_kib();

    let held: Vec<TcpStream> = [MX4, MX6]
        .iter()
        .map(|mx| {
            let s = lab.connect(None, sa(mx, SMTP), CONNECT).unwrap_or_else(|e| panic!("before the flood, {mx}: {e}"));
            assert_eq!(read_banner(&s), BANNER, "before the flood, {mx}");
            s
        })
        .collect();

    let done = Arc::new(AtomicBool::new(false));
    let forger = {
        let (sub, done) = (lab.sub.clone(), Arc::clone(&done));
        std::thread::spawn(move || {
            let sent = in_netns(&sub, flood);
            done.store(true, Ordering::Relaxed);
            sent
        })
    };
    // Real connections while the flood lasts, alternating families; the
    // failures are collected, so the flood is joined before any assertion.
    let mut during = [0u32; 2];
    let mut failures = Vec::new();
    let started = Instant::now();
    for k in 0.. {
        if done.load(Ordering::Relaxed) || started.elapsed() > FLOOD_LIMIT {
            break;
        }
        let mx = [MX4, MX6][k % 2];
        let result = real_connection(&lab, mx);
        let in_flood = !done.load(Ordering::Relaxed);
        match result {
            Ok(()) if in_flood => during[k % 2] += 1,
            Ok(()) => {}
            Err(e) => failures.push(format!("during the flood: {e}")),
        }
        std::thread::sleep(PAUSE);
    }
    let sent = forger.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
    let rss_flood = lab.vm_rss_kib();
    // Right after the flood.
    for mx in [MX4, MX6] {
        if let Err(e) = real_connection(&lab, mx) {
            failures.push(format!("right after the flood: {e}"));
        }
    }
    for (mut s, mx) in held.into_iter().zip([MX4, MX6]) {
        let _ = s.set_read_timeout(Some(CONNECT));
        let reply =
            s.write_all(&[b'x'; 1000]).and_then(|()| s.shutdown(std::net::Shutdown::Write)).and_then(|()| line(&s));
        match reply {
            Ok(r) if r == "250 received 1000" => {}
            other => failures.push(format!("the connection to {mx} established before the flood: {other:?}")),
        }
    }
    let sent = sent.unwrap_or_else(|e| panic!("the forged SYNs (raw sockets in {}): {e}", lab.sub));
    println!(
        "forged SYNs sent: {sent}; real connections completed during the flood: {} IPv4, {} IPv6",
        during[0], during[1]
    );
    println!("op25b VmRSS: {rss_before} KiB before, {rss_flood} KiB after the flood");

    // What the relay saw: the dynamic subscriber's real address, on the
    // relay's addresses only; the MX got nothing from it.
    let accepted = servers.accepted();
    let from_dynamic = |a: &&Accepted| a.peer.ip() == ip(DYN4) || a.peer.ip() == ip(DYN6);
    let at_relay =
        accepted.iter().filter(from_dynamic).filter(|a| a.local == sa(RELAY4, SMTP) || a.local == sa(RELAY6, SMTP));
    assert_eq!(at_relay.count(), accepted.iter().filter(from_dynamic).count(), "{accepted:?}");
    drop(servers);
    let c = lab.stop();
    println!("{c}");
    assert!(failures.is_empty(), "{}\n{c}", failures.join("\n"));
    assert_eq!(sent, FORGED);
    assert!(during[0] >= 1 && during[1] >= 1, "no real connection of each family during the flood: {during:?}");
    assert_eq!(c.get("drop_conntrack_full"), 0, "{c}");
    assert_eq!(c.get("drop_conntrack_source_full"), 0, "{c}");
    // Every SYN past the bound, forged or real, took an unassured flow's slot.
    assert!(c.get("op25b_redirect_evictions") >= u64::from(FORGED - MAX_FLOWS), "{c}");
}
