#!/usr/bin/env bash
# Records a capture of the lab (op25b lab up) for `op25b replay`: tcpdump on the
# subscriber-side TUN inside the subscriber namespace, both directions (every packet
# the subscribers send before op25b judges it, and what comes back), raw IP.
#   scripts/capture.sh FILE [--seconds N]   # for N seconds (default 10): make traffic meanwhile
#   scripts/capture.sh FILE --traffic       # the lab's five connections (op25b lab traffic)
# Environment: OP25B (default op25b on PATH), LAB (the lab's name, default op25b-lab).
set -euo pipefail
[[ $# -ge 1 && $1 != -* ]] || { sed -n '2,7s/^# \?//p' "$0" >&2; exit 2; }
file=$(realpath -m "$1") seconds=10 traffic=0
while shift && (($#)); do
    case $1 in
        --seconds) seconds=${2:?--seconds N}; shift ;;
        --traffic) traffic=1 ;;
        *) echo "capture.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
op25b=${OP25B:-op25b} name=${LAB:-op25b-lab}
tun=$("$op25b" lab status --json --name "$name" | sed -n 's/.*"sub_tun": "\(.*\)".*/\1/p' | head -n 1)
err=$(mktemp)
# --immediate-mode, -U: each packet written as it comes (else the last block can be lost at SIGINT);
# -B: a ring of 128 whole (-s 0) packets, as the five connections come in a few milliseconds.
"$op25b" lab exec --name "$name" -- tcpdump -n --immediate-mode -U -s 0 -B 32768 -i "$tun" -w "$file" 2>"$err" &
pid=$!
trap 'kill -INT $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -f "$err"' EXIT
for _ in $(seq 50); do grep -q "listening on" "$err" && break; sleep 0.1; done
grep -q "listening on" "$err" || { cat "$err" >&2; echo "capture.sh: tcpdump did not start" >&2; exit 1; }
if ((traffic)); then
    echo "[lab] capturing on $tun in $name-sub (both directions) while the lab's five connections run"
    "$op25b" lab traffic --name "$name" >/dev/null
    sleep 0.3 # the last FIN exchange
else
    echo "[lab] capturing on $tun in $name-sub (both directions) for ${seconds}s: make traffic now"
    sleep "$seconds"
fi
kill -INT $pid
wait $pid 2>/dev/null || true
echo "[lab] $(grep -m1 'packets captured' "$err" || echo "tcpdump stopped"): $file"
echo "[lab] try: op25b replay --config config/lab.toml $file"
