#!/usr/bin/env bash
# op25b benchmark: the same traffic, in one run, through kernel forwarding with the
# OP25B policy as an nftables rule (the peer a user would pick instead) and through
# op25b, alternating kernel, op25b, kernel, op25b, ... on namespaces made for the run.
#
#   kernel: SUB ==veth== RTR (ip_forward, nft: tcp dport 25 ... reject) ==veth== UP
#   op25b:  SUB ==TUN==> op25b (release binary, root namespace) ==TUN==> UP
#   SUB: 100.64.1.10, 2001:db8:100:1::10 (iperf3 client, ping, SYN probe)
#   UP:  203.0.113.25, 2001:db8:203::25 (an iperf3 server per test, port 5201)
#
# Figures per path (median and min-max over rounds, ratio op25b/kernel): TCP 1 stream
# and 4 streams (Gbit/s received), 64-byte UDP packets per second received by the
# server, ping RTT median and p99 (us). For op25b also peak RSS (VmHWM, MiB) and CPU
# time (utime+stime, s). During the first TCP 4-stream test of each path, SYNs to
# 203.0.113.25:25 (and [2001:db8:203::25]:25) must all be refused by the router.
#
# Usage: scripts/bench.sh [options]
#   --smoke        end-to-end check in a few seconds (1 round, 1 s tests, 50 pings);
#                  judges that everything works, not speed
#   --json         the last stdout line is one JSON object; the table goes to stderr
#   --no-build     skip `cargo build --release`
#   --rounds N     rounds (default 3; --smoke: 1)
#   --rules N      extra [[rule]]s in op25b's config, none matching (default 100)
#   -t, --time S   seconds per iperf3 test (default 5; --smoke: 1)
#   --pings N      pings per latency test, 10 ms apart (default 300; --smoke: 50)
#   --syn N        blocked-SYN probes per path, v4/v6 alternating (default 20)
#   --busy-poll US op25b's dataplane.busy_poll_us (default 0: workers sleep at
#                  once; polling mode trades a core per worker for latency)
#   --bin PATH     op25b binary (default target/release/op25b)
#   --keep DIR     copy the raw outputs (iperf3 JSON, ping, op25b log, config) to DIR
# Exit status: 0 when every measurement and the blocked-SYN check succeeded, 1 if not,
# 2 on usage errors. Needs root, iproute2, iperf3, nft (nftables), ping, python3
# (scripts/setup.sh --bench installs them). Namespaces are named o25b-bench-PID-* and
# removed on exit, also after failures; only processes this run started are stopped.
set -euo pipefail
# Decimal points in $EPOCHREALTIME, awk and the tools' output, whatever the locale.
export LC_ALL=C

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Our own prefix on messages (lib.sh's helpers print through these too).
info() { printf '%s[bench]%s %s\n' "$_c_bold" "$_c_off" "$*" >&2; }
warn() { printf '%s[bench] warning:%s %s\n' "$_c_yel" "$_c_off" "$*" >&2; }
err() { printf '%s[bench] error:%s %s\n' "$_c_red" "$_c_off" "$*" >&2; }
die() { err "$*"; exit 1; }

usage() {
    # The header comment above is the help text.
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}" >&2
    exit 2
}

BUILD=1 JSON=0 SMOKE=0
ROUNDS="" SECS="" PINGS="" RULES=100 SYN=20 KEEP="" BUSY=0
BIN="$LAB_REPO_DIR/target/release/op25b"
HELPER="$LAB_SCRIPTS_DIR/bench_lib.py"
num() { [[ "$2" =~ ^[0-9]+$ ]] || { err "$1 needs a whole number, got '$2'"; usage; }; }
while (($#)); do
    case "$1" in
        --smoke) SMOKE=1; shift ;;
        --json) JSON=1; shift ;;
        --no-build) BUILD=0; shift ;;
        --rounds | --rules | -t | --time | --pings | --syn | --bin | --keep | --busy-poll)
            [[ $# -ge 2 ]] || usage
            case "$1" in
                --rounds) num "$1" "$2"; ROUNDS=$2 ;;
                --rules) num "$1" "$2"; RULES=$2 ;;
                -t | --time) num "$1" "$2"; SECS=$2 ;;
                --pings) num "$1" "$2"; PINGS=$2 ;;
                --syn) num "$1" "$2"; SYN=$2 ;;
                --busy-poll) num "$1" "$2"; BUSY=$2 ;;
                --bin) BIN=$(abspath "$2") ;;
                --keep) KEEP=$(abspath "$2") ;;
            esac
            shift 2 ;;
        -h | --help) usage ;;
        *) err "unknown argument: $1"; usage ;;
    esac
done
if ((SMOKE)); then
    ROUNDS=${ROUNDS:-1} SECS=${SECS:-1} PINGS=${PINGS:-50}
else
    ROUNDS=${ROUNDS:-3} SECS=${SECS:-5} PINGS=${PINGS:-300}
fi
((ROUNDS >= 1 && SECS >= 1 && PINGS >= 1 && SYN >= 1 && RULES <= 10000)) ||
    { err "--rounds, -t, --pings and --syn must be at least 1, --rules at most 10000"; usage; }

# ------------------------------------------------------------------ names, addresses

PFX="o25b-bench-$$"
NS_KSUB="$PFX-ksub" NS_KRTR="$PFX-krtr" NS_KUP="$PFX-kup"
NS_OSUB="$PFX-osub" NS_OUP="$PFX-oup"
TUN_SUB="o25bs$$" TUN_UP="o25bu$$" # <= 12 characters (IFNAMSIZ is 16)
CLI4=100.64.1.10 CLI6=2001:db8:100:1::10
SRV4=203.0.113.25 SRV6=2001:db8:203::25
PORT=5201
CLK_TCK=$(getconf CLK_TCK)
CPUS=$(nproc)

NAMESPACES=()        # created by this run, deleted on exit
declare -A STARTED=() # pid -> start time, for every background process this run started
OP25B_PID=""          # op25b itself (the child of its `timeout`)
OP25B_TPID=""         # the `timeout` that bounds it
WORK=""
FAILURES=()

# ------------------------------------------------------------------ processes

# spawn OUT CMD...: run CMD in the background, stdout to OUT, stderr to OUT.err; the
# pid goes to SPAWNED and, with its start time (its identity), to STARTED.
spawn() {
    local out=$1
    shift
    "$@" </dev/null >"$out" 2>"$out.err" &
    SPAWNED=$!
    STARTED[$SPAWNED]=$(proc_starttime "$SPAWNED" || echo "?")
}

# ours_alive PID: PID is still the running process this run started.
ours_alive() {
    local st
    [[ -n "${STARTED[$1]:-}" ]] || return 1
    st=$(proc_starttime "$1") || return 1
    [[ "$st" == "${STARTED[$1]}" && "$(proc_state "$1")" != Z ]]
}

# stop_pid PID: SIGTERM a process this run started (only if it is still that one),
# SIGKILL after 3 s; reap it.
stop_pid() {
    local pid=$1 i
    if ours_alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 30; i++)); do
            ours_alive "$pid" || break
            sleep 0.1
        done
        if ours_alive "$pid"; then
            warn "pid $pid ($(proc_cmdline "$pid")) ignored SIGTERM for 3 s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
    unset 'STARTED[$pid]'
}

# reap PID [SECS]: wait for a background process (at most SECS, then stop it and
# return 124); return its exit status.
reap() {
    local pid=$1 secs=${2:-} i rc=0
    if [[ -n "$secs" ]]; then
        for ((i = 0; i < secs * 10; i++)); do
            ours_alive "$pid" || break
            sleep 0.1
        done
        if ours_alive "$pid"; then
            stop_pid "$pid"
            return 124
        fi
    fi
    wait "$pid" || rc=$?
    unset 'STARTED[$pid]'
    return "$rc"
}

# op25b's counters: utime + stime in clock ticks (fields 14 and 15 of /proc/PID/stat).
op25b_ticks() {
    local stat rest f
    stat=$(cat "/proc/$OP25B_PID/stat" 2>/dev/null) || { echo 0; return; }
    rest=${stat##*) }
    read -r -a f <<<"$rest"
    echo $((f[11] + f[12]))
}

# Packets the kernel dropped because op25b did not read them in time (TUN queue full):
# tx_dropped of the subscriber TUN counts outbound packets, of the upstream TUN inbound.
tun_stat() { ip netns exec "$1" cat "/sys/class/net/$2/statistics/$3" 2>/dev/null || echo 0; }
tun_drops() {
    echo $(($(tun_stat "$NS_OSUB" "$TUN_SUB" tx_dropped) + $(tun_stat "$NS_OUP" "$TUN_UP" tx_dropped)))
}

op25b_alive() {
    [[ -n "$OP25B_PID" ]] && ours_alive "$OP25B_PID"
}

stop_op25b() {
    [[ -n "$OP25B_PID" ]] || return 0
    stop_pid "$OP25B_PID"
    if [[ -n "$OP25B_TPID" ]]; then reap "$OP25B_TPID" 5 || true; fi
    OP25B_PID="" OP25B_TPID=""
}

# ------------------------------------------------------------------ cleanup

cleanup() {
    local rc=$? pid ns pids
    trap - EXIT INT TERM
    set +e
    ((rc == 0)) || info "exiting with status $rc: stopping what this run started, removing its namespaces"
    stop_op25b
    for pid in "${!STARTED[@]}"; do stop_pid "$pid"; done
    for ns in "${NAMESPACES[@]}"; do
        netns_exists "$ns" || continue
        pids=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')
        # Not started by this script (or escaped its bookkeeping): left alone; the
        # namespace lives on, unnamed, until they exit.
        [[ -z "${pids// /}" ]] || warn "processes still inside $ns, left alone: $pids"
        ip netns delete "$ns" || warn "could not delete netns $ns"
    done
    if [[ -n "$WORK" && -d "$WORK" ]]; then
        if [[ -n "$KEEP" ]]; then
            mkdir -p "$KEEP" && cp -a "$WORK/." "$KEEP/" && info "raw outputs kept in $KEEP"
        fi
        rm -rf "$WORK"
    fi
    exit "$rc"
}

# ------------------------------------------------------------------ checks, build

require_root
missing=()
for pair in ip:iproute2 ss:iproute2 iperf3:iperf3 nft:nftables ping:iputils-ping \
    python3:python3 timeout:coreutils getconf:libc-bin; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair%%:*} (package: ${pair#*:})")
done
if ((${#missing[@]})); then
    err "missing required command(s); scripts/setup.sh --bench installs them:"
    for m in "${missing[@]}"; do err "  - $m"; done
    exit 1
fi
[[ -r "$HELPER" ]] || die "helper not found: $HELPER"

# Namespaces of earlier runs that were killed hard (their pid is gone): say so only.
while read -r ns _; do
    [[ "$ns" =~ ^o25b-bench-([0-9]+)- ]] || continue
    [[ -e "/proc/${BASH_REMATCH[1]}" ]] ||
        warn "stale namespace from an earlier run: $ns (remove it: ip netns delete $ns)"
done < <(ip netns list 2>/dev/null)

if ((BUILD)); then
    info "cargo build --release"
    (cd "$LAB_REPO_DIR" && timeout 1800 cargo build --release) || die "cargo build --release failed"
fi
[[ -x "$BIN" ]] || die "op25b binary not found or not executable: $BIN (build it: cargo build --release)"

trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
WORK=$(mktemp -d "/tmp/$PFX.XXXXXX")

fail_measure() {
    FAILURES+=("$1")
    err "$1"
}

# ------------------------------------------------------------------ op25b config

# The extra rules: varied names, directions, protocols, prefixes and ports, none
# matching the benchmark traffic (100.64.1.10 <-> 203.0.113.25 TCP/UDP 5201, ICMP, and
# the return traffic to ephemeral ports 32768-60999), so every packet walks them all.
gen_rules() {
    local i dir proto dst
    local -a dsts=("192.0.2.0/24" "198.51.100.128/25" "2001:db8:dead::/48" "192.0.2.77/32")
    for ((i = 0; i < RULES; i++)); do
        dir=outbound proto=udp
        ((i % 3 == 2)) && dir=inbound
        ((i % 2 == 1)) && proto=tcp
        dst=${dsts[i % ${#dsts[@]}]}
        printf '\n[[rule]]\nname = "bench-%02d"\ndirection = "%s"\nprotocol = "%s"\n' "$i" "$dir" "$proto"
        printf 'dst = ["%s"]\ndst_ports = [%d]\naction = "drop"\n' "$dst" $((6000 + i))
    done
}

write_config() {
    cat <<EOF
# Generated by scripts/bench.sh: config/lab.toml's addresses and policy, the
# benchmark's own namespaces and devices, plus $RULES non-matching rules.
[router]
addresses = ["100.64.0.1", "2001:db8:100::1"]

[subscriber]
tun = "$TUN_SUB"
netns = "$NS_OSUB"
mtu = 1500
prefixes = ["100.64.0.0/10", "2001:db8:100::/48"]

[upstream]
tun = "$TUN_UP"
netns = "$NS_OUP"
mtu = 1500

[op25b]
dynamic = ["100.64.0.0/10", "2001:db8:100::/48"]
exempt_sources = ["100.64.9.0/24", "2001:db8:100:9::/64"]
relays = ["198.51.100.25/32", "2001:db8:25::25/128"]
ports = [25]
action = "reject"
EOF
    if ((BUSY > 0)); then
        printf '\n[dataplane]\nbusy_poll_us = %d\n' "$BUSY"
    fi
    gen_rules
}

CONFIG="$WORK/op25b.toml"
write_config >"$CONFIG"
if ! "$BIN" check --config "$CONFIG" >"$WORK/check.out" 2>&1; then
    sed 's/^/    /' "$WORK/check.out" >&2
    if ((RULES > 0)) && grep -qi 'rule' "$WORK/check.out"; then
        die "op25b check rejects the generated config ($RULES extra [[rule]]s): this op25b may not support [[rule]] yet; try --rules 0"
    fi
    die "op25b check rejects the generated config"
fi

# ------------------------------------------------------------------ namespaces

nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

# ns_add NAME [addr_gen_mode]: a namespace with lo up and quiet IPv6 (no DAD, router
# solicitations or RA processing; addr_gen_mode 1 = no link-local on new devices).
ns_add() {
    ip netns add "$1"
    NAMESPACES+=("$1")
    ip -n "$1" link set lo up
    nsx "$1" sysctl -q -w net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0 \
        net.ipv6.conf.all.accept_ra=0 net.ipv6.conf.default.accept_ra=0 \
        net.ipv6.conf.all.router_solicitations=0 net.ipv6.conf.default.router_solicitations=0 \
        "net.ipv6.conf.default.addr_gen_mode=${2:-0}" >/dev/null
}

setup_kernel() {
    info "kernel path: $NS_KSUB | $NS_KRTR | $NS_KUP (veth, ip_forward, nftables)"
    ns_add "$NS_KSUB"
    ns_add "$NS_KRTR"
    ns_add "$NS_KUP"
    nsx "$NS_KRTR" sysctl -q -w net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 >/dev/null
    ip -n "$NS_KSUB" link add sub0 type veth peer name rtr-sub netns "$NS_KRTR"
    ip -n "$NS_KUP" link add up0 type veth peer name rtr-up netns "$NS_KRTR"

    ip -n "$NS_KSUB" addr add "$CLI4/32" dev lo
    ip -n "$NS_KSUB" addr add "$CLI6/128" dev lo nodad
    ip -n "$NS_KSUB" addr add 100.64.0.2/30 dev sub0
    ip -n "$NS_KSUB" addr add 2001:db8:100::2/64 dev sub0 nodad
    ip -n "$NS_KSUB" link set sub0 up
    ip -n "$NS_KSUB" route add default via 100.64.0.1 src "$CLI4"
    ip -n "$NS_KSUB" -6 route add default via 2001:db8:100::1 src "$CLI6"

    ip -n "$NS_KRTR" addr add 100.64.0.1/30 dev rtr-sub
    ip -n "$NS_KRTR" addr add 2001:db8:100::1/64 dev rtr-sub nodad
    ip -n "$NS_KRTR" addr add 198.51.100.253/30 dev rtr-up
    ip -n "$NS_KRTR" addr add 2001:db8:ff::1/64 dev rtr-up nodad
    ip -n "$NS_KRTR" link set rtr-sub up
    ip -n "$NS_KRTR" link set rtr-up up
    ip -n "$NS_KRTR" route add 100.64.0.0/10 via 100.64.0.2
    ip -n "$NS_KRTR" -6 route add 2001:db8:100::/48 via 2001:db8:100::2
    ip -n "$NS_KRTR" route add 203.0.113.0/24 via 198.51.100.254
    ip -n "$NS_KRTR" -6 route add 2001:db8:203::/48 via 2001:db8:ff::2

    ip -n "$NS_KUP" addr add "$SRV4/32" dev lo
    ip -n "$NS_KUP" addr add "$SRV6/128" dev lo nodad
    ip -n "$NS_KUP" addr add 198.51.100.254/30 dev up0
    ip -n "$NS_KUP" addr add 2001:db8:ff::2/64 dev up0 nodad
    ip -n "$NS_KUP" link set up0 up
    ip -n "$NS_KUP" route add 100.64.0.0/10 via 198.51.100.253
    ip -n "$NS_KUP" -6 route add 2001:db8:100::/48 via 2001:db8:ff::1

    # The OP25B policy as a user would write it for a Linux router.
    cat >"$WORK/op25b.nft" <<'EOF'
table inet op25b {
    chain forward {
        type filter hook forward priority filter; policy accept;
        tcp dport 25 ip saddr 100.64.0.0/10 ip saddr != 100.64.9.0/24 ip daddr != 198.51.100.25 counter reject with tcp reset
        tcp dport 25 ip6 saddr 2001:db8:100::/48 ip6 saddr != 2001:db8:100:9::/64 ip6 daddr != 2001:db8:25::25 counter reject with tcp reset
    }
}
EOF
    nsx "$NS_KRTR" nft -f "$WORK/op25b.nft"
}

wait_link_up() {
    local i
    for ((i = 0; i < 50; i++)); do
        link_is_up "$1" "$2" && return 0
        op25b_alive || { err "op25b exited during start-up"; return 1; }
        sleep 0.1
    done
    err "timed out waiting for $2 to come up in $1"
    return 1
}

RUN_T0="" CPU0=0
setup_op25b() {
    info "op25b path: $NS_OSUB | op25b | $NS_OUP ($RULES extra rules)"
    ns_add "$NS_OSUB" 1
    ns_add "$NS_OUP" 1
    ip -n "$NS_OSUB" addr add "$CLI4/32" dev lo
    ip -n "$NS_OSUB" addr add "$CLI6/128" dev lo nodad
    ip -n "$NS_OUP" addr add "$SRV4/32" dev lo
    ip -n "$NS_OUP" addr add "$SRV6/128" dev lo nodad

    # Bounded like everything else: a hard-killed run leaves op25b running no longer
    # than the whole benchmark could take.
    local bound=$((120 + ROUNDS * 2 * (3 * (SECS + 10) + PINGS / 100 + 10))) i c
    info "starting $BIN run --config $CONFIG"
    # NO_COLOR: tracing-subscriber writes ANSI colours even into a file otherwise.
    spawn "$WORK/op25b.log" env NO_COLOR=1 RUST_LOG="${RUST_LOG:-info}" \
        timeout -k 5 "$bound" "$BIN" run --config "$CONFIG"
    OP25B_TPID=$SPAWNED
    # op25b is the child of that timeout: find it, and remember its identity.
    for ((i = 0; i < 50; i++)); do
        c=$(cat "/proc/$OP25B_TPID/task/$OP25B_TPID/children" 2>/dev/null || true)
        c=${c%% *}
        if [[ -n "$c" && "$(proc_cmdline "$c")" == *" run --config "* ]]; then
            OP25B_PID=$c
            STARTED[$c]=$(proc_starttime "$c") || OP25B_PID=""
            break
        fi
        ours_alive "$OP25B_TPID" || break
        sleep 0.1
    done
    if [[ -z "$OP25B_PID" ]]; then
        sed 's/^/    /' "$WORK/op25b.log.err" >&2 || true
        die "op25b did not start"
    fi
    if ! wait_link_up "$NS_OSUB" "$TUN_SUB" || ! wait_link_up "$NS_OUP" "$TUN_UP"; then
        sed 's/^/    /' "$WORK/op25b.log.err" >&2 || true
        die "op25b did not bring its TUN devices up"
    fi
    ip -n "$NS_OSUB" route add default dev "$TUN_SUB" src "$CLI4"
    ip -n "$NS_OSUB" -6 route add default dev "$TUN_SUB" src "$CLI6"
    ip -n "$NS_OUP" route add 100.64.0.0/10 dev "$TUN_UP"
    ip -n "$NS_OUP" -6 route add 2001:db8:100::/48 dev "$TUN_UP"
    RUN_T0=$EPOCHREALTIME
    CPU0=$(op25b_ticks)
}

sub_ns() { if [[ $1 == kernel ]]; then echo "$NS_KSUB"; else echo "$NS_OSUB"; fi; }
up_ns() { if [[ $1 == kernel ]]; then echo "$NS_KUP"; else echo "$NS_OUP"; fi; }

# Both families reach the server before anything is measured (also fills ARP/ND).
reach_check() {
    local path=$1 sub
    sub=$(sub_ns "$path")
    nsx "$sub" timeout 10 ping -n -q -c 3 -i 0.2 -W 2 -I "$CLI4" "$SRV4" >"$WORK/$path-reach4" 2>&1 ||
        { sed 's/^/    /' "$WORK/$path-reach4" >&2; die "$path path: $SRV4 unreachable from $CLI4"; }
    nsx "$sub" timeout 10 ping -6 -n -q -c 3 -i 0.2 -W 2 -I "$CLI6" "$SRV6" >"$WORK/$path-reach6" 2>&1 ||
        { sed 's/^/    /' "$WORK/$path-reach6" >&2; die "$path path: $SRV6 unreachable from $CLI6"; }
}

# ------------------------------------------------------------------ measurements

RECORDS="" # set after WORK exists
record() { printf '{"path":"%s","round":%s,"metric":"%s","value":%s}\n' "$1" "$2" "$3" "$4" >>"$RECORDS"; }

# op25b CPU while it forwards (its own tests) and while it idles (the kernel's).
declare -A CPU_TICKS=([kernel]=0 [op25b]=0) WALL=([kernel]=0 [op25b]=0)
T_MARK="" C_MARK=0
cpu_mark() { T_MARK=$EPOCHREALTIME C_MARK=$(op25b_ticks); }
cpu_account() {
    local path=$1 now
    now=$(op25b_ticks)
    CPU_TICKS[$path]=$((CPU_TICKS[$path] + now - C_MARK))
    WALL[$path]=$(awk -v a="${WALL[$path]}" -v t0="$T_MARK" -v t1="$EPOCHREALTIME" 'BEGIN { printf "%.3f", a + t1 - t0 }')
}

wait_listen() {
    local ns=$1 i
    for ((i = 0; i < 100; i++)); do
        [[ -n "$(nsx "$ns" ss -Hltn "sport = :$PORT" 2>/dev/null)" ]] && return 0
        sleep 0.05
    done
    return 1
}

check_op25b() {
    op25b_alive && return 0
    sed 's/^/    /' "$WORK/op25b.log.err" >&2 || true
    die "op25b exited during the benchmark (log above)"
}

# synprobe_start PATH: connects to port 25 from the subscriber, in the background.
SYN_PID=""
synprobe_start() {
    local sub
    sub=$(sub_ns "$1")
    spawn "$WORK/$1-synprobe" ip netns exec "$sub" timeout -k 2 $((SYN * 2 + 10)) \
        python3 "$HELPER" synprobe --count "$SYN" --port 25 --timeout 2 \
        --src4 "$CLI4" --dst4 "$SRV4" --src6 "$CLI6" --dst6 "$SRV6"
    SYN_PID=$SPAWNED
}

synprobe_finish() {
    local path=$1 a4 s4 a6 s6 med worst
    if ! reap "$SYN_PID" $((SYN * 2 + 15)); then
        sed 's/^/    /' "$WORK/$path-synprobe.err" >&2
        fail_measure "$path: blocked-SYN probe failed"
        return
    fi
    read -r a4 s4 a6 s6 med worst <"$WORK/$path-synprobe" || true
    sed 's/^/    /' "$WORK/$path-synprobe.err" >&2
    if ! [[ "$a4$s4$a6$s6" =~ ^[0-9]+$ && "$med" =~ ^-?[0-9.]+$ && "$worst" =~ ^-?[0-9.]+$ ]]; then
        fail_measure "$path: blocked-SYN probe printed no result"
        return
    fi
    record "$path" null blocked_syn_answered $((a4 + a6))
    record "$path" null blocked_syn_sent $((s4 + s6))
    record "$path" null blocked_syn_answered_v4 "$a4"
    record "$path" null blocked_syn_sent_v4 "$s4"
    record "$path" null blocked_syn_answered_v6 "$a6"
    record "$path" null blocked_syn_sent_v6 "$s6"
    record "$path" null blocked_syn_median_ms "$med"
    record "$path" null blocked_syn_max_ms "$worst"
    if ((a4 + a6 != SYN)); then
        fail_measure "$path: only $((a4 + a6)) of $SYN blocked SYNs to port 25 were refused within 2 s during load"
    fi
}

# iperf_test PATH ROUND KIND [probe]: KIND is tcp (1 stream), tcp4 or udp.
iperf_test() {
    local path=$1 round=$2 kind=$3 probe=${4:-0}
    local sub up tag srv cli spid cpid rc=0 v delay retrans lost drops0=0
    [[ $path == op25b ]] && check_op25b
    sub=$(sub_ns "$path") up=$(up_ns "$path")
    tag="$path-r$round-$kind"
    srv="$WORK/$tag-server.json" cli="$WORK/$tag-client.json"
    local args=(-c "$SRV4" -B "$CLI4" -p "$PORT" -t "$SECS" --json)
    case "$kind" in
        tcp4) args+=(-P 4) ;;
        udp) args+=(-u -l 64 -b 0) ;;
    esac
    spawn "$srv" ip netns exec "$up" timeout -k 2 $((SECS + 30)) iperf3 -s -1 --json -B "$SRV4" -p "$PORT"
    spid=$SPAWNED
    if ! wait_listen "$up"; then
        stop_pid "$spid"
        fail_measure "$tag: iperf3 server did not listen"
        return
    fi
    [[ $path == op25b ]] && drops0=$(tun_drops)
    cpu_mark
    spawn "$cli" ip netns exec "$sub" timeout -k 2 $((SECS + 20)) iperf3 "${args[@]}"
    cpid=$SPAWNED
    if ((probe)); then
        # Well into the load, short of its end.
        delay=1
        ((SECS > 2)) || delay=0.3
        sleep "$delay"
        synprobe_start "$path"
    fi
    reap "$cpid" || rc=$?
    ((probe)) && synprobe_finish "$path"
    cpu_account "$path"
    [[ $path == op25b ]] && record op25b "$round" "${kind}_tun_drops" $(($(tun_drops) - drops0))
    # The one-off server exits after writing its report.
    if ((rc == 0)); then reap "$spid" 10 || true; else stop_pid "$spid"; fi
    [[ $path == op25b ]] && check_op25b
    if ((rc != 0)); then
        sed 's/^/    /' "$cli" "$cli.err" | tail -n 5 >&2
        fail_measure "$tag: iperf3 client failed (exit $rc)"
        return
    fi
    if [[ $kind == udp ]]; then
        if v=$(python3 "$HELPER" udp "$srv"); then
            read -r v _ _ _ lost <<<"$v"
            record "$path" "$round" udp_pps "$v"
            record "$path" "$round" udp_lost_pct "$lost"
            info "$(printf '%-6s round %d  %-5s %10.1f kpps received' "$path" "$round" "$kind" "$(awk -v v="$v" 'BEGIN { print v / 1e3 }')")"
        else
            fail_measure "$tag: no usable UDP result"
        fi
    else
        if v=$(python3 "$HELPER" tcp "$cli"); then
            read -r v retrans <<<"$v"
            record "$path" "$round" "${kind}_bps" "$v"
            record "$path" "$round" "${kind}_retransmits" "$retrans"
            info "$(printf '%-6s round %d  %-5s %10.2f Gbit/s' "$path" "$round" "$kind" "$(awk -v v="$v" 'BEGIN { print v / 1e9 }')")"
        else
            fail_measure "$tag: no usable TCP result"
        fi
    fi
}

ping_test() {
    local path=$1 round=$2 sub tag out pid rc=0 v med p99 n
    [[ $path == op25b ]] && check_op25b
    sub=$(sub_ns "$path")
    tag="$path-r$round-ping" out="$WORK/$path-r$round-ping.txt"
    cpu_mark
    spawn "$out" ip netns exec "$sub" timeout -k 2 $((PINGS / 50 + 10)) \
        ping -n -i 0.01 -c "$PINGS" -W 1 -I "$CLI4" "$SRV4"
    pid=$SPAWNED
    reap "$pid" || rc=$?
    cpu_account "$path"
    [[ $path == op25b ]] && check_op25b
    # At least 90 % answered; a lost ping or two is no failure of the measurement.
    if v=$(python3 "$HELPER" ping "$out" --min-replies $(((PINGS * 9 + 9) / 10))); then
        read -r med p99 n <<<"$v"
        record "$path" "$round" rtt_median_us "$med"
        record "$path" "$round" rtt_p99_us "$p99"
        info "$(printf '%-6s round %d  ping  median %7.1f us  p99 %7.1f us  (%d/%d replies)' "$path" "$round" "$med" "$p99" "$n" "$PINGS")"
    else
        fail_measure "$tag: ping failed (exit $rc)"
    fi
}

# ------------------------------------------------------------------ run

RECORDS="$WORK/records.jsonl"
: >"$RECORDS"
setup_kernel
setup_op25b
reach_check kernel
reach_check op25b

T_START=$EPOCHREALTIME
info "measuring: $ROUNDS round(s), ${SECS} s per iperf3 test, $PINGS pings, kernel and op25b alternating"
for ((r = 1; r <= ROUNDS; r++)); do
    for kind in tcp tcp4 udp; do
        for path in kernel op25b; do
            probe=0
            [[ $kind == tcp4 && $r == 1 ]] && probe=1
            iperf_test "$path" "$r" "$kind" "$probe"
            sleep 0.2
        done
    done
    for path in kernel op25b; do ping_test "$path" "$r"; done
done

# op25b's own figures, read before it stops.
check_op25b
RSS_KB=$(awk '/^VmHWM:/ { print $2 }' "/proc/$OP25B_PID/status")
CPU1=$(op25b_ticks)
RUN_S=$(awk -v a="$RUN_T0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
record op25b null rss_mib "$(awk -v k="$RSS_KB" 'BEGIN { printf "%.1f", k / 1024 }')"
record op25b null cpu_s "$(awk -v t=$((CPU1 - CPU0)) -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", t / hz }')"
record op25b null run_s "$RUN_S"
# Voluntary + involuntary, all threads: how often it slept and woke while forwarding.
record op25b null ctxt_switches "$(cat "/proc/$OP25B_PID"/task/*/status 2>/dev/null |
    awk '/ctxt_switches:/ { s += $2 } END { print s + 0 }')"
for path in kernel op25b; do
    # op25b's CPU use as % of one core: while forwarding (op25b) and idle (kernel).
    pct=$(awk -v t="${CPU_TICKS[$path]}" -v hz="$CLK_TCK" -v w="${WALL[$path]}" 'BEGIN { printf "%.1f", (w > 0 ? 100 * t / hz / w : 0) }')
    if [[ $path == op25b ]]; then record op25b null cpu_busy_pct "$pct"; else record op25b null cpu_idle_pct "$pct"; fi
done
record op25b null tun_sub_tx_dropped "$(tun_stat "$NS_OSUB" "$TUN_SUB" tx_dropped)"
record op25b null tun_up_tx_dropped "$(tun_stat "$NS_OUP" "$TUN_UP" tx_dropped)"
NFT_REJECTS=$(nsx "$NS_KRTR" nft list chain inet op25b forward 2>/dev/null | awk '/counter/ { for (i = 1; i < NF; i++) if ($i == "packets") s += $(i + 1) } END { print s + 0 }')
record kernel null nft_rejected_packets "$NFT_REJECTS"

info "stopping op25b (pid $OP25B_PID)"
stop_op25b
COUNTERS=$(grep -o 'counters: .*' "$WORK/op25b.log.err" | tail -n 1 | sed 's/\x1b\[[0-9;]*m//g' || true)
[[ -n "$COUNTERS" ]] && info "op25b $COUNTERS"

TOTAL_S=$(awk -v a="$T_START" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
FAILS_JSON=$(python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "${FAILURES[@]}")
python3 - "$WORK/meta.json" <<EOF
import json, sys
meta = {
    "ok": $( ((${#FAILURES[@]} == 0)) && echo True || echo False ),
    "failures": $FAILS_JSON,
    "smoke": $( ((SMOKE)) && echo True || echo False ),
    "rounds": $ROUNDS,
    "seconds": $SECS,
    "pings": $PINGS,
    "extra_rules": $RULES,
    "busy_poll_us": $BUSY,
    "cpus": $CPUS,
    "measure_s": $TOTAL_S,
    "op25b_counters": $(python3 -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$COUNTERS"),
}
with open(sys.argv[1], "w") as f:
    json.dump(meta, f)
EOF
report_args=("$RECORDS" --meta "$WORK/meta.json")
((JSON)) && report_args+=(--json)
python3 "$HELPER" report "${report_args[@]}"

if ((${#FAILURES[@]})); then
    err "${#FAILURES[@]} measurement(s) failed"
    exit 1
fi
info "done in ${TOTAL_S} s"
