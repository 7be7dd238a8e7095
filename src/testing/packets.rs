//! Packet constructors for tests: TCP, UDP and ICMP echo over IPv4 or IPv6,
//! the family taken from the addresses. Built with etherparse, checksums
//! correct, so a test only says what differs from an ordinary packet.

use std::net::IpAddr;

use etherparse::{PacketBuilder, PacketBuilderStep, TcpHeader};

fn addr(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("test address {s:?}: {e}"))
}

fn ip(src: &str, dst: &str, ttl: u8) -> PacketBuilderStep<etherparse::IpHeaders> {
    match (addr(src), addr(dst)) {
        (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), ttl),
        (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), ttl),
        _ => panic!("test packet {src} -> {dst}: mixed IP versions"),
    }
}

/// A TCP segment under construction: `tcp(src, sport, dst, dport).syn().build()`.
#[derive(Debug, Clone)]
#[must_use]
pub struct Tcp {
    src: String,
    dst: String,
    sport: u16,
    dport: u16,
    seq: u32,
    ack: Option<u32>,
    syn: bool,
    fin: bool,
    rst: bool,
    psh: bool,
    window: u16,
    ttl: u8,
    payload: Vec<u8>,
}

/// A TCP segment from `src:sport` to `dst:dport`: no flags, seq 1, TTL 64.
pub fn tcp(src: &str, sport: u16, dst: &str, dport: u16) -> Tcp {
    Tcp {
        src: src.to_string(),
        dst: dst.to_string(),
        sport,
        dport,
        seq: 1,
        ack: None,
        syn: false,
        fin: false,
        rst: false,
        psh: false,
        window: 64240,
        ttl: 64,
        payload: Vec::new(),
    }
}

/// A SYN from `src:40000` to `dst:dport`.
pub fn syn(src: &str, dst: &str, dport: u16) -> Vec<u8> {
    tcp(src, 40000, dst, dport).syn().build()
}

/// An ACK (seq 1, ack 1) from `src:40000` to `dst:dport`.
pub fn ack(src: &str, dst: &str, dport: u16) -> Vec<u8> {
    tcp(src, 40000, dst, dport).ack(1).build()
}

impl Tcp {
    /// Sets SYN.
    pub fn syn(mut self) -> Self {
        self.syn = true;
        self
    }
    /// Sets ACK with this acknowledgement number.
    pub fn ack(mut self, n: u32) -> Self {
        self.ack = Some(n);
        self
    }
    /// Sets FIN.
    pub fn fin(mut self) -> Self {
        self.fin = true;
        self
    }
    /// Sets RST.
    pub fn rst(mut self) -> Self {
        self.rst = true;
        self
    }
    /// Sets PSH.
    pub fn psh(mut self) -> Self {
        self.psh = true;
        self
    }
    /// The sequence number.
    pub fn seq(mut self, n: u32) -> Self {
        self.seq = n;
        self
    }
    /// The window.
    pub fn window(mut self, n: u16) -> Self {
        self.window = n;
        self
    }
    /// The TTL / hop limit.
    pub fn ttl(mut self, n: u8) -> Self {
        self.ttl = n;
        self
    }
    /// The payload.
    pub fn payload(mut self, p: &[u8]) -> Self {
        self.payload = p.to_vec();
        self
    }
    /// The packet's bytes.
    pub fn build(&self) -> Vec<u8> {
        let mut h = TcpHeader::new(self.sport, self.dport, self.seq, self.window);
        h.syn = self.syn;
        h.fin = self.fin;
        h.rst = self.rst;
        h.psh = self.psh;
        if let Some(a) = self.ack {
            h.ack = true;
            h.acknowledgment_number = a;
        }
        let mut v = Vec::new();
        ip(&self.src, &self.dst, self.ttl).tcp_header(h).write(&mut v, &self.payload).expect("tcp test packet");
        v
    }
}

/// A UDP datagram from `src:sport` to `dst:dport` with `payload`, TTL 64.
pub fn udp(src: &str, sport: u16, dst: &str, dport: u16, payload: &[u8]) -> Vec<u8> {
    udp_ttl(src, sport, dst, dport, payload, 64)
}

/// [`udp`] with a TTL / hop limit.
pub fn udp_ttl(src: &str, sport: u16, dst: &str, dport: u16, payload: &[u8], ttl: u8) -> Vec<u8> {
    let mut v = Vec::new();
    ip(src, dst, ttl).udp(sport, dport).write(&mut v, payload).expect("udp test packet");
    v
}

/// An ICMP / ICMPv6 echo request with `payload`, TTL 64.
pub fn echo_request(src: &str, dst: &str, payload: &[u8]) -> Vec<u8> {
    echo_request_ttl(src, dst, payload, 64)
}

/// [`echo_request`] with a TTL / hop limit.
pub fn echo_request_ttl(src: &str, dst: &str, payload: &[u8], ttl: u8) -> Vec<u8> {
    let mut v = Vec::new();
    let b = ip(src, dst, ttl);
    match addr(src) {
        IpAddr::V4(_) => b.icmpv4_echo_request(7, 1).write(&mut v, payload),
        IpAddr::V6(_) => b.icmpv6_echo_request(7, 1).write(&mut v, payload),
    }
    .expect("echo test packet");
    v
}

/// Whether the TCP checksum of `p` (an IP packet) is right, computed anew.
pub fn tcp_checksum_ok(p: &[u8]) -> bool {
    let v = crate::packet::PacketView::parse(p).expect("a packet that parses");
    let tcp = etherparse::TcpHeaderSlice::from_slice(&p[v.l4_offset..]).expect("a TCP header");
    let data = &p[v.l4_offset + tcp.slice().len()..v.len];
    let want = match (v.src, v.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => tcp.calc_checksum_ipv4_raw(s.octets(), d.octets(), data),
        (IpAddr::V6(s), IpAddr::V6(d)) => tcp.calc_checksum_ipv6_raw(s.octets(), d.octets(), data),
        _ => panic!("mixed IP versions"),
    };
    want.is_ok_and(|w| w == tcp.checksum())
}

/// Recomputes the IPv4 header checksum after a test changed header bytes.
pub fn fix_ipv4_checksum(p: &mut [u8]) {
    let ihl = usize::from(p[0] & 0xf) * 4;
    p[10] = 0;
    p[11] = 0;
    let c = !crate::packet::checksum::sum(&p[..ihl]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
}

/// An IPv4 fragment of `whole` (a packet with a 20-byte header): payload
/// bytes `[from, to)` at offset `from`, more fragments to come if `more`.
pub fn fragment4(whole: &[u8], from: usize, to: usize, more: bool) -> Vec<u8> {
    let mut p = whole[..20].to_vec();
    p.extend_from_slice(&whole[20 + from..20 + to]);
    let len = u16::try_from(p.len()).expect("fragment fits an IPv4 packet");
    p[2..4].copy_from_slice(&len.to_be_bytes());
    let off = u16::try_from(from / 8).expect("offset fits 13 bits") | if more { 0x2000 } else { 0 };
    p[6..8].copy_from_slice(&off.to_be_bytes());
    fix_ipv4_checksum(&mut p);
    p
}

/// `pkt` (IPv6) with an 8-byte extension header of `kind` inserted right
/// after the fixed header: next header, length 0, then `body`.
pub fn with_ext6(pkt: &[u8], kind: u8, body: [u8; 6]) -> Vec<u8> {
    let mut p = pkt[..40].to_vec();
    let next = p[6];
    p[6] = kind;
    p.push(next);
    p.push(0);
    p.extend_from_slice(&body);
    p.extend_from_slice(&pkt[40..]);
    let plen = u16::try_from(p.len() - 40).expect("fits an IPv6 payload length");
    p[4..6].copy_from_slice(&plen.to_be_bytes());
    p
}

/// An IPv6 fragment of `pkt`: a fragment header at `offset8` (8-byte units),
/// more to come if `more`, keeping `keep` bytes of what follows it.
pub fn fragment6(pkt: &[u8], offset8: u16, more: bool, keep: usize) -> Vec<u8> {
    let word = (offset8 << 3) | u16::from(more);
    let w = word.to_be_bytes();
    let mut p = with_ext6(pkt, 44, [w[0], w[1], 0, 0, 0, 7]);
    p.truncate(48 + keep);
    let plen = u16::try_from(p.len() - 40).expect("fits an IPv6 payload length");
    p[4..6].copy_from_slice(&plen.to_be_bytes());
    p
}
