#!/usr/bin/env bash
# A CI job of mail software that wants op25b as its gateway, with op25b from its
# Debian package (no op25b repository needed): bring the lab up with its SMTP
# servers, send mail from the subscriber namespace with the job's own client
# (swaks here), assert what arrived and what op25b refused, take the lab down.
#
#   apt-get install ./op25b_*.deb swaks libio-socket-inet6-perl   # as root (the last: swaks over IPv6)
#   examples/ci/mail-through-op25b.sh        # as root; exit 0 when all checks pass
#
# The lab's addresses (op25b lab --help, README "How the lab is wired"):
# subscribers 100.64.1.10 / 2001:db8:100:1::10 (dynamic pool) and 100.64.9.10
# (static, exempt); outside, the MX 203.0.113.25 / 2001:db8:203::25 and the
# ISP's relay 198.51.100.25, SMTP on 25, 587 and 465.
# Environment: OP25B (the op25b to run, default op25b on PATH), LAB (the lab's
# name, default ci-mail: namespaces ci-mail-sub and ci-mail-inet).
set -euo pipefail

OP25B=${OP25B:-op25b}
LAB=${LAB:-ci-mail}
lab() { "$OP25B" lab "$1" --name "$LAB" "${@:2}"; }

trap 'lab down >/dev/null' EXIT
lab up --servers

failed=0
# expect OUTCOME DESCRIPTION SWAKS-ARGS...: sends one message from the subscriber
# namespace; OUTCOME is "sent" (swaks exit 0) or "refused" (no connection).
expect() {
    local want=$1 what=$2 got rc=0 out
    shift 2
    out=$(lab exec -- swaks --silent 1 --timeout 5 --helo subscriber.example \
        --from alice@subscriber.example --to bob@outside.example --header "Subject: $what" "$@" 2>&1) || rc=$?
    case $rc in
        0) got=sent ;;
        2) got=refused ;;  # swaks: error connecting to the server
        *) got="error (swaks exit $rc)" ;;
    esac
    if [[ $got == "$want" ]]; then
        echo "ok    $what: $got"
    else
        echo "FAIL  $what: $got, expected $want"
        sed 's/^/      /' <<<"$out"
        failed=$((failed + 1))
    fi
}

expect sent    "dynamic to MX:587"        --server 203.0.113.25 --port 587
expect sent    "dynamic to relay:25"      --server 198.51.100.25 --port 25
expect sent    "static to MX:25"          --server 203.0.113.25 --port 25 --local-interface 100.64.9.10
expect sent    "dynamic v6 to MX:465"     --server 2001:db8:203::25 --port 465
expect refused "dynamic to MX:25"         --server 203.0.113.25 --port 25
expect refused "dynamic v6 to MX:25"      --server 2001:db8:203::25 --port 25

# What arrived: one JSON line a message; nothing sent to MX:25 from the pool.
mail=$(lab mail --json)
arrived() { grep -c "$1" <<<"$mail" || true; }
check() {
    if [[ $2 == "$3" ]]; then echo "ok    $1: $2"; else echo "FAIL  $1: $2, expected $3"; failed=$((failed + 1)); fi
}
check "messages at the MX" "$(arrived '"server":"mx"')" 3
check "messages at the relay" "$(arrived '"server":"relay"')" 1
check "messages from the pool at MX:25" \
    "$(grep '"server":"mx"' <<<"$mail" | grep '"local_port":25,' | grep -c '"peer":"100.64.1.10"' || true)" 0
lab mail

echo "ci example: $((6 + 3 - failed)) passed, $failed failed"
((failed == 0))
