//! End-to-end tests: real TCP connections and pings through an `op25b run`
//! between two network namespaces the test creates (see `common::Lab`).
//!
//! One router instance per config (reject, drop, small upstream MTU, polling
//! mode), plus one for the router's own behaviour (TTL, echo, anti-spoofing);
//! each test has its own namespaces, so they run in parallel. Needs root, iproute2 and iputils-ping;
//! without them the tests fail with a message saying what is missing.

mod common;

use std::io;
use std::time::Duration;

use common::*;

/// Long enough for a connect through the router on a loaded CI machine.
const CONNECT: Duration = Duration::from_secs(3);
/// For connects that must time out: shorter than the 3 s of `CONNECT`, long
/// enough to cover the first SYN retransmission (1 s).
const HANG: Duration = Duration::from_millis(1500);

const SUBMISSION: u16 = 587;
const SUBMISSIONS: u16 = 465;
const SMTP: u16 = 25;

/// Asserts the connect was refused (a RST), not timed out, and the server never
/// accepted anything on `dst`.
fn assert_refused(lab: &Lab, servers: &Servers, dst: std::net::SocketAddr) {
    match lab.connect(None, dst, CONNECT) {
        Ok(s) => panic!("dynamic -> {dst} connected (local {:?}); OP25B should have refused it", s.local_addr()),
        Err(e) => assert_eq!(
            e.kind(),
            io::ErrorKind::ConnectionRefused,
            "dynamic -> {dst}: expected ConnectionRefused (RST from the router), got {e}"
        ),
    }
    assert!(
        servers.accepted_on(dst).is_empty(),
        "the server on {dst} accepted a connection that OP25B blocked: {:?}",
        servers.accepted_on(dst)
    );
}

/// Connects from `src`, checks the banner and that the server saw `expect_peer`.
fn assert_connects(lab: &Lab, servers: &Servers, src: Option<&str>, dst: std::net::SocketAddr, expect_peer: &str) {
    let stream =
        lab.connect(src.map(ip), dst, CONNECT).unwrap_or_else(|e| panic!("{src:?} -> {dst} must connect: {e}"));
    let banner = read_banner(&stream);
    assert_eq!(banner, BANNER, "{src:?} -> {dst}: wrong banner");
    let seen: Vec<_> = servers.accepted_on(dst).into_iter().map(|a| a.peer.ip()).collect();
    assert!(
        seen.contains(&ip(expect_peer)),
        "{src:?} -> {dst}: the server should have seen source {expect_peer}, saw {seen:?}"
    );
}

/// OP25B with action = "reject", both IP versions: dynamic -> outside:25 is
/// refused at once by a RST and never reaches the server; 587 and 465 stay open;
/// the relay and exempt sources reach port 25. The final counters show exactly
/// one blocked SYN and one RST per refused connect.
#[test]
fn op25b_reject_blocks_only_dynamic_to_outside_port_25() {
    let mut lab = Lab::start(LabOptions::default());
    let servers = Servers::start(&lab.up, &[SMTP, SUBMISSION, SUBMISSIONS]);
    let mut refused = 0;
    for (dynamic, exempt, mx, relay) in [(DYN4, STATIC4, MX4, RELAY4), (DYN6, STATIC6, MX6, RELAY6)] {
        // 1. dynamic -> outside MX:25: refused, never seen by the server.
        assert_refused(&lab, &servers, sa(mx, SMTP));
        refused += 1;
        // 2. submission ports stay open.
        for port in [SUBMISSION, SUBMISSIONS] {
            assert_connects(&lab, &servers, None, sa(mx, port), dynamic);
        }
        // 3. the ISP's relay on 25, with the subscriber's real source.
        assert_connects(&lab, &servers, None, sa(relay, SMTP), dynamic);
        // 4. an exempt source reaches the outside MX on 25.
        assert_connects(&lab, &servers, Some(exempt), sa(mx, SMTP), exempt);
        // Only the exempt source ever reached the MX's port 25.
        for a in servers.accepted_on(sa(mx, SMTP)) {
            assert_eq!(a.peer.ip(), ip(exempt), "unexpected client on MX:25: {a:?}");
        }
    }
    drop(servers);
    // 10. counters: one blocked SYN and one RST per refused connect (a RST ends
    // the attempt, so there are no retransmissions to count).
    let c = lab.stop();
    println!("{c}");
    assert_eq!(c.get("op25b_blocked"), refused, "{c}");
    assert_eq!(c.get("reply_tcp_rst"), refused, "{c}");
    assert_eq!(c.get("drop_op25b_blocked"), 0, "{c}");
    assert_eq!(c.get("drop_spoofed"), 0, "{c}");
    assert!(c.get("forwarded_outbound") > 0, "{c}");
    assert!(c.get("forwarded_inbound") > 0, "{c}");
}

/// OP25B with action = "drop": dynamic -> outside:25 hangs until the client's
/// connect timeout (no RST), while 587 still connects.
#[test]
fn op25b_drop_action_makes_port_25_time_out() {
    let mut lab = Lab::start(LabOptions::edit(|p| p.action("drop")));
    let servers = Servers::start(&lab.up, &[SMTP, SUBMISSION]);
    for (dynamic, mx) in [(DYN4, MX4), (DYN6, MX6)] {
        let dst = sa(mx, SMTP);
        match lab.connect(None, dst, HANG) {
            Ok(_) => panic!("dynamic -> {dst} connected; OP25B (drop) should have blocked it"),
            Err(e) => assert_eq!(
                e.kind(),
                io::ErrorKind::TimedOut,
                "dynamic -> {dst} with action = drop: expected a timeout, got {e}"
            ),
        }
        assert!(servers.accepted_on(dst).is_empty(), "{dst} was reached");
        assert_connects(&lab, &servers, None, sa(mx, SUBMISSION), dynamic);
    }
    drop(servers);
    let c = lab.stop();
    println!("{c}");
    // Each attempt is one SYN plus however many retransmissions fit in the timeout.
    assert!(c.get("op25b_blocked") >= 2, "{c}");
    assert_eq!(c.get("op25b_blocked"), c.get("drop_op25b_blocked"), "{c}");
    assert_eq!(c.get("reply_tcp_rst"), 0, "{c}");
}

/// The router's own behaviour: TTL / hop limit 1 gets ICMP time exceeded from the
/// router address, a normal ping goes through with the TTL decremented, the router
/// answers ping, and a source outside `subscriber.prefixes` is dropped as spoofed.
#[test]
fn router_ttl_echo_and_anti_spoofing() {
    let mut lab = Lab::start(LabOptions::default());
    let servers = Servers::start(&lab.up, &[SUBMISSION]);

    // 6. TTL.
    let (_, out) = lab.ping(&["-c1", "-W2", "-t1", MX4]);
    assert!(
        out.contains(&format!("From {ROUTER4}")) && out.contains("Time to live exceeded"),
        "IPv4 ping with TTL 1 should get time exceeded from {ROUTER4}:\n{out}"
    );
    let (_, out) = lab.ping(&["-6", "-c1", "-W2", "-t1", MX6]);
    assert!(
        out.contains(&format!("From {ROUTER6}")) && out.contains("Time exceeded"),
        "IPv6 ping with hop limit 1 should get time exceeded from {ROUTER6}:\n{out}"
    );
    for (family, dst) in [("-4", MX4), ("-6", MX6)] {
        let (ok, out) = lab.ping(&[family, "-c1", "-W2", dst]);
        assert!(ok && out.contains(&format!("from {dst}")), "ping {dst} through the router:\n{out}");
        assert!(out.contains("ttl=63"), "the reply from {dst} should arrive with TTL 64 - 1 = 63:\n{out}");
    }

    // 9. the router answers ping on its own addresses.
    for (family, router) in [("-4", ROUTER4), ("-6", ROUTER6)] {
        let (ok, out) = lab.ping(&[family, "-c1", "-W2", router]);
        assert!(ok && out.contains(&format!("bytes from {router}")), "ping the router at {router}:\n{out}");
    }

    // 7. anti-spoofing: a source outside subscriber.prefixes never gets through.
    lab.sub_ip(&["addr", "add", "192.0.2.66/32", "dev", "lo"]);
    lab.sub_ip(&["addr", "add", "2001:db8:ff::66/128", "dev", "lo", "nodad"]);
    for (spoofed, mx) in [("192.0.2.66", MX4), ("2001:db8:ff::66", MX6)] {
        let dst = sa(mx, SUBMISSION);
        match lab.connect(Some(ip(spoofed)), dst, HANG) {
            Ok(_) => panic!("{spoofed} -> {dst} connected; the router must drop this source"),
            Err(e) => assert_eq!(
                e.kind(),
                io::ErrorKind::TimedOut,
                "{spoofed} -> {dst}: expected a timeout (silent drop), got {e}"
            ),
        }
        let seen: Vec<_> = servers.accepted().into_iter().filter(|a| a.peer.ip() == ip(spoofed)).collect();
        assert!(seen.is_empty(), "spoofed source reached the server: {seen:?}");
    }
    drop(servers);

    let c = lab.stop();
    println!("{c}");
    assert_eq!(c.get("reply_time_exceeded"), 2, "{c}");
    assert_eq!(c.get("reply_echo_reply"), 2, "{c}");
    assert!(c.get("drop_spoofed") >= 2, "{c}");
    assert_eq!(c.get("op25b_blocked"), 0, "{c}");
}

/// upstream.mtu = 1400 behind a 1500-byte subscriber side: oversized packets get
/// ICMP fragmentation needed / packet too big (mtu 1400) from the router, and a
/// 100 KB TCP upload whose peer advertises a 1500-byte path still completes,
/// because path MTU discovery works through the router.
#[test]
fn mtu_too_big_and_path_mtu_discovery() {
    let mut lab =
        Lab::start(LabOptions { upstream_advmss_1500: true, ..LabOptions::edit(|p| p.upstream("mtu", 1400)) });
    let servers = Servers::start(&lab.up, &[SUBMISSION]);

    let (_, out) = lab.ping(&["-c1", "-W2", "-M", "do", "-s", "1450", MX4]);
    assert!(
        out.contains(&format!("From {ROUTER4}")) && out.contains("Frag needed and DF set (mtu = 1400)"),
        "IPv4 ping of 1478 bytes with DF should get fragmentation needed (mtu 1400):\n{out}"
    );
    let (_, out) = lab.ping(&["-6", "-c1", "-W2", "-s", "1450", MX6]);
    assert!(
        out.contains(&format!("From {ROUTER6}")) && out.contains("Packet too big: mtu=1400"),
        "IPv6 ping of 1498 bytes should get packet too big (mtu 1400):\n{out}"
    );

    // The upload goes to the relay addresses: the pings above left a 1400 path MTU
    // cached for the MX, and this transfer must discover it on its own.
    const BULK: usize = 100_000;
    for (dynamic, dst) in [(DYN4, RELAY4), (DYN6, RELAY6)] {
        let dst = sa(dst, SUBMISSION);
        let stream = lab.connect(None, dst, CONNECT).unwrap_or_else(|e| panic!("dynamic -> {dst}: {e}"));
        let reply = send_bulk(stream, BULK);
        assert!(
            reply.contains(&format!("250 received {BULK}")),
            "{dst}: the server should acknowledge {BULK} bytes, replied {reply:?}"
        );
        // The server records the count right after it acknowledges: give its
        // thread a moment.
        let counted = |c: &[Accepted]| c.iter().any(|a| a.peer.ip() == ip(dynamic) && a.bytes == Some(BULK as u64));
        let mut conns = servers.accepted_on(dst);
        for _ in 0..100 {
            if counted(&conns) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
            conns = servers.accepted_on(dst);
        }
        assert!(counted(&conns), "{dst}: the server should have counted {BULK} bytes from {dynamic}: {conns:?}");
    }
    drop(servers);

    let c = lab.stop();
    println!("{c}");
    // Two from the pings, at least one per upload (the first full-size segment).
    assert!(c.get("reply_too_big") >= 4, "{c}");
    assert_eq!(c.get("drop_too_big"), 0, "{c}");
}

/// Polling mode (`dataplane.busy_poll_us`): the router blocks and forwards as
/// usual, and once traffic stops its workers go back to sleep instead of
/// spinning on.
#[test]
fn busy_poll_mode_forwards_then_sleeps_when_idle() {
    let mut lab = Lab::start(LabOptions::edit(|p| p.dataplane("busy_poll_us", 20000)));
    let servers = Servers::start(&lab.up, &[SMTP, SUBMISSION]);
    for (dynamic, mx) in [(DYN4, MX4), (DYN6, MX6)] {
        assert_refused(&lab, &servers, sa(mx, SMTP));
        assert_connects(&lab, &servers, None, sa(mx, SUBMISSION), dynamic);
    }
    let (ok, out) = lab.ping(&["-c", "20", "-i", "0.01", MX4]);
    assert!(ok, "ping through the polling router: {out}");
    drop(servers);
    // The workers spin 20 ms after their last packet. Over two idle seconds
    // they must have slept nearly all the time (a spinning worker would use
    // about a core: two seconds of CPU time per worker).
    std::thread::sleep(Duration::from_millis(200));
    let before = lab.cpu_time();
    std::thread::sleep(Duration::from_secs(2));
    let idle = lab.cpu_time() - before;
    assert!(idle < Duration::from_millis(500), "op25b used {idle:?} of CPU in 2 s without traffic");
    let c = lab.stop();
    assert_eq!(c.get("reply_tcp_rst"), 2, "{c}");
    assert!(c.get("forwarded_outbound") >= 20, "{c}");
}

/// SIGHUP reloads the policy while the router keeps running: a newly blocked
/// port takes effect at once; an invalid file or a device change is refused
/// with one line naming the file (and line) and key, and the running policy
/// stays in force.
#[test]
fn sighup_reloads_the_policy_and_refuses_bad_configs() {
    let mut lab = Lab::start(LabOptions::default());
    let servers = Servers::start(&lab.up, &[SMTP, SUBMISSION, SUBMISSIONS]);
    assert_connects(&lab, &servers, None, sa(MX4, SUBMISSIONS), DYN4);
    let original = lab.policy.toml();
    assert_eq!(std::fs::read_to_string(&lab.config).expect("the lab's config"), original);
    // 1. Block 587 too, as a rule experiment would.
    let blocked = lab.policy.clone().op25b("ports", "[25, 587]");
    let r = lab.reload(&blocked.toml());
    assert!(r.accepted, "{r}");
    assert_refused(&lab, &servers, sa(MX4, SUBMISSION));
    assert_refused(&lab, &servers, sa(MX6, SUBMISSION));
    // 2. An invalid file: one line with file, line and key; 587 stays blocked.
    let bad = blocked.clone().op25b("ports", "[25, 587, 70000]").toml();
    let bad_line = bad.lines().position(|l| l.starts_with("ports = [25, 587, 70000]")).expect("ports line") + 1;
    let r = lab.reload(&bad);
    let want = format!("{}:{bad_line}: op25b.ports", lab.config.display());
    assert!(!r.accepted && r.message.contains(&want), "want {want:?} in: {r}");
    assert_refused(&lab, &servers, sa(MX4, SUBMISSION));
    // 3. A device setting needs a restart: refused, the policy stays.
    let r = lab.reload(&blocked.subscriber("mtu", 1400).toml());
    assert!(!r.accepted && r.message.contains("subscriber.mtu"), "{r}");
    assert!(r.message.contains("restart"), "{r}");
    assert_refused(&lab, &servers, sa(MX4, SUBMISSION));
    // 4. Back to the original: 587 connects again; 465 was never touched.
    let r = lab.reload(&original);
    assert!(r.accepted, "{r}");
    assert_connects(&lab, &servers, None, sa(MX4, SUBMISSION), DYN4);
    assert_connects(&lab, &servers, None, sa(MX6, SUBMISSIONS), DYN6);
    drop(servers);
    let c = lab.stop();
    println!("{c}");
    // Two reloads put in force, two refused.
    assert_eq!((c.get("reloads_accepted"), c.get("reloads_refused")), (2, 2), "{c}");
    assert_eq!(c.json["reloads"]["accepted"], 2, "{c}");
    // The four refused connects, each one SYN answered by one RST, and
    // nothing else blocked.
    assert_eq!(c.get("reply_tcp_rst"), 4, "{c}");
    assert_eq!(c.get("op25b_blocked"), 4, "{c}");
    assert_eq!(c.get("drop_op25b_blocked"), 0, "{c}");
}

/// Every packet op25b reads gets exactly one verdict: after real traffic of
/// every kind (forwarded pings, TCP and UDP; the router's echo and time
/// exceeded replies; spoofed and late banner segments dropped; a banner
/// session terminated), per direction the stats JSON has
/// `received = forwarded + dropped + replied + terminated`, and `received`
/// is what the direction's device read.
#[test]
fn every_received_packet_has_exactly_one_verdict() {
    let mut lab = Lab::start(LabOptions::edit(|p| p.action("banner")));
    let servers = Servers::start(&lab.up, &[SUBMISSION]);
    for (family, mx, router) in [("-4", MX4, ROUTER4), ("-6", MX6, ROUTER6)] {
        let (ok, out) = lab.ping(&[family, "-c2", "-i0.2", "-W2", mx]);
        assert!(ok, "ping {mx} through the router:\n{out}");
        let (ok, out) = lab.ping(&[family, "-c1", "-W2", router]);
        assert!(ok, "ping the router at {router}:\n{out}");
        let (_, out) = lab.ping(&[family, "-c1", "-W2", "-t1", mx]);
        assert!(out.contains(&format!("From {router}")), "ping {mx} with TTL 1:\n{out}");
    }
    for (dynamic, mx) in [(DYN4, MX4), (DYN6, MX6)] {
        assert_connects(&lab, &servers, None, sa(mx, SUBMISSION), dynamic);
        let stream =
            lab.connect(None, sa(mx, SMTP), CONNECT).unwrap_or_else(|e| panic!("dynamic -> {mx}:25 (banner): {e}"));
        let banner = read_banner(&stream);
        assert!(banner.starts_with("554 "), "the banner responder's line from {mx}:25: {banner:?}");
    }
    // UDP to a closed port (the ICMP port unreachable comes back through the
    // router), and from a source outside subscriber.prefixes (dropped).
    lab.sub_ip(&["addr", "add", "192.0.2.66/32", "dev", "lo"]);
    for (src, dst) in [(DYN4, MX4), (DYN6, MX6), ("192.0.2.66", MX4)] {
        in_netns(&lab.sub, || {
            let sock = std::net::UdpSocket::bind(sa(src, 0)).unwrap_or_else(|e| panic!("bind {src}: {e}"));
            for _ in 0..3 {
                sock.send_to(b"op25b test", sa(dst, 9)).unwrap_or_else(|e| panic!("{src} -> {dst}:9: {e}"));
            }
        });
    }
    // Let the last datagrams and ICMP errors pass before op25b stops.
    std::thread::sleep(Duration::from_millis(300));
    drop(servers);

    let c = lab.stop();
    println!("{c}");
    for (dir, device) in [("outbound", "subscriber"), ("inbound", "upstream")] {
        let d = c.dir(dir);
        let n = |k: &str| d[k].as_u64().unwrap_or_else(|| panic!("{dir}.{k} is not a number: {d}"));
        let sum = |k: &str| -> u64 {
            let map = d[k].as_object().unwrap_or_else(|| panic!("{dir}.{k} is not an object: {d}"));
            map.values().map(|v| v.as_u64().unwrap_or_else(|| panic!("{dir}.{k}: {v} is not a number"))).sum()
        };
        let received = n("received");
        assert!(received > 0, "{dir}: nothing received: {d}");
        let (forwarded, dropped, replied, terminated) =
            (n("forwarded"), sum("dropped"), sum("replies"), n("terminated"));
        assert_eq!(
            received,
            forwarded + dropped + replied + terminated,
            "{dir}: received = forwarded {forwarded} + dropped {dropped} + replied {replied} + terminated {terminated}: {d}"
        );
        assert_eq!(received, c.get(&format!("{device}_rx_packets")), "{dir}: what the {device} device read: {c}");
    }
    // The traffic reached every kind of verdict.
    assert!(c.get("forwarded_outbound") > 0 && c.get("forwarded_inbound") > 0, "{c}");
    assert_eq!(c.get("reply_echo_reply"), 2, "{c}");
    assert_eq!(c.get("reply_time_exceeded"), 2, "{c}");
    assert_eq!(c.get("drop_spoofed"), 3, "{c}");
    assert!(c.get("op25b_terminated") > 0, "{c}");
}
