//! Every packet handed to the router gets exactly one verdict, and the stats
//! count exactly that verdict in the packet's direction: after assorted
//! packets of every verdict kind (forward, reply, drop for several reasons,
//! terminate), the sum over verdicts of each direction is the number of
//! packets sent that way, through the API and in the JSON form
//! (`op25b run --stats`).

use std::collections::HashMap;

use op25b::testing::lab::{DYN4, DYN6, MX4, MX6, ROUTER4, ROUTER6};
use op25b::testing::packets::{echo_request, echo_request_ttl, syn, tcp, udp, udp_ttl};
use op25b::testing::PolicyBuilder;
use op25b::{Direction, DropReason, ReplyKind, Verdict};

/// A forward or reply of any length.
const FORWARD: Verdict = Verdict::Forward { len: 0 };
const fn reply(kind: ReplyKind) -> Verdict {
    Verdict::Reply { len: 0, kind }
}

/// Whether `v` is `want`, lengths aside.
fn is(v: Verdict, want: Verdict) -> bool {
    match (v, want) {
        (Verdict::Forward { .. }, Verdict::Forward { .. }) => true,
        (Verdict::Reply { kind, .. }, Verdict::Reply { kind: k, .. }) => kind == k,
        _ => v == want,
    }
}

#[test]
fn every_packet_is_counted_once_in_its_direction() {
    use Direction::{Inbound, Outbound};
    let mut r = PolicyBuilder::lab()
        .action("banner")
        .rules(
            r#"
[[rule]]
name = "reject-lab-udp"
direction = "outbound"
protocol = "udp"
dst = ["192.0.2.0/24"]
action = "reject"

[[rule]]
name = "drop-udp-7"
protocol = "udp"
dst_ports = [7]
action = "drop"
"#,
        )
        .router();
    let mut cut = syn(DYN4, MX4, 587);
    cut.truncate(24);
    let short = cut[..10].to_vec();
    let mut bad_version = udp(DYN4, 40000, MX4, 53, b"x");
    bad_version[0] = 0x55;
    use DropReason::*;
    let cases: Vec<(Direction, Vec<u8>, Verdict)> = vec![
        // Forwarded both ways, both families.
        (Outbound, syn(DYN4, MX4, 587), FORWARD),
        (Outbound, syn(DYN6, MX6, 587), FORWARD),
        (Outbound, udp(DYN4, 40000, MX4, 53, b"query"), FORWARD),
        (Outbound, echo_request(DYN6, MX6, b"ping"), FORWARD),
        (Inbound, tcp(MX4, 587, DYN4, 40000).syn().ack(1).build(), FORWARD),
        (Inbound, udp(MX6, 53, DYN6, 40000, b"answer"), FORWARD),
        // Answered by the router.
        (Outbound, echo_request(DYN4, ROUTER4, b"ping"), reply(ReplyKind::EchoReply)),
        (Outbound, echo_request(DYN6, ROUTER6, b"ping"), reply(ReplyKind::EchoReply)),
        (Outbound, echo_request_ttl(DYN4, MX4, b"ping", 1), reply(ReplyKind::TimeExceeded)),
        (Outbound, udp(DYN4, 40000, "192.0.2.9", 9, b"x"), reply(ReplyKind::Prohibited)),
        (Inbound, udp_ttl(MX4, 53, DYN4, 40000, b"x", 1), reply(ReplyKind::TimeExceeded)),
        // Dropped, for several reasons.
        (Outbound, short, Verdict::Drop(Truncated)),
        (Outbound, cut, Verdict::Drop(BadTotalLen)),
        (Outbound, bad_version, Verdict::Drop(BadVersion)),
        (Outbound, syn("192.0.2.1", MX4, 587), Verdict::Drop(Spoofed)),
        (Outbound, udp(DYN4, 40000, MX4, 7, b"x"), Verdict::Drop(RuleDrop)),
        // A segment of no banner session.
        (Outbound, tcp(DYN4, 40001, MX4, 25).ack(1).payload(b"EHLO x").build(), Verdict::Drop(Op25bBlocked)),
        (Outbound, udp(DYN4, 40000, ROUTER4, 53, b"x"), Verdict::Drop(Local)),
        (Inbound, udp(MX4, 40000, DYN4, 7, b"x"), Verdict::Drop(RuleDrop)),
        // To the banner responder.
        (Outbound, syn(DYN4, MX4, 25), Verdict::Terminate),
        (Outbound, syn(DYN6, MX6, 25), Verdict::Terminate),
        (Outbound, tcp(DYN4, 40000, MX4, 25).seq(2).ack(1).build(), Verdict::Terminate),
    ];

    let mut sent: HashMap<Direction, u64> = HashMap::new();
    let mut seen: Vec<(Direction, Verdict)> = Vec::new();
    for (dir, pkt, want) in &cases {
        let (v, _) = r.send(*dir, pkt);
        assert!(is(v, *want), "{dir:?} packet {pkt:02x?}: {v:?}, expected {want:?}");
        *sent.entry(*dir).or_default() += 1;
        seen.push((*dir, v));
    }
    let stats = r.stats();
    let json = stats.to_json();
    for dir in Direction::ALL {
        let n = sent[&dir];
        let d = stats.dir(dir);
        let of = |f: &dyn Fn(&Verdict) -> bool| seen.iter().filter(|(sd, v)| *sd == dir && f(v)).count() as u64;
        // The sum over verdicts is the number of packets sent this way...
        assert_eq!(d.forwarded + d.dropped_total() + d.replied_total() + d.terminated, n, "{dir:?}: {d:?}");
        assert_eq!(d.verdicts(), n, "{dir:?}: {d:?}");
        // ... each verdict counted as what it was ...
        assert_eq!(d.forwarded, of(&|v| matches!(v, Verdict::Forward { .. })), "{dir:?} forwarded");
        assert_eq!(d.terminated, of(&|v| *v == Verdict::Terminate), "{dir:?} terminated");
        for reason in DropReason::ALL {
            let want = of(&|v| *v == Verdict::Drop(*reason));
            assert_eq!(d.dropped[*reason as usize], want, "{dir:?} drop {}", reason.name());
        }
        for k in ReplyKind::ALL {
            let want = of(&|v| matches!(v, Verdict::Reply { kind, .. } if kind == k));
            assert_eq!(d.replies[*k as usize], want, "{dir:?} reply {}", k.name());
        }
        // ... and the JSON form adds up the same.
        let j = &json[dir.name()];
        let sum = |key: &str| -> u64 {
            let map = j[key].as_object().unwrap_or_else(|| panic!("{dir:?}: no {key} map in {j}"));
            map.values().map(|v| v.as_u64().expect("a count")).sum()
        };
        let num = |key: &str| j[key].as_u64().unwrap_or_else(|| panic!("{dir:?}: no {key} in {j}"));
        assert_eq!(num("forwarded") + sum("dropped") + sum("replies") + num("terminated"), n, "{dir:?}: {j}");
    }
    assert_eq!(sent.values().sum::<u64>(), cases.len() as u64);
}
