//! The banner responder on its own: segments in, what it sends out, its timers.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::*;
use crate::packet::{tcp_flags, PacketView, Transport};
use crate::testing::lab::{DYN4, MX4};
use crate::testing::packets::tcp;
use crate::testing::PolicyBuilder;

fn responder_with(b: PolicyBuilder) -> Responder {
    let p = b.action("banner").policy();
    Responder::new(&p.op25b.ports, &p.op25b.banner)
}

fn responder(sessions: u32) -> Responder {
    responder_with(PolicyBuilder::lab().op25b("banner_sessions", sessions))
}

/// A segment from the dynamic subscriber to the MX's port 25.
fn segment(sport: u16, seq: u32, ack: Option<u32>, syn: bool) -> Vec<u8> {
    let b = tcp(DYN4, sport, MX4, 25).seq(seq);
    let b = if syn { b.syn() } else { b };
    match (syn, ack) {
        (false, Some(a)) => b.ack(a).build(),
        _ => b.build(),
    }
}

/// Hands `pkt` in as the router would, with the reply token granted.
fn input(r: &Responder, now: Instant, pkt: &[u8]) -> Admission {
    let view = PacketView::parse(pkt).unwrap();
    r.segment(now, &view, pkt, |_| true)
}

fn drain(r: &Responder) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    while let Some(n) = r.poll_transmit(&mut buf, |_| true) {
        out.push(buf[..n].to_vec());
    }
    out
}

fn flags_of(p: &[u8]) -> u8 {
    match PacketView::parse(p).unwrap().transport {
        Transport::Tcp { flags, .. } => flags,
        _ => panic!("not TCP"),
    }
}

fn payload_of(p: &[u8]) -> Vec<u8> {
    let v = PacketView::parse(p).unwrap();
    let Transport::Tcp { header_len, .. } = v.transport else { panic!("not TCP") };
    p[v.l4_offset + usize::from(header_len)..v.len].to_vec()
}

/// Runs the responder's own timers from `t` for `span`; what it sent.
fn run_timers(r: &Responder, t: &mut Instant, span: Duration) -> Vec<Vec<u8>> {
    let end = *t + span;
    let mut sent = Vec::new();
    while let Some(at) = r.poll_timeout() {
        *t = at.max(*t + Duration::from_millis(1));
        if *t > end {
            break;
        }
        r.handle_timeout(*t);
        sent.extend(drain(r));
        // What the workers read without the lock: the same deadline,
        // rounded up to the microsecond.
        let (exact, shared) = (r.deadline_exact(), r.poll_timeout());
        assert_eq!(exact.is_some(), shared.is_some());
        if let (Some(e), Some(s)) = (exact, shared) {
            assert!(s >= e && s - e < Duration::from_micros(1), "{e:?} vs {s:?}");
        }
    }
    sent
}

#[test]
fn answers_as_the_dialled_server_with_the_banner_then_closes() {
    let r = responder(4);
    let t0 = Instant::now();
    assert_eq!(input(&r, t0, &segment(40000, 1000, None, true)), Admission::Accepted);
    let out = drain(&r);
    assert_eq!(out.len(), 1, "a SYN-ACK");
    let synack = PacketView::parse(&out[0]).unwrap();
    assert_eq!(synack.src.to_string(), "203.0.113.25", "answers from the dialled address");
    let Transport::Tcp { src_port, flags, seq, ack, .. } = synack.transport else { panic!() };
    assert_eq!((src_port, flags & (tcp_flags::SYN | tcp_flags::ACK), ack), (25, tcp_flags::SYN | tcp_flags::ACK, 1001));
    input(&r, t0, &segment(40000, 1001, Some(seq.wrapping_add(1)), false));
    let out = drain(&r);
    let text: Vec<u8> = out.iter().flat_map(|p| payload_of(p)).collect();
    let line = String::from_utf8(text).unwrap();
    assert!(line.starts_with("554 5.7.1 Port 25 is blocked"), "{line:?}");
    assert!(line.ends_with("\r\n"));
    assert!(out.iter().any(|p| flags_of(p) & tcp_flags::FIN != 0), "closes");
    assert_eq!(r.active(), 1);
    assert!(r.poll_timeout().is_some(), "retransmission or timeout timer");
}

#[test]
fn a_forged_syn_gets_at_most_two_syn_acks_and_no_rst() {
    let r = responder(4);
    let t0 = Instant::now();
    input(&r, t0, &segment(40000, 1000, None, true));
    assert_eq!(drain(&r).len(), 1, "one SYN-ACK");
    assert_eq!(r.active(), 1);
    // Nobody answers. Follow the responder's own timers for a minute: one
    // retransmission (for a client whose ACK was lost), then the session
    // listens again silently.
    let mut t = t0;
    let sent = run_timers(&r, &mut t, Duration::from_secs(60));
    let flags: Vec<u8> = sent.iter().map(|p| flags_of(p)).collect();
    assert_eq!(flags, [tcp_flags::SYN | tcp_flags::ACK], "one retransmitted SYN-ACK, then nothing");
    assert_eq!(r.active(), 0, "the session was given up");
    assert!(r.poll_timeout().is_none(), "no timer left");
    // The client's late ACK finds no session: refused, not answered with an RST.
    assert_eq!(input(&r, t, &segment(40000, 1001, Some(1), false)), Admission::NotOwned);
    assert!(drain(&r).is_empty());
    // The slot takes the next client.
    input(&r, t, &segment(40001, 1, None, true));
    assert_eq!(drain(&r).len(), 1);
}

#[test]
fn a_whole_session_closes_without_an_rst() {
    let r = responder(4);
    let t0 = Instant::now();
    input(&r, t0, &segment(40000, 1000, None, true));
    let out = drain(&r);
    let Transport::Tcp { seq: isn, .. } = PacketView::parse(&out[0]).unwrap().transport else { panic!() };
    input(&r, t0, &segment(40000, 1001, Some(isn.wrapping_add(1)), false));
    let out = drain(&r);
    let sent: usize = out.iter().map(|p| payload_of(p).len()).sum();
    assert!(out.iter().any(|p| flags_of(p) & tcp_flags::FIN != 0), "the banner, then FIN");
    // The client acknowledges the banner and the FIN, and closes too.
    let fin = tcp(DYN4, 40000, MX4, 25).seq(1001).ack(isn.wrapping_add(1 + sent as u32 + 1)).fin().build();
    input(&r, t0, &fin);
    let out = drain(&r);
    let flags: Vec<u8> = out.iter().map(|p| flags_of(p)).collect();
    assert_eq!(flags, [tcp_flags::ACK], "the client's FIN acknowledged, no RST");
    assert_eq!(r.active(), 0, "the slot listens again");
    assert!(r.poll_timeout().is_none());
}

/// The client at `sport` completes the handshake: its session is past
/// SYN-RECEIVED (the banner and FIN are drained).
fn handshake(r: &Responder, now: Instant, src: &str, sport: u16) {
    let syn = tcp(src, sport, MX4, 25).seq(1000).syn().build();
    assert_eq!(input(r, now, &syn), Admission::Accepted);
    let out = drain(r);
    let Transport::Tcp { seq: isn, .. } = PacketView::parse(&out[0]).unwrap().transport else { panic!() };
    input(r, now, &tcp(src, sport, MX4, 25).seq(1001).ack(isn.wrapping_add(1)).build());
    assert!(drain(r).iter().any(|p| !payload_of(p).is_empty()), "the banner");
}

#[test]
fn rsts_go_out_only_with_a_reply_token() {
    let r = responder(1);
    let t0 = Instant::now();
    handshake(&r, t0, DYN4, 40000);
    // Every session past the handshake: smoltcp answers another
    // subscriber's SYN with an RST.
    let syn = tcp("100.64.1.11", 5, MX4, 25).syn().build();
    input(&r, t0, &syn);
    let mut buf = [0u8; 256];
    let mut asked = Vec::new();
    assert!(r
        .poll_transmit(&mut buf, |to| {
            asked.push(to);
            false
        })
        .is_none());
    assert_eq!(asked, ["100.64.1.11".parse::<IpAddr>().unwrap()]);
    assert_eq!(r.rsts_limited(), 1);
}

#[test]
fn a_short_banner_timeout_sends_no_rst_to_a_forged_syn_either() {
    for timeout in [1u64, 2, 3] {
        let r = responder_with(PolicyBuilder::lab().op25b("banner_timeout", timeout));
        let mut t = Instant::now();
        input(&r, t, &segment(40000, 1000, None, true));
        assert_eq!(drain(&r).len(), 1);
        let flags: Vec<u8> = run_timers(&r, &mut t, Duration::from_secs(60)).iter().map(|p| flags_of(p)).collect();
        assert!(flags.len() <= 1, "timeout {timeout}: {flags:?}");
        assert!(flags.iter().all(|f| *f == tcp_flags::SYN | tcp_flags::ACK), "timeout {timeout}: {flags:?}");
        assert_eq!(r.active(), 0, "timeout {timeout}");
    }
}

#[test]
fn a_syn_then_rst_frees_the_session_and_leaves_no_timer() {
    let r = responder(1);
    let t0 = Instant::now();
    input(&r, t0, &segment(40000, 1000, None, true));
    assert_eq!(drain(&r).len(), 1);
    let rst = tcp(DYN4, 40000, MX4, 25).seq(1001).window(0).rst().build();
    input(&r, t0, &rst);
    assert!(drain(&r).is_empty());
    assert_eq!(r.active(), 0);
    assert!(r.poll_timeout().is_none(), "no timer due for ever");
    // The next client gets a plain SYN-ACK from the same slot, no RST.
    let t = t0 + Duration::from_secs(30);
    input(&r, t, &segment(40001, 1, None, true));
    let out = drain(&r);
    assert_eq!(out.iter().map(|p| flags_of(p)).collect::<Vec<_>>(), [tcp_flags::SYN | tcp_flags::ACK]);
}

#[test]
fn a_repeated_syn_or_one_over_the_share_is_not_answered() {
    let r = responder(4);
    let t0 = Instant::now();
    input(&r, t0, &segment(40000, 1000, None, true));
    assert_eq!(drain(&r).len(), 1);
    // The same SYN again (another listening socket would take it).
    assert_eq!(input(&r, t0, &segment(40000, 1000, None, true)), Admission::NotOwned);
    assert!(drain(&r).is_empty());
    assert_eq!(r.active(), 1);
    // The share of one subscriber is 4 (default, at most banner_sessions).
    for port in 1..=3 {
        input(&r, t0, &segment(port, 1, None, true));
    }
    assert_eq!(drain(&r).len(), 3);
    assert_eq!(input(&r, t0, &segment(4, 1, None, true)), Admission::SourceFull);
    assert!(drain(&r).is_empty(), "over the share: left to the router (an RST with a token)");
    assert_eq!(r.sessions_of(DYN4.parse().unwrap()), 4);
}

#[test]
fn a_syn_over_the_reply_limit_reaches_no_session() {
    let r = responder(4);
    let syn = segment(40000, 1000, None, true);
    let view = PacketView::parse(&syn).unwrap();
    assert_eq!(r.segment(Instant::now(), &view, &syn, |_| false), Admission::RateLimited);
    assert!(drain(&r).is_empty());
    assert_eq!(r.active(), 0);
}

#[test]
fn over_the_bound_a_syn_gets_rst_and_idle_sessions_time_out() {
    let r = responder(2);
    let t0 = Instant::now();
    let from = |last: u8, port: u16| tcp(&format!("100.64.1.{last}"), port, MX4, 25).syn().build();
    for (last, port) in [(10, 1), (11, 2)] {
        handshake(&r, t0, &format!("100.64.1.{last}"), port);
    }
    input(&r, t0, &from(12, 3));
    let out = drain(&r);
    assert_eq!(out.len(), 1);
    assert!(flags_of(&out[0]) & tcp_flags::RST != 0);
    assert_eq!(r.active(), 2);
    assert_eq!(r.syn_evictions(), 0, "sessions past the handshake are never taken");
    // Nobody closes: the sessions time out and listen again.
    let mut t = t0;
    for _ in 0..100 {
        t += Duration::from_secs(1);
        r.handle_timeout(t);
        drain(&r);
    }
    assert_eq!(r.active(), 0);
    input(&r, t, &segment(4, 1, None, true));
    let out = drain(&r);
    assert!(flags_of(&out[0]) & tcp_flags::SYN != 0);
}

/// A flood of SYNs from forged sources (a new subscriber each, so no share
/// stops them), many times the sessions of the port: each takes the slot
/// of the oldest half-open one and nobody gets an RST. A real client's
/// session survives as long as fewer SYNs than sessions follow before its
/// ACK, and once past the handshake no SYN takes it.
#[test]
fn forged_syns_take_only_half_open_sessions() {
    const SESSIONS: u32 = 4;
    let r = responder(SESSIONS);
    let t0 = Instant::now();
    let forged = |i: u32| tcp(&std::net::Ipv4Addr::from(0x6450_0000 + i).to_string(), 40000, MX4, 25).syn().build();
    handshake(&r, t0, "100.64.1.11", 1);
    for i in 0..40 {
        let now = t0 + Duration::from_millis(u64::from(i));
        assert_eq!(input(&r, now, &forged(i)), Admission::Accepted, "forged SYN {i}");
        let flags: Vec<u8> = drain(&r).iter().map(|p| flags_of(p)).collect();
        assert_eq!(flags, [tcp_flags::SYN | tcp_flags::ACK], "forged SYN {i}: a SYN-ACK, no RST");
    }
    assert_eq!(r.syn_evictions(), 40 - u64::from(SESSIONS - 1), "all but the free sessions evicted one");
    // A real client in the middle of the flood: its SYN-ACK, then
    // SESSIONS - 2 more forged SYNs, then its ACK gets the banner.
    let now = t0 + Duration::from_millis(100);
    input(&r, now, &segment(40000, 1000, None, true));
    let out = drain(&r);
    let Transport::Tcp { seq: isn, .. } = PacketView::parse(&out[0]).unwrap().transport else { panic!() };
    for i in 100..100 + SESSIONS - 2 {
        input(&r, now, &forged(i));
    }
    drain(&r);
    input(&r, now, &segment(40000, 1001, Some(isn.wrapping_add(1)), false));
    let line: Vec<u8> = drain(&r).iter().flat_map(|p| payload_of(p)).collect();
    assert!(line.starts_with(b"554 "), "{:?}", String::from_utf8_lossy(&line));
    // Two sessions are now past the handshake; the flood goes on in the other two.
    for i in 200..240 {
        input(&r, now, &forged(i));
        drain(&r);
    }
    assert_eq!(r.sessions_of("100.64.1.11".parse().unwrap()), 1);
    assert_eq!(r.sessions_of(DYN4.parse().unwrap()), 1);
    assert_eq!(r.rsts_limited(), 0);
}
