#!/usr/bin/env bash
# Runs op25b's cargo-fuzz targets (fuzz/), one after the other.
#   scripts/fuzz.sh                       # every target, 10 minutes each
#   scripts/fuzz.sh --seconds 60 config   # one target, a minute
#   scripts/fuzz.sh --smoke               # every target 20 s from the seeds, leaving nothing (CI)
# Installs cargo-fuzz if missing; RUSTC_BOOTSTRAP=1 lets a stable rustc take its nightly
# flags. No sanitizer (the core has no unsafe code; twice the speed), but debug assertions
# and overflow checks. The corpus grows in fuzz/corpus/TARGET from fuzz/seeds/TARGET; a
# failing input lands in fuzz/artifacts/TARGET: copy it to fuzz/regressions/TARGET/ so
# `cargo test --test fuzz_regressions` keeps it fixed. Each run's figures: fuzz/runs/TARGET.log.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds=600 smoke=0 targets=()
while (($#)); do
    case "$1" in
        --smoke) smoke=1 seconds=20 ;;
        --seconds) seconds=${2:?--seconds needs a number}; shift ;;
        -h | --help) sed -n '2,10p' "$0"; exit 0 ;;
        -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
        *) targets+=("$1") ;;
    esac
    shift
done
all=(router_raw router_structured config spec replay)
((${#targets[@]})) || targets=("${all[@]}")
export RUSTC_BOOTSTRAP=1
cargo fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked --version 0.13.2
build=(-s none --debug-assertions)
echo "== cargo fuzz build"
cargo fuzz build "${build[@]}"
mkdir -p fuzz/runs
status=0
for t in "${targets[@]}"; do
    [[ " ${all[*]} " == *" $t "* ]] || { echo "fuzz.sh: no target $t (${all[*]})" >&2; exit 2; }
    corpus=fuzz/corpus/$t
    ((smoke)) && corpus=$(mktemp -d) && trap 'rm -rf "$corpus"' EXIT
    mkdir -p "$corpus" "fuzz/artifacts/$t"
    # One process in the foreground (-jobs would fork and log to fuzz-N.log).
    args=(-max_total_time="$seconds" -print_final_stats=1 -rss_limit_mb=2048)
    [[ -f fuzz/dicts/$t.dict ]] && args+=(-dict="fuzz/dicts/$t.dict")
    ((smoke)) && args+=(-max_len=4096)
    echo "== fuzz $t for ${seconds}s"
    log=fuzz/runs/$t.log
    # The seeds are read, never written: new inputs go to the corpus directory.
    if ! cargo fuzz run "${build[@]}" "$t" "$corpus" "fuzz/seeds/$t" -- "${args[@]}" >"$log" 2>&1; then
        status=1
        echo "fuzz.sh: $t FAILED; its input is in fuzz/artifacts/$t, the log in $log" >&2
        tail -n 40 "$log" >&2
    fi
    # The last status line and the final stats: executions, coverage, corpus.
    grep -E '^#[0-9]+' "$log" | tail -n 1 || true
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb|new_units_added)' "$log" || true
    echo "corpus: $(find "$corpus" -type f | wc -l) files, $(du -sk --apparent-size "$corpus" | cut -f1) KiB"
    ((smoke)) && rm -rf "$corpus"
done
exit "$status"
