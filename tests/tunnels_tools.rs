//! `op25b check --packet` and `op25b replay` with tunnelled packets.

use std::fs::File;
use std::process::{Command, Output};
use std::time::Duration;

use op25b::packet::encap::{encapsulate, Options};
use op25b::packet::TunnelKind;
use op25b::testing::packets::{syn, tcp};
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::DataLink;

const BIN: &str = env!("CARGO_BIN_EXE_op25b");
const LAB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/lab.toml");

fn op25b(args: &[&str]) -> Output {
    Command::new(BIN).args(args).env("NO_COLOR", "1").output().expect("run op25b")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn check_packet_traces_the_inner_decision() {
    let spec = "gre 100.64.1.10 -> 198.51.100.1 key [tcp 10.0.0.1:1234 -> 203.0.113.25:25 syn]";
    let o = op25b(&["check", "--config", LAB, "--packet", spec]);
    assert_eq!(o.status.code(), Some(1), "blocked: {}", text(&o));
    let out = text(&o);
    assert!(out.contains("gre (depth 1) carries tcp 10.0.0.1:1234 -> 203.0.113.25:25 [syn]"), "{out}");
    assert!(out.contains("inside gre: block: dynamic source to a blocked port outside"), "{out}");
    assert!(out.contains("tunnel_blocked"), "{out}");

    let spec = "vxlan 100.64.1.10 -> 198.51.100.1 vlan [tcp 10.0.0.1:1234 -> 203.0.113.25:587 syn]";
    let o = op25b(&["check", "--config", LAB, "--packet", spec, "--json"]);
    assert_eq!(o.status.code(), Some(0), "forwarded: {}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["verdict"], "forward");
    let steps = v["trace"].as_array().unwrap();
    assert!(
        steps
            .iter()
            .any(|s| s["stage"] == "op25b" && s["detail"] == "inside vxlan: pass: destination port not blocked"),
        "{v}"
    );

    let o = op25b(&["check", "--config", LAB, "--packet", "gre 100.64.1.10 -> 198.51.100.1"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("in brackets"), "{}", text(&o));
}

#[test]
fn replay_judges_captured_tunnels() {
    let dir = std::env::temp_dir().join(format!("op25b-tunnels-tools-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("tunnels.pcap");
    let wrap = |kind, src: &str, dst: &str, inner: &[u8]| {
        encapsulate(kind, src.parse().unwrap(), dst.parse().unwrap(), 64, inner, &Options::default()).unwrap()
    };
    let inner25 = syn("10.0.0.1", "203.0.113.25", 25);
    let inner6 = tcp("2001:db8:1::1", 1, "2001:db8:203::25", 25).syn().build();
    let frames = [
        wrap(TunnelKind::Gre, "100.64.1.10", "198.51.100.1", &inner25),
        wrap(TunnelKind::Gre, "100.64.1.10", "198.51.100.1", &syn("10.0.0.1", "203.0.113.25", 587)),
        wrap(TunnelKind::Teredo, "100.64.1.10", "198.51.100.1", &inner6),
        wrap(TunnelKind::Vxlan, "100.64.1.10", "198.51.100.1", &inner25),
        syn("100.64.1.10", "203.0.113.25", 443),
    ];
    {
        let header = PcapHeader { datalink: DataLink::RAW, ..PcapHeader::default() };
        let mut w = PcapWriter::with_header(File::create(&input).unwrap(), header).unwrap();
        for (i, f) in frames.iter().enumerate() {
            w.write_packet(&PcapPacket::new(Duration::from_millis(i as u64), f.len() as u32, f)).unwrap();
        }
    }
    let o = op25b(&["replay", "--config", LAB, input.to_str().unwrap(), "--json"]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["drops"]["tunnel_blocked"], 3, "{v}");
    assert_eq!(v["verdicts"]["forward"], 2, "{v}");
    assert_eq!(v["tunnels"]["gre"]["packets"], 2, "{v}");
    assert_eq!(v["tunnels"]["gre"]["blocked"], 1, "{v}");
    assert_eq!(v["tunnels"]["teredo"]["blocked"], 1, "{v}");
    assert_eq!(v["tunnels"]["vxlan"]["blocked"], 1, "{v}");
}
