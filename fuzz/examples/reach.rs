//! What a router corpus reaches: plays every input of the directories given
//! through `router_raw` or `router_structured` and prints each counter of the
//! routers' Stats that some input moved, summed, with how many inputs moved it.
//! A counter missing from the list is a part of the router the corpus never got to.
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --example reach -- router_raw fuzz/corpus/router_raw fuzz/seeds/router_raw
//! ```

use std::collections::BTreeMap;

fn main() {
    let mut args = std::env::args().skip(1);
    let target = args.next().expect("a target: router_raw or router_structured");
    let play = match target.as_str() {
        "router_raw" => |d: &[u8]| op25b_fuzz::router::Script::new(d).play(),
        "router_structured" => op25b_fuzz::structured::play,
        other => panic!("no router target {other}"),
    };
    let mut sums: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut inputs = 0;
    for dir in args {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir}: {e}")) {
            // A running fuzzer removes inputs it has reduced.
            let Ok(data) = std::fs::read(entry.expect("an entry").path()) else { continue };
            inputs += 1;
            let Some(driver) = play(&data) else { continue };
            let mut seen: BTreeMap<String, u64> = BTreeMap::new();
            for stats in driver.worker_stats() {
                for (name, n) in stats.pairs() {
                    *seen.entry(name).or_default() += n;
                }
            }
            for (name, n) in seen.into_iter().filter(|(_, n)| *n > 0) {
                let e = sums.entry(name).or_default();
                e.0 += n;
                e.1 += 1;
            }
        }
    }
    println!("{inputs} inputs");
    for (name, (n, inputs)) in sums {
        println!("{name:<50} {n:>10} in {inputs:>6} inputs");
    }
}
