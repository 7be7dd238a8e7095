use super::*;

#[test]
fn subscriber_names_round_trip() {
    for text in ["100.64.1.10", "2001:db8:1:2::/64"] {
        let key = parse_subscriber(text).expect(text);
        assert_eq!(subscriber_name(key), text);
    }
    assert_eq!(parse_subscriber("2001:db8:1:2::99"), parse_subscriber("2001:db8:1:2::/64"));
    assert_eq!(parse_subscriber("2001:db8:1:2:3::/80"), parse_subscriber("2001:db8:1:2::/64"));
    assert_eq!(parse_subscriber("100.64.1.10/32"), parse_subscriber("100.64.1.10"));
    for bad in ["", "100.64.1.0/24", "2001:db8::/48", "nobody"] {
        assert_eq!(parse_subscriber(bad), None, "{bad}");
    }
}

#[test]
fn quarantine_holds_until_its_deadline_or_release() {
    let q = Quarantine::new(2);
    let t0 = Instant::now();
    let a: IpAddr = "100.64.1.10".parse().unwrap();
    let b: IpAddr = "2001:db8:1:2::7".parse().unwrap();
    assert!(!q.holds(a, t0));
    assert_eq!(q.start(subscriber_key(a), t0 + Duration::from_secs(10)), Ok(true));
    assert!(q.holds(a, t0));
    assert!(q.holds(a, t0 + Duration::from_millis(9_999)));
    assert!(!q.holds(a, t0 + Duration::from_secs(10)), "ends exactly at its deadline");
    assert!(!q.holds(b, t0));
    // The whole /64 is one subscriber.
    assert_eq!(q.start(subscriber_key(b), t0 + Duration::from_secs(5)), Ok(true));
    assert!(q.holds("2001:db8:1:2::99".parse().unwrap(), t0));
    assert_eq!(q.start(parse_subscriber("100.64.9.9").unwrap(), t0), Err(QuarantineRefused::Full));
    // A second start keeps the later deadline.
    assert_eq!(q.start(subscriber_key(b), t0 + Duration::from_secs(1)), Ok(false));
    assert_eq!(q.until(subscriber_key(b)), Some(t0 + Duration::from_secs(5)));
    assert_eq!(q.expire(t0 + Duration::from_secs(5)), vec![subscriber_key(b)]);
    assert_eq!(q.len(), 1);
    assert!(q.release(subscriber_key(a)));
    assert!(!q.release(subscriber_key(a)));
    assert!(q.is_empty());
    assert!(!q.holds(a, t0));
}

fn attempts(src: &str, n: u32, at: Instant, monitor: bool) -> Vec<Attempt> {
    (0..n)
        .map(|i| Attempt {
            at,
            src: src.parse().unwrap(),
            dst: IpAddr::V4(Ipv4Addr::new(203, 0, 113, (i % 200) as u8)),
            monitor,
        })
        .collect()
}

#[test]
fn crossing_a_threshold_reports_once_and_quarantines_when_asked() {
    let mut settings = AbuseSettings::default();
    settings.thresholds.attempts = 5;
    settings.thresholds.destinations = 1000;
    settings.on_suspect = OnSuspect::Quarantine;
    settings.quarantine_for = Duration::from_secs(30);
    let q = Arc::new(Quarantine::new(16));
    let abuse = Abuse::new(settings, Arc::clone(&q));
    let t0 = Instant::now();
    let mut out = Vec::new();
    abuse.record(attempts("100.64.1.10", 4, t0, false), &mut out);
    assert!(out.is_empty());
    abuse.record(attempts("100.64.1.10", 10, t0, false), &mut out);
    let key = parse_subscriber("100.64.1.10").unwrap();
    assert!(matches!(out[0], AbuseEvent::Suspected { key: k, attempts: 5, monitor: false, .. } if k == key), "{out:?}");
    assert_eq!(
        out[1],
        AbuseEvent::QuarantineStarted { key, duration: Duration::from_secs(30), cause: QuarantineCause::Threshold }
    );
    assert_eq!(out.len(), 2, "once per window");
    assert!(q.holds("100.64.1.10".parse().unwrap(), t0));
    let top = abuse.top(10, t0, false);
    assert_eq!((top[0].standing, top[0].entry.attempts), (Standing::Quarantined, 14));
    // Would-be blocks of monitor are reported but quarantine nobody.
    out.clear();
    abuse.record(attempts("100.64.1.11", 5, t0, true), &mut out);
    assert!(matches!(out.as_slice(), [AbuseEvent::Suspected { monitor: true, .. }]), "{out:?}");
    assert_eq!(abuse.top(10, t0, false)[1].standing, Standing::Suspected);
    assert_eq!(abuse.gauges(t0), (2, 2, 1));
    // The quarantine ends at its time, once.
    out.clear();
    abuse.expire(t0 + Duration::from_secs(29), &mut out);
    assert!(out.is_empty());
    abuse.expire(t0 + Duration::from_secs(30), &mut out);
    assert_eq!(out, vec![AbuseEvent::QuarantineEnded { key, end: QuarantineEnd::Expired }]);
    // By hand: quarantine, release.
    assert!(matches!(
        abuse.quarantine(key, t0, None),
        AbuseEvent::QuarantineStarted { cause: QuarantineCause::Manual, .. }
    ));
    assert_eq!(abuse.release(key), Some(AbuseEvent::QuarantineEnded { key, end: QuarantineEnd::Released }));
    assert_eq!(abuse.release(key), None);
}

#[test]
fn lookup_finds_a_subscriber_in_the_table_or_in_quarantine() {
    let abuse = Abuse::new(AbuseSettings::default(), Arc::new(Quarantine::new(16)));
    let t0 = Instant::now();
    abuse.record(attempts("100.64.1.10", 3, t0, false), &mut Vec::new());
    let held = abuse.lookup(parse_subscriber("100.64.1.10").unwrap(), t0).expect("in the table");
    assert_eq!((held.standing, held.entry.map(|e| e.attempts)), (Standing::Normal, Some(3)));
    let other = parse_subscriber("100.64.1.11").unwrap();
    assert_eq!(abuse.lookup(other, t0), None);
    let _ = abuse.quarantine(other, t0, Some(Duration::from_secs(5)));
    let held = abuse.lookup(other, t0).expect("in quarantine");
    assert_eq!((held.entry, held.standing), (None, Standing::Quarantined));
    assert_eq!(held.quarantine_until, Some(t0 + Duration::from_secs(5)));
    assert_eq!(abuse.lookup(other, t0 + Duration::from_secs(5)), None, "over");
}
