//! Malformed, random and GSO input.

use super::{syn_with_data4, tcp4, tcp6, udp4, v4, DYN4, DYN6, MX4, MX6, PADN};
use crate::packet::PacketView;
use crate::router::{Direction, DropReason, ReplyKind, RxInfo, Verdict};
use crate::testing::packets::{self, fix_ipv4_checksum, fragment4, fragment6, with_ext6};
use crate::testing::PolicyBuilder;

#[test]
fn malformed_packets_are_dropped_by_reason() {
    let mut t = PolicyBuilder::lab().router();
    let good = tcp4(DYN4, MX4, 587, true, 64);
    let good6 = tcp6(DYN6, MX6, 587, true, 64);
    let mut cases: Vec<(Vec<u8>, DropReason)> = vec![
        (vec![], DropReason::Truncated),
        (good[..10].to_vec(), DropReason::Truncated),
        (good6[..30].to_vec(), DropReason::Truncated),
        (good[..30].to_vec(), DropReason::BadTotalLen),
        (good6[..50].to_vec(), DropReason::BadTotalLen),
    ];
    let mut v5 = good.clone();
    v5[0] = 0x55;
    cases.push((v5, DropReason::BadVersion));
    let mut ihl = good.clone();
    ihl[0] = 0x44;
    cases.push((ihl, DropReason::BadHeaderLen));
    let mut sum = good.clone();
    sum[11] ^= 0xff;
    cases.push((sum, DropReason::BadChecksum));
    let mut short_total = good.clone();
    short_total[2..4].copy_from_slice(&10u16.to_be_bytes());
    fix_ipv4_checksum(&mut short_total);
    cases.push((short_total, DropReason::BadTotalLen));
    let mut doff = good.clone();
    doff[32] = 0x40; // TCP data offset 4
    cases.push((doff, DropReason::BadHeaderLen));
    let mut cut_tcp = good.clone();
    cut_tcp.truncate(30);
    cut_tcp[2..4].copy_from_slice(&30u16.to_be_bytes());
    fix_ipv4_checksum(&mut cut_tcp);
    cases.push((cut_tcp, DropReason::Truncated));
    let mut bad_ext = with_ext6(&good6, 60, PADN);
    bad_ext[41] = 200; // extension length beyond the packet
    cases.push((bad_ext, DropReason::BadExtHeader));
    for (p, want) in cases {
        assert_eq!(t.out(&p).0, Verdict::Drop(want), "{p:02x?}");
    }
    assert_eq!(t.stats().dropped(DropReason::BadChecksum), 1);
}

#[test]
fn trailing_bytes_beyond_total_length_are_not_forwarded() {
    let mut t = PolicyBuilder::lab().router();
    let mut p = tcp4(DYN4, MX4, 587, true, 64);
    let len = p.len();
    p.extend_from_slice(&[0xee; 6]);
    assert_eq!(t.out(&p).0, Verdict::Forward { len });
}

#[test]
fn no_panic_on_random_or_mutated_input() {
    let mut t = PolicyBuilder::lab().router();
    let mut x: u64 = 0x2545f4914f6cdd1d;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let seeds = [
        tcp4(DYN4, MX4, 25, true, 64),
        tcp6(DYN6, MX6, 25, true, 2),
        with_ext6(&fragment6(&tcp6(DYN6, MX6, 25, true, 64), 0, true, 20), 0, PADN),
        fragment4(&syn_with_data4(25), 0, 24, true),
        udp4(DYN4, MX4, 53, 40),
    ];
    let mut verdicts = 0usize;
    for i in 0..200_000 {
        let mut p = if i % 4 == 0 {
            (0..(rnd() % 128) as usize).map(|_| rnd() as u8).collect()
        } else {
            seeds[i % seeds.len()].clone()
        };
        for _ in 0..(rnd() % 4) {
            if !p.is_empty() {
                let at = (rnd() as usize) % p.len();
                p[at] = rnd() as u8;
            }
        }
        if rnd() % 8 == 0 {
            p.truncate((rnd() as usize) % (p.len() + 1));
        }
        let dir = if rnd() % 2 == 0 { Direction::Outbound } else { Direction::Inbound };
        let mut reply = [0u8; 1280];
        let mut buf = p.clone();
        match t.router.handle(t.now, dir, &mut buf, &mut reply, RxInfo::default()) {
            Verdict::Reply { len, .. } => {
                assert!(len <= p.len().max(40) + 48, "reply {len} for a {}-byte trigger", p.len());
                PacketView::parse(&reply[..len]).expect("replies parse");
            }
            Verdict::Forward { len } => assert!(len <= p.len()),
            Verdict::Drop(_) | Verdict::Terminate => {}
        }
        verdicts += 1;
    }
    let c = t.stats();
    let total: u64 = Direction::ALL.iter().map(|d| c.forwarded(*d)).sum::<u64>()
        + DropReason::ALL.iter().map(|r| c.dropped(*r)).sum::<u64>()
        + ReplyKind::ALL.iter().map(|k| c.replies(*k)).sum::<u64>()
        + c.terminated();
    assert_eq!(total, verdicts as u64, "every verdict is counted exactly once");
}

#[test]
fn gso_super_packets_are_judged_on_headers_and_checked_per_segment() {
    let mut t = PolicyBuilder::lab().router();
    // A 60,000-byte TCP super-packet to 587, cut into 1448-byte segments.
    let big = packets::tcp(&v4(DYN4), 40000, &v4(MX4), 587).window(1000).ack(1).payload(&[0; 60_000]).build();
    let gso = RxInfo { gso_size: Some(1448), csum_partial: true };
    let (v, out) = t.send_rx(Direction::Outbound, &big, gso);
    assert_eq!(v, Verdict::Forward { len: big.len() });
    assert_eq!(out[8], 63);
    // Segments larger than the egress MTU get "too big" with the MTU.
    let mut t = PolicyBuilder::lab().upstream("mtu", 1400).router();
    let v = t.send_rx(Direction::Outbound, &big, gso).0;
    assert!(matches!(v, Verdict::Reply { kind: ReplyKind::TooBig, .. }), "{v:?}");
    // The same super-packet to port 25 is blocked like any segment of the flow.
    let mut t = PolicyBuilder::lab().router();
    let to25 = packets::tcp(&v4(DYN4), 40000, &v4(MX4), 25).window(1000).ack(1).payload(&[0; 60_000]).build();
    let v = t.send_rx(Direction::Outbound, &to25, gso).0;
    assert_eq!(v, Verdict::Drop(DropReason::Op25bBlocked));
}
