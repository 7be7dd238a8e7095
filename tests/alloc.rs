//! No allocation on the forwarding path: a counting global allocator around
//! `Router::handle` for forwarded (plain and GSO), blocked (RST reply and
//! silent drop), answered (echo, time exceeded) and malformed packets, and
//! around whole banner sessions (`Verdict::Terminate`, then what the
//! responder sends through `State::poll_transmit`).
//!
//! Counting is per thread (a thread-local switch), so the test harness's own
//! threads and other tests in this binary do not disturb it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Instant;

use op25b::packet::encap::{encapsulate, Options};
use op25b::packet::TunnelKind;
use op25b::packet::{checksum, tcp_flags, PacketView, Transport};
use op25b::testing::lab::{DYN4, DYN6, MX4, MX6, ROUTER4};
use op25b::testing::packets::{echo_request, tcp, udp};
use op25b::testing::PolicyBuilder;
use op25b::{Direction, Router, RxInfo, Verdict};

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
    static BYTES: Cell<u64> = const { Cell::new(0) };
}

fn note(bytes: usize) {
    // try_with: the allocator also runs while thread-locals are torn down.
    let on = COUNTING.try_with(Cell::get).unwrap_or(false);
    if on {
        let _ = ALLOCS.try_with(|a| a.set(a.get() + 1));
        let _ = BYTES.try_with(|b| b.set(b.get() + bytes as u64));
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// bookkeeping touches only const-initialised thread-locals (no allocation).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by `f` on this thread.
fn allocations(f: impl FnOnce()) -> u64 {
    ALLOCS.with(|a| a.set(0));
    BYTES.with(|b| b.set(0));
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCS.with(Cell::get)
}

fn router(policy: PolicyBuilder) -> Router {
    // The same replies over and over at one instant: lift the reply limit so
    // every case keeps its verdict (the limiter's table is allocated up front).
    Router::new(policy.unlimited_replies().policy())
}

/// A TCP segment from port 40000: a SYN, or an ACK with `payload` zero bytes.
fn tcp_out(src: &str, dst: &str, dport: u16, syn: bool, ttl: u8, payload: usize) -> Vec<u8> {
    let b = tcp(src, 40000, dst, dport).ttl(ttl).payload(&vec![0; payload]);
    if syn { b.syn() } else { b.ack(1) }.build()
}

fn tcp4(dport: u16, syn: bool, ttl: u8, payload: usize) -> Vec<u8> {
    tcp_out(DYN4, MX4, dport, syn, ttl, payload)
}

fn tcp6(dport: u16, syn: bool, payload: usize) -> Vec<u8> {
    tcp_out(DYN6, MX6, dport, syn, 64, payload)
}

fn udp4(src: &str, dst: &str, payload: usize) -> Vec<u8> {
    udp(src, 40000, dst, 5201, &vec![0; payload])
}

/// Name, direction, packet, GSO segment size, expected verdict kind.
type Case = (&'static str, Direction, Vec<u8>, Option<u16>, &'static str);

/// What the device says of a GSO super-packet (segment size, partial checksum).
fn gso(size: u16) -> RxInfo {
    RxInfo { gso_size: Some(size), csum_partial: true }
}

fn cases() -> Vec<Case> {
    use Direction::{Inbound, Outbound};
    let mut truncated = tcp4(587, false, 64, 0);
    truncated.truncate(24);
    vec![
        ("forward tcp4 1500", Outbound, tcp4(587, false, 64, 1460), None, "forward"),
        ("forward tcp6 1500", Outbound, tcp6(443, false, 1440), None, "forward"),
        ("forward udp4 64", Outbound, udp4(DYN4, MX4, 36), None, "forward"),
        ("forward udp4 inbound", Inbound, udp4(MX4, DYN4, 36), None, "forward"),
        ("forward gso tcp4 64k", Outbound, tcp4(587, false, 64, 60_000), Some(1448), "forward"),
        ("blocked syn4 -> rst", Outbound, tcp4(25, true, 64, 0), None, "reply"),
        ("blocked syn6 -> rst", Outbound, tcp6(25, true, 0), None, "reply"),
        ("blocked ack4 -> drop", Outbound, tcp4(25, false, 64, 0), None, "drop"),
        ("ttl 1 -> time exceeded", Outbound, tcp4(587, false, 1, 100), None, "reply"),
        ("echo to router -> reply", Outbound, echo_request(DYN4, ROUTER4, &[0; 56]), None, "reply"),
        ("spoofed source -> drop", Outbound, udp4("192.0.2.1", MX4, 36), None, "drop"),
        ("truncated -> drop", Outbound, truncated, None, "drop"),
        ("gre 587 inside -> forward", Outbound, tunnel(TunnelKind::Gre, DYN4, 587), None, "forward"),
        ("vxlan 25 inside -> drop", Outbound, tunnel(TunnelKind::Vxlan, DYN4, 25), None, "drop"),
        ("geneve 25 inside, v6 -> drop", Outbound, tunnel(TunnelKind::Geneve, DYN6, 25), None, "drop"),
        ("teredo 25 inside -> drop", Outbound, tunnel(TunnelKind::Teredo, DYN4, 25), None, "drop"),
    ]
}

/// A SYN to `dport` inside a tunnel of `kind` from `src` (IPv6 inside for Teredo).
fn tunnel(kind: TunnelKind, src: &str, dport: u16) -> Vec<u8> {
    let inner = if kind == TunnelKind::Teredo {
        tcp("2001:db8:1::1", 1, MX6, dport).syn().build()
    } else {
        tcp("10.0.0.1", 1, MX4, dport).syn().build()
    };
    let dst = if src.contains(':') { MX6 } else { MX4 };
    encapsulate(
        kind,
        src.parse().unwrap(),
        dst.parse().unwrap(),
        64,
        &inner,
        &Options { vlan: true, ..Options::default() },
    )
    .unwrap()
}

fn kind(v: Verdict) -> &'static str {
    v.name()
}

#[test]
fn router_paths_do_not_allocate() {
    let mut r = router(PolicyBuilder::lab());
    let now = Instant::now();
    let mut reply = vec![0u8; 2048];
    let cases = cases();
    // Each case works on its own copy, restored before every call (forwarding
    // rewrites TTL and checksums in place).
    let mut bufs: Vec<Vec<u8>> = cases.iter().map(|c| c.2.clone()).collect();
    let run = |r: &mut Router, bufs: &mut [Vec<u8>], reply: &mut [u8], rounds: usize| {
        for _ in 0..rounds {
            for (i, (name, dir, pkt, gso, want)) in cases.iter().enumerate() {
                let buf = &mut bufs[i];
                buf.copy_from_slice(pkt);
                let rx = gso.map_or(RxInfo::default(), self::gso);
                let v = r.handle(now, *dir, buf, reply, rx);
                assert_eq!(kind(v), *want, "{name}: {v:?}");
            }
        }
    };
    // Warm-up: anything lazily allocated once (counters, caches) happens here.
    run(&mut r, &mut bufs, &mut reply, 10);
    let n = allocations(|| run(&mut r, &mut bufs, &mut reply, 10_000));
    assert_eq!(n, 0, "allocations on the packet path over 10,000 rounds of {} packets", cases.len());
}

/// The client's side of banner sessions to MX:25, built before counting:
/// a SYN, then an ACK and a FIN whose acknowledgement numbers are patched in
/// place once the responder's are known.
struct BannerClient {
    syn: Vec<u8>,
    ack: Vec<u8>,
    fin: Vec<u8>,
    buf: Vec<u8>,
    reply: Vec<u8>,
    out: Vec<u8>,
}

/// The client's initial sequence number.
const CLIENT_ISN: u32 = 1000;

/// Offsets in an IPv4 (no options) TCP segment: acknowledgement number, checksum.
const ACK_AT: usize = 20 + 8;
const CSUM_AT: usize = 20 + 16;

/// Sets the acknowledgement number of an IPv4 TCP segment, checksum updated (RFC 1624).
fn set_ack(pkt: &mut [u8], ack: u32) {
    let new = ack.to_be_bytes();
    let old = u16::from_be_bytes([pkt[CSUM_AT], pkt[CSUM_AT + 1]]);
    let sum = checksum::adjust_bytes(old, &pkt[ACK_AT..ACK_AT + 4], &new);
    pkt[ACK_AT..ACK_AT + 4].copy_from_slice(&new);
    pkt[CSUM_AT..CSUM_AT + 2].copy_from_slice(&sum.to_be_bytes());
}

impl BannerClient {
    fn new() -> BannerClient {
        let seg = || tcp(DYN4, 40000, MX4, 25).seq(CLIENT_ISN + 1).ack(0);
        BannerClient {
            syn: tcp(DYN4, 40000, MX4, 25).seq(CLIENT_ISN).syn().build(),
            ack: seg().build(),
            fin: seg().fin().build(),
            buf: vec![0; 2048],
            reply: vec![0; 2048],
            out: vec![0; 2048],
        }
    }

    /// Hands `pkt` to the router; it must go to the banner responder.
    fn send(&mut self, r: &mut Router, now: Instant, which: usize) {
        let pkt = [&self.syn, &self.ack, &self.fin][which];
        let buf = &mut self.buf[..pkt.len()];
        buf.copy_from_slice(pkt);
        let v = r.handle(now, Direction::Outbound, buf, &mut self.reply, RxInfo::default());
        assert_eq!(v, Verdict::Terminate, "segment {which} of a banner session");
    }

    /// Takes everything the responder has to send: (packets, first sequence
    /// number, payload bytes, FIN seen).
    fn drain(&mut self, r: &Router, now: Instant) -> (usize, u32, usize, bool) {
        let (mut n, mut first, mut bytes, mut fin) = (0, 0, 0, false);
        while let Some(len) = r.state().poll_transmit(now, &mut self.out) {
            let view = PacketView::parse(&self.out[..len]).expect("the responder's segment parses");
            let Transport::Tcp { seq, flags, header_len, .. } = view.transport else {
                panic!("the responder sent a non-TCP packet");
            };
            if n == 0 {
                first = seq;
            }
            n += 1;
            bytes += view.len - view.l4_offset - usize::from(header_len);
            fin |= flags & tcp_flags::FIN != 0;
            assert!(flags & tcp_flags::RST == 0, "the responder reset a session");
        }
        (n, first, bytes, fin)
    }

    /// One whole session: handshake, the banner and the responder's FIN,
    /// the client's FIN and its acknowledgement.
    fn session(&mut self, r: &mut Router, now: Instant) {
        self.send(r, now, 0);
        let (n, isn, _, _) = self.drain(r, now);
        assert_eq!(n, 1, "a SYN-ACK");
        set_ack(&mut self.ack, isn.wrapping_add(1));
        self.send(r, now, 1);
        let (n, _, sent, fin) = self.drain(r, now);
        assert!(n >= 1 && sent > 0 && fin, "the banner line, then FIN");
        set_ack(&mut self.fin, isn.wrapping_add(1 + sent as u32 + 1));
        self.send(r, now, 2);
        let (n, _, _, _) = self.drain(r, now);
        assert_eq!(n, 1, "the client's FIN acknowledged");
    }
}

#[test]
fn banner_sessions_do_not_allocate() {
    let mut r = router(PolicyBuilder::lab().action("banner"));
    let now = Instant::now();
    let mut client = BannerClient::new();
    // Warm-up: the responder builds its sockets and send ring on first use.
    client.session(&mut r, now);
    let rounds = 1000;
    let n = allocations(|| {
        for _ in 0..rounds {
            client.session(&mut r, now);
        }
    });
    assert_eq!(n, 0, "allocations over {rounds} banner sessions (SYN, ACK, FIN and what the responder sent)");
    assert_eq!(r.state().responder().expect("banner responder").active(), 0, "every session closed");
    assert_eq!(r.stats().terminated(), 3 * (rounds + 1));
}

/// What the data plane does with a blocked SYN when events and capture are
/// on: the router notes it, the worker sends the event into the bounded
/// queue and copies the packet into a capture buffer. None of it allocates.
#[test]
fn events_and_capture_hand_offs_do_not_allocate() {
    use op25b::dataplane::capture;
    use op25b::dataplane::events::Event;
    let mut r = router(
        PolicyBuilder::lab()
            .rules("[[rule]]\nname = \"no-2525\"\nprotocol = \"tcp\"\ndst_ports = [2525]\naction = \"drop\"\n"),
    );
    r.note_blocks(true);
    let (tx, rx) = std::sync::mpsc::sync_channel(16);
    let (sink, source) = capture::pool();
    let syn25 = tcp4(25, true, 64, 0);
    let syn2525 = tcp4(2525, true, 64, 0);
    let mut reply = vec![0u8; 2048];
    let now = Instant::now();
    let at = std::time::SystemTime::now();
    let rounds = 1000;
    let n = allocations(|| {
        for round in 0..rounds {
            for pkt in [&syn25, &syn2525] {
                let mut buf = [0u8; 64];
                let buf = &mut buf[..pkt.len()];
                buf.copy_from_slice(pkt);
                // A new source port each round: a new connection attempt (a
                // retransmitted SYN is not noted again).
                buf[20..22].copy_from_slice(&(1024 + round as u16).to_be_bytes());
                let _ = r.handle(now, Direction::Outbound, buf, &mut reply, RxInfo::default());
                let block = r.take_block().expect("a blocked SYN is noted");
                let rule = block.rule.and_then(|i| r.rule_name(i));
                tx.try_send(Event::Blocked { block, rule }).expect("room in the queue");
                assert!(sink.offer(pkt, at), "a free capture buffer");
                // What the writers do on their threads, to keep room.
                let _ = rx.try_recv();
                let c = source.filled.try_recv().expect("captured");
                source.free.try_send(c.buf).expect("buffer back");
            }
        }
    });
    assert_eq!(n, 0, "allocations over {rounds} rounds of noted, sent and captured blocked SYNs");
}

#[test]
fn the_counter_sees_allocations() {
    // Guards the test above against a switch that counts nothing.
    let n = allocations(|| {
        std::hint::black_box(vec![0u8; 64]);
    });
    assert!(n >= 1);
}

/// Monitor's would-be blocks (noted for the data plane) and a quarantined
/// subscriber's packets (RST outside the walled garden, forwarded inside,
/// dropped UDP) do not allocate.
#[test]
fn monitor_and_quarantine_paths_do_not_allocate() {
    let now = Instant::now();
    let mut reply = vec![0u8; 2048];
    let mut monitor = router(PolicyBuilder::lab().action("monitor"));
    monitor.note_blocks(true);
    let mut quarantined = router(PolicyBuilder::lab().abuse("threshold", 30));
    let key = op25b::state::abuse::parse_subscriber(DYN4).unwrap();
    quarantined.state().quarantine().start(key, now + std::time::Duration::from_secs(3600)).unwrap();
    let packets = [
        (tcp4(25, true, 64, 0), "forward", true),
        (tcp4(80, true, 64, 0), "reply", false),
        (tcp4(587, true, 64, 0), "forward", false),
        (udp4(DYN4, MX4, 36), "drop", false),
    ];
    let mut buf = vec![0u8; 2048];
    let mut run = |rounds: usize| {
        for _ in 0..rounds {
            for (pkt, want, on_monitor) in &packets {
                let r = if *on_monitor { &mut monitor } else { &mut quarantined };
                let b = &mut buf[..pkt.len()];
                b.copy_from_slice(pkt);
                let v = r.handle(now, Direction::Outbound, b, &mut reply, RxInfo::default());
                assert_eq!(kind(v), *want, "{v:?}");
                let _ = r.take_block();
            }
        }
    };
    run(10);
    let n = allocations(|| run(10_000));
    assert_eq!(n, 0, "allocations over 10,000 rounds");
}

/// The abuse table allocates once: 100,000 attempts from random sources
/// into a full table of 4,096 allocate nothing.
#[test]
fn the_abuse_table_does_not_allocate_once_made() {
    use op25b::state::abuse::{Thresholds, Tracker};
    let t = Thresholds { window: std::time::Duration::from_secs(60), attempts: u32::MAX, destinations: u32::MAX };
    BYTES.with(|b| b.set(0));
    let mut tracker = Tracker::new(4096);
    let made = allocations(|| tracker = Tracker::new(4096));
    let bytes = BYTES.with(Cell::get);
    println!("Tracker::new(4096): {made} allocations, {bytes} bytes");
    assert!(bytes < 4 << 20, "the table of 4,096 subscribers takes {bytes} bytes");
    let now = Instant::now();
    let mut x: u32 = 0x1234_5678;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    let mut attempts = |tracker: &mut Tracker, n: usize| {
        for _ in 0..n {
            let (src, dst) = (next(), next());
            let key = 0xffff_ffff_0000_0000 | u64::from(src);
            assert!(tracker.record(now, key, std::net::IpAddr::V4(dst.into()), &t).is_none());
        }
    };
    attempts(&mut tracker, 10_000);
    assert_eq!(tracker.len(), 4096);
    let n = allocations(|| attempts(&mut tracker, 100_000));
    assert_eq!(n, 0, "allocations of the abuse table over 100,000 attempts");
}

/// The example programs of rules/examples, built from source once.
fn example_program(name: &str) -> String {
    static BUILT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let out =
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("alloc-programs-{}", std::process::id()));
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/rules/examples/build.sh");
        let run = std::process::Command::new("bash").arg(script).arg(&out).output().expect("run build.sh");
        assert!(run.status.success(), "rules/examples/build.sh (scripts/setup.sh installs clang, lld): {run:?}");
        out
    });
    dir.join(format!("{name}.wasm")).display().to_string()
}

/// Program rules: the packet copied in, the call, the map (made with room
/// for all its entries) read and written, for many subscribers.
#[test]
fn program_rules_do_not_allocate() {
    let rules = format!(
        "[[rule]]\nname = \"ports\"\nprotocol = \"tcp\"\nprogram = {:?}\n\n[[rule]]\nname = \"limit\"\nprotocol = \"tcp\"\ndst_ports = [587]\nprogram = {:?}\nmap_size = 4096\n",
        example_program("port_block"),
        example_program("submission_limit")
    );
    let mut r = router(PolicyBuilder::lab().rules(&rules));
    let now = Instant::now();
    let mut reply = vec![0u8; 2048];
    let mut buf = vec![0u8; 2048];
    let packets: Vec<(Vec<u8>, &str)> = (0..2000)
        .flat_map(|i| {
            let s = format!("100.64.{}.{}", 1 + i / 250, 1 + i % 250);
            [(587, "forward"), (2525, "reply"), (80, "forward")]
                .map(|(port, want)| (tcp_out(&s, MX4, port, true, 64, 0), want))
        })
        .collect();
    let mut run = |from: usize, to: usize| {
        for (pkt, want) in &packets[from * 3..to * 3] {
            let b = &mut buf[..pkt.len()];
            b.copy_from_slice(pkt);
            let v = r.handle(now, Direction::Outbound, b, &mut reply, RxInfo::default());
            assert_eq!(kind(v), *want, "{v:?}");
        }
    };
    run(0, 10);
    let n = allocations(|| run(10, 2000));
    assert_eq!(n, 0, "allocations over 1,990 subscribers");
}

/// The Ethernet upstream's per-packet neighbour work: the fast path to a
/// resolved gateway, the table's lookup of one, and an ARP request answered
/// (frame in, reply written into the caller's buffer).
#[test]
fn the_neighbour_tables_packet_paths_do_not_allocate() {
    use op25b::state::neighbour::{wire, LinkConfig, Lookup, Neighbours, Timers};
    use smoltcp::wire::ArpOperation;
    use std::net::{IpAddr, Ipv4Addr};
    let own = Ipv4Addr::new(198, 51, 100, 2);
    let gw = Ipv4Addr::new(198, 51, 100, 1);
    let mac = [2, 0, 0, 0, 0, 1];
    let cfg = LinkConfig {
        mac,
        v4: vec!["198.51.100.2/24".parse().expect("prefix")],
        v6: vec![],
        gateways: vec![IpAddr::V4(gw)],
    };
    let now = Instant::now();
    let mut n = Neighbours::new(&cfg, Timers::default(), now);
    let mut out = vec![0u8; 2048];
    let mut frame = [0u8; 64];
    let len = wire::arp(&mut frame, ArpOperation::Reply, ([2, 0, 0, 0, 0, 0xfe], gw), (mac, own), mac).expect("fits");
    n.handle_frame(now, &frame[..len]);
    while n.poll_transmit(&mut out).is_some() {}
    let fast = n.fast_path();
    let dst = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9));
    let packet = udp4(DYN4, MX4, 18);
    let mut request = [0u8; 64];
    let rlen = wire::arp(
        &mut request,
        ArpOperation::Request,
        ([2, 0, 0, 0, 0, 0x77], Ipv4Addr::new(198, 51, 100, 7)),
        ([0; 6], own),
        [0xff; 6],
    )
    .expect("fits");
    let allocs = allocations(|| {
        for _ in 0..1000 {
            assert!(fast.gateway_mac(dst).is_some());
            assert!(matches!(n.lookup(now, dst, &packet), Lookup::Mac(_)));
            n.handle_frame(now, &request[..rlen]);
            assert!(n.poll_transmit(&mut out).is_some(), "the request is answered");
        }
    });
    assert_eq!(allocs, 0);
}
