#!/usr/bin/env bash
# op25b demo: install what it needs (scripts/setup.sh), build, bring the namespace lab
# up with its SMTP servers (op25b lab up --servers), make real connections and send
# mail from the subscriber namespace, compare each outcome with what OP25B should do
# (scripts/labnet.py demo), take the lab down and show op25b's final counters. Exits
# non-zero if any case differs from its expectation. As root.
#
# Usage: scripts/demo.sh [--no-build] [--bin PATH] [--config PATH]
#   --no-build     do not run `cargo build --release` (use an existing binary)
#   --bin PATH     op25b binary (default target/release/op25b)
#   --config PATH  op25b config (default: the lab's own, config/lab.toml)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

usage() { sed -n '2,/^set /{/^# \?/s/^# \?//p}' "$0" | sed '$d' >&2; exit 2; }
build=1 bin=$PWD/target/release/op25b config=""
while (($#)); do
    case $1 in
        --no-build) build=0; shift ;;
        --bin) [[ $# -ge 2 ]] || usage; bin=$(realpath -m "$2"); shift 2 ;;
        --config) [[ $# -ge 2 ]] || usage; config=$(realpath -m "$2"); shift 2 ;;
        *) usage ;;
    esac
done
info() { printf '[lab] %s\n' "$*"; }
[[ $(id -u) -eq 0 ]] || { echo "demo.sh: run as root (network namespaces and TUN devices)" >&2; exit 1; }

scripts/setup.sh
if ((build)); then
    info "building op25b (release)…"
    start=$SECONDS
    cargo build --release --quiet
    info "built in $((SECONDS - start)) s"
fi
[[ -x $bin ]] || { echo "demo.sh: op25b binary not found: $bin (run without --no-build, or pass --bin)" >&2; exit 1; }
export OP25B=$bin
info "policy: $bin check --config ${config:-config/lab.toml}"
"$bin" check --config "${config:-config/lab.toml}"
echo

saved_log=$(mktemp "${TMPDIR:-/tmp}/op25b-demo.XXXXXX.log")
down_done=0
on_exit() {
    local rc=$?
    ((down_done)) || "$bin" lab down --save-log "$saved_log" >/dev/null || rc=1
    [[ -s $saved_log ]] || rm -f "$saved_log"
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
"$bin" lab up --servers ${config:+--config "$config"}
echo

rc=0
table=$(mktemp)
"$bin" lab exec -- python3 scripts/labnet.py demo | tee "$table" || rc=$?
read -r _ ok _ total _ < <(grep '^checks: ' "$table" || echo "checks: 0 of 0")
rm -f "$table"
echo
info "stopping the lab (op25b logs its counters on SIGTERM)"
down_done=1
"$bin" lab down --save-log "$saved_log"
echo
echo "op25b log, last 20 lines (full log kept in $saved_log):"
tail -n 20 "$saved_log" | sed 's/^/    /'
echo
if ((rc == 0 && total > 0)); then
    echo "demo: all $total checks as expected"
else
    echo "demo: $((total - ok)) of $total checks differ from the expectation"
    exit 1
fi
