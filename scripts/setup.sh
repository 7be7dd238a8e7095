#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages op25b's demo, tests and benchmark need, as root;
# does nothing when all are present. Flags combine:
#   scripts/setup.sh --demo     # only what the demo needs: the C linker and libc cargo builds with
#   scripts/setup.sh            # the tests' too (each named below with who needs it)
#   scripts/setup.sh --bench    # also iperf3 and nftables for scripts/bench.sh
#   scripts/setup.sh --package  # also cargo-deb, man-db, dpkg-dev, lintian, swaks for scripts/package_test.sh
# When another apt or dpkg holds the package lock (unattended-upgrades on a fresh
# machine), it says which process and waits up to OP25B_APT_LOCK_WAIT seconds (600).
set -euo pipefail

need=(cc:gcc crt1.o:libc6-dev) demo=0 bench=0 package=0
for arg in "$@"; do
    case $arg in
        --demo) demo=1 ;;
        --bench) bench=1 ;;
        --package) package=1 ;;
        *) echo "setup: unknown option $arg (--demo, --bench, --package)" >&2; exit 2 ;;
    esac
done
# Each with who needs it: tests/netns.rs, actions.rs (ip, ping, tests/support/smtp.py), capture.sh;
# tests/service.rs (systemd-analyze verify, op25b as nobody) and logs_and_state.rs (logrotate);
# fuzz.sh (libFuzzer is C++), the example program rules (C for wasm32, rules/examples/build.sh);
# tests/metrics.rs (promtool, the Python client's strict OpenMetrics parser), control_api.rs (curl).
((demo)) || need+=(ip:iproute2 ping:iputils-ping python3:python3 tcpdump:tcpdump systemd-analyze:systemd
    setpriv:util-linux unshare:util-linux logrotate:logrotate c++:g++ clang:clang wasm-ld:lld
    promtool:prometheus prometheus_client:python3-prometheus-client curl:curl)
((bench)) && need+=(iperf3:iperf3 nft:nftables)
if ((package)); then
    # Man pages through man, Depends from dpkg-shlibdeps, lintian; the CI example's swaks (IPv6 too).
    need+=(man:man-db dpkg-shlibdeps:dpkg-dev lintian:lintian swaks:swaks inet6:libio-socket-inet6-perl)
    if ! cargo deb --version >/dev/null 2>&1; then
        echo "setup: installing cargo-deb (cargo install cargo-deb --locked)" >&2
        cargo install cargo-deb --locked --quiet
    fi
fi

have() {
    case $1 in
        prometheus_client) /usr/bin/python3 -c "import $1" 2>/dev/null ;;
        inet6) perl -MIO::Socket::INET6 -e 1 2>/dev/null ;;
        crt1.o) compgen -G "/usr/lib/*/crt1.o" >/dev/null ;;
        *) command -v "$1" >/dev/null 2>&1 ;;
    esac
}
missing=()
for pair in "${need[@]}"; do have "${pair%%:*}" || missing+=("${pair#*:}"); done
((${#missing[@]})) || exit 0
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
    echo "setup: missing packages ${missing[*]}: install them (as root, with apt-get)" >&2
    exit 1
fi

wait=${OP25B_APT_LOCK_WAIT:-600}
say_if_locked() { # one line naming the processes holding dpkg's or apt's locks, if any
    local who
    who=$(fuser /var/lib/dpkg/lock{-frontend,} /var/lib/apt/lists/lock /var/cache/apt/archives/lock 2>/dev/null |
        xargs -rn1 | sort -un | while read -r p; do printf '%s (%s) ' "$p" "$(tr '\0' ' ' </proc/"$p"/cmdline | cut -c1-60)"; done) || true
    [[ -z $who ]] || echo "setup: another package manager holds the dpkg lock: ${who% }; waiting up to ${wait}s" >&2
}
echo "setup: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
say_if_locked
apt-get -o "DPkg::Lock::Timeout=$wait" update -qq
say_if_locked
apt-get -o "DPkg::Lock::Timeout=$wait" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Only promtool is wanted: where systemd runs, the server the package starts on :9090 is stopped.
if [[ " ${missing[*]} " == *" prometheus "* && -d /run/systemd/system ]]; then
    systemctl disable --now prometheus.service >/dev/null 2>&1 || true
fi
