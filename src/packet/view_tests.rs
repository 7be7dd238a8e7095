//! Tests of the packet view: the fast and the full parse, malformed input.

use super::*;
use etherparse::PacketBuilder;

/// The fast path must give the full parse's view for every packet it takes,
/// and take the common ones.
#[test]
fn fast_parse_agrees_with_the_full_parse() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let (a4, b4) = ([100, 64, 1, 10], [203, 0, 113, 25]);
    let a6: [u8; 16] = "2001:db8:100:1::10".parse::<Ipv6Addr>().unwrap().octets();
    let b6: [u8; 16] = "2001:db8:203::25".parse::<Ipv6Addr>().unwrap().octets();
    let mut seeds: Vec<Vec<u8>> = Vec::new();
    let mut add = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut v = Vec::new();
        f(&mut v);
        seeds.push(v);
    };
    add(&|v| PacketBuilder::ipv4(a4, b4, 64).tcp(40000, 25, 1, 1000).syn().write(v, &[]).unwrap());
    add(&|v| PacketBuilder::ipv4(a4, b4, 64).tcp(40000, 587, 1, 1000).ack(7).write(v, &[1; 100]).unwrap());
    add(&|v| {
        let mut t = etherparse::TcpHeader::new(40000, 25, 1, 1000);
        t.syn = true;
        t.set_options(&[etherparse::TcpOptionElement::MaximumSegmentSize(1460)]).unwrap();
        PacketBuilder::ipv4(a4, b4, 64).tcp_header(t).write(v, &[]).unwrap()
    });
    add(&|v| PacketBuilder::ipv4(a4, b4, 64).udp(5353, 53).write(v, &[2; 30]).unwrap());
    add(&|v| PacketBuilder::ipv4(a4, b4, 64).icmpv4_echo_request(1, 2).write(v, &[3; 8]).unwrap());
    add(&|v| PacketBuilder::ipv6(a6, b6, 64).tcp(40000, 25, 1, 1000).syn().write(v, &[]).unwrap());
    add(&|v| PacketBuilder::ipv6(a6, b6, 64).udp(5353, 53).write(v, &[2; 30]).unwrap());
    add(&|v| PacketBuilder::ipv6(a6, b6, 64).icmpv6_echo_request(1, 2).write(v, &[3; 8]).unwrap());
    // The IPv4 header fields the fast path reads or must refuse: DF clear,
    // more-fragments set, other TTLs. Set, then the header checksum fixed.
    let fix_v4 = |p: &mut [u8]| {
        if p.len() >= 20 && p[0] >> 4 == 4 {
            let ihl = usize::from(p[0] & 0xf) * 4;
            if (20..=p.len()).contains(&ihl) {
                p[10..12].fill(0);
                let sum = !checksum::sum(&p[..ihl]);
                p[10..12].copy_from_slice(&sum.to_be_bytes());
            }
        }
    };
    let plain = seeds.len();
    for seed in seeds.clone() {
        if seed[0] >> 4 != 4 {
            continue;
        }
        for (flags, ttl) in [(0x00u8, 1u8), (0x20, 64), (0x60, 255), (0x80, 7)] {
            let mut p = seed.clone();
            p[6] = flags;
            p[8] = ttl;
            fix_v4(&mut p);
            seeds.push(p);
        }
    }
    // The fast parse as a value (it writes into a caller's view).
    let parse_fast = |p: &[u8]| {
        let mut v = PacketView::EMPTY;
        PacketView::parse_fast(p, &mut v).map(|()| v)
    };
    for (i, seed) in seeds.iter().enumerate() {
        let fast = parse_fast(seed);
        assert!(i >= plain || fast.is_some(), "seed {i} takes the fast path");
        if let Some(fast) = fast {
            assert_eq!(Ok(fast), PacketView::parse_full(seed), "seed {i}");
        }
    }
    let (mut taken, mut refused) = (0, 0);
    for i in 0..300_000usize {
        let mut p = seeds[i % seeds.len()].clone();
        let mutations = 1 + rnd() % 3;
        for _ in 0..mutations {
            // Mostly the headers: that is where the two paths decide.
            let at = (rnd() as usize) % p.len().min(64);
            p[at] = rnd() as u8;
        }
        if rnd() % 8 == 0 {
            p.truncate((rnd() as usize) % (p.len() + 1));
        }
        // Most IPv4 mutations would only break the header checksum, which
        // both paths refuse alike: usually fix it, so the fields themselves
        // get compared.
        if rnd() % 4 != 0 {
            fix_v4(&mut p);
        }
        match parse_fast(&p) {
            Some(fast) => {
                assert_eq!(Ok(fast), PacketView::parse_full(&p), "packet {p:02x?}");
                taken += 1;
            }
            None => refused += 1,
        }
    }
    assert!(refused > 10_000, "the mutations reached the refusals too ({refused})");
    assert!(taken > 10_000, "mutated packets exercised the fast path ({taken})");
}
