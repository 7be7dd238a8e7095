//! Runs N lookups of a resolved gateway through the neighbour table, the work
//! the Ethernet upstream adds to each forwarded packet, for callgrind:
//! `valgrind --tool=callgrind --toggle-collect='*Neighbours::lookup*'
//! target/release/examples/neighbour_lookup 100000` (docs/UPLINK.md).

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use op25b::state::neighbour::{wire, LinkConfig, Lookup, Neighbours, Timers};

fn main() {
    let n: u32 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(100_000);
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
    let packet = [0x45u8; 40];
    let dst = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9));
    let mut found = 0u32;
    for _ in 0..n {
        if let Lookup::Mac(_) = table.lookup(std::hint::black_box(now), std::hint::black_box(dst), &packet) {
            found += 1;
        }
    }
    assert_eq!(found, n, "the gateway is resolved");
    println!("{found} lookups");
}
