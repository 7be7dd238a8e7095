//! Scenarios on a virtual clock: answers, resolution, held packets, expiry,
//! unreachable next hops, and floods of forged frames.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetFrame, EthernetProtocol, Icmpv6Packet, Icmpv6Repr, Ipv6Packet,
    NdiscNeighborFlags, NdiscRepr, RawHardwareAddress,
};

use super::wire::{self, Mac, BROADCAST};
use super::*;

const OWN_MAC: Mac = [0x02, 0, 0, 0, 0, 0x01];
const GW_MAC: Mac = [0x02, 0, 0, 0, 0, 0xfe];
const OWN4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const GW4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const OWN6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
const GW6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

fn config() -> LinkConfig {
    LinkConfig {
        mac: OWN_MAC,
        v4: vec!["192.0.2.2/24".parse().unwrap()],
        v6: vec!["2001:db8::2/64".parse().unwrap()],
        gateways: vec![IpAddr::V4(GW4), IpAddr::V6(GW6)],
    }
}

/// A table at t0 with its start-up probes drained.
fn table() -> (Neighbours, Instant) {
    let t0 = Instant::now();
    let mut n = Neighbours::new(&config(), Timers::default(), t0);
    let frames = drain(&mut n);
    assert_eq!(frames.len(), 2, "one ARP request and one NS at start");
    (n, t0)
}

fn drain(n: &mut Neighbours) -> Vec<(Transmit, Vec<u8>)> {
    let mut out = vec![];
    let mut buf = [0u8; 2048];
    while let Some(t) = n.poll_transmit(&mut buf) {
        let len = match t {
            Transmit::Frame(l) | Transmit::Unreachable(l) => l,
        };
        out.push((t, buf[..len].to_vec()));
    }
    out
}

fn arp_frame(op: ArpOperation, sender: (Mac, Ipv4Addr), target: Ipv4Addr) -> Vec<u8> {
    let mut buf = [0u8; 64];
    let dst = if op == ArpOperation::Request { BROADCAST } else { OWN_MAC };
    let len = wire::arp(&mut buf, op, sender, ([0; 6], target), dst).unwrap();
    buf[..len].to_vec()
}

fn na_frame(target: Ipv6Addr, mac: Mac, flags: NdiscNeighborFlags, hop_limit: u8) -> Vec<u8> {
    let mut buf = [0u8; 128];
    let repr =
        NdiscRepr::NeighborAdvert { flags, target_addr: target, lladdr: Some(RawHardwareAddress::from_bytes(&mac)) };
    let len = wire::ndp(&mut buf, repr, (mac, target), (OWN_MAC, OWN6)).unwrap();
    buf[wire::ETH_HEADER_LEN + 7] = hop_limit;
    buf[..len].to_vec()
}

fn ns_frame(src: (Mac, Ipv6Addr), target: Ipv6Addr) -> Vec<u8> {
    let mut buf = [0u8; 128];
    let len = wire::solicit(&mut buf, src, target).unwrap();
    buf[..len].to_vec()
}

fn arp_of(frame: &[u8]) -> ArpRepr {
    let eth = EthernetFrame::new_checked(frame).unwrap();
    assert_eq!(eth.ethertype(), EthernetProtocol::Arp);
    ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap()).unwrap()
}

fn ndisc_of(frame: &[u8]) -> (Ipv6Addr, NdiscRepr<'_>) {
    let eth = EthernetFrame::new_checked(frame).unwrap();
    let ip = Ipv6Packet::new_checked(eth.payload()).unwrap();
    assert_eq!(ip.hop_limit(), 255);
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    let icmp = Icmpv6Packet::new_checked(&eth.payload()[40..]).unwrap();
    match Icmpv6Repr::parse(&src, &dst, &icmp, &ChecksumCapabilities::default()).unwrap() {
        Icmpv6Repr::Ndisc(r) => (dst, r),
        other => panic!("not NDP: {other:?}"),
    }
}

fn resolve_gateways(n: &mut Neighbours, now: Instant) {
    n.handle_frame(now, &arp_frame(ArpOperation::Reply, (GW_MAC, GW4), OWN4));
    n.handle_frame(now, &na_frame(GW6, GW_MAC, NdiscNeighborFlags::SOLICITED | NdiscNeighborFlags::ROUTER, 255));
}

const PKT4: [u8; 20] = [0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 100, 64, 0, 1, 203, 0, 113, 9];

#[test]
fn start_up_probes_the_gateways() {
    let t0 = Instant::now();
    let mut n = Neighbours::new(&config(), Timers::default(), t0);
    let frames = drain(&mut n);
    let arp = arp_of(&frames[0].1);
    let ArpRepr::EthernetIpv4 { operation, source_protocol_addr, target_protocol_addr, .. } = arp else {
        unreachable!()
    };
    assert_eq!((operation, source_protocol_addr, target_protocol_addr), (ArpOperation::Request, OWN4, GW4));
    assert_eq!(EthernetFrame::new_checked(&frames[0].1[..]).unwrap().dst_addr().0, BROADCAST);
    let (dst, ns) = ndisc_of(&frames[1].1);
    assert_eq!(dst, wire::solicited_node(GW6).0);
    assert!(matches!(ns, NdiscRepr::NeighborSolicit { target_addr, .. } if target_addr == GW6));
    assert_eq!(n.stats().probes, 2);
}

#[test]
fn answers_arp_for_own_address_and_learns_nothing() {
    let (mut n, t0) = table();
    let peer: (Mac, Ipv4Addr) = ([0x02, 9, 9, 9, 9, 9], Ipv4Addr::new(192, 0, 2, 77));
    assert_eq!(n.handle_frame(t0, &arp_frame(ArpOperation::Request, peer, OWN4)), Handled::Consumed);
    let frames = drain(&mut n);
    assert_eq!(frames.len(), 1);
    let ArpRepr::EthernetIpv4 {
        operation,
        source_hardware_addr,
        source_protocol_addr,
        target_hardware_addr,
        target_protocol_addr,
    } = arp_of(&frames[0].1)
    else {
        unreachable!()
    };
    assert_eq!(operation, ArpOperation::Reply);
    assert_eq!((source_hardware_addr.0, source_protocol_addr), (OWN_MAC, OWN4));
    assert_eq!((target_hardware_addr.0, target_protocol_addr), peer);
    assert_eq!(n.len(), 2, "a request creates no entry");
    assert_eq!(n.known(IpAddr::V4(peer.1)), None);
    // Someone else's address: no answer.
    n.handle_frame(t0, &arp_frame(ArpOperation::Request, peer, Ipv4Addr::new(192, 0, 2, 3)));
    assert!(drain(&mut n).is_empty());
    assert_eq!((n.stats().answered, n.stats().not_ours), (1, 1));
}

#[test]
fn answers_solicitations_for_own_and_link_local_addresses() {
    let (mut n, t0) = table();
    let peer: (Mac, Ipv6Addr) = ([0x02, 8, 8, 8, 8, 8], Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x99));
    for target in [OWN6, wire::link_local(OWN_MAC)] {
        n.handle_frame(t0, &ns_frame(peer, target));
        let frames = drain(&mut n);
        assert_eq!(frames.len(), 1);
        let eth = EthernetFrame::new_checked(&frames[0].1[..]).unwrap();
        assert_eq!((eth.src_addr().0, eth.dst_addr().0), (OWN_MAC, peer.0));
        let (dst, na) = ndisc_of(&frames[0].1);
        assert_eq!(dst, peer.1);
        let NdiscRepr::NeighborAdvert { flags, target_addr, lladdr } = na else { panic!("{na:?}") };
        assert_eq!(target_addr, target);
        assert!(flags.contains(NdiscNeighborFlags::SOLICITED | NdiscNeighborFlags::ROUTER));
        assert_eq!(lladdr.unwrap().as_bytes(), OWN_MAC);
    }
    assert_eq!(n.len(), 2);
}

#[test]
fn holds_packets_until_the_gateway_answers_then_sends_them() {
    let (mut n, t0) = table();
    let dst = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9));
    assert_eq!(n.lookup(t0, dst, &PKT4), Lookup::Held);
    assert_eq!(n.lookup(t0, dst, &PKT4), Lookup::Held);
    n.handle_frame(t0, &arp_frame(ArpOperation::Reply, (GW_MAC, GW4), OWN4));
    let frames = drain(&mut n);
    assert_eq!(frames.len(), 2);
    for (t, f) in &frames {
        assert_eq!(*t, Transmit::Frame(14 + PKT4.len()));
        let eth = EthernetFrame::new_checked(&f[..]).unwrap();
        assert_eq!((eth.dst_addr().0, eth.src_addr().0, eth.ethertype()), (GW_MAC, OWN_MAC, EthernetProtocol::Ipv4));
        assert_eq!(eth.payload(), PKT4);
    }
    assert_eq!(n.lookup(t0, dst, &PKT4), Lookup::Mac(GW_MAC));
    assert_eq!((n.stats().held, n.stats().resolved), (2, 1));
    // IPv6 through its own gateway.
    let dst6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 1));
    assert_eq!(n.lookup(t0, dst6, &[0x60; 40]), Lookup::Held);
    n.handle_frame(t0, &na_frame(GW6, GW_MAC, NdiscNeighborFlags::SOLICITED, 255));
    assert_eq!(n.lookup(t0, dst6, &[0x60; 40]), Lookup::Mac(GW_MAC));
    let frames = drain(&mut n);
    let eth = EthernetFrame::new_checked(&frames[0].1[..]).unwrap();
    assert_eq!(eth.ethertype(), EthernetProtocol::Ipv6);
}

#[test]
fn a_few_packets_per_hop_then_unreachable_after_the_last_probe() {
    let (mut n, t0) = table();
    let dst = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9));
    for _ in 0..HELD_PER_HOP {
        assert_eq!(n.lookup(t0, dst, &PKT4), Lookup::Held);
    }
    assert_eq!(n.lookup(t0, dst, &PKT4), Lookup::Dropped);
    let timers = Timers::default();
    let mut now = t0;
    let mut probes = 0;
    let mut unreachable = vec![];
    // Virtual time: one retrans interval per step, until the hop is given up.
    for _ in 0..timers.probes + 1 {
        now += timers.retrans;
        n.handle_timeout(now);
        for (t, f) in drain(&mut n) {
            match t {
                Transmit::Frame(_) => probes += 1,
                Transmit::Unreachable(_) => unreachable.push(f),
            }
        }
    }
    assert_eq!(unreachable, vec![PKT4.to_vec(); HELD_PER_HOP]);
    assert!(probes >= usize::from(timers.probes) - 1, "probes: {probes}");
    let s = n.stats();
    assert_eq!((s.held, s.held_dropped, s.unreachable), (HELD_PER_HOP as u64, 1, HELD_PER_HOP as u64));
    assert!(s.failed >= 1);
    // The gateway stays in the table and is probed again.
    assert_eq!(n.next_hop(dst), Some(IpAddr::V4(GW4)));
    assert_eq!(n.lookup(now, dst, &PKT4), Lookup::Held);
}

#[test]
fn unsolicited_answers_create_nothing_and_move_nothing() {
    let (mut n, t0) = table();
    let stranger = Ipv4Addr::new(192, 0, 2, 50);
    n.handle_frame(t0, &arp_frame(ArpOperation::Reply, ([2, 6, 6, 6, 6, 6], stranger), OWN4));
    assert_eq!(n.known(IpAddr::V4(stranger)), None);
    resolve_gateways(&mut n, t0);
    // A forged reply for the resolved gateway does not move it.
    n.handle_frame(t0, &arp_frame(ArpOperation::Reply, ([2, 6, 6, 6, 6, 6], GW4), OWN4));
    n.handle_frame(
        t0,
        &na_frame(GW6, [2, 6, 6, 6, 6, 6], NdiscNeighborFlags::SOLICITED | NdiscNeighborFlags::OVERRIDE, 255),
    );
    assert_eq!(n.known(IpAddr::V4(GW4)), Some(GW_MAC));
    assert_eq!(n.known(IpAddr::V6(GW6)), Some(GW_MAC));
    assert_eq!(n.len(), 2);
    assert_eq!(n.stats().unsolicited, 3);
}

#[test]
fn an_advert_from_off_link_is_refused() {
    let (mut n, t0) = table();
    n.handle_frame(t0, &na_frame(GW6, GW_MAC, NdiscNeighborFlags::SOLICITED, 64));
    assert_eq!(n.known(IpAddr::V6(GW6)), None);
    assert_eq!(n.stats().malformed, 1);
}

#[test]
fn a_forged_flood_neither_fills_the_table_nor_displaces_the_gateway() {
    let (mut n, t0) = table();
    resolve_gateways(&mut n, t0);
    let mut now = t0;
    let mut answers = 0;
    for i in 0..20_000u32 {
        let b = i.to_be_bytes();
        let mac = [0x02, 0x66, b[0], b[1], b[2], b[3]];
        let v4 = Ipv4Addr::new(192, 0, 2, b[3]);
        let v6 = Ipv6Addr::new(
            0x2001,
            0xdb8,
            0,
            0,
            0,
            0,
            u16::from_be_bytes([b[0], b[1]]),
            u16::from_be_bytes([b[2], b[3]]),
        );
        let target = if i % 2 == 0 { OWN4 } else { Ipv4Addr::new(192, 0, 2, 200) };
        n.handle_frame(now, &arp_frame(ArpOperation::Request, (mac, v4), target));
        n.handle_frame(now, &arp_frame(ArpOperation::Reply, (mac, v4), OWN4));
        n.handle_frame(now, &arp_frame(ArpOperation::Reply, (mac, GW4), OWN4));
        n.handle_frame(now, &ns_frame((mac, v6), OWN6));
        n.handle_frame(now, &na_frame(v6, mac, NdiscNeighborFlags::SOLICITED | NdiscNeighborFlags::OVERRIDE, 255));
        n.handle_frame(now, &na_frame(GW6, mac, NdiscNeighborFlags::SOLICITED | NdiscNeighborFlags::OVERRIDE, 255));
        if i % 100 == 0 {
            answers += drain(&mut n).len();
            now += Duration::from_millis(10);
            n.handle_timeout(now);
        }
    }
    answers += drain(&mut n).len();
    assert_eq!(n.len(), 2, "only the gateways");
    assert_eq!(n.known(IpAddr::V4(GW4)), Some(GW_MAC));
    assert_eq!(n.known(IpAddr::V6(GW6)), Some(GW_MAC));
    assert_eq!(n.lookup(now, IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9)), &PKT4), Lookup::Mac(GW_MAC));
    let s = n.stats();
    assert_eq!(s.unsolicited, 4 * 20_000);
    assert_eq!(s.not_ours, 10_000);
    // Every request for an own address was answered (the queue never overflowed at this pace).
    assert_eq!((answers, s.answered), (30_000, 30_000));
}

#[test]
fn entries_are_re_probed_after_the_reachable_time() {
    let (mut n, t0) = table();
    resolve_gateways(&mut n, t0);
    let timers = Timers::default();
    let dst = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9));
    let later = t0 + timers.reachable + Duration::from_millis(1);
    n.handle_timeout(later);
    assert_eq!(drain(&mut n).len(), 2, "both gateways re-probed");
    assert_eq!(n.stats().reprobes, 2);
    // The old MAC is used while the probe runs.
    assert_eq!(n.lookup(later, dst, &PKT4), Lookup::Mac(GW_MAC));
    // The gateway moved: its answer to the probe is taken.
    n.handle_frame(later, &arp_frame(ArpOperation::Reply, ([2, 0, 0, 0, 0, 0xfd], GW4), OWN4));
    assert_eq!(n.lookup(later, dst, &PKT4), Lookup::Mac([2, 0, 0, 0, 0, 0xfd]));
    // No answer to the next round: the MAC is forgotten and packets wait again.
    let mut now = later + timers.reachable;
    for _ in 0..=timers.probes {
        n.handle_timeout(now);
        now += timers.retrans;
    }
    assert_eq!(n.known(IpAddr::V4(GW4)), None);
    assert_eq!(n.lookup(now, dst, &PKT4), Lookup::Held);
}

#[test]
fn on_link_next_hops_are_bounded_and_never_evict_a_gateway() {
    let (mut n, t0) = table();
    resolve_gateways(&mut n, t0);
    let mut now = t0;
    for i in 0..1000u32 {
        now += Duration::from_millis(1);
        let dst = IpAddr::V4(Ipv4Addr::new(192, 0, 2, (i % 250) as u8 + 3));
        let _ = n.lookup(now, dst, &PKT4);
    }
    assert_eq!(n.len(), CAPACITY);
    assert!(n.stats().evicted > 0);
    // Every new hop past the 62 on-link places met a full table and evicted one.
    assert_eq!(n.stats().table_full, 1000 - (CAPACITY as u64 - 2));
    assert_eq!(n.stats().evicted, n.stats().table_full);
    assert_eq!(n.stats().entries, CAPACITY as u64);
    assert_eq!(n.known(IpAddr::V4(GW4)), Some(GW_MAC));
    // Every held buffer came back to the pool or is still held by an entry: more holds still work.
    drain(&mut n);
    for _ in 0..10 {
        now += Duration::from_secs(1);
        n.handle_timeout(now);
        drain(&mut n);
    }
    assert_eq!(n.len(), 2, "silent on-link hops are given up");
    assert_eq!(n.lookup(now, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9)), &PKT4), Lookup::Held);
}

#[test]
fn truncated_and_garbage_frames_never_panic() {
    let (mut n, t0) = table();
    let frames = [
        arp_frame(ArpOperation::Request, (GW_MAC, GW4), OWN4),
        ns_frame((GW_MAC, GW6), OWN6),
        na_frame(GW6, GW_MAC, NdiscNeighborFlags::SOLICITED, 255),
    ];
    for f in &frames {
        for len in 0..f.len() {
            let _ = n.handle_frame(t0, &f[..len]);
            let mut bad = f.clone();
            bad[len] ^= 0xff;
            let _ = n.handle_frame(t0, &bad);
        }
    }
    drain(&mut n);
    assert!(n.stats().malformed > 0);
    assert_eq!(n.len(), 2);
}

#[test]
fn no_route_without_a_gateway_of_the_family() {
    let t0 = Instant::now();
    let cfg = LinkConfig { gateways: vec![IpAddr::V4(GW4)], ..config() };
    let mut n = Neighbours::new(&cfg, Timers::default(), t0);
    let off_link6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 0, 1));
    assert_eq!(n.lookup(t0, off_link6, &[0x60; 40]), Lookup::NoRoute);
    // On-link IPv6 needs no gateway.
    let on_link6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7));
    assert_eq!(n.lookup(t0, on_link6, &[0x60; 40]), Lookup::Held);
}

#[test]
fn an_unused_on_link_entry_expires_and_is_counted() {
    let (mut n, t0) = table();
    resolve_gateways(&mut n, t0);
    let hop = Ipv4Addr::new(192, 0, 2, 7);
    assert_eq!(n.lookup(t0, IpAddr::V4(hop), &PKT4), Lookup::Held);
    drain(&mut n);
    n.handle_frame(t0, &arp_frame(ArpOperation::Reply, ([2, 0, 0, 0, 0, 7], hop), OWN4));
    drain(&mut n);
    assert_eq!((n.stats().resolved, n.len()), (3, 3));
    // Not used for a whole reachable time: forgotten, not re-probed; the gateways are re-probed.
    n.handle_timeout(t0 + Timers::default().reachable + Duration::from_millis(1));
    let s = n.stats();
    assert_eq!((s.expired, s.reprobes, s.entries), (1, 2, 2));
}

#[test]
fn the_fast_path_follows_the_gateways_mac() {
    let (mut n, t0) = table();
    let fast = n.fast_path();
    let off4 = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9));
    let off6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 9));
    assert_eq!((fast.gateway_mac(off4), fast.gateway_mac(off6)), (None, None), "unresolved");
    resolve_gateways(&mut n, t0);
    assert_eq!((fast.gateway_mac(off4), fast.gateway_mac(off6)), (Some(GW_MAC), Some(GW_MAC)));
    // On-link destinations (and link-local ones) are the table's.
    assert_eq!(fast.gateway_mac(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9))), None);
    assert_eq!(fast.gateway_mac(IpAddr::V6(wire::link_local([2, 0, 0, 0, 0, 9]))), None);
    // Re-probed after the reachable time: the MAC stays while the probe runs, moves with the answer.
    let timers = Timers::default();
    let later = t0 + timers.reachable + Duration::from_millis(1);
    n.handle_timeout(later);
    assert_eq!(fast.gateway_mac(off4), Some(GW_MAC));
    let moved = [2, 0, 0, 0, 0, 0xfd];
    n.handle_frame(later, &arp_frame(ArpOperation::Reply, (moved, GW4), OWN4));
    assert_eq!(fast.gateway_mac(off4), Some(moved));
    // No answer to the next round: withdrawn, and packets go the slow way (held).
    let mut now = later + timers.reachable;
    for _ in 0..=timers.probes {
        n.handle_timeout(now);
        now += timers.retrans;
    }
    assert_eq!(fast.gateway_mac(off4), None);
    assert_eq!(n.lookup(now, off4, &PKT4), Lookup::Held);
    // A forged answer changes nothing: the fast path agrees with the table.
    n.handle_frame(now, &na_frame(GW6, [2, 0, 0, 0, 0, 0x66], NdiscNeighborFlags::OVERRIDE, 255));
    assert_eq!(fast.gateway_mac(off6), n.known(IpAddr::V6(GW6)));
}

#[test]
fn the_fast_path_and_the_table_agree_on_what_is_on_link() {
    let (mut n, t0) = table();
    resolve_gateways(&mut n, t0);
    let fast = n.fast_path();
    let mut addrs: Vec<IpAddr> = (0..=255u8).map(|i| IpAddr::V4(Ipv4Addr::new(192, 0, 2, i))).collect();
    addrs.extend((0..=255u8).map(|i| IpAddr::V4(Ipv4Addr::new(192, 0, 3, i))));
    addrs
        .extend([OWN6, GW6, wire::link_local(OWN_MAC), Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 1)].map(IpAddr::V6));
    addrs.extend(
        [Ipv6Addr::new(0xfe80, 0, 0, 1, 0, 0, 0, 1), Ipv6Addr::new(0xfe81, 0, 0, 0, 0, 0, 0, 1)].map(IpAddr::V6),
    );
    for a in addrs {
        // On-link (the table sends there itself): not the fast path's; off-link: the gateway's MAC.
        assert_eq!(fast.gateway_mac(a).is_none(), n.next_hop(a) == Some(a), "{a}");
    }
}
