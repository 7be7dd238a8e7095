use super::*;
use crate::testing::packets::tcp;
use std::net::Ipv4Addr;

const C: [u8; 4] = [100, 64, 1, 10];
const MX: [u8; 4] = [203, 0, 113, 25];
const RELAY: [u8; 4] = [198, 51, 100, 25];

fn relay() -> SocketAddr {
    SocketAddr::from((RELAY, 25))
}

/// One segment: `flags` is "syn", "synack", "ack", "fin" or "rst".
fn seg(buf: &mut Vec<u8>, src: ([u8; 4], u16), dst: ([u8; 4], u16), flags: &str, seq: u32, ack: u32) -> PacketView {
    let b =
        tcp(&Ipv4Addr::from(src.0).to_string(), src.1, &Ipv4Addr::from(dst.0).to_string(), dst.1).window(1000).seq(seq);
    *buf = match flags {
        "syn" => b.syn(),
        "synack" => b.syn().ack(ack),
        "fin" => b.ack(ack).fin(),
        "rst" => b.rst(),
        _ => b.ack(ack),
    }
    .build();
    PacketView::parse(buf).unwrap()
}

/// The subscriber `c`:`port` sends a SYN to the MX; the relay answers with
/// a SYN-ACK of ISN `isn`. The flow is then half-open (unassured).
fn half_open(ct: &mut Conntrack, c: [u8; 4], port: u16, isn: u32, now: Instant) -> Result<Redirect, CtError> {
    let mut b = Vec::new();
    let r = ct.outbound(&seg(&mut b, (c, port), (MX, 25), "syn", 7, 0), relay(), now)?;
    assert!(ct.inbound(&seg(&mut b, (RELAY, 25), (c, port), "synack", isn, 8), now).is_some());
    Ok(r)
}

/// ... and the subscriber acknowledges it: assured.
fn handshake(ct: &mut Conntrack, c: [u8; 4], port: u16, isn: u32, now: Instant) -> Result<Redirect, CtError> {
    let r = half_open(ct, c, port, isn, now)?;
    let mut b = Vec::new();
    ct.outbound(&seg(&mut b, (c, port), (MX, 25), "ack", 8, isn.wrapping_add(1)), relay(), now)?;
    assert_eq!(ct.assured(c.into(), port), Some(true));
    Ok(r)
}

/// A forged dynamic source: 100.80.0.0 + i.
fn forged(i: u32) -> [u8; 4] {
    Ipv4Addr::from(0x6450_0000 + i).octets()
}

#[test]
fn a_connection_through_the_table() {
    let mut ct = Conntrack::new(8, 8);
    let t0 = Instant::now();
    let mut b = Vec::new();
    assert_eq!(ct.outbound(&seg(&mut b, (C, 40000), (MX, 25), "ack", 8, 1), relay(), t0), Err(CtError::NoFlow));
    let syn = seg(&mut b, (C, 40000), (MX, 25), "syn", 7, 0);
    assert!(ct.is_new(&syn, t0));
    assert_eq!(ct.outbound(&syn, relay(), t0), Ok(Redirect { to: relay(), evicted: false }));
    // The relay answers; the original destination comes back.
    let back = seg(&mut b, (RELAY, 25), (C, 40000), "synack", 5000, 8);
    assert_eq!(ct.inbound(&back, t0), Some("203.0.113.25:25".parse().unwrap()));
    assert_eq!(ct.assured(C.into(), 40000), Some(false), "the relay's answer alone does not assure");
    ct.outbound(&seg(&mut b, (C, 40000), (MX, 25), "ack", 8, 5001), relay(), t0).unwrap();
    assert_eq!(ct.assured(C.into(), 40000), Some(true));
    // Another destination from the same port collides.
    let other = seg(&mut b, (C, 40000), ([203, 0, 113, 26], 25), "syn", 7, 0);
    assert_eq!(ct.outbound(&other, relay(), t0), Err(CtError::Collision));
    // FIN closes; after the closing timeout the flow is gone.
    ct.outbound(&seg(&mut b, (C, 40000), (MX, 25), "fin", 8, 5001), relay(), t0).unwrap();
    let later = t0 + CLOSING_TIMEOUT + Duration::from_secs(1);
    assert_eq!(ct.inbound(&seg(&mut b, (RELAY, 25), (C, 40000), "ack", 5001, 9), later), None);
}

#[test]
fn a_forged_syn_answered_by_the_relay_is_never_assured() {
    let mut ct = Conntrack::new(4, 4);
    let t0 = Instant::now();
    let mut b = Vec::new();
    half_open(&mut ct, C, 1, 5000, t0).unwrap();
    // The forger never saw the SYN-ACK: its ACKs, data, even retransmitted
    // SYNs, neither assure nor renew the flow.
    for s in 1..=9 {
        let now = t0 + Duration::from_secs(s);
        let _ = ct.outbound(&seg(&mut b, (C, 1), (MX, 25), "ack", 8, 1), relay(), now);
        let _ = ct.outbound(&seg(&mut b, (C, 1), (MX, 25), "syn", 7, 0), relay(), now);
    }
    assert_eq!(ct.assured(C.into(), 1), Some(false));
    let later = t0 + SYN_RECEIVED_TIMEOUT + Duration::from_millis(1);
    assert!(ct.is_new(&seg(&mut b, (C, 1), (MX, 25), "syn", 7, 0), later), "expired despite the segments");
    assert_eq!(ct.inbound(&seg(&mut b, (RELAY, 25), (C, 1), "ack", 5001, 8), later), None);
}

#[test]
fn only_an_ack_of_the_relays_isn_assures() {
    let mut ct = Conntrack::new(8, 8);
    let t0 = Instant::now();
    let mut b = Vec::new();
    // Wrong acknowledgement numbers, an RST and a SYN-ACK from the subscriber
    // carrying the right number do not assure; no ACK does before the relay's SYN-ACK.
    ct.outbound(&seg(&mut b, (C, 1), (MX, 25), "syn", 7, 0), relay(), t0).unwrap();
    ct.outbound(&seg(&mut b, (C, 1), (MX, 25), "ack", 8, 5001), relay(), t0).unwrap();
    assert_eq!(ct.assured(C.into(), 1), Some(false), "an ACK before the SYN-ACK");
    ct.inbound(&seg(&mut b, (RELAY, 25), (C, 1), "synack", 5000, 8), t0).unwrap();
    for wrong in [0, 5000, 5002, 5001 + (1 << 31), 8] {
        ct.outbound(&seg(&mut b, (C, 1), (MX, 25), "ack", 8, wrong), relay(), t0).unwrap();
        assert_eq!(ct.assured(C.into(), 1), Some(false), "ack {wrong}");
    }
    ct.outbound(&seg(&mut b, (C, 1), (MX, 25), "synack", 8, 5001), relay(), t0).unwrap();
    assert_eq!(ct.assured(C.into(), 1), Some(false), "a SYN-ACK from the subscriber");
    // The sequence space wraps: the ISN 2^32 - 1 is acknowledged with 0.
    half_open(&mut ct, C, 2, u32::MAX, t0).unwrap();
    ct.outbound(&seg(&mut b, (C, 2), (MX, 25), "ack", 8, 0), relay(), t0).unwrap();
    assert_eq!(ct.assured(C.into(), 2), Some(true));
    // A relay with SYN cookies may answer a retransmitted SYN with another
    // ISN: the client acknowledges the first it received, or the latest.
    half_open(&mut ct, C, 3, 100, t0).unwrap();
    ct.inbound(&seg(&mut b, (RELAY, 25), (C, 3), "synack", 900, 8), t0).unwrap();
    ct.outbound(&seg(&mut b, (C, 3), (MX, 25), "ack", 8, 101), relay(), t0).unwrap();
    assert_eq!(ct.assured(C.into(), 3), Some(true), "the first ISN");
    half_open(&mut ct, C, 4, 100, t0).unwrap();
    ct.inbound(&seg(&mut b, (RELAY, 25), (C, 4), "synack", 900, 8), t0).unwrap();
    ct.outbound(&seg(&mut b, (C, 4), (MX, 25), "ack", 8, 901), relay(), t0).unwrap();
    assert_eq!(ct.assured(C.into(), 4), Some(true), "the latest ISN");
    // A FIN that acknowledges the SYN-ACK assures, then closes.
    half_open(&mut ct, C, 5, 100, t0).unwrap();
    ct.outbound(&seg(&mut b, (C, 5), (MX, 25), "fin", 8, 101), relay(), t0).unwrap();
    assert_eq!(ct.assured(C.into(), 5), Some(true));
}

#[test]
fn timeouts_by_state() {
    let mut ct = Conntrack::new(8, 8);
    let t0 = Instant::now();
    let mut b = Vec::new();
    let alive = |ct: &Conntrack, port: u16, at: Instant| {
        let mut b = Vec::new();
        !ct.is_new(&seg(&mut b, (C, port), (MX, 25), "syn", 7, 0), at)
    };
    let ms = Duration::from_millis;
    // Unanswered: SYN_TIMEOUT.
    ct.outbound(&seg(&mut b, (C, 1), (MX, 25), "syn", 7, 0), relay(), t0).unwrap();
    assert!(alive(&ct, 1, t0 + SYN_TIMEOUT) && !alive(&ct, 1, t0 + SYN_TIMEOUT + ms(1)));
    // Answered, unacknowledged: SYN_RECEIVED_TIMEOUT after the relay's latest SYN-ACK.
    half_open(&mut ct, C, 2, 100, t0).unwrap();
    assert!(alive(&ct, 2, t0 + SYN_RECEIVED_TIMEOUT) && !alive(&ct, 2, t0 + SYN_RECEIVED_TIMEOUT + ms(1)));
    let t1 = t0 + Duration::from_secs(3);
    ct.inbound(&seg(&mut b, (RELAY, 25), (C, 2), "synack", 100, 8), t1).unwrap();
    assert!(alive(&ct, 2, t1 + SYN_RECEIVED_TIMEOUT) && !alive(&ct, 2, t1 + SYN_RECEIVED_TIMEOUT + ms(1)));
    // Assured: ESTABLISHED_TIMEOUT idle, renewed by traffic from either side.
    handshake(&mut ct, C, 3, 100, t0).unwrap();
    assert!(alive(&ct, 3, t0 + ESTABLISHED_TIMEOUT) && !alive(&ct, 3, t0 + ESTABLISHED_TIMEOUT + ms(1)));
    let t2 = t0 + Duration::from_secs(500);
    ct.inbound(&seg(&mut b, (RELAY, 25), (C, 3), "ack", 101, 8), t2).unwrap();
    assert!(alive(&ct, 3, t2 + ESTABLISHED_TIMEOUT) && !alive(&ct, 3, t2 + ESTABLISHED_TIMEOUT + ms(1)));
    // Closing: CLOSING_TIMEOUT after the FIN, assured or not.
    ct.outbound(&seg(&mut b, (C, 3), (MX, 25), "fin", 8, 101), relay(), t2).unwrap();
    assert!(alive(&ct, 3, t2 + CLOSING_TIMEOUT) && !alive(&ct, 3, t2 + CLOSING_TIMEOUT + ms(1)));
    ct.outbound(&seg(&mut b, (C, 4), (MX, 25), "syn", 7, 0), relay(), t0).unwrap();
    ct.inbound(&seg(&mut b, (RELAY, 25), (C, 4), "rst", 0, 0), t0).unwrap();
    assert!(alive(&ct, 4, t0 + CLOSING_TIMEOUT) && !alive(&ct, 4, t0 + CLOSING_TIMEOUT + ms(1)));
}

#[test]
fn a_full_table_evicts_the_oldest_unassured_flow_for_a_new_syn() {
    let mut ct = Conntrack::new(4, 8);
    let t0 = Instant::now();
    handshake(&mut ct, C, 1, 100, t0).unwrap();
    handshake(&mut ct, C, 2, 100, t0).unwrap();
    half_open(&mut ct, forged(1), 9, 100, t0).unwrap();
    half_open(&mut ct, forged(2), 9, 100, t0).unwrap();
    // Full: a new SYN takes the oldest unassured flow's slot.
    assert_eq!(half_open(&mut ct, forged(3), 9, 100, t0), Ok(Redirect { to: relay(), evicted: true }));
    assert_eq!(ct.assured(forged(1).into(), 9), None, "the oldest unassured flow went");
    assert_eq!(ct.flows_of(forged(1).into()), 0);
    assert_eq!(ct.assured(forged(2).into(), 9), Some(false));
    // A flow assured after its SYN leaves the list: it is never evicted,
    // however many SYNs follow.
    handshake(&mut ct, C, 3, 100, t0).unwrap();
    assert_eq!(ct.assured(forged(2).into(), 9), None);
    for i in 10..1000 {
        assert!(half_open(&mut ct, forged(i), 9, 100, t0).unwrap().evicted);
        assert_eq!(ct.len(), 4);
    }
    for port in 1..=3 {
        assert_eq!(ct.assured(C.into(), port), Some(true));
    }
    // The slab and the maps kept the size they were given on first use.
    assert_eq!(ct.slots.capacity(), 4);
    assert!(ct.slots.len() <= 4);
}

#[test]
fn a_table_full_of_assured_flows_refuses_and_keeps_them() {
    let mut ct = Conntrack::new(4, 8);
    let t0 = Instant::now();
    let mut b = Vec::new();
    for port in 1..=4 {
        handshake(&mut ct, C, port, 100, t0).unwrap();
    }
    for i in 0..100 {
        let syn = seg(&mut b, (forged(i), 9), (MX, 25), "syn", 7, 0);
        assert_eq!(ct.outbound(&syn, relay(), t0 + Duration::from_secs(2)), Err(CtError::Full));
    }
    for port in 1..=4 {
        assert_eq!(ct.assured(C.into(), port), Some(true));
        let data = seg(&mut b, (C, port), (MX, 25), "ack", 8, 101);
        assert!(ct.outbound(&data, relay(), t0 + Duration::from_secs(2)).is_ok());
    }
    // Once one of them closes and its closing time is over, there is room.
    ct.outbound(&seg(&mut b, (C, 1), (MX, 25), "fin", 8, 101), relay(), t0 + Duration::from_secs(2)).unwrap();
    let later = t0 + Duration::from_secs(2) + CLOSING_TIMEOUT + Duration::from_secs(1);
    assert!(half_open(&mut ct, forged(0), 9, 100, later).is_ok());
    assert!(ct.len() <= 4);
}

#[test]
fn one_subscriber_holds_at_most_its_share() {
    let mut ct = Conntrack::new(16, 3);
    let t0 = Instant::now();
    let mut b = Vec::new();
    for port in 0..3 {
        assert!(ct.outbound(&seg(&mut b, (C, 1000 + port), (MX, 25), "syn", 7, 0), relay(), t0).is_ok());
    }
    let fourth = seg(&mut b, (C, 2000), (MX, 25), "syn", 7, 0);
    assert_eq!(ct.outbound(&fourth, relay(), t0), Err(CtError::SourceFull));
    // A retransmitted SYN of a flow it holds is not a new flow.
    assert!(ct.outbound(&seg(&mut b, (C, 1000), (MX, 25), "syn", 7, 0), relay(), t0).is_ok());
    // Another subscriber is not affected.
    assert!(ct.outbound(&seg(&mut b, ([100, 64, 1, 11], 2000), (MX, 25), "syn", 7, 0), relay(), t0).is_ok());
    assert_eq!((ct.flows_of(C.into()), ct.len()), (3, 4));
    // Once its half-open flows expire, the subscriber gets its share back.
    let later = t0 + SYN_TIMEOUT + Duration::from_secs(1);
    let fourth = seg(&mut b, (C, 2000), (MX, 25), "syn", 7, 0);
    assert!(ct.outbound(&fourth, relay(), later).is_ok());
    assert_eq!(ct.flows_of(C.into()), 1);
}

/// The flood at a small scale: ten times the bound of forged SYNs,
/// each answered by the relay, with real connections opened between them.
/// Every real one that completes its handshake before the bound of newer
/// SYNs arrives is assured and stays; the table never refuses.
#[test]
fn forged_flood_past_the_bound_leaves_room_for_real_connections() {
    const MAX: usize = 64;
    let mut ct = Conntrack::new(MAX, 16);
    let t0 = Instant::now();
    let mut real = Vec::new();
    for i in 0..10 * MAX as u32 {
        let now = t0 + Duration::from_millis(u64::from(i));
        half_open(&mut ct, forged(i), 40000, 1000 + i, now).unwrap();
        if i % 50 == 25 {
            let port = 30000 + i as u16;
            handshake(&mut ct, C, port, 7 * i, now).unwrap();
            real.push(port);
        }
        assert!(ct.len() <= MAX);
    }
    for port in &real {
        assert_eq!(ct.assured(C.into(), *port), Some(true), "real connection from port {port}");
    }
    // The unassured ones are the newest forged flows.
    let unassured = ct.len() - real.len();
    assert_eq!(ct.assured(forged(10 * MAX as u32 - 1).into(), 40000), Some(false));
    assert_eq!(ct.assured(forged(10 * MAX as u32 - 1 - unassured as u32).into(), 40000), None);
}

/// The list of unassured flows stays consistent with the slots through
/// every kind of change (a model check over a scripted mix).
#[test]
fn the_unassured_list_matches_the_flows() {
    let mut ct = Conntrack::new(32, 4);
    let t0 = Instant::now();
    let mut b = Vec::new();
    let mut x: u32 = 12345;
    for step in 0..20_000u32 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let now = t0 + Duration::from_millis(u64::from(step) * 7);
        let c = forged((x >> 8) % 40);
        let port = ((x >> 16) % 3) as u16;
        let _ = match (x >> 20) % 6 {
            0 | 1 => ct.outbound(&seg(&mut b, (c, port), (MX, 25), "syn", 7, 0), relay(), now).map(|_| ()),
            2 => ct
                .inbound(&seg(&mut b, (RELAY, 25), (c, port), "synack", 100, 8), now)
                .map(|_| ())
                .ok_or(CtError::NoFlow),
            3 => ct.outbound(&seg(&mut b, (c, port), (MX, 25), "ack", 8, 101), relay(), now).map(|_| ()),
            4 => ct.outbound(&seg(&mut b, (c, port), (MX, 25), "fin", 8, 101), relay(), now).map(|_| ()),
            _ => ct.inbound(&seg(&mut b, (RELAY, 25), (c, port), "rst", 0, 0), now).map(|_| ()).ok_or(CtError::NoFlow),
        };
        // Walk the list both ways; it holds exactly the unassured live flows.
        let mut forward = Vec::new();
        let mut i = ct.oldest;
        while i != NIL {
            forward.push(i);
            assert!(forward.len() <= ct.max, "a cycle in the list");
            i = ct.slots[i as usize].next;
        }
        let mut backward = Vec::new();
        let mut i = ct.newest;
        while i != NIL {
            backward.push(i);
            assert!(backward.len() <= ct.max, "a cycle in the list");
            i = ct.slots[i as usize].prev;
        }
        backward.reverse();
        assert_eq!(forward, backward, "step {step}");
        let mut expect: Vec<u32> = ct.index.values().copied().filter(|&i| !ct.slots[i as usize].assured).collect();
        expect.sort_unstable();
        forward.sort_unstable();
        assert_eq!(forward, expect, "step {step}");
        let counted: usize = ct.per_source.values().map(|&n| n as usize).sum();
        assert_eq!(counted, ct.index.len(), "step {step}");
        assert!(ct.index.len() <= ct.max && ct.slots.len() <= ct.max);
    }
}
