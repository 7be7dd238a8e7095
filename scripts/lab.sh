#!/usr/bin/env bash
# op25b namespace lab: two network namespaces joined only by op25b.
#
#   op25b-lab-sub (subscribers)        root ns            op25b-lab-inet (outside)
#   lo: 100.64.1.10  dynamic                              lo: 203.0.113.25  MX
#       100.64.9.10  static (exempt)   op25b run              198.51.100.25 ISP relay
#       2001:db8:100:1::10                                    2001:db8:203::25
#       2001:db8:100:9::10                                    2001:db8:25::25
#   default dev op25b-sub  <=== TUN ===> op25b <=== TUN ===>  op25b-up: 100.64.0.0/10,
#                                                             2001:db8:100::/48
#                                                             SMTP servers on 25 587 465
#                                                             (labnet.py serve, aiosmtpd)
#
# Usage: scripts/lab.sh up|down|status|mail|reload [--bin PATH] [--config PATH] [--save-log FILE]
#        scripts/lab.sh capture FILE [--seconds N | --traffic]
#   up      build the lab and start op25b (idempotent: a healthy lab is left alone,
#           a partial one is torn down and rebuilt). op25b runs the state dir's copy
#           of the config (op25b.toml) with, unless the config has its own [control],
#           a control socket op25b.sock there: op25b stats --socket /run/op25b-lab/op25b.sock
#   reload  copy the config (--config, default config/lab.toml) again, send op25b
#           SIGHUP and print the log line that says what op25b made of it
#   down    stop the processes this script started, delete the namespaces, remove
#           state (safe when nothing or only part of the lab exists);
#           --save-log FILE keeps a copy of op25b's log (with its final counters)
#   status  show namespaces, devices, addresses, routes, processes, op25b's log tail
#   mail    show the messages the outside SMTP servers accepted: the MX (203.0.113.25,
#           2001:db8:203::25) and the ISP relay (198.51.100.25, 2001:db8:25::25); each
#           logs to mail-mx.jsonl / mail-relay.jsonl in the state dir
#   capture record with tcpdump, on op25b-sub inside op25b-lab-sub, both directions:
#           every packet the subscribers send before op25b judges it, and what op25b
#           sends them (answers, forwarded replies). A file to give `op25b replay`.
#           --seconds N: for N seconds (default 10) while you make traffic;
#           --traffic: for the lab's own five connections (dynamic to MX:25 over IPv4
#           and IPv6, dynamic to MX:587 and relay:25, static to MX:25), then stop
# Environment: OP25B_LAB_STATE (state dir, default /run/op25b-lab), RUST_LOG (default
# info), OP25B_LAB_WAIT (seconds to wait for the TUN devices, default 5).
#
# Only the two lab namespaces and the processes recorded in the state dir are ever
# touched: the root namespace's network configuration is not.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    # The header comment above is the help text.
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}" >&2
    exit 2
}

CMD="${1:-}"
[[ -n "$CMD" ]] || usage
shift
BIN="$LAB_REPO_DIR/target/release/op25b"
CONFIG="$LAB_REPO_DIR/config/lab.toml"
SAVE_LOG=""
CAPTURE_FILE=""
CAPTURE_SECONDS=10
CAPTURE_TRAFFIC=0
if [[ "$CMD" == capture ]]; then
    [[ $# -ge 1 && "$1" != -* ]] || usage
    CAPTURE_FILE=$(abspath "$1")
    shift
fi
while (($#)); do
    case "$1" in
        --seconds) [[ $# -ge 2 && "$2" =~ ^[0-9]+$ && "$2" -ge 1 && "$2" -le 3600 ]] || usage
            CAPTURE_SECONDS=$2; shift 2 ;;
        --traffic) CAPTURE_TRAFFIC=1; shift ;;
        --bin) [[ $# -ge 2 ]] || usage; BIN=$(abspath "$2"); shift 2 ;;
        --bin=*) BIN=$(abspath "${1#*=}"); shift ;;
        --config) [[ $# -ge 2 ]] || usage; CONFIG=$(abspath "$2"); shift 2 ;;
        --config=*) CONFIG=$(abspath "${1#*=}"); shift ;;
        --save-log) [[ $# -ge 2 ]] || usage; SAVE_LOG=$(abspath "$2"); shift 2 ;;
        --save-log=*) SAVE_LOG=$(abspath "${1#*=}"); shift ;;
        -h | --help) usage ;;
        *) err "unknown argument: $1"; usage ;;
    esac
done

STATE="$LAB_STATE_DIR"
OP25B_PID="$STATE/op25b.pid"
OP25B_LOG="$STATE/op25b.log"
RUN_CONFIG="$STATE/op25b.toml"
SERVE_PID="$STATE/serve.pid"
SERVE_OUT="$STATE/serve.out"
SERVE_LOG="$STATE/serve.jsonl"
MAIL_SERVERS=(mx relay)
WAIT_S="${OP25B_LAB_WAIT:-5}"

# ------------------------------------------------------------------ down

lab_down() {
    # Processes first: op25b holds the TUN devices, the server sits in op25b-lab-inet.
    stop_recorded "$OP25B_PID" "op25b" "op25b"
    stop_recorded "$SERVE_PID" "labnet.py" "labnet.py serve"
    if [[ -n "$SAVE_LOG" && -e "$OP25B_LOG" ]]; then
        cp -f "$OP25B_LOG" "$SAVE_LOG" && info "op25b log saved to $SAVE_LOG"
    fi
    local ns pids
    for ns in "$LAB_NS_SUB" "$LAB_NS_INET"; do
        netns_exists "$ns" || continue
        pids=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ' || true)
        if [[ -n "${pids// /}" ]]; then
            # Not ours to kill: the namespace lives on (unnamed) until they exit.
            warn "processes still inside $ns (not started by lab.sh, left alone): $pids"
        fi
        info "deleting netns $ns"
        ip netns delete "$ns"
    done
    if [[ -d "$STATE" ]]; then
        rm -f "$OP25B_PID" "$OP25B_LOG" "$SERVE_PID" "$SERVE_OUT" "$SERVE_LOG" "$RUN_CONFIG"
        local m
        for m in "${MAIL_SERVERS[@]}"; do rm -f "$STATE/mail-$m.jsonl"; done
        rmdir "$STATE" 2>/dev/null || warn "state dir $STATE not empty, left in place"
    fi
}

# ------------------------------------------------------------------ status

lab_healthy() {
    netns_exists "$LAB_NS_SUB" && netns_exists "$LAB_NS_INET" &&
        recorded_pid "$OP25B_PID" op25b >/dev/null &&
        recorded_pid "$SERVE_PID" labnet.py >/dev/null &&
        link_exists "$LAB_NS_SUB" "$LAB_TUN_SUB" &&
        link_exists "$LAB_NS_INET" "$LAB_TUN_UP"
}

lab_status() {
    local ns pid rc=0
    echo "state dir: $STATE"
    for ns in "$LAB_NS_SUB" "$LAB_NS_INET"; do
        if netns_exists "$ns"; then
            echo "netns $ns: present"
            ip -n "$ns" -br link | sed 's/^/    link  /'
            ip -n "$ns" -br addr | sed 's/^/    addr  /'
            ip -n "$ns" route | sed 's/^/    route /'
            ip -n "$ns" -6 route | sed 's/^/    route /'
        else
            echo "netns $ns: absent"
            rc=1
        fi
    done
    if pid=$(recorded_pid "$OP25B_PID" op25b); then
        echo "op25b: running, pid $pid: $(proc_cmdline "$pid")"
    elif [[ -e "$OP25B_PID" ]]; then
        echo "op25b: NOT running (stale pid file $OP25B_PID)"; rc=1
    else
        echo "op25b: not started"; rc=1
    fi
    if pid=$(recorded_pid "$SERVE_PID" labnet.py); then
        echo "labnet.py serve: running, pid $pid"
    elif [[ -e "$SERVE_PID" ]]; then
        echo "labnet.py serve: NOT running (stale pid file $SERVE_PID)"; rc=1
    else
        echo "labnet.py serve: not started"; rc=1
    fi
    if [[ -e "$OP25B_LOG" ]]; then
        echo "op25b log ($OP25B_LOG), last 15 lines:"
        tail -n 15 "$OP25B_LOG" | sed 's/^/    /'
    fi
    return "$rc"
}

# ------------------------------------------------------------------ up

UP_DONE=0
on_up_exit() {
    local rc=$?
    trap - EXIT INT TERM
    if ((UP_DONE == 0)); then
        ((rc != 0)) || rc=1
        err "lab.sh up failed (exit $rc): tearing down"
        if [[ -s "$OP25B_LOG" ]]; then
            err "op25b log ($OP25B_LOG):"
            sed 's/^/    /' "$OP25B_LOG" >&2
        fi
        if [[ -s "$SERVE_OUT" ]]; then
            err "labnet.py serve output:"
            sed 's/^/    /' "$SERVE_OUT" >&2
        fi
        SAVE_LOG=""
        lab_down || err "teardown after failed up also failed: run scripts/lab.sh down"
    fi
    exit "$rc"
}

# wait_for DESC CMD...: poll CMD every 0.1 s for $WAIT_S seconds; fail if op25b died.
wait_for() {
    local desc=$1 i n
    shift
    n=$(awk -v s="$WAIT_S" 'BEGIN { printf "%d", s * 10 }')
    for ((i = 0; i < n; i++)); do
        "$@" && return 0
        if [[ -e "$OP25B_PID" ]] && ! recorded_pid "$OP25B_PID" op25b >/dev/null; then
            err "op25b exited while waiting for: $desc"
            return 1
        fi
        sleep 0.1
    done
    err "timed out after ${WAIT_S}s waiting for: $desc"
    return 1
}

serve_ready() { grep -q '"listening"' "$SERVE_OUT" 2>/dev/null; }

lab_up() {
    require_cmds ip python3
    [[ -x "$BIN" ]] || die "op25b binary not found or not executable: $BIN (build it: cargo build --release, or pass --bin)"
    [[ -r "$CONFIG" ]] || die "config not readable: $CONFIG"
    local name
    for name in "$LAB_NS_SUB" "$LAB_NS_INET" "$LAB_TUN_SUB" "$LAB_TUN_UP"; do
        grep -q "\"$name\"" "$CONFIG" ||
            warn "$CONFIG does not mention \"$name\": op25b may not create the devices this lab expects"
    done

    if lab_healthy; then
        info "lab already up (op25b pid $(recorded_pid "$OP25B_PID" op25b)); nothing to do"
        return 0
    fi
    if netns_exists "$LAB_NS_SUB" || netns_exists "$LAB_NS_INET" || [[ -d "$STATE" ]]; then
        info "partial lab found: tearing it down first"
        lab_down
    fi

    trap on_up_exit EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    mkdir -p "$STATE"
    chmod 700 "$STATE"

    local python
    python=$(smtp_python) ||
        die "the lab's SMTP servers need aiosmtpd (python3-aiosmtpd) under /usr/bin/python3: run scripts/setup.sh"

    info "creating netns $LAB_NS_SUB (subscribers)"
    ip netns add "$LAB_NS_SUB"
    ip -n "$LAB_NS_SUB" link set lo up
    ip -n "$LAB_NS_SUB" addr add "$LAB_DYN4/32" dev lo
    ip -n "$LAB_NS_SUB" addr add "$LAB_STATIC4/32" dev lo
    ip -n "$LAB_NS_SUB" addr add "$LAB_DYN6/128" dev lo nodad
    ip -n "$LAB_NS_SUB" addr add "$LAB_STATIC6/128" dev lo nodad

    info "creating netns $LAB_NS_INET (outside)"
    ip netns add "$LAB_NS_INET"
    ip -n "$LAB_NS_INET" link set lo up
    ip -n "$LAB_NS_INET" addr add "$LAB_MX4/32" dev lo
    ip -n "$LAB_NS_INET" addr add "$LAB_RELAY4/32" dev lo
    ip -n "$LAB_NS_INET" addr add "$LAB_MX6/128" dev lo nodad
    ip -n "$LAB_NS_INET" addr add "$LAB_RELAY6/128" dev lo nodad

    info "starting the SMTP servers (labnet.py serve, ports ${LAB_PORTS[*]}) in $LAB_NS_INET"
    local port_args=() p
    for p in "${LAB_PORTS[@]}"; do port_args+=(--port "$p"); done
    for p in "$LAB_MX4" "$LAB_MX6"; do port_args+=(--name "$p=mx"); done
    for p in "$LAB_RELAY4" "$LAB_RELAY6"; do port_args+=(--name "$p=relay"); done
    ip netns exec "$LAB_NS_INET" "$python" "$LAB_LABNET" serve "${port_args[@]}" \
        --log "$SERVE_LOG" --mail-dir "$STATE" </dev/null >"$SERVE_OUT" 2>&1 &
    record_pid "$SERVE_PID" "$!"
    wait_for "labnet.py serve to listen" serve_ready

    write_run_config
    info "starting op25b: $BIN run --config $RUN_CONFIG (log: $OP25B_LOG)"
    # NO_COLOR: tracing-subscriber writes ANSI colours even into a file otherwise.
    NO_COLOR=1 RUST_LOG="${RUST_LOG:-info}" "$BIN" run --config "$RUN_CONFIG" </dev/null >"$OP25B_LOG" 2>&1 &
    record_pid "$OP25B_PID" "$!"

    wait_for "TUN $LAB_TUN_SUB up in netns $LAB_NS_SUB" link_is_up "$LAB_NS_SUB" "$LAB_TUN_SUB"
    wait_for "TUN $LAB_TUN_UP up in netns $LAB_NS_INET" link_is_up "$LAB_NS_INET" "$LAB_TUN_UP"

    info "adding routes"
    ip -n "$LAB_NS_SUB" route add default dev "$LAB_TUN_SUB" src "$LAB_DYN4"
    ip -n "$LAB_NS_SUB" -6 route add default dev "$LAB_TUN_SUB" src "$LAB_DYN6"
    ip -n "$LAB_NS_INET" route add "$LAB_SUB_NET4" dev "$LAB_TUN_UP"
    ip -n "$LAB_NS_INET" -6 route add "$LAB_SUB_NET6" dev "$LAB_TUN_UP"

    # Give op25b a moment to fail on something it does after creating the devices.
    sleep 0.3
    recorded_pid "$OP25B_PID" op25b >/dev/null || { err "op25b exited after start-up"; return 1; }
    recorded_pid "$SERVE_PID" labnet.py >/dev/null || { err "labnet.py serve exited"; return 1; }

    UP_DONE=1
    trap - EXIT INT TERM
    info "lab is up: op25b pid $(recorded_pid "$OP25B_PID" op25b), state in $STATE"
    info "try: ip netns exec $LAB_NS_SUB $LAB_LABNET connect --src $LAB_DYN4 $LAB_MX4 25"
}

# write_run_config: $CONFIG copied to $RUN_CONFIG (same line numbers), with a control
# socket in the state dir appended unless the config has a [control] section.
write_run_config() {
    local tmp="$RUN_CONFIG.tmp"
    cp "$CONFIG" "$tmp"
    if ! grep -q '^[[:space:]]*\[control\]' "$CONFIG"; then
        printf '\n# Added by scripts/lab.sh: op25b stats --socket %s\n[control]\nsocket = "%s"\n' \
            "$STATE/op25b.sock" "$STATE/op25b.sock" >>"$tmp"
    fi
    mv -f "$tmp" "$RUN_CONFIG"
}

# ------------------------------------------------------------------ reload

lab_reload() {
    local pid before i line
    [[ -r "$CONFIG" ]] || die "config not readable: $CONFIG"
    pid=$(recorded_pid "$OP25B_PID" op25b) || die "op25b is not running: scripts/lab.sh up"
    before=$(grep -c 'config reload' "$OP25B_LOG" || true)
    write_run_config
    kill -HUP "$pid"
    for ((i = 0; i < 50; i++)); do
        if (($(grep -c 'config reload' "$OP25B_LOG" || true) > before)); then
            line=$(grep 'config reload' "$OP25B_LOG" | tail -n 1)
            # Without the timestamp: "INFO op25b: config reloaded: ..."
            printf '%s\n' "${line#* }" | sed 's/^ *//'
            grep -q 'config reloaded' <<<"$line"
            return
        fi
        sleep 0.1
    done
    die "op25b (pid $pid) logged nothing about the reload within 5 s"
}

# smtp_python: an interpreter with aiosmtpd (the system one, where Debian puts it).
smtp_python() {
    local py
    for py in /usr/bin/python3 "$(command -v python3 || true)"; do
        [[ -n "$py" && -x "$py" ]] || continue
        "$py" -c 'import aiosmtpd' 2>/dev/null && { printf '%s\n' "$py"; return 0; }
    done
    return 1
}

# ------------------------------------------------------------------ mail

lab_mail() {
    require_cmds python3
    local -a files=()
    local m
    for m in "${MAIL_SERVERS[@]}"; do files+=("$m=$STATE/mail-$m.jsonl"); done
    python3 - "${files[@]}" <<'PY'
import json, sys
addrs = {"mx": "203.0.113.25, 2001:db8:203::25", "relay": "198.51.100.25, 2001:db8:25::25"}
for arg in sys.argv[1:]:
    name, _, path = arg.partition("=")
    try:
        with open(path, encoding="utf-8") as f:
            msgs = [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        msgs = []
    print("%s (%s): %d message%s" % (name, addrs.get(name, "?"), len(msgs), "" if len(msgs) == 1 else "s"))
    for m in msgs:
        subject = next((l[8:].strip() for l in m["data"].splitlines() if l.lower().startswith("subject:")), "")
        local = ("[%s]" if ":" in m["local"] else "%s") % m["local"]
        print("  to %s:%d from %s  <%s> -> %s  %s" % (local, m["local_port"], m["peer"], m["mail_from"],
              ", ".join("<%s>" % r for r in m["rcpt_tos"]), json.dumps(subject)))
PY
}

# ------------------------------------------------------------------ capture

CAPTURE_PID=""
on_capture_exit() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n "$CAPTURE_PID" ]] && kill -0 "$CAPTURE_PID" 2>/dev/null; then
        kill -INT "$CAPTURE_PID" 2>/dev/null || true
        wait "$CAPTURE_PID" 2>/dev/null || true
    fi
    rm -f "$CAPTURE_ERR"
    exit "$rc"
}

lab_capture() {
    require_cmds tcpdump python3
    lab_healthy || die "the lab is not up: scripts/lab.sh up"
    CAPTURE_ERR=$(mktemp)
    trap on_capture_exit EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    # --immediate-mode: each packet handed over as it comes (else the last block of
    # the ring can be lost at SIGINT); -U: written at once; -s 0: whole packets.
    ip netns exec "$LAB_NS_SUB" tcpdump -n --immediate-mode -U -s 0 -i "$LAB_TUN_SUB" -w "$CAPTURE_FILE" \
        2>"$CAPTURE_ERR" &
    CAPTURE_PID=$!
    local i
    for ((i = 0; i < 50; i++)); do
        grep -q "listening on" "$CAPTURE_ERR" && break
        kill -0 "$CAPTURE_PID" 2>/dev/null || { cat "$CAPTURE_ERR" >&2; die "tcpdump failed"; }
        sleep 0.1
    done
    grep -q "listening on" "$CAPTURE_ERR" || die "tcpdump did not start within 5 s"
    if ((CAPTURE_TRAFFIC)); then
        info "capturing on $LAB_TUN_SUB in $LAB_NS_SUB (both directions) while the lab's five connections run"
        local c src dst port
        for c in "$LAB_DYN4 $LAB_MX4 25" "$LAB_DYN4 $LAB_MX4 587" "$LAB_DYN4 $LAB_RELAY4 25" \
            "$LAB_STATIC4 $LAB_MX4 25" "$LAB_DYN6 $LAB_MX6 25"; do
            read -r src dst port <<<"$c"
            ip netns exec "$LAB_NS_SUB" python3 "$LAB_LABNET" connect --src "$src" --timeout 2 \
                "$dst" "$port" >/dev/null
        done
        sleep 0.3  # the last FIN exchange
    else
        info "capturing on $LAB_TUN_SUB in $LAB_NS_SUB (both directions) for ${CAPTURE_SECONDS}s: make traffic now"
        sleep "$CAPTURE_SECONDS"
    fi
    kill -INT "$CAPTURE_PID"
    wait "$CAPTURE_PID" 2>/dev/null || true
    CAPTURE_PID=""
    info "$(grep -m1 'packets captured' "$CAPTURE_ERR" || echo "tcpdump stopped"): $CAPTURE_FILE"
    info "try: op25b replay --config config/lab.toml $CAPTURE_FILE"
}

case "$CMD" in
    up) require_root; lab_up ;;
    down) require_root; lab_down; info "lab is down" ;;
    status) require_root; lab_status ;;
    mail) require_root; lab_mail ;;
    reload) require_root; lab_reload ;;
    capture) require_root; lab_capture ;;
    -h | --help | help) usage ;;
    *) err "unknown command: $CMD"; usage ;;
esac
