//! The structure-aware target: an [`Input`] (decoded from the fuzzer's bytes
//! with `arbitrary`) is a policy and a sequence of steps: send a packet built
//! from a description (IPv4 with options and fragments, IPv6 with an extension
//! header chain and fragments, TCP / UDP / ICMP / ICMPv6 or another protocol,
//! checksums right unless bent on purpose), answer a packet that left the
//! router (the handshake of a redirected flow or a banner session, an ICMP
//! error quoting it), or let time pass. Addresses and ports come mostly from
//! the lab's roles, so packets reach OP25B, the rules, the flow table and the
//! responder rather than anti-spoofing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use op25b::packet::{checksum, Direction, PacketView, Transport};
use op25b::RxInfo;

use op25b::testing::TestRouter;

use super::router::driver;

/// The whole input.
#[derive(Arbitrary, Debug)]
pub struct Input {
    /// Which policy (modulo the count).
    pub policy: u8,
    /// A 1280-byte reply buffer.
    pub small_reply: bool,
    /// What happens, in order.
    pub steps: Vec<Step>,
}

/// One step.
#[derive(Arbitrary, Debug)]
pub enum Step {
    /// A packet from one side.
    Send {
        /// Worker 1 rather than 0.
        second_worker: bool,
        /// From upstream rather than from a subscriber.
        inbound: bool,
        /// The packet.
        packet: Packet,
    },
    /// An answer to a packet that left the router, from its receiver.
    Answer {
        /// Which one, counted back from the newest.
        back: u8,
        /// What kind of answer.
        kind: AnswerKind,
    },
    /// Time passes.
    Wait(Wait),
    /// A conversation: up to `rounds` times, the receiver of the newest
    /// packet that left answers it (SYN with SYN-ACK, SYN-ACK with ACK, then
    /// `data` once, then FIN if `fin`), the responder's timers running between.
    Converse {
        /// At most this many answers.
        rounds: u8,
        /// What the answering side says once (an SMTP command, say).
        data: Vec<u8>,
        /// End with a FIN.
        fin: bool,
    },
}

/// How long.
#[derive(Arbitrary, Debug)]
pub enum Wait {
    /// Milliseconds.
    Millis(u8),
    /// Seconds.
    Secs(u8),
    /// Minutes.
    Minutes(u8),
}

/// An answer.
#[derive(Arbitrary, Debug)]
pub enum AnswerKind {
    /// TCP back on the same connection, numbers following the packet answered.
    Tcp {
        /// The flags.
        flags: Flags,
        /// Payload bytes (an SMTP command, say).
        data: Vec<u8>,
    },
    /// An ICMP / ICMPv6 error about the packet, from its destination.
    IcmpError {
        /// Type (ICMPv4: 3, 11, 12 are errors; ICMPv6: 1 to 4).
        icmp_type: u8,
        /// Code.
        code: u8,
    },
}

/// TCP flags, the usual combinations first.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Flags {
    /// SYN after SYN, SYN-ACK after SYN, ACK otherwise (answers only).
    Auto,
    /// SYN.
    Syn,
    /// SYN-ACK.
    SynAck,
    /// ACK.
    Ack,
    /// PSH-ACK.
    PshAck,
    /// FIN-ACK.
    FinAck,
    /// RST.
    Rst,
    /// RST-ACK.
    RstAck,
    /// Any flag byte.
    Raw(u8),
}

impl Flags {
    fn bits(self) -> u8 {
        match self {
            Flags::Auto | Flags::Ack => 0x10,
            Flags::Syn => 0x02,
            Flags::SynAck => 0x12,
            Flags::PshAck => 0x18,
            Flags::FinAck => 0x11,
            Flags::Rst => 0x04,
            Flags::RstAck => 0x14,
            Flags::Raw(b) => b,
        }
    }
}

/// An IPv4 address by role.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Addr4 {
    /// 100.64.1.x, a dynamic subscriber.
    Dynamic(u8),
    /// 100.64.9.x, a static (exempt) subscriber.
    Static(u8),
    /// 203.0.113.x, outside mail servers.
    Outside(u8),
    /// 192.0.2.x, the rules' `outside` set.
    Lab(u8),
    /// The relay.
    Relay,
    /// The router itself.
    Router,
    /// Anything.
    Raw([u8; 4]),
}

impl Addr4 {
    fn get(self) -> Ipv4Addr {
        match self {
            Addr4::Dynamic(x) => Ipv4Addr::new(100, 64, 1, x),
            Addr4::Static(x) => Ipv4Addr::new(100, 64, 9, x),
            Addr4::Outside(x) => Ipv4Addr::new(203, 0, 113, x),
            Addr4::Lab(x) => Ipv4Addr::new(192, 0, 2, x),
            Addr4::Relay => Ipv4Addr::new(198, 51, 100, 25),
            Addr4::Router => Ipv4Addr::new(100, 64, 0, 1),
            Addr4::Raw(b) => Ipv4Addr::from(b),
        }
    }
}

/// An IPv6 address by role.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Addr6 {
    /// 2001:db8:100:1::x, a dynamic subscriber.
    Dynamic(u16),
    /// 2001:db8:100:9::x, a static subscriber.
    Static(u16),
    /// 2001:db8:203::x, outside.
    Outside(u16),
    /// 2001:db8:ff::x, the rules' `outside` set.
    Lab(u16),
    /// The relay.
    Relay,
    /// The router itself.
    Router,
    /// Anything.
    Raw([u8; 16]),
}

impl Addr6 {
    fn get(self) -> Ipv6Addr {
        match self {
            Addr6::Dynamic(x) => Ipv6Addr::new(0x2001, 0xdb8, 0x100, 1, 0, 0, 0, x),
            Addr6::Static(x) => Ipv6Addr::new(0x2001, 0xdb8, 0x100, 9, 0, 0, 0, x),
            Addr6::Outside(x) => Ipv6Addr::new(0x2001, 0xdb8, 0x203, 0, 0, 0, 0, x),
            Addr6::Lab(x) => Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, x),
            Addr6::Relay => Ipv6Addr::new(0x2001, 0xdb8, 0x25, 0, 0, 0, 0, 0x25),
            Addr6::Router => Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 1),
            Addr6::Raw(b) => Ipv6Addr::from(b),
        }
    }
}

/// A port by role.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Port {
    /// 25.
    Smtp,
    /// 587.
    Submission,
    /// 465.
    Smtps,
    /// 2525 (a redirect target).
    Alt,
    /// 23.
    Telnet,
    /// 53.
    Dns,
    /// 9.
    Discard,
    /// 40000 + x.
    Ephemeral(u8),
    /// Anything.
    Raw(u16),
}

impl Port {
    fn get(self) -> u16 {
        match self {
            Port::Smtp => 25,
            Port::Submission => 587,
            Port::Smtps => 465,
            Port::Alt => 2525,
            Port::Telnet => 23,
            Port::Dns => 53,
            Port::Discard => 9,
            Port::Ephemeral(x) => 40000 + u16::from(x),
            Port::Raw(p) => p,
        }
    }
}

/// The network layer.
#[derive(Arbitrary, Debug)]
pub enum Net {
    /// IPv4.
    V4 {
        /// Source.
        src: Addr4,
        /// Destination.
        dst: Addr4,
        /// TTL.
        ttl: u8,
        /// Don't fragment.
        df: bool,
        /// Identification.
        id: u16,
        /// Options (up to 40 bytes, zero-padded to a multiple of 4).
        options: Vec<u8>,
    },
    /// IPv6.
    V6 {
        /// Source.
        src: Addr6,
        /// Destination.
        dst: Addr6,
        /// Hop limit.
        hops: u8,
        /// Extension headers, in order, before the upper layer.
        exts: Vec<Ext>,
    },
}

/// An IPv6 extension header.
#[derive(Arbitrary, Debug, Clone)]
pub enum Ext {
    /// Hop-by-hop options (zero-padded to a multiple of 8).
    HopByHop(Vec<u8>),
    /// Destination options.
    DestOpts(Vec<u8>),
    /// A routing header.
    Routing {
        /// Routing type (0 and 2 are the classic ones).
        kind: u8,
        /// Segments left.
        segments_left: u8,
        /// Type-specific data (e.g. addresses).
        data: Vec<u8>,
    },
    /// A fragment header, as written (besides the one of [`Packet::fragment`]).
    Fragment {
        /// Offset in 8-byte units (13 bits).
        offset: u16,
        /// More fragments.
        more: bool,
        /// Identification.
        id: u32,
    },
}

/// The upper layer.
#[derive(Arbitrary, Debug)]
pub enum Upper {
    /// TCP.
    Tcp {
        /// Source port.
        sport: Port,
        /// Destination port.
        dport: Port,
        /// Sequence number.
        seq: u32,
        /// Acknowledgment number.
        ack: u32,
        /// Flags.
        flags: Flags,
        /// Window.
        window: u16,
        /// Options (up to 40 bytes, zero-padded to a multiple of 4).
        options: Vec<u8>,
    },
    /// UDP.
    Udp {
        /// Source port.
        sport: Port,
        /// Destination port.
        dport: Port,
        /// No checksum (allowed over IPv4 only).
        no_checksum: bool,
    },
    /// ICMP over IPv4, ICMPv6 over IPv6.
    Icmp {
        /// Type.
        icmp_type: IcmpType,
        /// Code.
        code: u8,
        /// Bytes 4 to 7 (identifier and sequence of an echo).
        rest: [u8; 4],
    },
    /// Another protocol number, the payload as it is.
    Other(u8),
}

/// ICMP types, the ones op25b looks at first.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum IcmpType {
    /// Echo request.
    EchoRequest,
    /// Echo reply.
    EchoReply,
    /// Destination unreachable (ICMPv4 3, ICMPv6 1).
    Unreachable,
    /// Time exceeded (11, 3).
    TimeExceeded,
    /// Packet too big (ICMPv6 2; ICMPv4 3/4 by code).
    TooBig,
    /// Any type.
    Raw(u8),
}

/// The payload.
#[derive(Arbitrary, Debug)]
pub enum Payload {
    /// These bytes.
    Bytes(Vec<u8>),
    /// This many zero bytes (for MTU checks).
    Zeros(u16),
    /// A packet that left the router (for ICMP errors that quote it), cut to at most `cut` bytes.
    Quote {
        /// Counted back from the newest.
        back: u8,
        /// At most this many bytes.
        cut: u16,
    },
}

/// Which part of the upper-layer bytes a fragment carries.
#[derive(Arbitrary, Debug)]
pub struct Frag {
    /// Offset in 8-byte units (13 bits): the bytes start there.
    pub offset: u16,
    /// At most this many bytes.
    pub len: u16,
    /// More fragments.
    pub more: bool,
    /// `offset` as it is (13 bits), not folded into the datagram's length.
    pub anywhere: bool,
}

/// A change after building: `bytes[at] ^= xor`.
#[derive(Arbitrary, Debug)]
pub struct Bend {
    /// Position (modulo the length).
    pub at: u16,
    /// Bits to flip.
    pub xor: u8,
}

/// A packet description.
#[derive(Arbitrary, Debug)]
pub struct Packet {
    /// Network layer.
    pub net: Net,
    /// Upper layer.
    pub upper: Upper,
    /// Upper-layer payload.
    pub payload: Payload,
    /// Only a fragment of it.
    pub fragment: Option<Frag>,
    /// Bytes bent after building (checksums not fixed).
    pub bends: Vec<Bend>,
    /// Offload metadata the device reports.
    pub gso_size: Option<u16>,
    /// The device reports a partial checksum.
    pub csum_partial: bool,
    /// Tunnels around it, innermost first (at most 5: one past the depth judged).
    pub tunnels: Vec<Wrap>,
}

/// A tunnel kind, as `op25b::packet::TunnelKind`.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Kind {
    /// IP in IPv4 (ipip or 6in4 by the inner version).
    InV4,
    /// IP in IPv6 (4in6 or 6in6).
    InV6,
    /// GRE.
    Gre,
    /// Teredo.
    Teredo,
    /// VXLAN.
    Vxlan,
    /// Geneve.
    Geneve,
}

/// One encapsulation around the packet built so far.
#[derive(Arbitrary, Debug, Clone)]
pub struct Wrap {
    /// Which tunnel.
    pub kind: Kind,
    /// IPv6 outer addresses (where the kind allows either).
    pub v6: bool,
    /// Outer source and destination by role.
    pub ends4: (Addr4, Addr4),
    /// The same for IPv6.
    pub ends6: (Addr6, Addr6),
    /// GRE checksum, key and sequence.
    pub gre_extras: bool,
    /// GRE carrying Ethernet.
    pub gre_ethernet: bool,
    /// Teredo indicators.
    pub teredo_indicators: bool,
    /// One VLAN tag in the Ethernet frame.
    pub vlan: bool,
    /// Geneve option words.
    pub geneve_words: u8,
    /// Keep only this many bytes of the result (a cut tunnel), if given.
    pub cut: Option<u16>,
}

impl Wrap {
    /// `inner` wrapped, or `inner` as it is when the kind cannot carry it.
    fn apply(&self, inner: Vec<u8>) -> Vec<u8> {
        use op25b::packet::encap::{encapsulate, Options};
        use op25b::packet::TunnelKind as K;
        let inner6 = inner.first().is_some_and(|b| b >> 4 == 6);
        let (kind, v6) = match self.kind {
            Kind::InV4 => (if inner6 { K::SixIn4 } else { K::Ipip }, false),
            Kind::InV6 => (if inner6 { K::SixIn6 } else { K::FourIn6 }, true),
            Kind::Gre => (K::Gre, self.v6),
            Kind::Teredo => (K::Teredo, false),
            Kind::Vxlan => (K::Vxlan, self.v6),
            Kind::Geneve => (K::Geneve, self.v6),
        };
        let (src, dst): (IpAddr, IpAddr) = if v6 {
            (self.ends6.0.get().into(), self.ends6.1.get().into())
        } else {
            (self.ends4.0.get().into(), self.ends4.1.get().into())
        };
        let o = Options {
            gre_extras: self.gre_extras,
            gre_ethernet: self.gre_ethernet,
            teredo_indicators: self.teredo_indicators,
            vlan: self.vlan,
            geneve_options: self.geneve_words.min(63) * 4,
        };
        match encapsulate(kind, src, dst, 64, &inner, &o) {
            Ok(mut out) => {
                if let Some(n) = self.cut {
                    out.truncate(usize::from(n).max(1));
                }
                out
            }
            Err(_) => inner,
        }
    }
}

/// The one's-complement checksum of `parts` laid end to end (even lengths but the last).
fn csum(parts: &[&[u8]]) -> u16 {
    let mut all = Vec::new();
    for p in parts {
        all.extend_from_slice(p);
    }
    !checksum::sum(&all)
}

fn pseudo(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&[0, proto]);
            p.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            let o = |a: IpAddr| match a {
                IpAddr::V6(a) => a.octets(),
                IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
            };
            p.extend_from_slice(&o(src));
            p.extend_from_slice(&o(dst));
            p.extend_from_slice(&(len as u32).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, proto]);
        }
    }
    p
}

fn pad(mut v: Vec<u8>, unit: usize, max: usize) -> Vec<u8> {
    v.truncate(max);
    while v.len() % unit != 0 {
        v.push(0);
    }
    v
}

/// The upper-layer header fields, addresses resolved.
#[derive(Debug, Clone)]
enum L4 {
    Tcp { sport: u16, dport: u16, seq: u32, ack: u32, flags: u8, window: u16, options: Vec<u8> },
    Udp { sport: u16, dport: u16, no_checksum: bool },
    Icmp { icmp_type: u8, code: u8, rest: [u8; 4] },
    Other(u8),
}

/// The upper-layer bytes (header and payload) with the checksum right, and its protocol number.
fn upper_bytes(src: IpAddr, dst: IpAddr, l4: &L4, payload: &[u8]) -> (u8, Vec<u8>) {
    let v6 = src.is_ipv6();
    match l4 {
        L4::Tcp { sport, dport, seq, ack, flags, window, options } => {
            let options = pad(options.clone(), 4, 40);
            let mut h = Vec::with_capacity(20 + options.len() + payload.len());
            h.extend_from_slice(&sport.to_be_bytes());
            h.extend_from_slice(&dport.to_be_bytes());
            h.extend_from_slice(&seq.to_be_bytes());
            h.extend_from_slice(&ack.to_be_bytes());
            h.push((((20 + options.len()) / 4) as u8) << 4);
            h.push(*flags);
            h.extend_from_slice(&window.to_be_bytes());
            h.extend_from_slice(&[0, 0, 0, 0]);
            h.extend_from_slice(&options);
            h.extend_from_slice(payload);
            let c = csum(&[&pseudo(src, dst, 6, h.len()), &h]);
            h[16..18].copy_from_slice(&c.to_be_bytes());
            (6, h)
        }
        L4::Udp { sport, dport, no_checksum } => {
            let mut h = Vec::with_capacity(8 + payload.len());
            h.extend_from_slice(&sport.to_be_bytes());
            h.extend_from_slice(&dport.to_be_bytes());
            h.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
            h.extend_from_slice(&[0, 0]);
            h.extend_from_slice(payload);
            if v6 || !*no_checksum {
                let c = match csum(&[&pseudo(src, dst, 17, h.len()), &h]) {
                    0 => 0xffff,
                    c => c,
                };
                h[6..8].copy_from_slice(&c.to_be_bytes());
            }
            (17, h)
        }
        L4::Icmp { icmp_type, code, rest } => {
            let mut h = vec![*icmp_type, *code, 0, 0];
            h.extend_from_slice(rest);
            h.extend_from_slice(payload);
            let (proto, c) = if v6 { (58, csum(&[&pseudo(src, dst, 58, h.len()), &h])) } else { (1, csum(&[&h])) };
            h[2..4].copy_from_slice(&c.to_be_bytes());
            (proto, h)
        }
        L4::Other(p) => (*p, payload.to_vec()),
    }
}

/// The IP layer, addresses resolved.
#[derive(Debug, Clone)]
struct Ip {
    src: IpAddr,
    dst: IpAddr,
    ttl: u8,
    df: bool,
    id: u16,
    options: Vec<u8>,
    exts: Vec<Ext>,
}

/// Extension header `e` with `next` as its next header.
fn ext_bytes(e: &Ext, next: u8) -> (u8, Vec<u8>) {
    let tlv = |kind: u8, body: &[u8]| {
        let mut b = vec![next, 0];
        b.extend_from_slice(body);
        let mut b = pad(b, 8, 2048);
        b[1] = (b.len() / 8 - 1) as u8;
        (kind, b)
    };
    match e {
        Ext::HopByHop(body) => tlv(0, body),
        Ext::DestOpts(body) => tlv(60, body),
        Ext::Routing { kind, segments_left, data } => {
            let mut body = vec![*kind, *segments_left];
            body.extend_from_slice(data);
            tlv(43, &body)
        }
        Ext::Fragment { offset, more, id } => {
            let word = (offset & 0x1fff) << 3 | u16::from(*more);
            let mut b = vec![next, 0];
            b.extend_from_slice(&word.to_be_bytes());
            b.extend_from_slice(&id.to_be_bytes());
            (44, b)
        }
    }
}

/// The packet's bytes: `upper` (protocol `proto`, checksummed) behind the IP
/// header, cut to `frag` if given.
fn ip_bytes(ip: &Ip, proto: u8, upper: &[u8], frag: Option<&Frag>) -> Vec<u8> {
    let (body, offset, more) = match frag {
        Some(f) => {
            // Mostly inside the datagram, so the fragment carries bytes.
            let offset = if f.anywhere { f.offset & 0x1fff } else { f.offset % (upper.len() / 8 + 1) as u16 };
            let start = usize::from(offset) * 8;
            let from = start.min(upper.len());
            let to = (start + usize::from(f.len)).min(upper.len());
            (&upper[from..to], offset, f.more)
        }
        None => (upper, 0, false),
    };
    match (ip.src, ip.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let options = pad(ip.options.clone(), 4, 40);
            let hl = 20 + options.len();
            let total = (hl + body.len()).min(65_535);
            let mut p = Vec::with_capacity(total);
            p.push(0x40 | (hl / 4) as u8);
            p.push(0);
            p.extend_from_slice(&(total as u16).to_be_bytes());
            p.extend_from_slice(&ip.id.to_be_bytes());
            let word = offset | if more { 0x2000 } else { 0 } | if ip.df { 0x4000 } else { 0 };
            p.extend_from_slice(&word.to_be_bytes());
            p.extend_from_slice(&[ip.ttl, proto, 0, 0]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&options);
            let c = csum(&[&p[..hl]]);
            p[10..12].copy_from_slice(&c.to_be_bytes());
            p.extend_from_slice(&body[..total - hl]);
            p
        }
        _ => {
            let o = |a: IpAddr| match a {
                IpAddr::V6(a) => a.octets(),
                IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
            };
            let mut exts = ip.exts.clone();
            if frag.is_some() {
                exts.push(Ext::Fragment { offset, more, id: u32::from(ip.id) });
            }
            // Built back to front: each header names the one after it.
            let mut next = proto;
            let mut chain: Vec<Vec<u8>> = Vec::new();
            for e in exts.iter().rev() {
                let (kind, b) = ext_bytes(e, next);
                next = kind;
                chain.push(b);
            }
            let ext_len: usize = chain.iter().map(Vec::len).sum();
            let plen = (ext_len + body.len()).min(65_535);
            let mut p = Vec::with_capacity(40 + plen);
            p.extend_from_slice(&[0x60, 0, 0, 0]);
            p.extend_from_slice(&(plen as u16).to_be_bytes());
            p.push(next);
            p.push(ip.ttl);
            p.extend_from_slice(&o(ip.src));
            p.extend_from_slice(&o(ip.dst));
            for b in chain.iter().rev() {
                p.extend_from_slice(b);
            }
            p.extend_from_slice(body);
            p.truncate(40 + plen);
            p
        }
    }
}

fn icmp_type(t: IcmpType, v6: bool) -> u8 {
    match (t, v6) {
        (IcmpType::EchoRequest, false) => 8,
        (IcmpType::EchoRequest, true) => 128,
        (IcmpType::EchoReply, false) => 0,
        (IcmpType::EchoReply, true) => 129,
        (IcmpType::Unreachable, false) | (IcmpType::TooBig, false) => 3,
        (IcmpType::Unreachable, true) => 1,
        (IcmpType::TimeExceeded, false) => 11,
        (IcmpType::TimeExceeded, true) => 3,
        (IcmpType::TooBig, true) => 2,
        (IcmpType::Raw(t), _) => t,
    }
}

impl Packet {
    /// The packet's bytes; `left` is what quotes refer to.
    pub fn build(&self, d: &TestRouter) -> Vec<u8> {
        let ip = match &self.net {
            Net::V4 { src, dst, ttl, df, id, options } => Ip {
                src: src.get().into(),
                dst: dst.get().into(),
                ttl: *ttl,
                df: *df,
                id: *id,
                options: options.clone(),
                exts: Vec::new(),
            },
            Net::V6 { src, dst, hops, exts } => Ip {
                src: src.get().into(),
                dst: dst.get().into(),
                ttl: *hops,
                df: false,
                id: 0,
                options: Vec::new(),
                exts: exts.iter().take(8).cloned().collect(),
            },
        };
        let v6 = ip.src.is_ipv6();
        let l4 = match &self.upper {
            Upper::Tcp { sport, dport, seq, ack, flags, window, options } => L4::Tcp {
                sport: sport.get(),
                dport: dport.get(),
                seq: *seq,
                ack: *ack,
                flags: flags.bits(),
                window: *window,
                options: options.clone(),
            },
            Upper::Udp { sport, dport, no_checksum } => {
                L4::Udp { sport: sport.get(), dport: dport.get(), no_checksum: *no_checksum }
            }
            Upper::Icmp { icmp_type: t, code, rest } => {
                L4::Icmp { icmp_type: icmp_type(*t, v6), code: *code, rest: *rest }
            }
            Upper::Other(p) => L4::Other(*p),
        };
        let payload: Vec<u8> = match &self.payload {
            Payload::Bytes(b) => b.clone(),
            Payload::Zeros(n) => vec![0; usize::from(*n).min(9000)],
            Payload::Quote { back, cut } => {
                d.recent(*back).map(|l| l.bytes[..l.bytes.len().min(usize::from(*cut))].to_vec()).unwrap_or_default()
            }
        };
        let (proto, upper) = upper_bytes(ip.src, ip.dst, &l4, &payload);
        let mut p = ip_bytes(&ip, proto, &upper, self.fragment.as_ref());
        for w in self.tunnels.iter().take(5) {
            if p.len() > 60_000 {
                break;
            }
            p = w.apply(p);
        }
        if !p.is_empty() {
            for b in self.bends.iter().take(4) {
                let at = usize::from(b.at) % p.len();
                p[at] ^= b.xor;
            }
        }
        p
    }
}

/// The answer of the receiver of `pkt` (a packet that left the router): TCP
/// back on the connection with `flags` (sequence numbers following `pkt`'s),
/// `None` when `pkt` is not TCP or does not parse.
pub fn answer(pkt: &[u8], flags: Flags, data: &[u8]) -> Option<Vec<u8>> {
    let v = PacketView::parse(pkt).ok()?;
    let Transport::Tcp { src_port, dst_port, flags: theirs, seq, ack, header_len } = v.transport else {
        return None;
    };
    let their_data = v.len.saturating_sub(v.l4_offset + usize::from(header_len));
    let syn_fin = u32::from(theirs & 0x02 != 0) + u32::from(theirs & 0x01 != 0);
    let bits = match flags {
        Flags::Auto if theirs & 0x12 == 0x02 => Flags::SynAck.bits(),
        f => f.bits(),
    };
    let l4 = L4::Tcp {
        sport: dst_port,
        dport: src_port,
        seq: if theirs & 0x10 != 0 { ack } else { 7_000_000 },
        ack: seq.wrapping_add(their_data as u32).wrapping_add(syn_fin),
        flags: bits,
        window: 64_240,
        options: Vec::new(),
    };
    let (proto, upper) = upper_bytes(v.dst, v.src, &l4, data);
    let ip = Ip { src: v.dst, dst: v.src, ttl: 64, df: true, id: 1, options: Vec::new(), exts: Vec::new() };
    Some(ip_bytes(&ip, proto, &upper, None))
}

/// An ICMP / ICMPv6 error about `pkt` from its destination, quoting it.
fn icmp_error(pkt: &[u8], icmp_type: u8, code: u8) -> Option<Vec<u8>> {
    let v = PacketView::parse(pkt).ok()?;
    let quote = &pkt[..pkt.len().min(if v.src.is_ipv4() { 548 } else { 1232 })];
    let l4 = L4::Icmp { icmp_type, code, rest: [0, 0, 0x05, 0xdc] };
    let (proto, upper) = upper_bytes(v.dst, v.src, &l4, quote);
    let ip = Ip { src: v.dst, dst: v.src, ttl: 64, df: false, id: 2, options: Vec::new(), exts: Vec::new() };
    Some(ip_bytes(&ip, proto, &upper, None))
}

/// Plays the input.
pub fn run(data: &[u8]) {
    if let Some(d) = play(data) {
        super::router::recycle(d);
    }
}

/// Plays the input; the harness afterwards (`None` if the bytes decode to no input).
pub fn play(data: &[u8]) -> Option<TestRouter> {
    let input = Input::arbitrary_take_rest(Unstructured::new(data)).ok()?;
    let mut d = driver(input.policy, input.small_reply);
    for step in input.steps.iter().take(64) {
        match step {
            Step::Send { second_worker, inbound, packet } => {
                let bytes = packet.build(&d);
                let dir = if *inbound { Direction::Inbound } else { Direction::Outbound };
                let rx = RxInfo { gso_size: packet.gso_size, csum_partial: packet.csum_partial };
                let _ = d.send_on(usize::from(*second_worker), dir, &bytes, rx);
            }
            Step::Answer { back, kind } => {
                let Some(left) = d.recent(*back).cloned() else { continue };
                let bytes = match kind {
                    AnswerKind::Tcp { flags, data } => answer(&left.bytes, *flags, data),
                    AnswerKind::IcmpError { icmp_type, code } => icmp_error(&left.bytes, *icmp_type, *code),
                };
                if let Some(b) = bytes {
                    let _ = d.send_on(0, left.answer, &b, RxInfo::default());
                }
            }
            Step::Converse { rounds, data, fin } => {
                let mut said = false;
                for _ in 0..(*rounds).min(8) {
                    let Some(left) = d.recent(0).cloned() else { break };
                    let theirs = match PacketView::parse(&left.bytes).map(|v| v.transport) {
                        Ok(Transport::Tcp { flags, .. }) => flags,
                        _ => break,
                    };
                    let (flags, payload): (Flags, &[u8]) = if theirs & 0x04 != 0 {
                        break;
                    } else if theirs & 0x02 != 0 {
                        (Flags::Auto, b"")
                    } else if !said {
                        said = true;
                        (Flags::PshAck, data)
                    } else if *fin {
                        (Flags::FinAck, b"")
                    } else {
                        (Flags::Ack, b"")
                    };
                    let Some(b) = answer(&left.bytes, flags, payload) else { break };
                    let _ = d.send_on(0, left.answer, &b, RxInfo::default());
                    d.advance(Duration::from_millis(1));
                }
            }
            Step::Wait(w) => d.advance(match w {
                Wait::Millis(n) => Duration::from_millis(u64::from(*n)),
                Wait::Secs(n) => Duration::from_secs(u64::from(*n)),
                Wait::Minutes(n) => Duration::from_secs(60 * u64::from(*n)),
            }),
        }
    }
    d.check_counts();
    Some(d)
}
