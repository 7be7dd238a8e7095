//! The packet notation of `op25b check --packet`:
//!
//! ```text
//! tcp 100.64.1.10:40000 -> 203.0.113.25:25 syn
//! tcp [2001:db8:100::10]:40000 -> [2001:db8:203::25]:25 syn,ack
//! udp 100.64.1.10:5353 -> 192.0.2.53:53
//! icmp 100.64.1.10 -> 203.0.113.25 ttl=1
//! ```
//!
//! Protocols tcp, udp, icmp (an echo request; ICMPv6 for IPv6 addresses);
//! TCP flags syn, ack, rst, fin, psh (comma or space separated); `ttl=N` sets
//! the TTL / hop limit (default 64) and `len=N` pads the packet to N bytes (at most 65535).
//!
//! A tunnel wraps another description in brackets, nested up to 8 deep:
//!
//! ```text
//! gre 100.64.1.10 -> 198.51.100.1 [tcp 10.0.0.1:1234 -> 203.0.113.25:25 syn]
//! vxlan 100.64.1.10 -> 198.51.100.1 vlan [tcp 10.0.0.1:1234 -> 203.0.113.25:25 syn]
//! ```
//!
//! Kinds ipip, 6in4, 4in6, 6in6, gre, teredo, vxlan, geneve (the outer
//! addresses without ports); options `key` (GRE checksum, key and sequence),
//! `eth` (GRE carrying Ethernet), `vlan` (one 802.1Q tag in the Ethernet
//! frame), `indicators` (Teredo authentication and origin), `options=N`
//! (Geneve option bytes) and `ttl=N`.

use std::net::{IpAddr, SocketAddr};

use etherparse::{PacketBuilder, TcpHeader};

use crate::packet::encap::{self, Options};
use crate::packet::TunnelKind;

/// How deep a description may nest tunnels.
const MAX_NESTING: usize = 8;

/// Why a packet description could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--packet {spec:?}: {why} (expected e.g. \"tcp 100.64.1.10:40000 -> 203.0.113.25:25 syn\")")]
pub struct SpecError {
    spec: String,
    why: String,
}

/// A parsed packet description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketSpec {
    /// tcp, udp or icmp.
    pub protocol: String,
    /// Source address.
    pub src: IpAddr,
    /// Source port (TCP / UDP).
    pub src_port: u16,
    /// Destination address.
    pub dst: IpAddr,
    /// Destination port (TCP / UDP).
    pub dst_port: u16,
    /// TCP flags.
    pub flags: Vec<String>,
    /// TTL / hop limit.
    pub ttl: u8,
    /// Total IP packet length wanted (payload padded), if given.
    pub len: Option<usize>,
    /// A tunnel: its kind, header options and the packet it carries
    /// (`protocol` is then the kind's name).
    pub tunnel: Option<Box<(TunnelKind, Options, PacketSpec)>>,
}

impl PacketSpec {
    /// Parses the notation above.
    pub fn parse(spec: &str) -> Result<PacketSpec, SpecError> {
        Self::parse_nested(spec, 0)
    }

    fn parse_nested(spec: &str, depth: usize) -> Result<PacketSpec, SpecError> {
        let err = |why: String| SpecError { spec: spec.to_string(), why };
        if let Some(kind) = spec.split_whitespace().next().and_then(TunnelKind::from_name) {
            return Self::parse_tunnel(spec, kind, depth).map_err(err);
        }
        let words: Vec<&str> = spec.split([' ', ',']).filter(|w| !w.is_empty()).collect();
        let arrow = words
            .iter()
            .position(|w| *w == "->")
            .ok_or_else(|| err("no \"->\" between source and destination".into()))?;
        if arrow != 2 || words.len() < 4 {
            return Err(err("the form is PROTOCOL SOURCE -> DESTINATION [FLAGS]".into()));
        }
        let protocol = words[0].to_ascii_lowercase();
        let with_ports = match protocol.as_str() {
            "tcp" | "udp" => true,
            "icmp" | "icmpv6" => false,
            other => return Err(err(format!("unknown protocol {other:?} (tcp, udp, icmp)"))),
        };
        let endpoint = |w: &str| -> Result<(IpAddr, u16), SpecError> {
            if with_ports {
                w.parse::<SocketAddr>()
                    .map(|s| (s.ip(), s.port()))
                    .map_err(|_| err(format!("{w:?} is not ADDRESS:PORT ([IPv6]:PORT for IPv6)")))
            } else {
                w.trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<IpAddr>()
                    .map(|a| (a, 0))
                    .map_err(|_| err(format!("{w:?} is not an address")))
            }
        };
        let (src, src_port) = endpoint(words[1])?;
        let (dst, dst_port) = endpoint(words[3])?;
        if src.is_ipv4() != dst.is_ipv4() {
            return Err(err("source and destination are of different IP versions".into()));
        }
        let mut flags = Vec::new();
        let mut ttl = 64;
        let mut len = None;
        for w in &words[4..] {
            if let Some(v) = w.strip_prefix("ttl=") {
                ttl = v.parse().map_err(|_| err(format!("bad ttl {v:?} (0 to 255)")))?;
            } else if let Some(v) = w.strip_prefix("len=") {
                // An IP packet's length field has 16 bits; a larger pad would
                // only be refused after allocating it.
                let n = v.parse::<u16>().map_err(|_| err(format!("bad len {v:?} (at most 65535)")))?;
                len = Some(usize::from(n));
            } else if protocol == "tcp" && ["syn", "ack", "rst", "fin", "psh"].contains(w) {
                flags.push(w.to_string());
            } else {
                return Err(err(format!("unknown word {w:?} (TCP flags syn, ack, rst, fin, psh; ttl=N; len=N)")));
            }
        }
        Ok(PacketSpec { protocol, src, src_port, dst, dst_port, flags, ttl, len, tunnel: None })
    }

    /// `KIND SRC -> DST [OPTIONS] [INNER]`.
    fn parse_tunnel(spec: &str, kind: TunnelKind, depth: usize) -> Result<PacketSpec, String> {
        if depth >= MAX_NESTING {
            return Err(format!("tunnels nested deeper than {MAX_NESTING}"));
        }
        let spec = spec.trim();
        let (Some(open), true) = (spec.find('['), spec.ends_with(']')) else {
            return Err(format!("{kind} needs the packet it carries in brackets: {kind} SRC -> DST [tcp ...]"));
        };
        let inner = Self::parse_nested(&spec[open + 1..spec.len() - 1], depth + 1).map_err(|e| e.why)?;
        let words: Vec<&str> = spec[..open].split([' ', ',']).filter(|w| !w.is_empty()).collect();
        if words.len() < 4 || words[2] != "->" {
            return Err(format!("the form is {kind} SOURCE -> DESTINATION [OPTIONS] [PACKET]"));
        }
        let addr = |w: &str| {
            w.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .map_err(|_| format!("{w:?} is not an address (a tunnel's ends have no ports)"))
        };
        let (src, dst) = (addr(words[1])?, addr(words[3])?);
        if src.is_ipv4() != dst.is_ipv4() {
            return Err("source and destination are of different IP versions".into());
        }
        let mut o = Options::default();
        let mut ttl = 64;
        for w in &words[4..] {
            match *w {
                "key" if kind == TunnelKind::Gre => o.gre_extras = true,
                "eth" if kind == TunnelKind::Gre => o.gre_ethernet = true,
                "vlan" if matches!(kind, TunnelKind::Gre | TunnelKind::Vxlan | TunnelKind::Geneve) => o.vlan = true,
                "indicators" if kind == TunnelKind::Teredo => o.teredo_indicators = true,
                w if w.starts_with("ttl=") => ttl = w[4..].parse().map_err(|_| format!("bad ttl {w:?} (0 to 255)"))?,
                w if w.starts_with("options=") && kind == TunnelKind::Geneve => {
                    o.geneve_options = w[8..]
                        .parse()
                        .ok()
                        .filter(|n| n % 4 == 0 && *n <= 252)
                        .ok_or_else(|| format!("bad {w:?} (option bytes, a multiple of 4 up to 252)"))?;
                }
                w => {
                    return Err(format!(
                        "unknown word {w:?} for {kind} (key, eth, vlan for gre; vlan for vxlan, geneve; \
                         indicators for teredo; options=N for geneve; ttl=N)"
                    ))
                }
            }
        }
        if o.vlan && kind == TunnelKind::Gre && !o.gre_ethernet {
            return Err("vlan needs eth: a VLAN tag is part of an Ethernet frame".into());
        }
        Ok(PacketSpec {
            protocol: kind.name().to_string(),
            src,
            src_port: 0,
            dst,
            dst_port: 0,
            flags: Vec::new(),
            ttl,
            len: None,
            tunnel: Some(Box::new((kind, o, inner))),
        })
    }

    /// The packet's bytes.
    pub fn build(&self) -> Result<Vec<u8>, SpecError> {
        if let Some(t) = &self.tunnel {
            let (kind, o, inner) = &**t;
            let inner = inner.build()?;
            return encap::encapsulate(*kind, self.src, self.dst, self.ttl, &inner, o)
                .map_err(|e| SpecError { spec: format!("{self:?}"), why: e.to_string() });
        }
        let b = match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), self.ttl),
            (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), self.ttl),
            _ => unreachable!("checked in parse"),
        };
        let header = |extra: usize| {
            if self.src.is_ipv4() {
                20 + extra
            } else {
                40 + extra
            }
        };
        let pad = |hdr: usize| vec![0u8; self.len.map_or(0, |l| l.saturating_sub(hdr))];
        let mut out = Vec::new();
        let written = match self.protocol.as_str() {
            "tcp" => {
                let mut h = TcpHeader::new(self.src_port, self.dst_port, 1000, 64240);
                for f in &self.flags {
                    match f.as_str() {
                        "syn" => h.syn = true,
                        "ack" => {
                            h.ack = true;
                            h.acknowledgment_number = 1;
                        }
                        "rst" => h.rst = true,
                        "fin" => h.fin = true,
                        _ => h.psh = true,
                    }
                }
                b.tcp_header(h).write(&mut out, &pad(header(20)))
            }
            "udp" => b.udp(self.src_port, self.dst_port).write(&mut out, &pad(header(8))),
            _ if self.src.is_ipv4() => b.icmpv4_echo_request(1, 1).write(&mut out, &pad(header(8))),
            _ => b.icmpv6_echo_request(1, 1).write(&mut out, &pad(header(8))),
        };
        written.map_err(|e| SpecError { spec: format!("{self:?}"), why: e.to_string() })?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{PacketView, Transport};

    #[test]
    fn parses_and_builds_the_documented_forms() {
        let p = PacketSpec::parse("tcp 100.64.1.10:40000 -> 203.0.113.25:25 syn").unwrap();
        let v = PacketView::parse(&p.build().unwrap()).unwrap();
        assert!(v.is_tcp_syn());
        assert_eq!(v.tcp_dst_port(), Some(25));
        let p = PacketSpec::parse("tcp [2001:db8:100::10]:40000 -> [2001:db8:203::25]:25 syn,ack").unwrap();
        let v = PacketView::parse(&p.build().unwrap()).unwrap();
        assert!(matches!(v.transport, Transport::Tcp { flags: 0x12, .. }));
        let p = PacketSpec::parse("icmp 2001:db8:100::10 -> 2001:db8:203::25 ttl=1").unwrap();
        let v = PacketView::parse(&p.build().unwrap()).unwrap();
        assert_eq!((v.protocol, v.ttl), (58, 1));
        let p = PacketSpec::parse("udp 100.64.1.10:5 -> 192.0.2.1:53 len=1450").unwrap();
        assert_eq!(p.build().unwrap().len(), 1450);
    }

    #[test]
    fn tunnels_wrap_the_packet_in_brackets() {
        let p = PacketSpec::parse("gre 100.64.1.10 -> 198.51.100.1 key [tcp 10.0.0.1:1234 -> 203.0.113.25:25 syn]")
            .unwrap();
        let bytes = p.build().unwrap();
        let v = PacketView::parse(&bytes).unwrap();
        assert_eq!((v.protocol, v.src, v.dst), (47, p.src, p.dst));
        let (kind, at) = crate::packet::tunnel::decapsulate(&v, &bytes).unwrap();
        assert_eq!(kind, TunnelKind::Gre);
        let inner = PacketView::parse(&bytes[at.unwrap().unwrap()..]).unwrap();
        assert!(inner.is_tcp_syn());
        for ok in [
            "vxlan 2001:db8:100::10 -> 2001:db8:5::1 vlan [tcp [2001:db8:1::1]:1 -> [2001:db8:203::25]:25 syn]",
            "teredo 100.64.1.10 -> 198.51.100.1 indicators [tcp [2001:db8:1::1]:1 -> [2001:db8:203::25]:25 syn]",
            "geneve 100.64.1.10 -> 198.51.100.1 options=8 ttl=3 [udp 10.0.0.1:1 -> 192.0.2.53:53]",
            "gre 100.64.1.10 -> 198.51.100.1 [ipip 10.1.0.1 -> 10.2.0.1 [tcp 10.0.0.1:1 -> 203.0.113.25:25 syn]]",
            "6in4 100.64.1.10 -> 198.51.100.1 [icmp 2001:db8:1::1 -> 2001:db8:5::1]",
        ] {
            let p = PacketSpec::parse(ok).unwrap_or_else(|e| panic!("{e}"));
            PacketView::parse(&p.build().unwrap_or_else(|e| panic!("{e}"))).unwrap();
        }
        for bad in [
            "gre 100.64.1.10 -> 198.51.100.1",
            "gre 100.64.1.10:5 -> 198.51.100.1 [tcp 10.0.0.1:1 -> 203.0.113.25:25]",
            "gre 100.64.1.10 -> 198.51.100.1 indicators [tcp 10.0.0.1:1 -> 203.0.113.25:25]",
            "gre 100.64.1.10 -> 198.51.100.1 vlan [tcp 10.0.0.1:1 -> 203.0.113.25:25]",
            "geneve 100.64.1.10 -> 198.51.100.1 options=3 [tcp 10.0.0.1:1 -> 203.0.113.25:25]",
            "gre 100.64.1.10 -> 198.51.100.1 [tcp 10.0.0.1:1 -> 203.0.113.25:25",
            &format!("{}tcp 10.0.0.1:1 -> 203.0.113.25:25{}", "gre 1.2.3.4 -> 5.6.7.8 [".repeat(9), "]".repeat(9)),
        ] {
            assert!(PacketSpec::parse(bad).is_err(), "{bad:?}");
        }
        // Versions a kind does not carry: refused when built.
        let p = PacketSpec::parse("ipip 100.64.1.10 -> 198.51.100.1 [tcp [2001:db8:1::1]:1 -> [2001:db8::25]:25]");
        assert!(p.unwrap().build().is_err());
    }

    #[test]
    fn rejects_nonsense() {
        for bad in [
            "",
            "tcp 100.64.1.10:1 203.0.113.25:25",
            "sctp 100.64.1.10:1 -> 203.0.113.25:25",
            "tcp 100.64.1.10 -> 203.0.113.25:25",
            "tcp 100.64.1.10:1 -> [2001:db8::1]:25",
            "tcp 100.64.1.10:1 -> 203.0.113.25:25 urg",
            "tcp 100.64.1.10:1 -> 203.0.113.25:99999",
            "udp 100.64.1.10:1 -> 203.0.113.25:25 syn",
            "icmp 100.64.1.10 -> 203.0.113.25 ttl=300",
            // Found by fuzzing: a pad of a trillion bytes was allocated before being refused.
            "icmpv6 2001:db8:100::10 -> 2001:db8:203::25 len=1111111111401",
            "udp 100.64.1.10:1 -> 203.0.113.25:25 len=65536",
        ] {
            assert!(PacketSpec::parse(bad).is_err(), "{bad:?}");
        }
    }
}
