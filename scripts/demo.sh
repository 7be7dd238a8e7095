#!/usr/bin/env bash
# op25b demo: build, bring the namespace lab up (scripts/lab.sh), make real
# connections and send mail from the subscriber namespace and compare each outcome
# with what OP25B should do; show op25b's log (final counters) after it stops. Exits
# non-zero if any case differs from its expectation.
#
# Usage: scripts/demo.sh [--no-build] [--bin PATH] [--config PATH]
#   --no-build     do not run `cargo build --release` (use an existing binary)
#   --bin PATH     op25b binary (default target/release/op25b)
#   --config PATH  op25b config (default config/lab.toml)
# Needs root, iproute2, python3, python3-aiosmtpd and traceroute (or ping from
# iputils-ping). Installs nothing itself: scripts/setup.sh installs them.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    # The header comment above is the help text.
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}" >&2
    exit 2
}

BUILD=1
BIN="$LAB_REPO_DIR/target/release/op25b"
CONFIG="$LAB_REPO_DIR/config/lab.toml"
while (($#)); do
    case "$1" in
        --no-build) BUILD=0; shift ;;
        --bin) [[ $# -ge 2 ]] || usage; BIN=$(abspath "$2"); shift 2 ;;
        --bin=*) BIN=$(abspath "${1#*=}"); shift ;;
        --config) [[ $# -ge 2 ]] || usage; CONFIG=$(abspath "$2"); shift 2 ;;
        --config=*) CONFIG=$(abspath "${1#*=}"); shift ;;
        -h | --help) usage ;;
        *) err "unknown argument: $1"; usage ;;
    esac
done

# A refused connection counts as "fast" under this many milliseconds: an RST from
# op25b takes about a millisecond here, a silent drop would take the full timeout.
FAST_MS=500
CONNECT_TIMEOUT=3
LAB="$LAB_SCRIPTS_DIR/lab.sh"

# ------------------------------------------------------------------ checks

require_root
needed=(ip python3)
((BUILD == 0)) || needed+=(cargo)
mapfile -t missing < <(missing_cmds "${needed[@]}")
TRACE_TOOL=""
if command -v traceroute >/dev/null 2>&1; then
    TRACE_TOOL=traceroute
elif command -v ping >/dev/null 2>&1; then
    TRACE_TOOL=ping
else
    missing+=("traceroute (package: traceroute), or at least ping (package: iputils-ping)")
fi
die_missing "${missing[@]}"
[[ "$TRACE_TOOL" == traceroute ]] ||
    warn "traceroute not found (package: traceroute): cases 11/12 use 'ping -t1' instead"
PY=$(command -v python3)

# ------------------------------------------------------------------ build

if ((BUILD)); then
    # Quiet: one line instead of a Compiling line per crate; errors and warnings
    # still show.
    info "building op25b (release)…"
    build_start=$SECONDS
    (cd "$LAB_REPO_DIR" && cargo build --release --quiet)
    info "built in $((SECONDS - build_start)) s"
fi
[[ -x "$BIN" ]] || die "op25b binary not found: $BIN (run without --no-build, or pass --bin)"

info "policy: $BIN check --config $CONFIG"
if ! "$BIN" check --config "$CONFIG"; then
    die "op25b check rejected $CONFIG"
fi
echo

# ------------------------------------------------------------------ lab

SAVED_LOG=$(mktemp "${TMPDIR:-/tmp}/op25b-demo.XXXXXX.log")
LAB_STARTED=0
LAB_STOPPED=0
on_exit() {
    local rc=$?
    trap - EXIT
    if ((LAB_STARTED && !LAB_STOPPED)); then
        "$LAB" down --save-log "$SAVED_LOG" || rc=1
    fi
    [[ -s "$SAVED_LOG" ]] || rm -f "$SAVED_LOG"
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

LAB_STARTED=1
"$LAB" up --bin "$BIN" --config "$CONFIG"
echo

# ------------------------------------------------------------------ cases

FAILS=0
TOTAL=0
ROW_FMT='%-3s %-40s %-20s %-20s %8s  %s %s\n'

if [[ -t 1 ]]; then
    C_OK=$'\e[32m' C_FAIL=$'\e[31m' C_BOLD=$'\e[1m' C_OFF=$'\e[0m'
else
    C_OK="" C_FAIL="" C_BOLD="" C_OFF=""
fi

row() {  # row NUM CASE EXPECTED SEEN MS VERDICT DETAIL
    local v colour=""
    case "$6" in
        OK) colour=$C_OK ;;
        FAIL) colour=$C_FAIL ;;
    esac
    v=$(printf '%-4s' "$6")  # pad before colouring: escapes would upset the width
    # shellcheck disable=SC2059  # the format is a constant
    printf "$ROW_FMT" "$1" "$2" "$3" "$4" "$5" "$colour$v$C_OFF" "$7"
}

tally() {  # tally OK|FAIL
    TOTAL=$((TOTAL + 1))
    [[ "$1" == OK ]] || FAILS=$((FAILS + 1))
}

# connect_case NUM LABEL SRC DST PORT EXPECTED
# EXPECTED is "refused-fast" or "connected". A connected case also checks that the
# banner names the destination the client asked for (no redirect, no NAT).
connect_case() {
    local num=$1 label=$2 src=$3 dst=$4 port=$5 expect=$6 json fields
    local result ms banner error seen v detail
    json=$(ip netns exec "$LAB_NS_SUB" "$PY" "$LAB_LABNET" connect \
        --src "$src" --timeout "$CONNECT_TIMEOUT" "$dst" "$port") || json=""
    fields=$("$PY" -c '
import json, sys
try:
    j = json.loads(sys.argv[1])
except ValueError:
    j = {"result": "no-output", "ms": 0.0, "banner": None, "error": None}
print("\t".join([j.get("result") or "?", "%.1f" % (j.get("ms") or 0.0),
                 j.get("banner") or "-", j.get("error") or "-"]))
' "$json")
    IFS=$'\t' read -r result ms banner error <<<"$fields"
    seen=$result
    detail=""
    case "$expect" in
        refused-fast)
            if [[ "$result" == refused ]] &&
                awk -v ms="$ms" -v max="$FAST_MS" 'BEGIN { exit !(ms < max) }'; then
                v=OK; seen="refused (fast)"; detail="RST at once"
            else
                v=FAIL
                [[ "$result" == refused ]] && seen="refused (slow)"
                detail="$error"
                [[ "$result" == connected ]] && detail="passed op25b! banner: $banner"
            fi
            expect="refused (fast)"
            ;;
        connected)
            if [[ "$result" == connected && "$banner" == "220 $dst:$port "* ]]; then
                v=OK; detail="banner: $banner"
            elif [[ "$result" == connected ]]; then
                v=FAIL; seen="connected?"; detail="unexpected banner: $banner"
            else
                v=FAIL; detail="$error"
            fi
            ;;
    esac
    tally "$v"
    row "$num" "$label" "$expect" "$seen" "$ms" "$v" "$detail"
}

# hop1 FAMILY DST: print the address that answered hop 1 (or "*"), and the path.
hop1() {
    local fam=$1 dst=$2 out first path
    if [[ "$TRACE_TOOL" == traceroute ]]; then
        local args=(-n -q1 -w1 -m3)
        [[ "$fam" == 6 ]] && args=(-6 "${args[@]}")
        out=$(ip netns exec "$LAB_NS_SUB" traceroute "${args[@]}" "$dst" 2>&1) || true
        first=$(awk '$1 == "1" { print $2; exit }' <<<"$out")
        path=$(awk '$1 ~ /^[0-9]+$/ { printf "%s%s", sep, $2; sep = " " }' <<<"$out")
    else
        out=$(ip netns exec "$LAB_NS_SUB" ping "-$fam" -n -c1 -W2 -t1 "$dst" 2>&1) || true
        # "From 100.64.0.1 icmp_seq=1 Time to live exceeded" (older pings: "From X: ...")
        first=$(awk '$1 == "From" { sub(/:$/, "", $2); print $2; exit }' <<<"$out")
        path="$first"
    fi
    printf '%s\t%s\n' "${first:-*}" "${path:-(no output: $(head -n1 <<<"$out"))}"
}

trace_case() {  # trace_case NUM FAMILY DST ROUTER
    local num=$1 fam=$2 dst=$3 router=$4 first path v
    IFS=$'\t' read -r first path < <(hop1 "$fam" "$dst")
    if [[ "$first" == "$router" ]]; then v=OK; else v=FAIL; fi
    local tool="traceroute"
    [[ "$TRACE_TOOL" == ping ]] && tool="ping -t1"
    tally "$v"
    row "$num" "$tool -$fam -> $dst" "hop1 $router" "hop1 $first" "" \
        "$v" "path: $path"
}

echo "MX = outside mail server $LAB_MX4 / $LAB_MX6, relay = ISP relay $LAB_RELAY4 / $LAB_RELAY6"
echo "router = op25b's own addresses $LAB_ROUTER4 / $LAB_ROUTER6; refused must take < ${FAST_MS} ms"
echo
# shellcheck disable=SC2059
printf "$C_BOLD$ROW_FMT$C_OFF" "#" "case" "expected" "seen" "ms" "    " "detail"
connect_case 1 "dynamic $LAB_DYN4 -> MX:25" "$LAB_DYN4" "$LAB_MX4" 25 refused-fast
connect_case 2 "dynamic $LAB_DYN4 -> MX:587" "$LAB_DYN4" "$LAB_MX4" 587 connected
connect_case 3 "dynamic $LAB_DYN4 -> MX:465" "$LAB_DYN4" "$LAB_MX4" 465 connected
connect_case 4 "dynamic $LAB_DYN4 -> relay:25" "$LAB_DYN4" "$LAB_RELAY4" 25 connected
connect_case 5 "static $LAB_STATIC4 -> MX:25" "$LAB_STATIC4" "$LAB_MX4" 25 connected
connect_case 6 "dynamic $LAB_DYN6 -> MX:25" "$LAB_DYN6" "$LAB_MX6" 25 refused-fast
connect_case 7 "dynamic $LAB_DYN6 -> MX:587" "$LAB_DYN6" "$LAB_MX6" 587 connected
connect_case 8 "dynamic $LAB_DYN6 -> MX:465" "$LAB_DYN6" "$LAB_MX6" 465 connected
connect_case 9 "dynamic $LAB_DYN6 -> relay:25" "$LAB_DYN6" "$LAB_RELAY6" 25 connected
connect_case 10 "static $LAB_STATIC6 -> MX:25" "$LAB_STATIC6" "$LAB_MX6" 25 connected
trace_case 11 4 "$LAB_MX4" "$LAB_ROUTER4"
trace_case 12 6 "$LAB_MX6" "$LAB_ROUTER6"

# mail_case NUM LABEL DST PORT EXPECTED: one message through smtplib from the dynamic
# address; EXPECTED is a server name (mx, relay: the message must be in its mail log)
# or "refused".
mail_case() {
    local num=$1 label=$2 dst=$3 port=$4 expect=$5 subject json result reply error ms
    local seen v detail
    subject="demo case $num"
    json=$(ip netns exec "$LAB_NS_SUB" "$PY" "$LAB_LABNET" send --src "$LAB_DYN4" \
        --timeout "$CONNECT_TIMEOUT" --subject "$subject" "$dst" "$port") || json=""
    IFS=$'\t' read -r result ms reply error < <("$PY" -c '
import json, sys
try:
    j = json.loads(sys.argv[1])
except ValueError:
    j = {}
print("\t".join([j.get("result") or "?", "%.1f" % (j.get("ms") or 0.0), j.get("reply") or "-",
                 j.get("error") or "-"]))
' "$json")
    seen=$result
    if [[ "$expect" == refused ]]; then
        if [[ "$result" == refused ]]; then v=OK; detail="$error"; else v=FAIL; detail="$reply$error"; fi
        expect="refused"
    else
        local where=""
        if [[ "$result" == accepted ]]; then
            where=$(cd "$LAB_STATE_DIR" && grep -lF "Subject: $subject\\r\\n" mail-*.jsonl 2>/dev/null |
                sed 's/^mail-//; s/\.jsonl$//' | tr '\n' ' ')
            where=${where% }
            seen="at ${where:-nowhere}"
        fi
        if [[ "$seen" == "at $expect" ]]; then v=OK; else v=FAIL; fi
        detail="$reply"
        [[ "$result" == accepted ]] || detail="$error"
        expect="at $expect"
    fi
    tally "$v"
    row "$num" "$label" "$expect" "$seen" "$ms" "$v" "$detail"
}
mail_case 13 "mail dynamic $LAB_DYN4 -> MX:587" "$LAB_MX4" 587 mx
mail_case 14 "mail dynamic $LAB_DYN4 -> relay:25" "$LAB_RELAY4" 25 relay
mail_case 15 "mail dynamic $LAB_DYN4 -> MX:25" "$LAB_MX4" 25 refused

# The outside servers' view: exactly the 10 connections that should pass (8 connects,
# 2 messages), and not one from a dynamic address to port 25 of the MX (a refused case
# must die at op25b).
server_check() {
    local out v
    out=$("$PY" - "$LAB_STATE_DIR/serve.jsonl" "$LAB_DYN4" "$LAB_DYN6" "$LAB_MX4" "$LAB_MX6" <<'EOF'
import json, sys
path, dyn4, dyn6, mx4, mx6 = sys.argv[1:6]
try:
    with open(path, encoding="utf-8") as f:
        recs = [json.loads(line) for line in f if line.strip()]
except OSError:
    recs = []
leaked = [r for r in recs if r["peer"] in (dyn4, dyn6) and r["local"] in (mx4, mx6)
          and r["local_port"] == 25]
print("%d\t%d" % (len(recs), len(leaked)))
EOF
    )
    local n leaked
    IFS=$'\t' read -r n leaked <<<"$out"
    if [[ "$n" == 10 && "$leaked" == 0 ]]; then v=OK; else v=FAIL; fi
    tally "$v"
    row S "outside servers' connection log" "10 conns" "$n conns" "" "$v" \
        "$leaked from a dynamic source to MX:25"
}
server_check

# Informational only (not counted): op25b answers ping on its own addresses.
info_ping() {
    local fam=$1 dst=$2 out seen
    if out=$(ip netns exec "$LAB_NS_SUB" ping "-$fam" -n -c1 -W1 "$dst" 2>&1); then
        seen="reply"
    else
        seen="no reply"
    fi
    row i "ping -$fam $dst (router)" "reply" "$seen" "" "info" \
        "$(grep -m1 -E 'time=|From|Unreachable' <<<"$out" || true)"
}
if command -v ping >/dev/null 2>&1; then
    info_ping 4 "$LAB_ROUTER4"
    info_ping 6 "$LAB_ROUTER6"
fi

# ------------------------------------------------------------------ teardown + log

echo
info "stopping the lab (op25b logs its counters on SIGTERM)"
LAB_STOPPED=1
"$LAB" down --save-log "$SAVED_LOG"
echo
echo "op25b log, last 20 lines (full log kept in $SAVED_LOG):"
tail -n 20 "$SAVED_LOG" | sed 's/^/    /'
echo
if ((FAILS == 0)); then
    printf '%sdemo: all %d checks as expected%s\n' "$C_OK" "$TOTAL" "$C_OFF"
else
    printf '%sdemo: %d of %d checks differ from the expectation%s\n' "$C_FAIL" "$FAILS" "$TOTAL" "$C_OFF"
    exit 1
fi
