//! Scenario tests of the router core over byte-array packets: every branch of
//! the policy, both IP versions, fragments, malformed input, TTL and MTU.

use std::net::{IpAddr, Ipv4Addr};

use etherparse::TcpHeaderSlice;

use crate::packet::{checksum, tcp_flags, IpVersion, PacketView, Transport};
use crate::testing::packets::{self, fix_ipv4_checksum};

const DYN4: [u8; 4] = [100, 64, 1, 10];
const STATIC4: [u8; 4] = [100, 64, 9, 10];
const MX4: [u8; 4] = [203, 0, 113, 25];
const RELAY4: [u8; 4] = [198, 51, 100, 25];
const DYN6: &str = "2001:db8:100:1::10";
const STATIC6: &str = "2001:db8:100:9::10";
const MX6: &str = "2001:db8:203::25";
const RELAY6: &str = "2001:db8:25::25";

fn v4(a: [u8; 4]) -> String {
    Ipv4Addr::from(a).to_string()
}

fn tcp4(src: [u8; 4], dst: [u8; 4], dport: u16, syn: bool, ttl: u8) -> Vec<u8> {
    tcp6(&v4(src), &v4(dst), dport, syn, ttl)
}

/// A SYN or an ACK (either family, despite the name) from port 40000.
fn tcp6(src: &str, dst: &str, dport: u16, syn: bool, ttl: u8) -> Vec<u8> {
    let b = packets::tcp(src, 40000, dst, dport).seq(1000).ttl(ttl);
    if syn { b.syn() } else { b.ack(5000) }.build()
}

fn udp4(src: [u8; 4], dst: [u8; 4], dport: u16, payload: usize) -> Vec<u8> {
    udp6(&v4(src), &v4(dst), dport, payload)
}

fn udp6(src: &str, dst: &str, dport: u16, payload: usize) -> Vec<u8> {
    packets::udp(src, 40000, dst, dport, &vec![0x55; payload])
}

const PADN: [u8; 6] = [1, 4, 0, 0, 0, 0];

fn parse(p: &[u8]) -> PacketView {
    PacketView::parse(p).expect("router output parses")
}

/// Checks the reply is a well-formed RST answering a SYN of `syn`.
fn assert_rst_for(syn: &[u8], reply: &[u8]) {
    let q = parse(syn);
    let r = parse(reply);
    assert_eq!((r.src, r.dst), (q.dst, q.src), "RST comes from the dialled address");
    let Transport::Tcp { src_port, dst_port, flags, seq, ack, .. } = r.transport else { panic!("not TCP") };
    let Transport::Tcp { src_port: qs, dst_port: qd, seq: qseq, .. } = q.transport else { unreachable!() };
    assert_eq!((src_port, dst_port), (qd, qs));
    assert_eq!(flags, tcp_flags::RST | tcp_flags::ACK);
    assert_eq!(seq, 0);
    assert_eq!(ack, qseq.wrapping_add(1));
    let tcp = TcpHeaderSlice::from_slice(&reply[r.l4_offset..]).unwrap();
    let want = match (r.src, r.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => tcp.calc_checksum_ipv4_raw(s.octets(), d.octets(), &[]).unwrap(),
        (IpAddr::V6(s), IpAddr::V6(d)) => tcp.calc_checksum_ipv6_raw(s.octets(), d.octets(), &[]).unwrap(),
        _ => unreachable!(),
    };
    assert_eq!(tcp.checksum(), want, "RST checksum");
    assert!(reply.len() <= syn.len(), "reply no larger than the trigger");
}

/// Checks an ICMP error: from `from`, to the trigger's source, type/code, quoting it.
fn assert_icmp(trigger: &[u8], reply: &[u8], from: IpAddr, icmp_type: u8, code: u8) -> PacketView {
    let q = parse(trigger);
    let r = parse(reply);
    assert_eq!(r.src, from);
    assert_eq!(r.dst, q.src);
    assert_eq!(r.transport, Transport::Icmp { icmp_type, code });
    let body = &reply[r.l4_offset..r.len];
    assert_eq!(&body[8..8 + 28], &trigger[..28], "quotes the offending packet");
    match r.version {
        IpVersion::V4 => assert_eq!(checksum::sum(body), 0xffff, "ICMP checksum"),
        IpVersion::V6 => {
            let (IpAddr::V6(s), IpAddr::V6(d)) = (r.src, r.dst) else { unreachable!() };
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&(body.len() as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 58]);
            pseudo.extend_from_slice(body);
            assert_eq!(checksum::sum(&pseudo), 0xffff, "ICMPv6 checksum");
        }
    }
    r
}

// ---- forwarding -------------------------------------------------------------

fn syn_with_data4(dport: u16) -> Vec<u8> {
    let mut v = packets::tcp(&v4(DYN4), 40000, &v4(MX4), dport).seq(7).window(1000).syn().payload(&[0xaa; 300]).build();
    v[6] = 0; // clear DF so fragmenting is legal
    fix_ipv4_checksum(&mut v);
    v
}

mod abuse;
mod actions;
mod attempts;
mod fragments;
mod malformed;
mod policy;
mod replies;
mod tunnels;
