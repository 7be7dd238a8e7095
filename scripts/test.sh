#!/usr/bin/env bash
# The whole test suite, from a fresh clone, as root: what the tests need (setup.sh), fmt,
# clippy, cargo doc, unit, CLI and network-namespace tests, 20 s of each fuzz target, every README and docs/
# sample (readme_test.py: the demo, the lab, check, replay), the Debian package's test,
# a smoke run of bench.sh and 20 s of soak.sh; the checkout must stay as it was.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

[[ $(id -u) -eq 0 ]] || { echo "test.sh: run as root: the tests build network namespaces and TUN devices" >&2; exit 1; }
scripts/setup.sh --bench --package
# A run must leave the checkout as it found it (fuzz/Cargo.lock in sync, no
# file left behind): what `git status` shows now is compared at the end.
status_before=$(git status --porcelain 2>/dev/null || echo "not a git checkout")

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
# Without test targets the `testing` feature is off: internals are crate-private,
# so code neither the library nor the binary uses is an error here.
cargo clippy --lib --bins --locked -- -D warnings
echo "== cargo doc (the library's API: every public item documented, no broken link)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --lib --locked --quiet
echo "== cargo test (unit, property, CLI, netns, actions)"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --locked --all-targets 2>&1 | tee "$log"
passed=$(grep -Eo '^test result: ok\. [0-9]+ passed' "$log" | awk '{s += $4} END {print s + 0}')
echo "== fuzz smoke (each target 20 s from its seeds, so they keep building and running)"
scripts/fuzz.sh --smoke
echo "== README and docs/ samples (the lab demo included)"
cargo build --release --locked --quiet
python3 scripts/readme_test.py
echo "== Debian package: build, dpkg -i, check what it installed, dpkg --purge"
scripts/package_test.sh --no-build
echo "== benchmark smoke run (checks it works; judges no speed)"
scripts/bench.sh --smoke
echo "== soak smoke run (20 s of load and reloads every 200 ms)"
scripts/soak.sh --seconds 20
echo "== the checkout is as the run found it (git status)"
after=$(git status --porcelain 2>/dev/null || echo "not a git checkout")
[[ $after == "$status_before" ]] || { printf 'test.sh: the run changed the checkout; git status before:\n%s\nafter:\n%s\n' \
    "${status_before:-(clean)}" "${after:-(clean)}" >&2; exit 1; }
# One closing line for the whole run (cargo's last summary is an example's, with 0 tests).
echo "tests: $passed passed, 0 failed"
