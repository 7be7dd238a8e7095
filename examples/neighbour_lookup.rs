//! The per-packet work the Ethernet upstream adds to a forwarded packet to a
//! resolved gateway, for callgrind (docs/PERFORMANCE.md), N times:
//!
//! - `table`: what the edge did for every packet before the fast path (and
//!   still does for on-link or unresolved next hops): the table's lock, a
//!   clock read, `Neighbours::lookup`, the send-queue check;
//! - `fast`: `FastPath::gateway_mac` (no lock, no clock).
//!
//! `valgrind --tool=callgrind --toggle-collect='*neighbour_lookup::edge_*'
//! target/release/examples/neighbour_lookup table|fast 100000`

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;
use std::time::Instant;

use op25b::state::neighbour::{wire, FastPath, LinkConfig, Lookup, Mac, Neighbours, Timers};

/// The edge before the fast path, for one packet.
#[inline(never)]
fn edge_table(table: &Mutex<Neighbours>, dst: IpAddr, packet: &[u8]) -> Option<Mac> {
    let mut t = table.lock().unwrap_or_else(|p| p.into_inner());
    let r = t.lookup(Instant::now(), dst, packet);
    if t.wants_transmit() {
        return None;
    }
    match r {
        Lookup::Mac(mac) => Some(mac),
        _ => None,
    }
}

/// The edge with the fast path, for one packet.
#[inline(never)]
fn edge_fast(fast: &FastPath, dst: IpAddr) -> Option<Mac> {
    fast.gateway_mac(dst)
}

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "fast".into());
    let n: u32 = std::env::args().nth(2).and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let gw = Ipv4Addr::new(198, 51, 100, 1);
    let cfg = LinkConfig {
        mac: [2, 0, 0, 0, 0, 1],
        v4: vec!["198.51.100.2/24".parse().expect("prefix")],
        v6: vec!["2001:db8:1::2/64".parse().expect("prefix")],
        gateways: vec![IpAddr::V4(gw), "2001:db8:1::1".parse().expect("address")],
    };
    let now = Instant::now();
    let mut table = Neighbours::new(&cfg, Timers::default(), now);
    let mut reply = [0u8; 64];
    let len = wire::arp(
        &mut reply,
        smoltcp::wire::ArpOperation::Reply,
        ([2, 0, 0, 0, 0, 0xfe], gw),
        (cfg.mac, Ipv4Addr::new(198, 51, 100, 2)),
        cfg.mac,
    )
    .expect("fits");
    table.handle_frame(now, &reply[..len]);
    let mut out = [0u8; 2048];
    while table.poll_transmit(&mut out).is_some() {}
    let fast = table.fast_path();
    let table = Mutex::new(table);
    let packet = [0x45u8; 40];
    let dst = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9));
    let mut found = 0u32;
    for _ in 0..n {
        let mac = match mode.as_str() {
            "table" => edge_table(&table, std::hint::black_box(dst), &packet),
            _ => edge_fast(&fast, std::hint::black_box(dst)),
        };
        if mac.is_some() {
            found += 1;
        }
    }
    assert_eq!(found, n, "the gateway is resolved");
    println!("{mode}: {found} lookups");
}
