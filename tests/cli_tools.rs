//! `op25b check --packet` and `op25b replay`, run as a user runs them.

use std::borrow::Cow;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use op25b::testing::lab::{DYN4, MX4, STATIC4};
use op25b::testing::packets::syn;
use op25b::testing::PolicyBuilder;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapReader, PcapWriter};
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
use pcap_file::pcapng::blocks::interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::DataLink;

const BIN: &str = env!("CARGO_BIN_EXE_op25b");
const LAB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/lab.toml");

/// A file in a per-test temporary directory that is removed when the test ends.
struct Tmp(PathBuf);

impl Tmp {
    fn new(test: &str) -> Tmp {
        let dir = std::env::temp_dir().join(format!("op25b-cli-tools-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Tmp(dir)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn op25b(args: &[&str]) -> Output {
    Command::new(BIN).args(args).env("NO_COLOR", "1").output().expect("run op25b")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn config_with_rules(t: &Tmp) -> PathBuf {
    let path = t.file("rules.toml");
    let rules = r#"
[sets]
lab_nets = ["192.0.2.0/24", "2001:db8:ff::/48"]

[[rule]]
name = "no-telnet"
direction = "outbound"
protocol = "tcp"
dst = ["@lab_nets"]
dst_ports = [23]
action = "reject"

[[rule]]
name = "count-web"
protocol = "tcp"
dst_ports = [80, 443]
action = "count"
"#;
    std::fs::write(&path, PolicyBuilder::lab().rules(rules).toml()).unwrap();
    path
}

#[test]
fn check_packet_verdicts_and_exit_codes() {
    let t = Tmp::new("check");
    let cfg = config_with_rules(&t);
    let cfg = cfg.to_str().unwrap();
    let cases: &[(&str, &[&str], i32, &[&str])] = &[
        ("tcp 100.64.1.10:40000 -> 203.0.113.25:25 syn", &[], 1, &["op25b          block", "reply (tcp_rst"]),
        ("tcp 100.64.1.10:40000 -> 203.0.113.25:587 syn", &[], 0, &["pass: destination port not blocked", "forward"]),
        ("tcp 100.64.9.10:40000 -> 203.0.113.25:25 syn", &[], 0, &["pass: source is exempt"]),
        ("tcp 100.64.1.10:40000 -> 198.51.100.25:25 syn", &[], 0, &["pass: destination is an ISP relay"]),
        ("tcp [2001:db8:100::10]:40000 -> [2001:db8:203::25]:25 syn", &[], 1, &["block", "tcp_rst"]),
        ("tcp 100.64.1.10:40000 -> 192.0.2.9:23 syn", &[], 1, &["#1 no-telnet: match -> reject"]),
        (
            "tcp 100.64.1.10:40000 -> 203.0.113.80:80 syn",
            &[],
            0,
            &["#1 no-telnet: no match (dst)", "#2 count-web: match, continue"],
        ),
        (
            "udp 100.64.1.10:5000 -> 203.0.113.53:53",
            &[],
            0,
            &["#1 no-telnet: no match (protocol)", "#2 count-web: no match (protocol)"],
        ),
        (
            "tcp 192.0.2.66:40000 -> 203.0.113.25:587 syn",
            &["--direction", "outbound"],
            1,
            &["drop: source 192.0.2.66 is outside subscriber.prefixes", "drop (spoofed)"],
        ),
        (
            "tcp 203.0.113.25:25 -> 100.64.1.10:40000 syn",
            &[],
            0,
            &["inbound (source is not in subscriber.prefixes)", "inbound traffic is not subject to OP25B"],
        ),
        ("icmp 100.64.1.10 -> 203.0.113.25 ttl=1", &[], 1, &["expired", "time_exceeded"]),
    ];
    for (spec, extra, code, wants) in cases {
        let mut args = vec!["check", "--config", cfg, "--packet", spec];
        args.extend_from_slice(extra);
        let o = op25b(&args);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(*code), "{spec}:\n{t}");
        for w in *wants {
            assert!(t.contains(w), "{spec}: missing {w:?} in\n{t}");
        }
    }
}

#[test]
fn check_packet_json_and_usage_errors() {
    let o = op25b(&["check", "--config", LAB, "--packet", "tcp 100.64.1.10:40000 -> 203.0.113.25:25 syn", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    assert_eq!(v["verdict"], "reply");
    assert_eq!(v["reason"], "tcp_rst");
    assert_eq!(v["forwarded"], false);
    assert_eq!(v["direction"], "outbound");
    assert!(v["trace"].as_array().unwrap().iter().any(|s| s["stage"] == "op25b"));

    for bad in ["tcp 100.64.1.10 -> 203.0.113.25:25", "bogus", "tcp 100.64.1.10:1 -> 203.0.113.25:25 urg"] {
        let o = op25b(&["check", "--config", LAB, "--packet", bad]);
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", text(&o));
        assert!(String::from_utf8_lossy(&o.stderr).contains("--packet"), "{}", text(&o));
    }
    let o =
        op25b(&["check", "--config", LAB, "--packet", "udp 100.64.1.10:1 -> 203.0.113.1:2", "--direction", "sideways"]);
    assert_eq!(o.status.code(), Some(2));
}

/// Writes a capture of `frames` with link type `link`.
fn capture(path: &Path, link: DataLink, frames: &[Vec<u8>]) {
    let header = PcapHeader { datalink: link, ..PcapHeader::default() };
    let mut w = PcapWriter::with_header(File::create(path).unwrap(), header).unwrap();
    for (i, f) in frames.iter().enumerate() {
        w.write_packet(&PcapPacket::new(Duration::from_millis(i as u64), f.len() as u32, f)).unwrap();
    }
}

fn sample() -> Vec<Vec<u8>> {
    vec![
        syn(DYN4, MX4, 25),    // blocked, RST
        syn(DYN4, MX4, 587),   // forward
        syn(STATIC4, MX4, 25), // exempt, forward
        syn(MX4, DYN4, 25),    // inbound, forward
        syn(MX4, STATIC4, 80), // inbound, forward
        vec![0x45, 0, 0, 99],  // truncated
    ]
}

fn read_back(path: &Path) -> usize {
    let mut r = PcapReader::new(File::open(path).unwrap()).unwrap();
    let mut n = 0;
    while let Some(p) = r.next_packet() {
        p.unwrap();
        n += 1;
    }
    n
}

/// `op25b replay --config LAB INPUT ARGS --json`, which must succeed: its JSON.
fn replay_json(input: &Path, args: &[&str]) -> serde_json::Value {
    let o = op25b(&[&["replay", "--config", LAB, input.to_str().unwrap()], args, &["--json"]].concat());
    assert_eq!(o.status.code(), Some(0), "{} {args:?}: {}", input.display(), text(&o));
    serde_json::from_slice(&o.stdout).expect("JSON")
}

#[test]
fn replay_raw_ip_capture() {
    let t = Tmp::new("raw");
    let input = t.file("raw.pcap");
    capture(&input, DataLink::RAW, &sample());
    let (fwd, drop) = (t.file("fwd.pcap"), t.file("drop.pcap"));
    let v = replay_json(&input, &["--forwarded", fwd.to_str().unwrap(), "--dropped", drop.to_str().unwrap()]);
    assert_eq!(v["packets"], 6);
    assert_eq!(v["verdicts"]["forward"], 4);
    assert_eq!(v["verdicts"]["reply"], 1);
    assert_eq!(v["verdicts"]["drop"], 1);
    assert_eq!(v["replies"]["tcp_rst"], 1);
    assert_eq!(v["drops"]["truncated"], 1);
    assert_eq!(v["op25b_blocked"], 1);
    assert_eq!(read_back(&fwd), 4);
    assert_eq!(read_back(&drop), 2);
    // tcpdump reads what we wrote.
    let td =
        Command::new("tcpdump").args(["-n", "-r"]).arg(&fwd).output().expect("tcpdump is installed (scripts/setup.sh)");
    assert!(td.status.success(), "{}", text(&td));
    assert_eq!(String::from_utf8_lossy(&td.stdout).lines().count(), 4, "{}", text(&td));

    // The human-readable form.
    let o = op25b(&["replay", "--config", LAB, input.to_str().unwrap()]);
    let t = text(&o);
    assert!(t.contains("6 packets read") && t.contains("tcp_rst"), "{t}");
}

#[test]
fn replay_ethernet_capture_skips_non_ip() {
    let mut frames: Vec<Vec<u8>> = sample()
        .into_iter()
        .take(2)
        .map(|ip| {
            let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
            f.extend_from_slice(&ip);
            f
        })
        .collect();
    let mut arp = vec![0xff; 12];
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0; 28]);
    frames.push(arp);
    let t = Tmp::new("eth");
    let input = t.file("eth.pcap");
    capture(&input, DataLink::ETHERNET, &frames);
    let o = op25b(&["replay", "--config", LAB, input.to_str().unwrap(), "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["packets"], 3);
    assert_eq!(v["skipped"], 1);
    assert_eq!(v["verdicts"]["reply"], 1);
    assert_eq!(v["verdicts"]["forward"], 1);
}

#[test]
fn replay_truncated_capture_reports_then_fails() {
    let t = Tmp::new("cut");
    let input = t.file("cut.pcap");
    capture(&input, DataLink::RAW, &sample());
    let bytes = std::fs::read(&input).unwrap();
    // Cut inside the third record: 24-byte file header, 16 + 40 per TCP record.
    std::fs::write(&input, &bytes[..24 + 2 * 56 + 30]).unwrap();
    let o = op25b(&["replay", "--config", LAB, input.to_str().unwrap()]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(t.contains("2 packets read"), "{t}");
    assert!(t.contains("record 3"), "{t}");

    // The same in pcapng: cut inside the third packet block.
    let ng = capture_ng(DataLink::RAW, false, &sample());
    let third = ng.windows(4).enumerate().filter(|(_, w)| *w == [6, 0, 0, 0]).nth(2).map(|(i, _)| i).unwrap();
    std::fs::write(&input, &ng[..third + 20]).unwrap();
    let o = op25b(&["replay", "--config", LAB, input.to_str().unwrap()]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(t.contains("2 packets read") && t.contains("record 3"), "{t}");

    std::fs::write(&input, b"not a capture at all").unwrap();
    let o = op25b(&["replay", "--config", LAB, input.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("not a pcap or pcapng file"), "{}", text(&o));
}

/// A pcapng capture as Wireshark writes it: one interface of link type `link`
/// with timestamps in microseconds (no if_tsresol option: the default), or in
/// nanoseconds (if_tsresol = 9). Record i is at 1,700,000,000 s + i * 1,001 us.
fn capture_ng(link: DataLink, nanos: bool, frames: &[Vec<u8>]) -> Vec<u8> {
    let mut w = PcapNgWriter::new(Vec::new()).unwrap();
    let options = if nanos { vec![InterfaceDescriptionOption::IfTsResol(9)] } else { vec![] };
    w.write_pcapng_block(InterfaceDescriptionBlock { linktype: link, snaplen: 0, options }).unwrap();
    for (i, f) in frames.iter().enumerate() {
        let us = 1_700_000_000_000_000u64 + i as u64 * 1_001;
        // The block holds raw ticks in the interface's unit; pcap-file writes
        // the Duration's nanoseconds as the ticks.
        let ticks = if nanos { us * 1_000 } else { us };
        let epb = EnhancedPacketBlock {
            interface_id: 0,
            timestamp: Duration::from_nanos(ticks),
            original_len: f.len() as u32,
            data: Cow::Borrowed(f),
            options: vec![],
        };
        w.write_pcapng_block(epb).unwrap();
    }
    w.into_inner()
}

fn ethernet(frames: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    frames
        .into_iter()
        .map(|ip| {
            let ethertype = if ip.first().is_some_and(|b| b >> 4 == 6) { [0x86, 0xdd] } else { [0x08, 0x00] };
            let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, ethertype[0], ethertype[1]];
            f.extend_from_slice(&ip);
            f
        })
        .collect()
}

/// Runs op25b with `stdin` as its standard input.
fn op25b_stdin(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run op25b");
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    // Written from a thread: op25b may print before it has read everything.
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(&data); // op25b may stop reading early (a bad capture)
    });
    let out = child.wait_with_output().expect("op25b output");
    feeder.join().unwrap();
    out
}

/// Wireshark's format, both link types (raw IP and Ethernet), both timestamp
/// units: the same verdicts as the pcap of the same packets.
#[test]
fn replay_pcapng_raw_and_ethernet() {
    let t = Tmp::new("pcapng");
    for (link, frames) in [(DataLink::RAW, sample()), (DataLink::ETHERNET, ethernet(sample()))] {
        for nanos in [false, true] {
            let input = t.file("in.pcapng");
            std::fs::write(&input, capture_ng(link, nanos, &frames)).unwrap();
            let fwd = t.file("fwd.pcap");
            let v = replay_json(&input, &["--forwarded", fwd.to_str().unwrap()]);
            assert_eq!(v["packets"], 6, "{link:?} {v}");
            assert_eq!(v["verdicts"]["forward"], 4, "{link:?} {v}");
            assert_eq!(v["replies"]["tcp_rst"], 1, "{link:?} {v}");
            assert_eq!(v["drops"]["truncated"], 1, "{link:?} {v}");
            // The forwarded records, as a pcap tcpdump reads, at the capture's times.
            let mut r = PcapReader::new(File::open(&fwd).unwrap()).unwrap();
            assert_eq!(r.header().datalink, link);
            let first = r.next_packet().unwrap().unwrap();
            assert_eq!(first.timestamp, Duration::from_micros(1_700_000_000_001_001), "{link:?} nanos={nanos}");
            assert_eq!(read_back(&fwd), 4);
        }
    }
}

/// `-` reads standard input, pcap or pcapng.
#[test]
fn replay_reads_standard_input() {
    let t = Tmp::new("stdin");
    let pcap = t.file("raw.pcap");
    capture(&pcap, DataLink::RAW, &sample());
    for (what, bytes) in [
        ("pcap", std::fs::read(&pcap).unwrap()),
        ("pcapng", capture_ng(DataLink::ETHERNET, false, &ethernet(sample()))),
    ] {
        let o = op25b_stdin(&["replay", "--config", LAB, "-"], &bytes);
        let out = text(&o);
        assert_eq!(o.status.code(), Some(0), "{what}: {out}");
        assert!(out.contains("<stdin>: 6 packets read, 0 without an IP packet"), "{what}: {out}");
        assert!(out.contains("reply tcp_rst           1"), "{what}: {out}");
    }
    let o = op25b_stdin(&["replay", "--config", LAB, "-"], b"not a capture at all");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("-: not a pcap or pcapng file"), "{}", text(&o));
}

/// `--jsonl`: one object a record, in order, with the documented fields.
#[test]
fn replay_jsonl_one_line_per_record() {
    let mut frames = ethernet(sample());
    let mut arp = vec![0xff; 12];
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0; 28]);
    frames.push(arp);
    let o = op25b_stdin(&["replay", "--config", LAB, "-", "--jsonl"], &capture_ng(DataLink::ETHERNET, false, &frames));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let lines: Vec<serde_json::Value> = String::from_utf8(o.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert_eq!(lines.len(), 7, "{}", text(&o));
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["record"], i as u64 + 1, "{l}");
        let want = 1_700_000_000.0 + i as f64 * 0.001_001;
        assert!((l["time"].as_f64().unwrap() - want).abs() < 1e-5, "{l}");
    }
    let l = &lines[0];
    assert_eq!(
        (&l["direction"], &l["src"], &l["dst"], &l["protocol"], &l["dst_port"], &l["len"]),
        (&"outbound".into(), &DYN4.to_string().into(), &MX4.to_string().into(), &"tcp".into(), &25.into(), &40.into()),
        "{l}"
    );
    assert_eq!((&l["verdict"], &l["reason"]), (&"reply".into(), &"tcp_rst".into()), "{l}");
    assert_eq!((&lines[1]["verdict"], &lines[1]["reason"]), (&"forward".into(), &serde_json::Value::Null));
    assert_eq!(lines[3]["direction"], "inbound");
    assert_eq!((&lines[5]["verdict"], &lines[5]["reason"]), (&"drop".into(), &"truncated".into()));
    assert_eq!((&lines[6]["verdict"], &lines[6]["direction"]), (&"skipped".into(), &serde_json::Value::Null));
}

#[test]
fn check_and_replay_show_what_monitor_would_block() {
    let t = Tmp::new("monitor");
    let config = t.file("monitor.toml");
    std::fs::write(&config, PolicyBuilder::lab().action("monitor").toml()).unwrap();
    let cfg = config.to_str().unwrap();
    let o = op25b(&["check", "--config", cfg, "--packet", "tcp 100.64.1.10:40000 -> 203.0.113.25:25 syn"]);
    assert_eq!(o.status.code(), Some(0), "forwarded: {}", text(&o));
    let out = text(&o);
    assert!(out.contains("-> action monitor: would be blocked, forwarded"), "{out}");
    assert!(out.contains("verdict    forward"), "{out}");
    let input = t.file("raw.pcap");
    capture(&input, DataLink::RAW, &sample());
    let o = op25b(&["replay", "--config", cfg, input.to_str().unwrap(), "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!((v["op25b_blocked"].as_u64(), v["op25b_monitored"].as_u64()), (Some(0), Some(1)), "{v}");
    assert_eq!(v["verdicts"]["forward"], 5, "the would-be block is forwarded: {v}");
    let o = op25b(&["replay", "--config", cfg, input.to_str().unwrap()]);
    assert!(text(&o).contains("op25b monitored (would be blocked, forwarded) 1"), "{}", text(&o));
}

#[test]
fn replay_and_check_judge_the_subscribers_named_quarantined() {
    let capture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/lab-capture.pcap");
    let verdicts = |extra: &[&str]| -> Vec<(String, String)> {
        let mut args = vec!["replay", "--config", LAB, capture, "--jsonl"];
        args.extend_from_slice(extra);
        let o = op25b(&args);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .filter(|l| l["src"] == STATIC4 && l["direction"] == "outbound")
            .map(|l| (l["verdict"].as_str().unwrap_or("?").to_string(), l["reason"].to_string()))
            .collect()
    };
    // The static customer's port-25 connection in the lab capture: exempt
    // from OP25B, so forwarded; in quarantine, outside its walled garden.
    let free = verdicts(&[]);
    assert!(!free.is_empty() && free.iter().all(|(v, _)| v == "forward"), "{free:?}");
    let held = verdicts(&["--quarantined", &format!("{STATIC4},2001:db8:100:9::/64")]);
    assert_eq!(held.len(), free.len());
    assert_eq!(held[0], ("reply".to_string(), "\"tcp_rst\"".to_string()), "the refused SYN: {held:?}");
    assert!(held.iter().all(|(v, _)| v != "forward"), "{held:?}");

    let packet = format!("tcp {STATIC4}:40000 -> 203.0.113.80:443 syn");
    let o = op25b(&["check", "--config", LAB, "--packet", &packet, "--quarantined", STATIC4]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("quarantine     refused (TCP RST)"), "{}", text(&o));
    let o = op25b(&["check", "--config", LAB, "--packet", &packet, "--quarantined", "100.64.1.99"]);
    assert_eq!(o.status.code(), Some(0), "another subscriber in quarantine: {}", text(&o));
    let o = op25b(&["replay", "--config", LAB, capture, "--quarantined", "not-an-address"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("\"not-an-address\" is not a subscriber"), "{}", text(&o));
}
