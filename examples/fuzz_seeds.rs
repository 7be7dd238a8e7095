//! Writes the seed corpora of the fuzz targets into `fuzz/seeds/TARGET/`
//! (or the directory given): the test packets of `op25b::testing::packets`
//! as packet sequences under every fuzzing policy, the fuzzing configs and the
//! lab's, the `check --packet` forms, and captures of the test packets in every
//! link type replay reads, as pcap and pcapng. The seeds are checked in; run it
//! again after changing the fuzzing policies or the input formats:
//!
//! ```text
//! cargo run --release --example fuzz_seeds [-- DIR]
//! ```

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod fuzz;

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fuzz::router::{builders, sample_packets, Record, Script};
use op25b::testing::lab::*;
use op25b::testing::packets::{self, fragment4, fragment6, with_ext6};
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
use pcap_file::pcapng::blocks::interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::DataLink;

fn write(dir: &Path, name: &str, data: &[u8]) {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let path = dir.join(name);
    std::fs::write(&path, data).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

fn out(p: &[u8]) -> Record {
    Record { packet: p.to_vec(), ..Record::default() }
}

fn inb(p: &[u8]) -> Record {
    Record { inbound: true, packet: p.to_vec(), ..Record::default() }
}

/// Answers the last packet that left (an empty record), after `wait` steps.
fn answer(wait: u8) -> Record {
    Record { wait, ..Record::default() }
}

/// Packet sequences: each a small scenario of the router's unit tests.
fn scenarios() -> Vec<(&'static str, Vec<Record>)> {
    let smtp4 = packets::tcp(DYN4, 40000, MX4, 25).seq(100).syn().build();
    let data4 = packets::tcp(DYN4, 40000, MX4, 25).seq(101).ack(1).psh().payload(b"EHLO x\r\n").build();
    let smtp6 = packets::tcp(DYN6, 40001, MX6, 25).seq(100).syn().build();
    let whole = packets::tcp(DYN4, 40002, MX4, 25).syn().payload(&[7; 24]).build();
    let whole6 = packets::tcp(DYN6, 40003, MX6, 25).syn().payload(&[7; 24]).build();
    let big = packets::udp(DYN4, 5000, MX4, 5000, &[0; 1400]);
    vec![
        ("smtp4", vec![out(&smtp4), answer(0), answer(1), out(&data4), answer(5), answer(7)]),
        ("smtp6", vec![out(&smtp6), answer(0), answer(1), Record { second_worker: true, ..answer(3) }]),
        (
            "ip25b",
            vec![
                inb(&packets::syn(MX4, DYN4, 25)),
                inb(&packets::tcp(MX4, 25, DYN4, 40000).syn().ack(2).build()),
                inb(&packets::syn(MX6, DYN6, 587)),
            ],
        ),
        (
            "fragments",
            vec![
                out(&fragment4(&whole, 0, 8, true)),
                out(&fragment4(&whole, 8, 44, false)),
                out(&fragment4(&whole, 0, 24, true)),
                out(&fragment4(&whole, 16, 44, false)),
                out(&fragment6(&whole6, 0, true, 8)),
                out(&fragment6(&whole6, 1, false, 36)),
            ],
        ),
        (
            "ipv6-ext",
            vec![
                out(&with_ext6(&smtp6, 0, [1, 4, 0, 0, 0, 0])),
                out(&with_ext6(&smtp6, 60, [1, 4, 0, 0, 0, 0])),
                out(&with_ext6(&smtp6, 43, [0, 1, 0, 0, 0, 0])),
                out(&with_ext6(&smtp6, 43, [4, 0, 0, 0, 0, 0])),
            ],
        ),
        ("tunnels", tunnels()),
        (
            "others",
            vec![
                out(&packets::echo_request(DYN4, ROUTER4, b"ping")),
                out(&packets::echo_request(DYN6, ROUTER6, b"ping")),
                out(&packets::echo_request_ttl(DYN4, MX4, b"ttl", 1)),
                out(&packets::udp_ttl(DYN6, 5353, MX6, 53, b"q", 1)),
                out(&packets::syn(STATIC4, MX4, 25)),
                out(&packets::syn(DYN4, RELAY4, 25)),
                out(&packets::syn("192.0.2.7", MX4, 25)),
                out(&packets::syn(DYN4, "192.0.2.9", 23)),
                out(&packets::udp(DYN4, 5353, "192.0.2.53", 9, b"x")),
                inb(&packets::udp("192.0.2.53", 53, DYN4, 53, b"a")),
                out(&big),
                inb(&big),
            ],
        ),
    ]
}

/// Tunnels of every kind around SYNs to 25 and 587, nested, cut and malformed.
fn tunnels() -> Vec<Record> {
    use op25b::packet::encap::{encapsulate, Options};
    use op25b::packet::TunnelKind as K;
    let wrap = |k, src: &str, dst: &str, inner: &[u8], o: Options| {
        encapsulate(k, src.parse().unwrap(), dst.parse().unwrap(), 64, inner, &o).unwrap()
    };
    let o = Options::default();
    let in4 = packets::syn("10.0.0.1", MX4, 25);
    let in6 = packets::syn("2001:db8:1::1", MX6, 25);
    let ok4 = packets::syn("10.0.0.1", MX4, 587);
    let big = packets::tcp("10.0.0.1", 1, MX4, 25).syn().payload(&[0; 300]).build();
    vec![
        out(&wrap(K::Ipip, DYN4, MX4, &in4, o)),
        out(&wrap(K::SixIn4, DYN4, MX4, &in6, o)),
        out(&wrap(K::FourIn6, DYN6, MX6, &in4, o)),
        out(&wrap(K::SixIn6, DYN6, MX6, &in6, o)),
        out(&wrap(K::Gre, DYN4, MX4, &in4, Options { gre_extras: true, ..o })),
        out(&wrap(K::Gre, DYN6, MX6, &in6, Options { gre_ethernet: true, vlan: true, ..o })),
        out(&wrap(K::Teredo, DYN4, MX4, &in6, Options { teredo_indicators: true, ..o })),
        out(&wrap(K::Vxlan, DYN4, MX4, &ok4, Options { vlan: true, ..o })),
        out(&wrap(K::Geneve, DYN6, MX6, &in4, Options { geneve_options: 8, ..o })),
        out(&wrap(K::Gre, DYN4, MX4, &wrap(K::Vxlan, "10.1.0.1", "10.2.0.1", &in4, o), o)),
        out(&fragment4(&wrap(K::Gre, DYN4, MX4, &big, o), 0, 48, true)),
        out(&packets::udp(DYN4, 40000, MX4, 4789, &[8, 0, 0, 0, 0, 0, 1, 0, 2])),
        inb(&wrap(K::Gre, MX4, DYN4, &packets::syn(MX4, "10.0.0.1", 25), o)),
    ]
}

/// A pcapng file of `frames` with link type `link`, in microseconds or
/// (`nanos`, if_tsresol = 9) nanoseconds.
fn pcapng(link: DataLink, nanos: bool, frames: &[Vec<u8>]) -> Vec<u8> {
    let mut w = PcapNgWriter::new(Vec::new()).expect("a section header");
    let options = if nanos { vec![InterfaceDescriptionOption::IfTsResol(9)] } else { vec![] };
    w.write_pcapng_block(InterfaceDescriptionBlock { linktype: link, snaplen: 0, options }).expect("an interface");
    for (i, f) in frames.iter().enumerate() {
        let epb = EnhancedPacketBlock {
            interface_id: 0,
            timestamp: Duration::from_micros(i as u64 * 300_000),
            original_len: f.len() as u32,
            data: Cow::Borrowed(f),
            options: vec![],
        };
        w.write_pcapng_block(epb).expect("a packet block");
    }
    w.into_inner()
}

/// A pcap file of `frames` with link type `link`.
fn pcap(link: DataLink, frames: &[Vec<u8>]) -> Vec<u8> {
    let header = PcapHeader { datalink: link, ..PcapHeader::default() };
    let mut w = PcapWriter::with_header(Vec::new(), header).expect("a pcap header");
    for (i, f) in frames.iter().enumerate() {
        let p = PcapPacket::new(Duration::from_millis(i as u64 * 300), f.len() as u32, f);
        w.write_packet(&p).expect("a pcap record");
    }
    w.into_writer()
}

fn main() {
    let root = std::env::args().nth(1).map(PathBuf::from).unwrap_or_else(|| PathBuf::from("fuzz/seeds"));
    let mut count = 0;

    let dir = root.join("router_raw");
    for (selector, _) in builders().iter().enumerate() {
        for (name, records) in scenarios() {
            write(&dir, &format!("{selector:02}-{name}"), &Script::encode(selector as u8, &records));
            count += 1;
        }
    }

    // Inputs of `arbitrary` have no writer: bytes from a fixed xorshift
    // generator, kept when they move a counter of the deeper stages (blocked,
    // answered by the banner responder, redirected, ...) that fewer than four
    // kept inputs moved yet, and the first eight whatever they do.
    let dir = root.join("router_structured");
    let wanted = [
        "op25b_terminated",
        "op25b_redirected",
        "drop_op25b_blocked",
        "drop_ip25b_blocked",
        "reply_tcp_rst",
        "reply_prohibited",
        "reply_too_big",
        "reply_time_exceeded",
        "reply_echo_reply",
        "drop_fragment_overlap",
        "drop_rule_drop",
        "drop_rate_limited",
        "forwarded_outbound",
        "forwarded_inbound",
        "drop_tunnel_blocked",
        "drop_tunnel_malformed",
        "drop_tunnel_too_deep",
        "tunnel_packets_gre",
        "tunnel_packets_vxlan",
        "tunnel_packets_teredo",
    ];
    let mut hits = vec![0; wanted.len()];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut kept = 0;
    for _ in 0..20_000 {
        let bytes: Vec<u8> = (0..384)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let Some(driver) = fuzz::structured::play(&bytes) else { continue };
        let moved: Vec<String> =
            driver.worker_stats().iter().flat_map(|s| s.pairs()).filter(|(_, n)| *n > 0).map(|(k, _)| k).collect();
        let mut keep = kept < 8;
        for (i, w) in wanted.iter().enumerate() {
            if hits[i] < 4 && moved.iter().any(|m| m == w) {
                hits[i] += 1;
                keep = true;
            }
        }
        if keep {
            write(&dir, &format!("xorshift-{kept:02}"), &bytes);
            kept += 1;
            count += 1;
        }
    }

    let dir = root.join("config");
    for (i, b) in builders().iter().enumerate() {
        write(&dir, &format!("policy-{i:02}.toml"), b.toml().as_bytes());
        count += 1;
    }
    write(&dir, "lab.toml", include_bytes!("../config/lab.toml"));
    write(&dir, "rules_head.toml", include_bytes!("../tests/fixtures/rules_head.toml"));
    count += 2;

    let dir = root.join("spec");
    for (i, s) in [
        "tcp 100.64.1.10:40000 -> 203.0.113.25:25 syn",
        "tcp [2001:db8:100::10]:40000 -> [2001:db8:203::25]:25 syn,ack",
        "udp 100.64.1.10:5353 -> 192.0.2.53:53",
        "icmp 100.64.1.10 -> 203.0.113.25 ttl=1",
        "icmpv6 2001:db8:100::10 -> 2001:db8:203::25 len=1400",
        "tcp 100.64.1.10:1 -> 203.0.113.25:25 rst fin psh ttl=0 len=60",
        "gre 100.64.1.10 -> 198.51.100.1 key [tcp 10.0.0.1:1234 -> 203.0.113.25:25 syn]",
        "vxlan 100.64.1.10 -> 198.51.100.1 vlan [ipip 10.1.0.1 -> 10.2.0.1 [tcp 10.0.0.1:1 -> 203.0.113.25:25 syn]]",
        "teredo 100.64.1.10 -> 198.51.100.1 indicators [tcp [2001:db8:1::1]:1 -> [2001:db8:203::25]:25 syn]",
        "geneve 2001:db8:100::10 -> 2001:db8:5::1 options=8 [udp 10.0.0.1:1 -> 192.0.2.53:53]",
    ]
    .iter()
    .enumerate()
    {
        write(&dir, &format!("form-{i}"), s.as_bytes());
        count += 1;
    }

    let dir = root.join("replay");
    let ips = sample_packets();
    let framed = |head: &[u8], ip: &[u8]| [head, ip].concat();
    let eth = |ip: &[u8]| {
        let ethertype: &[u8] = if ip[0] >> 4 == 6 { &[0x86, 0xdd] } else { &[0x08, 0x00] };
        framed(&[&[2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2][..], &[0x81, 0x00, 0, 5], ethertype].concat(), ip)
    };
    let sll = |ip: &[u8]| {
        let ethertype: &[u8] = if ip[0] >> 4 == 6 { &[0x86, 0xdd] } else { &[0x08, 0x00] };
        framed(&[&[0, 0, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0][..], ethertype].concat(), ip)
    };
    let sll2 = |ip: &[u8]| {
        let ethertype: &[u8] = if ip[0] >> 4 == 6 { &[0x86, 0xdd] } else { &[0x08, 0x00] };
        framed(&[ethertype, &[0, 0, 0, 0, 0, 3, 0, 1, 0, 0, 6, 2, 0, 0, 0, 0, 1, 0][..]].concat(), ip)
    };
    let captures: [(&str, DataLink, Vec<Vec<u8>>); 6] = [
        ("raw.pcap", DataLink::RAW, ips.clone()),
        ("ipv4.pcap", DataLink::IPV4, ips.iter().filter(|p| p[0] >> 4 == 4).cloned().collect()),
        ("ipv6.pcap", DataLink::IPV6, ips.iter().filter(|p| p[0] >> 4 == 6).cloned().collect()),
        ("ethernet.pcap", DataLink::ETHERNET, ips.iter().map(|p| eth(p)).collect()),
        ("sll.pcap", DataLink::LINUX_SLL, ips.iter().map(|p| sll(p)).collect()),
        ("sll2.pcap", DataLink::LINUX_SLL2, ips.iter().map(|p| sll2(p)).collect()),
    ];
    for (name, link, frames) in captures {
        let bytes = pcap(link, &frames);
        write(&dir, name, &bytes);
        count += 1;
        if name == "raw.pcap" {
            write(&dir, "raw-cut.pcap", &bytes[..bytes.len() - 7]);
            count += 1;
        }
        let ng = pcapng(link, name.starts_with("eth"), &frames);
        write(&dir, &name.replace(".pcap", ".pcapng"), &ng);
        count += 1;
    }
    println!("{count} seeds in {}", root.display());
}
