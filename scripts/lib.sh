# shellcheck shell=bash
# Shared helpers for the op25b lab scripts (sourced by lab.sh and demo.sh, not run).
#
# Names of the lab: they must match config/lab.toml ([subscriber]/[upstream] tun and
# netns). Everything this lab creates lives inside these two namespaces; the root
# namespace's network configuration is never touched.

# shellcheck disable=SC2034  # the constants are used by the scripts that source this
{
LAB_NS_SUB="op25b-lab-sub"
LAB_NS_INET="op25b-lab-inet"
LAB_TUN_SUB="op25b-sub"
LAB_TUN_UP="op25b-up"

# Subscriber side (on lo in op25b-lab-sub).
LAB_DYN4="100.64.1.10"
LAB_STATIC4="100.64.9.10"
LAB_DYN6="2001:db8:100:1::10"
LAB_STATIC6="2001:db8:100:9::10"
# Outside (on lo in op25b-lab-inet).
LAB_MX4="203.0.113.25"
LAB_RELAY4="198.51.100.25"
LAB_MX6="2001:db8:203::25"
LAB_RELAY6="2001:db8:25::25"
# Routes in op25b-lab-inet back to the subscribers.
LAB_SUB_NET4="100.64.0.0/10"
LAB_SUB_NET6="2001:db8:100::/48"
# The router's own addresses (source of its ICMP errors).
LAB_ROUTER4="100.64.0.1"
LAB_ROUTER6="2001:db8:100::1"
# Ports the outside servers listen on.
LAB_PORTS=(25 587 465)

LAB_SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LAB_REPO_DIR="$(cd "$LAB_SCRIPTS_DIR/.." && pwd)"
LAB_LABNET="$LAB_SCRIPTS_DIR/labnet.py"
# Where pid files and logs go. /run is root-only tmpfs: the lab needs root anyway.
LAB_STATE_DIR="${OP25B_LAB_STATE:-/run/op25b-lab}"
}

if [[ -t 2 ]]; then
    _c_red=$'\e[31m' _c_grn=$'\e[32m' _c_yel=$'\e[33m' _c_bold=$'\e[1m' _c_off=$'\e[0m'
else
    _c_red="" _c_grn="" _c_yel="" _c_bold="" _c_off=""
fi

info() { printf '%s[lab]%s %s\n' "$_c_bold" "$_c_off" "$*" >&2; }
warn() { printf '%s[lab] warning:%s %s\n' "$_c_yel" "$_c_off" "$*" >&2; }
err() { printf '%s[lab] error:%s %s\n' "$_c_red" "$_c_off" "$*" >&2; }
die() { err "$*"; exit 1; }

require_root() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (network namespaces and TUN devices need CAP_NET_ADMIN)"
}

# pkg_of CMD: the Debian package that provides CMD.
pkg_of() {
    case "$1" in
        ip) echo "iproute2" ;;
        ping) echo "iputils-ping" ;;
        traceroute) echo "traceroute" ;;
        python3) echo "python3" ;;
        cargo) echo "rustup / cargo" ;;
        *) echo "$1" ;;
    esac
}

# missing_cmds CMD...: print "CMD (package: PKG)" for each CMD not on PATH.
missing_cmds() {
    local c
    for c in "$@"; do
        command -v "$c" >/dev/null 2>&1 || printf '%s (package: %s)\n' "$c" "$(pkg_of "$c")"
    done
}

# die_missing LINE...: fail listing every missing command (nothing to do if none).
die_missing() {
    (($#)) || return 0
    err "missing required command(s); this script installs nothing itself (scripts/setup.sh does, as root):"
    local m
    for m in "$@"; do err "  - $m"; done
    exit 1
}

# require_cmds CMD...: fail naming every missing command and the package that has it.
require_cmds() {
    local missing=()
    mapfile -t missing < <(missing_cmds "$@")
    die_missing "${missing[@]}"
}

netns_exists() { [[ -e "/run/netns/$1" ]]; }

# link_exists NS DEV
link_exists() { netns_exists "$1" && ip -n "$1" link show dev "$2" >/dev/null 2>&1; }

# link_is_up NS DEV: administratively up (the UP flag), which op25b sets itself.
link_is_up() {
    local flags
    flags=$(ip -n "$1" -o link show dev "$2" 2>/dev/null) || return 1
    flags=${flags#*<}
    flags=${flags%%>*}
    [[ ",$flags," == *",UP,"* ]]
}

# proc_starttime PID: field 22 of /proc/PID/stat (clock ticks since boot). With the
# pid it identifies a process for good: a reused pid gets another start time.
proc_starttime() {
    local stat rest
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    rest=${stat##*) }  # drop "pid (comm) ", comm may hold spaces and parens
    # shellcheck disable=SC2206  # word splitting of numeric fields is intended
    local f=($rest)
    [[ -n "${f[19]:-}" ]] || return 1
    printf '%s\n' "${f[19]}"
}

proc_cmdline() { tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null; }

# record_pid FILE PID: remember the pid with its start time.
record_pid() {
    local st
    st=$(proc_starttime "$2") || st="?"
    printf '%s %s\n' "$2" "$st" >"$1"
}

# recorded_pid FILE TOKEN: print the recorded pid if that very process is still alive
# (same start time) and its command line contains TOKEN; else fail.
recorded_pid() {
    local file=$1 token=$2 pid st now cmd i
    [[ -r "$file" ]] || return 1
    read -r pid st <"$file" || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    now=$(proc_starttime "$pid") || return 1
    [[ "$st" == "$now" ]] || return 1
    [[ "$(proc_state "$pid")" != Z ]] || return 1  # exited, not yet reaped by its parent
    # Between fork and exec the child still shows the parent's command line: allow
    # a short moment for the exec to happen.
    for ((i = 0; i < 10; i++)); do
        cmd=$(proc_cmdline "$pid") || return 1
        [[ "$cmd" == *"$token"* ]] && { printf '%s\n' "$pid"; return 0; }
        sleep 0.1
    done
    return 1
}

# stop_recorded FILE TOKEN NAME: SIGTERM the recorded process (only if it is still
# the one we started), wait up to 10 s, then SIGKILL. Removes FILE.
stop_recorded() {
    local file=$1 token=$2 name=$3 pid i
    [[ -e "$file" ]] || return 0
    if pid=$(recorded_pid "$file" "$token"); then
        info "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            [[ -e "/proc/$pid" ]] || break
            # A zombie child of ours (lab.sh up failing in the same shell) is gone enough.
            [[ "$(proc_state "$pid")" == Z ]] && break
            sleep 0.1
        done
        if [[ -e "/proc/$pid" && "$(proc_state "$pid")" != Z ]]; then
            warn "$name (pid $pid) ignored SIGTERM for 10 s: sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            for ((i = 0; i < 50; i++)); do
                [[ -e "/proc/$pid" && "$(proc_state "$pid")" != Z ]] || break
                sleep 0.1
            done
        fi
        # Reap it if it is our own child (no-op otherwise).
        wait "$pid" 2>/dev/null || true
    else
        local rec
        read -r rec _ <"$file" 2>/dev/null || rec=""
        if [[ "$rec" =~ ^[0-9]+$ && -e "/proc/$rec" && "$(proc_state "$rec")" != Z ]]; then
            warn "$name: pid $rec now belongs to another process ($(proc_cmdline "$rec")): left alone"
        else
            info "$name: recorded process is no longer running"
        fi
    fi
    rm -f "$file"
}

proc_state() {
    local stat rest
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    rest=${stat##*) }
    printf '%s\n' "${rest%% *}"
}

# abspath PATH: absolute form of PATH relative to the current directory.
abspath() {
    case "$1" in
        /*) printf '%s\n' "$1" ;;
        *) printf '%s/%s\n' "$PWD" "$1" ;;
    esac
}
