//! The structure-aware target: an [`Input`] (decoded from the fuzzer's bytes
//! with `arbitrary`) is a policy and a sequence of steps: send a packet built
//! from a description (IPv4 with options and fragments, IPv6 with an extension
//! header chain and fragments, TCP / UDP / ICMP / ICMPv6 or another protocol,
//! checksums right unless bent on purpose), answer a packet that left the
//! router (the handshake of a redirected flow or a banner session, an ICMP
//! error quoting it), or let time pass. Addresses and ports come mostly from
//! the lab's roles, so packets reach OP25B, the rules, the flow table and the
//! responder rather than anti-spoofing.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use op25b::packet::{Direction, PacketView, Transport};
use op25b::RxInfo;

use op25b::testing::TestRouter;

use super::router::driver;
pub use super::wire::answer;
use super::wire::{icmp_error, icmp_type, ip_bytes, upper_bytes, Ip, L4};

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
    pub(crate) fn bits(self) -> u8 {
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
    pub(crate) fn get(self) -> Ipv4Addr {
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
    pub(crate) fn get(self) -> Ipv6Addr {
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
    pub(crate) fn get(self) -> u16 {
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
