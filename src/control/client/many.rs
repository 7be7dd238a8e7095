//! `op25b top`, `quarantine` and `release` over several instances (one
//! `--socket` each): every instance asked at once, one merged view
//! ([`super::merge`]), and a quarantine acted on where the subscriber is
//! held (or everywhere with `--all`). An instance that does not answer is
//! named on standard error, the others are shown, and the exit status is
//! the worst: 2 when one did not answer (or said 400), 1 when one refused.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use super::http::{request_each, Call};
use super::merge::{self, Instance};
use super::{human, say, show_top, top_rows, top_summary, ClientError, TopBy};

/// The exit status of a failure, as a number, to take the worst of several.
fn code(e: &ClientError) -> u8 {
    match e {
        ClientError::Connect { .. } | ClientError::Refused { status: 400, .. } => 2,
        _ => 1,
    }
}

/// `name: error`, on standard error.
fn report(name: &str, e: &ClientError) {
    eprintln!("op25b: error: {name}: {e}");
}

/// Every instance's `top` (completed by lookups where it may have left a
/// candidate out), merged; and the worst exit status of the failures.
pub(super) fn ask_top(sockets: &[PathBuf], n: usize, by: TopBy) -> (Value, u8) {
    let by_destinations = by == TopBy::Destinations;
    let by = if by_destinations { "destinations" } else { "attempts" };
    let calls: Vec<Call<'_>> = sockets
        .iter()
        .map(|s| Call { socket: s, method: "GET", uri: format!("/v1/top?n={n}&by={by}"), body: None })
        .collect();
    let mut answers: Vec<Result<(Value, Vec<Value>), ClientError>> =
        request_each(&calls).into_iter().map(|r| r.map(|top| (top, Vec::new()))).collect();
    let candidates = merge::candidates(answers.iter().filter_map(|a| a.as_ref().ok().map(|(t, _)| t)));
    let mut lookups = Vec::new();
    let mut asked = Vec::new();
    for (i, a) in answers.iter().enumerate() {
        let Ok((top, _)) = a else { continue };
        let missing = merge::missing(top, n, &candidates);
        if !missing.is_empty() {
            lookups.push(Call {
                socket: &sockets[i],
                method: "POST",
                uri: "/v1/subscribers".into(),
                body: Some(json!({ "subscribers": missing })),
            });
            asked.push(i);
        }
    }
    for (i, r) in asked.into_iter().zip(request_each(&lookups)) {
        match r {
            Ok(rows) => {
                if let Ok((_, more)) = &mut answers[i] {
                    more.push(rows);
                }
            }
            // An instance that went away between the two questions is one that did not answer.
            Err(e) => answers[i] = Err(e),
        }
    }
    let mut worst = 0;
    let instances: Vec<Instance> = sockets
        .iter()
        .zip(answers)
        .map(|(s, a)| {
            let name = s.display().to_string();
            let answer = a.map_err(|e| {
                report(&name, &e);
                worst = worst.max(code(&e));
                e.to_string()
            });
            Instance { name, answer }
        })
        .collect();
    (merge::merge(&instances, n, by_destinations), worst)
}

/// Instance numbers (1-based, in the order of `--socket`) of the names in `list`.
fn numbers(list: &Value, key: Option<&str>, names: &[&str]) -> String {
    let on: Vec<String> = list
        .as_array()
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .filter_map(|i| match key {
            Some(k) => i[k].as_str(),
            None => i.as_str(),
        })
        .filter_map(|name| names.iter().position(|n| *n == name).map(|p| (p + 1).to_string()))
        .collect();
    on.join(",")
}

/// The merged answer as the table a person reads: one line per instance
/// (numbered), then the rows with the instances that hold each subscriber.
pub(super) fn render_merged(v: &Value, now: SystemTime) -> String {
    use std::fmt::Write as _;
    let now = now.duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    let num = |v: &Value| v.as_u64().unwrap_or(0);
    let instances = v["instances"].as_array().map_or(&[][..], Vec::as_slice);
    let names: Vec<&str> = instances.iter().map(|i| i["instance"].as_str().unwrap_or("?")).collect();
    let answered = instances.iter().filter(|i| i["answered"] == true).count();
    let quarantined = v["quarantined"].as_array().map_or(&[][..], Vec::as_slice);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "op25b top over {answered} of {} instances: {}",
        instances.len(),
        top_summary(v, quarantined.len())
    );
    for (k, i) in instances.iter().enumerate() {
        let name = names[k];
        if i["answered"] == true {
            let _ = writeln!(
                out,
                "  [{}] {name}: {} tracked, {} suspected, {} in quarantine",
                k + 1,
                num(&i["tracked"]),
                num(&i["suspected"]),
                num(&i["quarantined"])
            );
        } else {
            let _ = writeln!(out, "  [{}] {name}: NO ANSWER: {}", k + 1, i["error"].as_str().unwrap_or("?"));
        }
    }
    if v["settings_differ"] == true {
        let _ = writeln!(out, "  (the instances judge with different windows or thresholds: --json shows each)");
    }
    let rows = v["top"].as_array().map_or(&[][..], Vec::as_slice);
    let on = |r: &Value, row: bool| numbers(&r["instances"], row.then_some("instance"), &names);
    top_rows(&mut out, rows, quarantined, now, Some(&on));
    out
}

/// `op25b top` over several instances: asks each once (or every second
/// with `watch`), prints the merged view.
pub(super) fn top(sockets: &[PathBuf], n: usize, by: TopBy, json: bool, watch: bool) -> ExitCode {
    show_top(watch, || {
        let (merged, worst) = ask_top(sockets, n, by);
        let text = if json { format!("{merged}\n") } else { render_merged(&merged, SystemTime::now()) };
        Ok((text, worst))
    })
}

/// The instances that hold `who` and how each stands (its row's state), or
/// why it did not say; asked at once.
fn holders(sockets: &[PathBuf], who: &str) -> Vec<Result<Option<String>, ClientError>> {
    let calls: Vec<Call<'_>> = sockets
        .iter()
        .map(|s| Call {
            socket: s,
            method: "POST",
            uri: "/v1/subscribers".into(),
            body: Some(json!({ "subscribers": [who] })),
        })
        .collect();
    request_each(&calls)
        .into_iter()
        .map(|r| r.map(|v| v["subscribers"][0]["state"].as_str().map(str::to_string)))
        .collect()
}

/// What `quarantine` or `release` does on each instance.
pub(super) struct Act<'a> {
    /// The subscriber as given (checked).
    pub who: &'a str,
    /// Release (else quarantine).
    pub release: bool,
    /// The quarantine's length, if given.
    pub duration: Option<Duration>,
    /// On every instance, not only where the subscriber is held.
    pub all: bool,
}

/// `op25b quarantine` / `release` over several instances. Each instance
/// says on its own line what it did: acted, left alone (it does not hold
/// the subscriber, or holds no quarantine of it to end), or refused and why.
pub(super) fn act(sockets: &[PathBuf], a: &Act<'_>) -> ExitCode {
    let who = a.who;
    let mut worst = 0u8;
    let mut targets: Vec<&Path> = Vec::new();
    if a.all {
        targets.extend(sockets.iter().map(PathBuf::as_path));
    } else {
        for (s, r) in sockets.iter().zip(holders(sockets, who)) {
            let name = s.display();
            match r {
                Err(e) => {
                    report(&name.to_string(), &e);
                    worst = worst.max(code(&e));
                }
                Ok(Some(state)) if !a.release || state == "quarantined" => targets.push(s),
                Ok(Some(_)) => {
                    say(&format!("{name}: {who} is not in quarantine there: left alone\n"));
                }
                Ok(None) => {
                    say(&format!("{name}: does not hold {who}: left alone\n"));
                }
            }
        }
        if targets.is_empty() {
            let what = if a.release { "holds a quarantine of" } else { "holds" };
            let asked = if worst > 0 { "that answered " } else { "" };
            eprintln!("op25b: error: no instance {asked}{what} {who}: nothing done (--all acts on every instance)");
            return ExitCode::from(worst.max(1));
        }
    }
    let (uri, body) = if a.release {
        ("/v1/release", json!({ "subscriber": who }))
    } else {
        ("/v1/quarantine", json!({"subscriber": who, "seconds": a.duration.map(|d| d.as_secs_f64())}))
    };
    let calls: Vec<Call<'_>> =
        targets.iter().map(|s| Call { socket: s, method: "POST", uri: uri.into(), body: Some(body.clone()) }).collect();
    let mut acted = 0;
    let mut refused = 0u8;
    for (s, r) in targets.iter().zip(request_each(&calls)) {
        let name = s.display();
        match r {
            Ok(v) if a.release => {
                acted += 1;
                say(&format!("{name}: {} released from quarantine\n", v["released"].as_str().unwrap_or(who)));
            }
            Ok(v) => {
                acted += 1;
                let secs = v["seconds"].as_f64().unwrap_or(0.0);
                let q = v["quarantined"].as_str().unwrap_or(who);
                say(&format!("{name}: {q} in quarantine for {}\n", human(secs)));
            }
            Err(ClientError::Refused { status: 409, message, .. }) => {
                say(&format!("{name}: refused: {message}\n"));
                refused = 1;
            }
            Err(e) => {
                report(&name.to_string(), &e);
                worst = worst.max(code(&e));
            }
        }
    }
    // Released somewhere: done, even where --all found no quarantine to end.
    if !(a.release && acted > 0) {
        worst = worst.max(refused);
    }
    if acted == 0 {
        worst = worst.max(1);
    }
    ExitCode::from(worst)
}
