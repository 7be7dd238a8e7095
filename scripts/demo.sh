#!/usr/bin/env bash
# op25b demo, as root: install what the build needs (scripts/setup.sh --demo), build,
# bring the lab up with its SMTP servers, show OP25B at work (op25b lab demo: real
# connections and mail, each against what OP25B should do), take the lab down and show
# op25b's final counters. Leaves nothing behind but the build (op25b's log only when a
# case differs). Exit status 1 if any case differs.
#   scripts/demo.sh [--no-build] [--bin PATH] [--config PATH]   (default: the release
#   build, cargo build --release, running the lab's own config)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
build=1 bin=$PWD/target/release/op25b config=""
while (($#)); do
    case $1 in
        --no-build) build=0 ;;
        --bin) bin=$(realpath -m "${2:?--bin PATH}"); shift ;;
        --config) config=$(realpath -m "${2:?--config PATH}"); shift ;;
        *) sed -n '2,8s/^# \?//p' "$0" >&2; exit 2 ;;
    esac
    shift
done
[[ $(id -u) -eq 0 ]] || { echo "demo.sh: run as root (network namespaces and TUN devices)" >&2; exit 1; }
scripts/setup.sh --demo
if ((build)); then
    echo "[lab] building op25b (release)…"
    SECONDS=0
    cargo build --release --quiet
    echo "[lab] built in $SECONDS s"
fi
log=$(mktemp "${TMPDIR:-/tmp}/op25b-demo.XXXXXX.log") rc=0
trap '"$bin" lab down >/dev/null; ((rc)) || rm -f "$log"' EXIT
trap 'exit 130' INT && trap 'exit 143' TERM
"$bin" check --config "${config:-config/lab.toml}"
"$bin" lab up --servers ${config:+--config "$config"}
echo
"$bin" lab demo || rc=$?
echo
"$bin" lab down --save-log "$log"
echo -e "\nop25b's log, last 20 lines:"
tail -n 20 "$log" | sed 's/^/    /'
if ((rc)); then
    echo -e "\ndemo: some cases differ from the expectation (op25b's whole log: $log)"
    exit 1
fi
echo -e "\ndemo: every case as expected"
