//! One abuse view over two running op25b instances, each between its own
//! namespaces, with real blocked SYNs: one subscriber tries port 25 through
//! both (as after a failover), the others through one each. `op25b top
//! --socket A --socket B` shows each subscriber once with the sum of the
//! two tables' figures and the instances that hold it; `quarantine` and
//! `release` act where the subscriber is held (or everywhere with --all) and
//! say so; with one instance stopped, `top` shows the other, names the
//! silent one and exits 2.

#[allow(dead_code)]
mod common;

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A second subscriber, behind instance A only.
const ONLY_A: &str = "100.64.1.11";
/// A third subscriber, behind instance B only.
const ONLY_B: &str = "100.64.1.12";
/// A subscriber neither instance has seen.
const NOBODY: &str = "100.64.1.99";
const WAIT: Duration = Duration::from_secs(10);

/// An op25b instance: a lab of its own with a control socket and abuse
/// handling, and `extra` a second subscriber address in it.
fn instance(extra: &str) -> Lab {
    let lab = Lab::start(
        LabOptions::edit(|p| {
            p.unlimited_replies()
                .abuse("window", "\"60s\"")
                .abuse("threshold", 100)
                .abuse("destinations_threshold", 100)
                .abuse("quarantine_for", "\"10m\"")
        })
        .with_socket(),
    );
    lab.sub_ip(&["addr", "add", &format!("{extra}/32"), "dev", "lo"]);
    lab
}

/// `n` connection attempts from `src` to port 25 outside, each refused at once.
fn blocked_syns(lab: &Lab, src: &str, n: usize) {
    for _ in 0..n {
        match lab.connect(Some(ip(src)), sa(MX4, 25), Duration::from_secs(3)) {
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
            other => panic!("{src} -> port 25: not refused at once: {other:?}"),
        }
    }
}

/// `op25b top --json` of `sockets`, with its exit code.
fn top(sockets: &[&Path]) -> (i32, Value) {
    let (code, out, err) = op25b_at(&["top", "--json", "-n", "100"], sockets);
    let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("top --json: {e}: {out}{err}"));
    (code, v)
}

/// Subscriber -> attempts of a `top` answer's rows.
fn attempts(v: &Value) -> BTreeMap<String, u64> {
    let rows = v["top"].as_array().unwrap_or_else(|| panic!("rows: {v}"));
    rows.iter().map(|r| (r["subscriber"].as_str().unwrap().to_string(), r["attempts"].as_u64().unwrap())).collect()
}

/// Waits (bounded) until the instance's table shows `want` (its abuse
/// thread takes the attempts in batches).
fn wait_table(socket: &Path, want: &BTreeMap<String, u64>) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (code, v) = top(&[socket]);
        assert_eq!(code, 0, "{v}");
        if attempts(&v) == *want {
            return v;
        }
        assert!(Instant::now() < deadline, "{} never showed {want:?}: {v}", socket.display());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The subscribers an instance holds in quarantine.
fn quarantined(socket: &Path) -> Vec<String> {
    let (code, v) = top(&[socket]);
    assert_eq!(code, 0, "{v}");
    v["quarantined"].as_array().unwrap().iter().map(|q| q["subscriber"].as_str().unwrap().to_string()).collect()
}

fn table(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// The instances' sockets, as `op25b --socket` names them.
fn names(sa_: &Path, sb: &Path) -> (String, String) {
    (sa_.display().to_string(), sb.display().to_string())
}

/// The row of subscriber `who` in a `top` answer.
fn row(m: &Value, who: &str) -> Option<Value> {
    m["top"].as_array().unwrap().iter().find(|r| r["subscriber"] == who).cloned()
}

/// The instances that hold a row.
fn on(r: &Value) -> Vec<String> {
    r["instances"].as_array().unwrap().iter().map(|i| i["instance"].as_str().unwrap().to_string()).collect()
}

/// The merged view of A's table `ta` and B's `tb` is their sum, row by row,
/// in JSON and in text, and its heaviest row is the heaviest sum.
fn merged_top_is_the_sum(sa_: &Path, sb: &Path, ta: &Value, tb: &Value) {
    let (code, m) = top(&[sa_, sb]);
    assert_eq!(code, 0, "{m}");
    println!("merged: {m:#}");
    let mut sum = attempts(ta);
    for (who, n) in attempts(tb) {
        *sum.entry(who).or_default() += n;
    }
    assert_eq!(attempts(&m), sum);
    assert_eq!(attempts(&m), table(&[(DYN4, 7), (ONLY_A, 2), (ONLY_B, 5)]));
    let rows = m["top"].as_array().unwrap();
    assert_eq!(rows[0]["subscriber"], DYN4, "heaviest first");
    let (na, nb) = names(sa_, sb);
    assert_eq!(on(&rows[0]), [na.clone(), nb.clone()]);
    // Both tried the one server: the largest count, not the sum.
    assert_eq!(rows[0]["destinations"], 1, "{m}");
    for r in rows {
        let total: u64 = ta["top"]
            .as_array()
            .unwrap()
            .iter()
            .chain(tb["top"].as_array().unwrap())
            .filter(|x| x["subscriber"] == r["subscriber"])
            .map(|x| x["total"].as_u64().unwrap())
            .sum();
        assert_eq!(r["total"].as_u64(), Some(total), "{r}");
    }
    assert_eq!(on(&row(&m, ONLY_A).unwrap()), std::slice::from_ref(&na));
    assert_eq!(on(&row(&m, ONLY_B).unwrap()), std::slice::from_ref(&nb));
    assert_eq!(m["tracked"], 4, "{m}");
    assert_eq!(m["instances"].as_array().unwrap().iter().filter(|i| i["answered"] == true).count(), 2);
    // The text view: one line per instance, the holders of each row.
    let (code, text, err) = op25b_at(&["top"], &[sa_, sb]);
    assert_eq!(code, 0, "{text}{err}");
    println!("{text}");
    assert!(text.starts_with("op25b top over 2 of 2 instances: 4 tracked"), "{text}");
    assert!(text.lines().any(|l| l.starts_with(DYN4) && l.contains(" 7 ") && l.ends_with(" 1,2")), "{text}");
    assert!(text.lines().any(|l| l.starts_with(ONLY_B) && l.ends_with(" 2")), "{text}");

    // The heaviest one only: B's own heaviest is ONLY_B (5), but B is asked
    // for A's candidate too, so DYN4's sum (3 + 4) wins.
    let (code, out, err) = op25b_at(&["top", "--json", "-n", "1"], &[sa_, sb]);
    assert_eq!(code, 0, "{out}{err}");
    let one: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(attempts(&one), table(&[(DYN4, 7)]), "{one}");
}

/// The lookup the merge uses, as curl asks it of B; a bad one is a 400.
fn subscriber_lookup(sb: &Path) {
    let (status, v) =
        curl(sb, "POST", "/v1/subscribers", Some(&format!(r#"{{"subscribers": ["{ONLY_B}", "{ONLY_A}", "{DYN4}"]}}"#)));
    assert_eq!(status, 200, "{v}");
    let held: Vec<&str> =
        v["subscribers"].as_array().unwrap().iter().map(|r| r["subscriber"].as_str().unwrap()).collect();
    assert_eq!(held, [ONLY_B, DYN4], "{v}");
    assert_eq!(v["subscribers"][0]["attempts"], 5, "{v}");
    for bad in [r#"{"subscribers": ["8.8.8.0/24"]}"#, r#"{"subscribers": "100.64.1.10"}"#, "[]"] {
        let (status, v) = curl(sb, "POST", "/v1/subscribers", Some(bad));
        assert_eq!(status, 400, "{bad}: {v}");
        assert!(v["error"].is_string(), "{v}");
    }
}

/// Quarantine and release go to the instance that holds the subscriber (or
/// everywhere with --all), and say so.
fn quarantine_goes_where_the_subscriber_is(sa_: &Path, sb: &Path) {
    let (na, nb) = names(sa_, sb);
    let (code, out, err) = op25b_at(&["quarantine", ONLY_B], &[sa_, sb]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("{nb}: {ONLY_B} in quarantine for 10 min")), "{out}");
    assert!(out.contains(&format!("{na}: does not hold {ONLY_B}: left alone")), "{out}");
    assert_eq!((quarantined(sa_), quarantined(sb)), (vec![], vec![ONLY_B.to_string()]));
    // Held nowhere: nothing done, exit 1; with --all, on both.
    let (code, out, err) = op25b_at(&["quarantine", NOBODY], &[sa_, sb]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains(&format!("no instance holds {NOBODY}: nothing done")), "{err}");
    assert!(quarantined(sa_).is_empty());
    let (code, out, err) = op25b_at(&["quarantine", "--all", "--for", "5m", NOBODY], &[sa_, sb]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.matches(&format!("{NOBODY} in quarantine for 5 min")).count(), 2, "{out}");
    // The merged view: the worst state and the holders; a quarantine held
    // without attempts is in the quarantined list, on both.
    let (_, m) = top(&[sa_, sb]);
    assert_eq!(row(&m, ONLY_B).unwrap()["state"], "quarantined", "{m}");
    let q = m["quarantined"].as_array().unwrap();
    let nobody = q.iter().find(|q| q["subscriber"] == NOBODY).unwrap_or_else(|| panic!("{m}"));
    assert_eq!(nobody["instances"], serde_json::json!([na, nb]));
    // Release where its quarantine is; a second release finds none (1).
    let (code, out, err) = op25b_at(&["release", ONLY_B], &[sa_, sb]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("{nb}: {ONLY_B} released from quarantine")), "{out}");
    assert!(out.contains(&format!("{na}: does not hold {ONLY_B}: left alone")), "{out}");
    let (code, out, err) = op25b_at(&["release", ONLY_B], &[sa_, sb]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains(&format!("{nb}: {ONLY_B} is not in quarantine there: left alone")), "{out}");
    let (code, out, err) = op25b_at(&["release", "--all", NOBODY], &[sa_, sb]);
    assert_eq!((code, out.matches("released from quarantine").count()), (0, 2), "{out}{err}");
}

/// With B stopped, `top` shows A (whose table is `ta`), names the silent
/// one and exits 2; a quarantine still reaches A, and the exit says B did not.
fn one_instance_silent(sa_: &Path, sb: &Path, ta: &Value) {
    let (na, nb) = names(sa_, sb);
    let (code, m) = top(&[sa_, sb]);
    assert_eq!(code, 2, "{m}");
    assert_eq!(attempts(&m), attempts(ta), "{m}");
    assert_eq!(m["instances"][1]["answered"], false, "{m}");
    assert!(m["instances"][1]["error"].as_str().unwrap().contains("no op25b answers"), "{m}");
    let (code, text, err) = op25b_at(&["top"], &[sa_, sb]);
    assert_eq!(code, 2, "{text}{err}");
    assert!(text.starts_with("op25b top over 1 of 2 instances"), "{text}");
    assert!(text.contains(&format!("[2] {nb}: NO ANSWER")), "{text}");
    assert!(err.contains(&format!("op25b: error: {nb}: no op25b answers")), "{err}");
    let (code, out, err) = op25b_at(&["quarantine", ONLY_A], &[sa_, sb]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.contains(&format!("{na}: {ONLY_A} in quarantine")), "{out}");
    assert!(err.contains(&nb), "{err}");
    assert_eq!(quarantined(sa_), vec![ONLY_A.to_string()]);
}

#[test]
fn top_merges_two_instances_and_quarantine_goes_where_the_subscriber_is() {
    let a = instance(ONLY_A);
    let mut b = instance(ONLY_B);
    // Owned: B stops before the last part.
    let (path_a, path_b) = (a.socket().to_path_buf(), b.socket().to_path_buf());
    let (sa_, sb) = (path_a.as_path(), path_b.as_path());
    // DYN4 tries through both instances; each other subscriber through one.
    blocked_syns(&a, DYN4, 3);
    blocked_syns(&a, ONLY_A, 2);
    blocked_syns(&b, DYN4, 4);
    blocked_syns(&b, ONLY_B, 5);
    let ta = wait_table(sa_, &table(&[(DYN4, 3), (ONLY_A, 2)]));
    let tb = wait_table(sb, &table(&[(DYN4, 4), (ONLY_B, 5)]));
    // One socket: today's answer, no merged fields.
    assert!(ta.get("instances").is_none(), "{ta}");
    merged_top_is_the_sum(sa_, sb, &ta, &tb);
    subscriber_lookup(sb);
    quarantine_goes_where_the_subscriber_is(sa_, sb);
    b.stop();
    one_instance_silent(sa_, sb, &ta);
}
