#!/usr/bin/env bash
# Installs the system packages the lab, the tests and the benchmark need
# (Debian/Ubuntu, as root). Idempotent: does nothing when all are present.
#   scripts/setup.sh          # lab + tests: iproute2 iputils-ping traceroute python3
#                             #   tcpdump python3-aiosmtpd systemd util-linux logrotate g++ (libFuzzer) curl
#                             #   clang lld (the example program rules, rules/examples/build.sh)
#                             #   prometheus python3-prometheus-client (tests/metrics.rs: promtool
#                             #   lints /metrics and the rules; a strict OpenMetrics parser)
#   scripts/setup.sh --bench  # also iperf3 and nftables for scripts/bench.sh
#   scripts/setup.sh --package  # also cargo-deb, man-db, dpkg-dev, lintian, swaks for scripts/package_test.sh
# (flags combine)
# When another apt or dpkg holds the package lock (unattended-upgrades on a fresh
# machine, say), it waits for it, up to OP25B_APT_LOCK_WAIT seconds (default 600),
# and says which process it waits for.
set -euo pipefail

need=(ip:iproute2 ping:iputils-ping traceroute:traceroute python3:python3 tcpdump:tcpdump)
# tests/actions.rs runs aiosmtpd under /usr/bin/python3 (the lab's servers are op25b's own).
need+=(aiosmtpd:python3-aiosmtpd)
# tests/service.rs: systemd-analyze verify, op25b as nobody under setpriv/unshare.
need+=(systemd-analyze:systemd setpriv:util-linux unshare:util-linux)
# tests/logs_and_state.rs rotates the events file with the packaged logrotate file.
need+=(logrotate:logrotate)
# scripts/fuzz.sh: libfuzzer-sys compiles libFuzzer with the C++ compiler.
need+=(c++:g++)
# The example program rules are C built for wasm32 by the tests (rules/examples/build.sh).
need+=(clang:clang wasm-ld:lld)
# tests/metrics.rs: promtool check metrics / check rules / test rules, and
# the OpenMetrics answer through the Python client's strict parser.
need+=(promtool:prometheus prometheus_client:python3-prometheus-client)
# tests/control_api.rs: the control socket's API as an operator calls it.
need+=(curl:curl)
bench=0 package=0
for arg in "$@"; do
    case $arg in
        --bench) bench=1 ;;
        --package) package=1 ;;
        *) echo "setup: unknown option $arg (--bench, --package)" >&2; exit 2 ;;
    esac
done
if ((bench)); then
    need+=(iperf3:iperf3 nft:nftables)
fi
if ((package)); then
    # scripts/package_test.sh: man pages through man, Depends from
    # dpkg-shlibdeps, lintian on the .deb.
    need+=(man:man-db dpkg-shlibdeps:dpkg-dev lintian:lintian)
    # The packaged CI example (examples/ci/mail-through-op25b.sh) sends with swaks, over IPv6 too.
    need+=(swaks:swaks inet6:libio-socket-inet6-perl)
    if ! cargo deb --version >/dev/null 2>&1; then
        echo "setup: installing cargo-deb (cargo install cargo-deb --locked)" >&2
        cargo install cargo-deb --locked --quiet
    fi
fi

have() {
    case $1 in
        aiosmtpd | prometheus_client) [[ -x /usr/bin/python3 ]] && /usr/bin/python3 -c "import $1" 2>/dev/null ;;
        inet6) perl -MIO::Socket::INET6 -e 1 2>/dev/null ;;
        *) command -v "$1" >/dev/null 2>&1 ;;
    esac
}

missing=()
for pair in "${need[@]}"; do
    cmd=${pair%%:*} pkg=${pair#*:}
    have "$cmd" || missing+=("$pkg")
done
if ((${#missing[@]} == 0)); then
    exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "setup: missing packages ${missing[*]}; run as root to install them" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: missing packages ${missing[*]} and no apt-get to install them" >&2
    exit 1
fi

LOCK_WAIT=${OP25B_APT_LOCK_WAIT:-600}
# lock_holders: "PID (COMMAND)" of every process holding one of dpkg's or apt's locks.
lock_holders() {
    local f pids=() p
    for f in /var/lib/dpkg/lock-frontend /var/lib/dpkg/lock /var/lib/apt/lists/lock \
        /var/cache/apt/archives/lock; do
        [[ -e "$f" ]] || continue
        if command -v fuser >/dev/null 2>&1; then
            # shellcheck disable=SC2207  # pids are plain numbers
            pids+=($(fuser "$f" 2>/dev/null || true))
        fi
    done
    for p in $(printf '%s\n' "${pids[@]}" | sort -un); do
        printf '%s (%s) ' "$p" "$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | cut -c1-60)"
    done
}
# say_if_locked: one line naming what apt will wait for, if the lock is taken.
say_if_locked() {
    local who
    who=$(lock_holders)
    if [[ -n "$who" ]]; then
        echo "setup: another package manager holds the dpkg lock: ${who% }; waiting up to ${LOCK_WAIT}s for it" >&2
    fi
}

echo "setup: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt_opts=(-o "DPkg::Lock::Timeout=$LOCK_WAIT")
say_if_locked
apt-get "${apt_opts[@]}" update -qq
say_if_locked
apt-get "${apt_opts[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Only promtool is wanted: where systemd runs, the package's own server (which
# it enables and starts on :9090) is stopped and disabled again.
if [[ " ${missing[*]} " == *" prometheus "* && -d /run/systemd/system ]]; then
    systemctl disable --now prometheus.service >/dev/null 2>&1 || true
fi
