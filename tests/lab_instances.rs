//! `op25b lab up --instances 2`: two op25b instances behind the kernel's
//! resilient nexthop groups, hashed on the subscriber's address. Which
//! instance carries a subscriber is read from the instances' own counters
//! (each probe moves the forwarded counters of both directions and the
//! blocked connections of exactly one). Then one instance is killed
//! (SIGKILL) while port 25 is probed without pause from the subscribers it
//! carried: none gets through at any moment, the kernel drops its nexthops,
//! its subscribers reach 587 through the other; the time from the kill to
//! the first such connection is printed, bounded only by a generous limit
//! that means "failed". Then `up` again brings it back; the merged `op25b
//! top` of both instances is the sum of their own tables; a crash of all is
//! removed by `down`. Needs root; fails loudly without it. Everything is
//! removed at the end, also on failure.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use op25b::lab::def;
use op25b::lab::state::Proc;
use op25b::lab::{netns, nexthop};
use serde_json::Value;

mod labkit;
use labkit::{op25b, text, TestLab};

/// Beyond this, the failover did not happen: a bound, not a measurement.
const FAILOVER_LIMIT: Duration = Duration::from_secs(30);

/// A lab of two instances with the SMTP servers, of a name of its own; `down` on drop.
struct Lab(TestLab);

impl std::ops::Deref for Lab {
    type Target = TestLab;
    fn deref(&self) -> &TestLab {
        &self.0
    }
}

impl Lab {
    fn up() -> Lab {
        Lab(TestLab::up(&["--instances", "2", "--servers"]))
    }

    fn socket(&self, k: usize) -> String {
        self.state()["instances"][k]["socket"].as_str().expect("an instance's socket").to_string()
    }

    /// Counters of instance `k`: forwarded outbound, forwarded inbound, blocked connections.
    fn counters(&self, k: usize) -> [u64; 3] {
        let out = op25b(&["stats", "--json", "--socket", &self.socket(k)]);
        assert!(out.status.success(), "stats of instance {k}: {}", text(&out));
        let v: Value = serde_json::from_slice(&out.stdout).expect("stats --json is JSON");
        let c = &v["stats"]["counters"];
        ["forwarded_outbound", "forwarded_inbound", "op25b_blocked_connections"]
            .map(|k| c[k].as_u64().unwrap_or_else(|| panic!("no counter {k}")))
    }

    /// The instance that carries `src`, both ways: 587 answers through it, 25
    /// is refused by it, and the other instance counts nothing meanwhile.
    /// A dead instance (`live[k]` false) counts nothing.
    fn carrier(&self, src: IpAddr, live: [bool; 2]) -> usize {
        let counters = || [0, 1].map(|k| if live[k] { self.counters(k) } else { [0; 3] });
        let before = counters();
        let banner = self.within(move || submission(src, Duration::from_secs(3)));
        assert!(banner.as_ref().is_ok_and(|b| b.starts_with("220 ")), "{src} -> 587: {banner:?}");
        let blocked = self.within(move || connect(src, 25, Duration::from_secs(3)).map(drop));
        assert!(
            blocked.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused),
            "{src} -> 25 must be refused by OP25B: {blocked:?}"
        );
        let after = counters();
        let moved: Vec<[u64; 3]> = (0..2).map(|k| [0, 1, 2].map(|i| after[k][i] - before[k][i])).collect();
        let carriers: Vec<usize> = (0..2).filter(|&k| moved[k].iter().all(|&d| d > 0)).collect();
        let idle: Vec<usize> = (0..2).filter(|&k| moved[k] == [0, 0, 0]).collect();
        assert!(
            carriers.len() == 1 && idle.len() == 1,
            "{src}: counters moved by {moved:?}: not one instance both ways"
        );
        carriers[0]
    }

    fn within<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        netns::within(&self.names.sub_ns, || Ok(f())).expect("entering the subscriber namespace")
    }

    fn map(&self, subs: &[IpAddr], live: [bool; 2]) -> Vec<usize> {
        subs.iter().map(|&s| self.carrier(s, live)).collect()
    }
}

fn mx(src: IpAddr) -> IpAddr {
    def::ip(if src.is_ipv4() { def::MX4 } else { def::MX6 })
}

fn connect(src: IpAddr, port: u16, timeout: Duration) -> std::io::Result<TcpStream> {
    let dst = SocketAddr::new(mx(src), port);
    let sock = socket2::Socket::new(socket2::Domain::for_address(dst), socket2::Type::STREAM, None)?;
    sock.bind(&SocketAddr::new(src, 0).into())?;
    sock.connect_timeout(&dst.into(), timeout)?;
    Ok(sock.into())
}

/// The MX's greeting on 587, read through whichever instance carries `src`.
fn submission(src: IpAddr, timeout: Duration) -> std::io::Result<String> {
    let stream = connect(src, 587, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line.trim_end().to_string())
}

/// The port-25 prober probes each subscriber once per round, its SYNs spread
/// evenly over the round. The lab's reply budget per address is 10 RSTs a
/// second with a burst of 20: 50 ms rounds (20 a second) are for the failover
/// only (under a second); over longer, 150 ms, so that a refused SYN is
/// answered, not dropped by the rate limit.
const FAST_ROUND: Duration = Duration::from_millis(50);
/// See [`FAST_ROUND`].
const SLOW_ROUND: Duration = Duration::from_millis(150);

/// One SYN of the port-25 prober: when it was sent, and whether it was
/// refused (OP25B's RST), went unanswered, or got through.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    Refused,
    Unanswered,
    Through,
}

/// Port 25 probed from each of `subs` on a thread of its own (an unanswered
/// SYN holds up only its own subscriber) until `stop`: one SYN per `round`,
/// the subscribers' SYNs staggered.
fn probe_25(
    round: Duration,
    ns: String,
    subs: Vec<IpAddr>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<(Instant, IpAddr, Outcome)>> {
    std::thread::spawn(move || {
        let n = subs.len().max(1) as u32;
        let threads: Vec<_> = subs
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let (ns, stop) = (ns.clone(), stop.clone());
                std::thread::spawn(move || {
                    netns::within(&ns, || {
                        std::thread::sleep(round / n * i as u32);
                        let mut seen = Vec::new();
                        while !stop.load(Ordering::Relaxed) {
                            let sent = Instant::now();
                            let outcome = match connect(s, 25, Duration::from_millis(100)) {
                                Ok(_) => Outcome::Through,
                                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Outcome::Refused,
                                Err(_) => Outcome::Unanswered,
                            };
                            seen.push((sent, s, outcome));
                            std::thread::sleep(round.saturating_sub(sent.elapsed()));
                        }
                        Ok(seen)
                    })
                    .expect("entering the subscriber namespace")
                })
            })
            .collect();
        threads.into_iter().flat_map(|t| t.join().expect("a port-25 prober")).collect()
    })
}

/// The SYNs sent between `from` and `to`: (sent, refused, unanswered).
fn tally(seen: &[(Instant, IpAddr, Outcome)], from: Instant, to: Instant) -> (usize, usize, usize) {
    let window: Vec<Outcome> = seen.iter().filter(|(t, _, _)| (from..=to).contains(t)).map(|s| s.2).collect();
    let n = |o| window.iter().filter(|&&w| w == o).count();
    (window.len(), n(Outcome::Refused), n(Outcome::Unanswered))
}

fn through(seen: &[(Instant, IpAddr, Outcome)]) -> Vec<String> {
    seen.iter().filter(|s| s.2 == Outcome::Through).map(|(_, s, _)| s.to_string()).collect()
}

/// Watches, from the kill at `t0`, every millisecond: the victim's process
/// gone, its devices gone, its nexthops out of both groups of both namespaces.
fn watch_death(lab: &Lab, victim: Proc, t0: Instant) -> std::thread::JoinHandle<[Duration; 3]> {
    let names = lab.names.clone();
    let k = lab.state()["instances"]
        .as_array()
        .and_then(|a| a.iter().position(|i| i["op25b"]["pid"].as_u64() == Some(u64::from(victim.pid))))
        .expect("the victim in the state file");
    let inst = names.instance(k);
    let ids = def::nexthop_ids(k);
    std::thread::spawn(move || {
        let mut seen: [Option<Duration>; 3] = [None; 3];
        while seen.iter().any(Option::is_none) {
            assert!(t0.elapsed() < FAILOVER_LIMIT, "the victim's death not seen: {seen:?}");
            let now = t0.elapsed();
            let link = |ns: &str, dev: &str| op25b::lab::net::link_up(ns, dev).unwrap_or(true);
            let in_group = |ns: &str, f: usize| {
                nexthop::members(ns, def::NH_GROUPS[f]).ok().flatten().is_some_and(|m| m.contains(&ids[f]))
            };
            let states = [
                !victim.alive(),
                !link(&names.sub_ns, &inst.sub_tun) && !link(&names.inet_ns, &inst.up_tun),
                [&names.sub_ns, &names.inet_ns].iter().all(|ns| !in_group(ns, 0) && !in_group(ns, 1)),
            ];
            for (s, done) in seen.iter_mut().zip(states) {
                if s.is_none() && done {
                    *s = Some(now);
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        seen.map(Option::unwrap_or_default)
    })
}

fn group(lab: &Lab, ns: &str, family: usize) -> Option<Vec<u32>> {
    nexthop::members(ns, def::NH_GROUPS[family]).unwrap_or_else(|e| panic!("{}: {e}", lab.names.name))
}

fn show(subs: &[IpAddr], map: &[usize]) -> String {
    subs.iter().zip(map).map(|(s, k)| format!("{s}->{k}")).collect::<Vec<_>>().join(" ")
}

fn pid(lab: &Lab, k: usize) -> i32 {
    lab.state()["instances"][k]["op25b"]["pid"].as_i64().expect("a pid") as i32
}

/// Who carries whom, before the kill.
struct Spread {
    subs: Vec<IpAddr>,
    first: Vec<usize>,
    victim: usize,
    survivor: usize,
    /// The victim's subscribers.
    moved: Vec<IpAddr>,
}

#[test]
fn subscribers_spread_over_two_instances_and_move_when_one_is_killed() {
    let lab = Lab::up();
    let st = lab.lab(&["status"]);
    assert!(st.status.success(), "{}", text(&st));
    assert!(text(&st).contains("members [100, 101]") && text(&st).contains("members [200, 201]"), "{}", text(&st));
    let spread = spread(&lab);
    let m = spread.moved[0];
    quarantine_saved(&lab, spread.victim, m);
    failover(&lab, &spread);
    assert!(!quarantined(&lab, spread.survivor).contains(&m.to_string()), "{m} quarantined on the survivor");
    bring_back(&lab, &spread);
    // Nothing from a dynamic subscriber ever reached the MX on port 25.
    let reached: Vec<String> = op25b::lab::smtp::read_connections(&lab.names.state_dir())
        .into_iter()
        .filter(|c| c.local_port == 25 && c.server == "mx")
        .map(|c| format!("{}:{}", c.peer, c.peer_port))
        .collect();
    assert!(reached.is_empty(), "connections to the MX on port 25: {reached:?}");
    // The instance that came back restored its quarantine from its own file.
    let log = std::fs::read_to_string(lab.names.instance_dir(spread.victim).join("op25b.log")).unwrap_or_default();
    assert!(quarantined(&lab, spread.victim).contains(&m.to_string()), "{m}'s quarantine not restored:\n{log}");
    assert!(!quarantined(&lab, spread.survivor).contains(&m.to_string()));
    merged_top_is_the_sum(&lab, &spread);
    crash_and_down(&lab);
}

/// Every subscriber on one instance both ways, both instances used; the
/// victim is the instance of the first subscriber.
fn spread(lab: &Lab) -> Spread {
    let subs: Vec<IpAddr> = (0..def::SPREAD_SUBSCRIBERS).flat_map(def::spread_subscriber).collect();
    let first = lab.map(&subs, [true; 2]);
    eprintln!("spread: {}", show(&subs, &first));
    assert!((0..2).all(|k| first.contains(&k)), "one instance carries everyone: {}", show(&subs, &first));
    let victim = first[0];
    let moved = subs.iter().zip(&first).filter(|(_, &k)| k == victim).map(|(&s, _)| s).collect();
    Spread { victim, survivor: 1 - victim, moved, first, subs }
}

/// Quarantines `m` on instance `k` and waits until its state file holds it.
fn quarantine_saved(lab: &Lab, k: usize, m: IpAddr) {
    let q = op25b(&["quarantine", &m.to_string(), "--socket", &lab.socket(k)]);
    assert!(q.status.success(), "{}", text(&q));
    assert!(quarantined(lab, k).contains(&m.to_string()));
    let saved = lab.names.instance_dir(k).join("abuse.state");
    let holds = || -> bool {
        let v: Value =
            std::fs::read_to_string(&saved).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
        v["quarantines"].as_array().is_some_and(|q| q.iter().any(|q| q["subscriber"] == m.to_string().as_str()))
    };
    let t = Instant::now();
    while !holds() {
        assert!(t.elapsed() < Duration::from_secs(10), "{} never held the quarantine", saved.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGKILL of the victim, port 25 probed from its subscribers throughout;
/// the time until one of them reaches 587 again.
fn failover(lab: &Lab, sp: &Spread) {
    let m = sp.moved[0];
    let stop = Arc::new(AtomicBool::new(false));
    let prober = probe_25(FAST_ROUND, lab.names.sub_ns.clone(), sp.moved.clone(), stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    // A connection open through the victim before the kill.
    let open = lab.within(move || {
        let stream = connect(m, 587, Duration::from_secs(3))?;
        stream.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut r = BufReader::new(stream.try_clone()?);
        let mut greeting = String::new();
        r.read_line(&mut greeting)?;
        Ok::<_, std::io::Error>((stream, r, greeting))
    });
    let (mut stream, mut reader, greeting) = open.unwrap_or_else(|e| panic!("{m} -> 587: {e}"));
    assert!(greeting.starts_with("220 "), "{greeting}");
    let victim_proc = Proc::of(pid(lab, sp.victim) as u32).expect("the victim runs");
    let t0 = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim_proc.pid as i32), nix::sys::signal::Signal::SIGKILL)
        .expect("SIGKILL");
    let watcher = watch_death(lab, victim_proc, t0);
    let failover = loop {
        assert!(t0.elapsed() < FAILOVER_LIMIT, "{m} reached no 587 within {FAILOVER_LIMIT:?} of the kill");
        // A short connect timeout: a SYN lost in the dying device is not
        // retransmitted for a second; a new attempt follows at once instead.
        let tried = lab.within(move || {
            let s = connect(m, 587, Duration::from_millis(25))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut line = String::new();
            BufReader::new(s).read_line(&mut line)?;
            Ok::<_, std::io::Error>(line)
        });
        if tried.is_ok_and(|b| b.starts_with("220 ")) {
            break t0.elapsed();
        }
    };
    let [exited, devices, dropped] = watcher.join().expect("the watcher");
    stop.store(true, Ordering::Relaxed);
    let seen = prober.join().expect("the port-25 prober");
    assert!(through(&seen).is_empty(), "port 25 got through during the failover: {:?}", through(&seen));
    let (sent, refused, unanswered) = tally(&seen, t0, t0 + failover);
    let survivor_ids = def::nexthop_ids(sp.survivor);
    for (ns, family) in [&lab.names.sub_ns, &lab.names.inet_ns].into_iter().flat_map(|n| [(n, 0), (n, 1)]) {
        assert_eq!(group(lab, ns, family), Some(vec![survivor_ids[family]]), "group {family} in {ns}");
    }
    // It goes on through the survivor: forwarding keeps no state of it.
    stream.write_all(b"EHLO moved.example\r\n").expect("writing on the open connection");
    let mut reply = String::new();
    reader.read_line(&mut reply).expect("the open connection answers after the failover");
    assert!(reply.starts_with("250"), "the open connection after the failover: {reply:?}");
    let after = lab.map(&sp.subs, [sp.survivor == 0, sp.survivor == 1]);
    assert!(after.iter().all(|&k| k == sp.survivor), "after the kill: {}", show(&sp.subs, &after));
    eprintln!(
        "FAILOVER: instance {} killed; its process gone after {exited:?}, its devices after {devices:?}, \
         its nexthops after {dropped:?}; {m}'s first 587 connection after {failover:?}; port 25 from its {} \
         subscribers between the kill and then: {sent} SYNs, {refused} refused, {unanswered} unanswered, none \
         through ({} in all, none through)",
        sp.victim,
        sp.moved.len(),
        seen.len()
    );
}

/// `up` again starts the victim and gives it its nexthops, port 25 probed
/// throughout; after the idle timer, both instances carry subscribers again.
fn bring_back(lab: &Lab, sp: &Spread) {
    let stop = Arc::new(AtomicBool::new(false));
    let prober = probe_25(SLOW_ROUND, lab.names.sub_ns.clone(), sp.subs.clone(), stop.clone());
    let t0 = Instant::now();
    let again = lab.lab(&["up", "--instances", "2", "--servers"]);
    stop.store(true, Ordering::Relaxed);
    assert!(again.status.success() && text(&again).contains("starting it again"), "{}", text(&again));
    let seen = prober.join().expect("the port-25 prober");
    assert!(through(&seen).is_empty(), "port 25 got through while the instance came back: {:?}", through(&seen));
    let (sent, refused, unanswered) = tally(&seen, t0, Instant::now());
    let [back, kept] = [def::nexthop_ids(sp.victim), def::nexthop_ids(sp.survivor)];
    for (ns, family) in [&lab.names.sub_ns, &lab.names.inet_ns].into_iter().flat_map(|n| [(n, 0), (n, 1)]) {
        let mut both = vec![back[family], kept[family]];
        both.sort();
        assert_eq!(group(lab, ns, family), Some(both), "group {family} in {ns} after up");
    }
    // Idle buckets move to the instance that came back after the idle timer.
    std::thread::sleep(Duration::from_secs(u64::from(def::NH_IDLE_TIMER_SECS) + 1));
    let last = lab.map(&sp.subs, [true; 2]);
    let on_victim = |s: &IpAddr| sp.subs.iter().position(|x| x == s).is_some_and(|i| last[i] == sp.victim);
    let returned = sp.moved.iter().filter(|s| on_victim(s)).count();
    let newcomers = sp.subs.iter().zip(&sp.first).filter(|(s, &f)| f != sp.victim && on_victim(s)).count();
    eprintln!(
        "BACK: port 25 during `up`: {sent} SYNs, {refused} refused, {unanswered} unanswered, none through; \
         after {} s idle: {}; {returned} of {} moved subscribers returned, {newcomers} others moved to it",
        def::NH_IDLE_TIMER_SECS,
        show(&sp.subs, &last),
        sp.moved.len()
    );
    assert!((0..2).all(|k| last.contains(&k)), "the instance that came back carries nobody: {}", show(&sp.subs, &last));
}

/// `op25b top --json` of these sockets: its rows by subscriber.
fn top_rows(sockets: &[String]) -> std::collections::BTreeMap<String, Value> {
    let mut args = vec!["top", "--json", "-n", "100"];
    for s in sockets {
        args.extend(["--socket", s.as_str()]);
    }
    let out = op25b(&args);
    assert!(out.status.success(), "op25b {}: {}", args.join(" "), text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("top --json is JSON");
    let rows = v["top"].as_array().unwrap_or_else(|| panic!("no rows: {v}"));
    rows.iter().map(|r| (r["subscriber"].as_str().expect("a subscriber").to_string(), r.clone())).collect()
}

/// The merged `top` of both instances is, subscriber by subscriber, the sum
/// of their own tables. The moved subscribers are held by both: the victim
/// counted them before the kill (its table restored from its state file) and
/// after their return, the survivor in between.
fn merged_top_is_the_sum(lab: &Lab, sp: &Spread) {
    let sockets = [lab.socket(0), lab.socket(1)];
    let own = [top_rows(&sockets[..1]), top_rows(&sockets[1..])];
    let merged = top_rows(&sockets);
    let mut names: Vec<&String> = own[0].keys().chain(own[1].keys()).collect();
    names.sort();
    names.dedup();
    assert_eq!(merged.keys().collect::<Vec<_>>(), names, "the merged rows are the union of the instances'");
    let mut both = 0;
    for who in names {
        let sum =
            |field: &str| own.iter().filter_map(|t| t.get(who)).map(|r| r[field].as_u64().unwrap_or(0)).sum::<u64>();
        let row = &merged[who];
        for field in ["attempts", "total"] {
            assert_eq!(
                row[field].as_u64(),
                Some(sum(field)),
                "{who} {field}: {row} from {:?}",
                [&own[0].get(who), &own[1].get(who)]
            );
        }
        both += usize::from(own.iter().all(|t| t.contains_key(who)));
    }
    assert!(both > 0, "no subscriber held by both instances: {merged:?}");
    eprintln!(
        "MERGED TOP: {} subscribers, {both} held by both instances (the {} moved and back), each row the sum of its instances' rows",
        merged.len(),
        sp.moved.len()
    );
}

/// A crash of everything: status says so, down removes it all, twice.
fn crash_and_down(lab: &Lab) {
    let state = lab.state();
    let pids = [&state["instances"][0]["op25b"], &state["instances"][1]["op25b"], &state["servers"]]
        .map(|p| Proc { pid: p["pid"].as_u64().expect("a pid") as u32, start: p["start"].as_u64().expect("a start") });
    for p in pids {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid as i32), nix::sys::signal::Signal::SIGKILL)
            .expect("SIGKILL");
    }
    let t = Instant::now();
    while pids.iter().any(Proc::alive) {
        assert!(t.elapsed() < Duration::from_secs(10), "the lab's processes outlived SIGKILL");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = lab.lab(&["status"]);
    assert_eq!(status.status.code(), Some(1), "a crashed lab is not up: {}", text(&status));
    assert!(text(&status).contains("op25b instance 0: NOT running"), "{}", text(&status));
    for _ in 0..2 {
        let out = lab.lab(&["down"]);
        assert!(out.status.success(), "{}", text(&out));
    }
    assert!(!netns::exists(&lab.names.sub_ns) && !netns::exists(&lab.names.inet_ns));
    assert!(!lab.names.state_dir().exists(), "{} left behind", lab.names.state_dir().display());
}

/// The subscribers instance `k` holds in quarantine.
fn quarantined(lab: &Lab, k: usize) -> Vec<String> {
    let out = op25b(&["top", "--json", "--socket", &lab.socket(k)]);
    assert!(out.status.success(), "top of instance {k}: {}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("top --json is JSON");
    let list = v["quarantined"].as_array().map(Vec::as_slice).unwrap_or_default();
    list.iter().filter_map(|q| q["subscriber"].as_str().map(str::to_string)).collect()
}
