//! The bytes of the structure-aware target's packets: IP headers (options,
//! extension headers, fragments), upper-layer headers and checksums, built
//! from fields with addresses resolved ([`Ip`], [`L4`]).

use std::net::IpAddr;

use op25b::packet::checksum;

use op25b::packet::{PacketView, Transport};

use super::structured::{Ext, Flags, Frag, IcmpType, Kind, Wrap};

/// The one's-complement checksum of `parts` laid end to end (even lengths but the last).
pub(crate) fn csum(parts: &[&[u8]]) -> u16 {
    let mut all = Vec::new();
    for p in parts {
        all.extend_from_slice(p);
    }
    !checksum::sum(&all)
}

pub(crate) fn pseudo(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> Vec<u8> {
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

// `is_multiple_of` is newer than the MSRV of op25b, whose tests include this file.
#[allow(clippy::manual_is_multiple_of)]
pub(crate) fn pad(mut v: Vec<u8>, unit: usize, max: usize) -> Vec<u8> {
    v.truncate(max);
    while v.len() % unit != 0 {
        v.push(0);
    }
    v
}

/// The upper-layer header fields, addresses resolved.
#[derive(Debug, Clone)]
pub(crate) enum L4 {
    Tcp { sport: u16, dport: u16, seq: u32, ack: u32, flags: u8, window: u16, options: Vec<u8> },
    Udp { sport: u16, dport: u16, no_checksum: bool },
    Icmp { icmp_type: u8, code: u8, rest: [u8; 4] },
    Other(u8),
}

/// The upper-layer bytes (header and payload) with the checksum right, and its protocol number.
pub(crate) fn upper_bytes(src: IpAddr, dst: IpAddr, l4: &L4, payload: &[u8]) -> (u8, Vec<u8>) {
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
pub(crate) struct Ip {
    pub(crate) src: IpAddr,
    pub(crate) dst: IpAddr,
    pub(crate) ttl: u8,
    pub(crate) df: bool,
    pub(crate) id: u16,
    pub(crate) options: Vec<u8>,
    pub(crate) exts: Vec<Ext>,
}

/// Extension header `e` with `next` as its next header.
pub(crate) fn ext_bytes(e: &Ext, next: u8) -> (u8, Vec<u8>) {
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
pub(crate) fn ip_bytes(ip: &Ip, proto: u8, upper: &[u8], frag: Option<&Frag>) -> Vec<u8> {
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

pub(crate) fn icmp_type(t: IcmpType, v6: bool) -> u8 {
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

impl Wrap {
    /// `inner` wrapped, or `inner` as it is when the kind cannot carry it.
    pub(crate) fn apply(&self, inner: Vec<u8>) -> Vec<u8> {
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
pub(crate) fn icmp_error(pkt: &[u8], icmp_type: u8, code: u8) -> Option<Vec<u8>> {
    let v = PacketView::parse(pkt).ok()?;
    let quote = &pkt[..pkt.len().min(if v.src.is_ipv4() { 548 } else { 1232 })];
    let l4 = L4::Icmp { icmp_type, code, rest: [0, 0, 0x05, 0xdc] };
    let (proto, upper) = upper_bytes(v.dst, v.src, &l4, quote);
    let ip = Ip { src: v.dst, dst: v.src, ttl: 64, df: false, id: 2, options: Vec::new(), exts: Vec::new() };
    Some(ip_bytes(&ip, proto, &upper, None))
}
