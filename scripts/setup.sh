#!/usr/bin/env bash
# Installs the system packages the lab, the tests and the benchmark need
# (Debian/Ubuntu, as root). Idempotent: does nothing when all are present.
#   scripts/setup.sh          # lab + tests
#   scripts/setup.sh --bench  # also iperf3 and nftables for scripts/bench.sh
set -euo pipefail

need=(ip:iproute2 ping:iputils-ping traceroute:traceroute python3:python3 tcpdump:tcpdump)
need+=(aiosmtpd:python3-aiosmtpd) # tests/actions.rs: SMTP servers under /usr/bin/python3
if [[ "${1:-}" == "--bench" ]]; then
    need+=(iperf3:iperf3 nft:nftables)
fi

missing=()
for pair in "${need[@]}"; do
    cmd=${pair%%:*} pkg=${pair#*:}
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
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
echo "setup: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
