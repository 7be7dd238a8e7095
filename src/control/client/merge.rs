//! One abuse view over several op25b instances: their `top` answers (and
//! the rows of the lookups that complete them) merged into one answer, as
//! `op25b top --socket A --socket B ...` prints it. JSON in, JSON out; no I/O.
//!
//! A subscriber's figures over the instances: attempts, totals and
//! `error` summed; distinct destinations the largest of the instances'
//! counts (a lower bound: the instances share no set of destinations, and a
//! subscriber that moves retries the same ones, which a sum would count
//! twice); first seen the earliest, last seen the latest; the most severe state (quarantined, then suspected, then
//! normal); the latest quarantine end; the sample destinations together.
//! Each instance judged its own share against its own thresholds: a merged
//! row is never given a state no instance gave it.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

/// What one instance said.
#[derive(Debug, Clone)]
pub struct Instance {
    /// How the user named it (the socket as given).
    pub name: String,
    /// Its `top` answer and the rows of its lookups, or why it gave none.
    pub answer: Result<(Value, Vec<Value>), String>,
}

/// The rows of an answer (`top` of a `top`, `subscribers` of a lookup).
fn rows<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v[key].as_array().map_or(&[], Vec::as_slice)
}

/// The subscribers a merged `top` may show: every one an instance listed.
pub fn candidates<'a>(tops: impl IntoIterator<Item = &'a Value>) -> BTreeSet<String> {
    tops.into_iter()
        .flat_map(|t| rows(t, "top").iter().filter_map(|r| r["subscriber"].as_str().map(str::to_string)))
        .collect()
}

/// The candidates an instance may hold but left out of its `top` of `n`
/// rows: none when it gave fewer than `n` (its whole table).
pub fn missing(top: &Value, n: usize, candidates: &BTreeSet<String>) -> Vec<String> {
    let listed = rows(top, "top");
    if listed.len() < n {
        return Vec::new();
    }
    let have: BTreeSet<&str> = listed.iter().filter_map(|r| r["subscriber"].as_str()).collect();
    candidates.iter().filter(|c| !have.contains(c.as_str())).cloned().collect()
}

fn severity(state: &str) -> u8 {
    match state {
        "quarantined" => 2,
        "suspected" => 1,
        _ => 0,
    }
}

/// One subscriber summed over the instances that hold it.
#[derive(Default)]
struct Merged {
    attempts: u64,
    total: u64,
    error: u64,
    destinations: u64,
    total_destinations: u64,
    first_seen: Option<f64>,
    last_seen: Option<f64>,
    state: &'static str,
    quarantine_until: Option<f64>,
    samples: Vec<String>,
    instances: Vec<Value>,
}

fn min(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn max(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

impl Merged {
    fn add(&mut self, instance: &str, r: &Value) {
        let num = |k: &str| r[k].as_u64().unwrap_or(0);
        self.attempts += num("attempts");
        self.total += num("total");
        self.error += num("error");
        self.destinations = self.destinations.max(num("destinations"));
        self.total_destinations = self.total_destinations.max(num("total_destinations"));
        self.first_seen = min(self.first_seen, r["first_seen"].as_f64());
        self.last_seen = max(self.last_seen, r["last_seen"].as_f64());
        let state = match r["state"].as_str().unwrap_or("normal") {
            "quarantined" => "quarantined",
            "suspected" => "suspected",
            _ => "normal",
        };
        if self.state.is_empty() || severity(state) > severity(self.state) {
            self.state = state;
        }
        self.quarantine_until = max(self.quarantine_until, r["quarantine_until"].as_f64());
        for s in rows(r, "samples").iter().filter_map(Value::as_str) {
            if !self.samples.iter().any(|have| have == s) {
                self.samples.push(s.to_string());
            }
        }
        self.instances.push(json!({
            "instance": instance,
            "attempts": num("attempts"),
            "destinations": num("destinations"),
            "total": num("total"),
            "state": state,
        }));
    }

    fn json(&self, subscriber: &str) -> Value {
        json!({
            "subscriber": subscriber,
            "attempts": self.attempts,
            "total": self.total,
            "error": self.error,
            "destinations": self.destinations,
            "total_destinations": self.total_destinations,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "state": self.state,
            "quarantine_until": self.quarantine_until,
            "samples": self.samples,
            "instances": self.instances,
        })
    }
}

/// The settings an instance judged with, to tell whether they differ.
fn settings(top: &Value) -> [Value; 3] {
    [top["window_seconds"].clone(), top["threshold"].clone(), top["destinations_threshold"].clone()]
}

/// The merged answer: `instances` (each answered with its own figures, or
/// did not, and why), the sums `tracked` and `suspected` (a subscriber held
/// by two instances counts twice), the first answering instance's window and
/// thresholds (`settings_differ` when another judged with others), the `n`
/// heaviest merged rows (`top`, each with the `instances` that hold it and
/// their shares) and every subscriber in quarantine anywhere (`quarantined`,
/// with the latest end and the instances).
pub fn merge(instances: &[Instance], n: usize, by_destinations: bool) -> Value {
    let mut table: BTreeMap<String, Merged> = BTreeMap::new();
    let mut quarantined: BTreeMap<String, (f64, Vec<String>)> = BTreeMap::new();
    let mut listed = Vec::new();
    let (mut tracked, mut suspected) = (0u64, 0u64);
    let mut first: Option<[Value; 3]> = None;
    let mut differ = false;
    for i in instances {
        let (top, more) = match &i.answer {
            Ok(a) => a,
            Err(why) => {
                listed.push(json!({"instance": i.name, "answered": false, "error": why}));
                continue;
            }
        };
        let mine = settings(top);
        match &first {
            None => first = Some(mine),
            Some(f) => differ |= *f != mine,
        }
        tracked += top["tracked"].as_u64().unwrap_or(0);
        suspected += top["suspected"].as_u64().unwrap_or(0);
        let q = rows(top, "quarantined");
        listed.push(json!({
            "instance": i.name,
            "answered": true,
            "tracked": top["tracked"],
            "suspected": top["suspected"],
            "quarantined": q.len(),
            "window_seconds": top["window_seconds"],
            "threshold": top["threshold"],
            "destinations_threshold": top["destinations_threshold"],
        }));
        let looked_up = more.iter().flat_map(|m| rows(m, "subscribers").iter());
        let mut seen = BTreeSet::new();
        for r in rows(top, "top").iter().chain(looked_up) {
            let Some(who) = r["subscriber"].as_str() else { continue };
            // A lookup row that is a quarantine without a table entry adds nothing
            // but its state; each instance's row is counted once.
            if seen.insert(who.to_string()) {
                table.entry(who.to_string()).or_default().add(&i.name, r);
            }
        }
        for e in q {
            let (Some(who), Some(until)) = (e["subscriber"].as_str(), e["until"].as_f64()) else { continue };
            let entry = quarantined.entry(who.to_string()).or_insert((until, Vec::new()));
            entry.0 = entry.0.max(until);
            entry.1.push(i.name.clone());
        }
    }
    let mut merged: Vec<(String, Merged)> = table.into_iter().collect();
    let key = |m: &Merged| {
        if by_destinations {
            (m.destinations, m.total_destinations, m.total)
        } else {
            (m.attempts, m.total, 0)
        }
    };
    // Heaviest first; the subscriber's name breaks ties, so the order is stable.
    merged.sort_by(|(a_who, a), (b_who, b)| key(b).cmp(&key(a)).then_with(|| a_who.cmp(b_who)));
    merged.truncate(n);
    let [window, threshold, destinations_threshold] = first.unwrap_or([Value::Null, Value::Null, Value::Null]);
    json!({
        "instances": listed,
        "tracked": tracked,
        "suspected": suspected,
        "window_seconds": window,
        "threshold": threshold,
        "destinations_threshold": destinations_threshold,
        "settings_differ": differ,
        "by": if by_destinations { "destinations" } else { "attempts" },
        "top": merged.iter().map(|(who, m)| m.json(who)).collect::<Vec<_>>(),
        "quarantined": quarantined
            .iter()
            .map(|(who, (until, on))| json!({"subscriber": who, "until": until, "instances": on}))
            .collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(who: &str, attempts: u64, dests: u64, state: &str, first: f64, last: f64, until: Option<f64>) -> Value {
        json!({
            "subscriber": who, "attempts": attempts, "total": attempts * 2, "error": 0,
            "destinations": dests, "total_destinations": dests, "first_seen": first, "last_seen": last,
            "state": state, "quarantine_until": until, "samples": [format!("203.0.113.{attempts}")],
        })
    }

    fn top(rows: Vec<Value>, quarantined: Vec<Value>, window: f64) -> Value {
        json!({
            "tracked": rows.len(), "suspected": 1, "window_seconds": window, "threshold": 5,
            "destinations_threshold": 100, "by": "attempts", "top": rows, "quarantined": quarantined,
        })
    }

    fn instance(name: &str, top: Value, more: Vec<Value>) -> Instance {
        Instance { name: name.into(), answer: Ok((top, more)) }
    }

    #[test]
    fn a_subscriber_on_two_instances_is_summed_and_its_worst_state_wins() {
        let a = top(
            vec![
                row("100.64.1.10", 7, 3, "suspected", 10.0, 20.0, None),
                row("100.64.1.11", 2, 2, "normal", 5.0, 6.0, None),
            ],
            vec![],
            60.0,
        );
        let b = top(
            vec![
                row("100.64.1.10", 4, 4, "quarantined", 8.0, 15.0, Some(99.0)),
                row("100.64.1.12", 9, 1, "normal", 1.0, 2.0, None),
            ],
            vec![
                json!({"subscriber": "100.64.1.10", "until": 99.0}),
                json!({"subscriber": "100.64.1.99", "until": 50.0}),
            ],
            60.0,
        );
        let m = merge(&[instance("a", a, vec![]), instance("b", b, vec![])], 20, false);
        let rows = m["top"].as_array().unwrap();
        let who: Vec<&str> = rows.iter().map(|r| r["subscriber"].as_str().unwrap()).collect();
        assert_eq!(who, ["100.64.1.10", "100.64.1.12", "100.64.1.11"]);
        let r = &rows[0];
        assert_eq!(
            (r["attempts"].as_u64(), r["total"].as_u64(), r["destinations"].as_u64()),
            (Some(11), Some(22), Some(4))
        );
        assert_eq!((r["first_seen"].as_f64(), r["last_seen"].as_f64()), (Some(8.0), Some(20.0)));
        assert_eq!((r["state"].as_str(), r["quarantine_until"].as_f64()), (Some("quarantined"), Some(99.0)));
        assert_eq!(r["samples"], json!(["203.0.113.7", "203.0.113.4"]));
        let on: Vec<&str> =
            r["instances"].as_array().unwrap().iter().map(|i| i["instance"].as_str().unwrap()).collect();
        assert_eq!(on, ["a", "b"]);
        assert_eq!(rows[1]["instances"][0]["instance"], "b");
        assert_eq!(
            (m["tracked"].as_u64(), m["suspected"].as_u64(), &m["settings_differ"]),
            (Some(4), Some(2), &json!(false))
        );
        assert_eq!(m["quarantined"].as_array().unwrap().len(), 2);
        assert_eq!(m["quarantined"][0], json!({"subscriber": "100.64.1.10", "until": 99.0, "instances": ["b"]}));
        // By destinations, then cut to n.
        let m = merge(
            &[
                instance("a", top(vec![row("100.64.1.11", 2, 2, "normal", 5.0, 6.0, None)], vec![], 60.0), vec![]),
                instance("b", top(vec![row("100.64.1.12", 9, 1, "normal", 1.0, 2.0, None)], vec![], 30.0), vec![]),
            ],
            1,
            true,
        );
        assert_eq!(m["top"].as_array().unwrap().len(), 1);
        assert_eq!(m["top"][0]["subscriber"], "100.64.1.11");
        assert_eq!(m["settings_differ"], json!(true));
    }

    #[test]
    fn lookups_complete_a_cut_top_and_a_silent_instance_is_listed() {
        let a = top(vec![row("100.64.1.10", 9, 1, "normal", 1.0, 2.0, None)], vec![], 60.0);
        let b = top(vec![row("100.64.1.11", 8, 1, "normal", 1.0, 2.0, None)], vec![], 60.0);
        let cands = candidates([&a, &b]);
        assert_eq!(missing(&a, 1, &cands), ["100.64.1.11"], "a full top may have left it out");
        assert!(missing(&a, 2, &cands).is_empty(), "a short top is the whole table");
        let more = json!({"subscribers": [row("100.64.1.11", 3, 1, "suspected", 0.5, 3.0, None)]});
        let m = merge(
            &[
                instance("a", a, vec![more]),
                instance("b", b, vec![]),
                Instance { name: "c".into(), answer: Err("no op25b answers".into()) },
            ],
            1,
            false,
        );
        assert_eq!(m["top"][0]["subscriber"], "100.64.1.11");
        assert_eq!(m["top"][0]["attempts"], 11);
        assert_eq!(m["top"][0]["state"], "suspected");
        assert_eq!(m["instances"][2], json!({"instance": "c", "answered": false, "error": "no op25b answers"}));
        assert_eq!(m["instances"][0]["answered"], true);
    }
}
