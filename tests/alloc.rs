//! No allocation on the forwarding path: a counting global allocator around
//! `Router::handle` / `Router::handle_gso` for forwarded, blocked (RST reply and
//! silent drop), answered (echo, time exceeded) and malformed packets.
//!
//! Counting is per thread (a thread-local switch), so the test harness's own
//! threads and other tests in this binary do not disturb it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::Ipv6Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use etherparse::PacketBuilder;
use op25b::{Config, Direction, Router, Verdict};

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn note() {
    // try_with: the allocator also runs while thread-locals are torn down.
    let on = COUNTING.try_with(Cell::get).unwrap_or(false);
    if on {
        let _ = ALLOCS.try_with(|a| a.set(a.get() + 1));
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// bookkeeping touches only const-initialised thread-locals (no allocation).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
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
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCS.with(Cell::get)
}

fn router() -> Router {
    // The same replies over and over at one instant: lift the reply limit so
    // every case keeps its verdict (the limiter's table is allocated up front).
    let text = include_str!("../config/lab.toml")
        .replace("reply_rate = 10", "reply_rate = 1000000")
        .replace("reply_burst = 20", "reply_burst = 1000000");
    let cfg = Config::parse(Path::new("config/lab.toml"), &text).expect("lab config");
    Router::new(Arc::new(cfg.policy))
}

fn tcp4(dport: u16, syn: bool, ttl: u8, payload: usize) -> Vec<u8> {
    let b = PacketBuilder::ipv4([100, 64, 1, 10], [203, 0, 113, 25], ttl).tcp(40000, dport, 1, 64240);
    let b = if syn { b.syn() } else { b.ack(1) };
    let mut v = Vec::new();
    b.write(&mut v, &vec![0; payload]).unwrap();
    v
}

fn tcp6(dport: u16, syn: bool, payload: usize) -> Vec<u8> {
    let src: Ipv6Addr = "2001:db8:100:1::10".parse().unwrap();
    let dst: Ipv6Addr = "2001:db8:203::25".parse().unwrap();
    let b = PacketBuilder::ipv6(src.octets(), dst.octets(), 64).tcp(40000, dport, 1, 64240);
    let b = if syn { b.syn() } else { b.ack(1) };
    let mut v = Vec::new();
    b.write(&mut v, &vec![0; payload]).unwrap();
    v
}

fn udp4(src: [u8; 4], dst: [u8; 4], payload: usize) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ipv4(src, dst, 64).udp(40000, 5201).write(&mut v, &vec![0; payload]).unwrap();
    v
}

fn echo4(dst: [u8; 4]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ipv4([100, 64, 1, 10], dst, 64).icmpv4_echo_request(1, 1).write(&mut v, &[0; 56]).unwrap();
    v
}

/// Name, direction, packet, GSO segment size, expected verdict kind.
type Case = (&'static str, Direction, Vec<u8>, Option<u16>, &'static str);

fn cases() -> Vec<Case> {
    use Direction::{Inbound, Outbound};
    let mut truncated = tcp4(587, false, 64, 0);
    truncated.truncate(24);
    vec![
        ("forward tcp4 1500", Outbound, tcp4(587, false, 64, 1460), None, "forward"),
        ("forward tcp6 1500", Outbound, tcp6(443, false, 1440), None, "forward"),
        ("forward udp4 64", Outbound, udp4([100, 64, 1, 10], [203, 0, 113, 25], 36), None, "forward"),
        ("forward udp4 inbound", Inbound, udp4([203, 0, 113, 25], [100, 64, 1, 10], 36), None, "forward"),
        ("forward gso tcp4 64k", Outbound, tcp4(587, false, 64, 60_000), Some(1448), "forward"),
        ("blocked syn4 -> rst", Outbound, tcp4(25, true, 64, 0), None, "reply"),
        ("blocked syn6 -> rst", Outbound, tcp6(25, true, 0), None, "reply"),
        ("blocked ack4 -> drop", Outbound, tcp4(25, false, 64, 0), None, "drop"),
        ("ttl 1 -> time exceeded", Outbound, tcp4(587, false, 1, 100), None, "reply"),
        ("echo to router -> reply", Outbound, echo4([100, 64, 0, 1]), None, "reply"),
        ("spoofed source -> drop", Outbound, udp4([192, 0, 2, 1], [203, 0, 113, 25], 36), None, "drop"),
        ("truncated -> drop", Outbound, truncated, None, "drop"),
    ]
}

fn kind(v: Verdict) -> &'static str {
    match v {
        Verdict::Forward { .. } => "forward",
        Verdict::Reply { .. } => "reply",
        Verdict::Drop(_) => "drop",
        #[allow(unreachable_patterns)]
        _ => "other",
    }
}

#[test]
fn router_paths_do_not_allocate() {
    let mut r = router();
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
                let v = match gso {
                    Some(g) => r.handle_gso(now, *dir, buf, reply, *g),
                    None => r.handle(now, *dir, buf, reply),
                };
                assert_eq!(kind(v), *want, "{name}: {v:?}");
            }
        }
    };
    // Warm-up: anything lazily allocated once (counters, caches) happens here.
    run(&mut r, &mut bufs, &mut reply, 10);
    let n = allocations(|| run(&mut r, &mut bufs, &mut reply, 10_000));
    assert_eq!(n, 0, "allocations on the packet path over 10,000 rounds of {} packets", cases.len());
}

#[test]
fn the_counter_sees_allocations() {
    // Guards the test above against a switch that counts nothing.
    let n = allocations(|| {
        std::hint::black_box(vec![0u8; 64]);
    });
    assert!(n >= 1);
}
