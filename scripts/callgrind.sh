#!/usr/bin/env bash
# Instructions per packet inside Router::handle (inclusive), counted by
# callgrind: stable across runs, unlike timings. Each case runs N packets
# through a router with the lab config (benches/instructions.rs).
#   scripts/callgrind.sh [--no-build]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v valgrind >/dev/null || { echo "callgrind.sh: valgrind is missing (apt-get install valgrind)" >&2; exit 1; }
[[ "${1:-}" == "--no-build" ]] || cargo bench --bench instructions --no-run --quiet
bin=$(find target/release/deps -maxdepth 1 -type f -executable -name 'instructions-*' -printf '%T@ %p\n' | sort -rn | head -n 1 | cut -d' ' -f2)
[[ -n "$bin" ]] || { echo "callgrind.sh: no instructions bench binary; run without --no-build" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
n=100000
# The program cases use the example programs, built from source (clang, lld).
rules/examples/build.sh "$tmp/programs" >/dev/null
export OP25B_PROGRAMS="$tmp/programs"
cases=(forward_tcp4 forward_tcp6 forward_udp4 blocked_syn4 blocked_syn4_new blocked_syn4_rst blocked_ack4 redirect_data4 redirect_flood4
    program_unseen4 count_rule_unseen4 program_seen4 tunnel_gre4 tunnel_gre_blocked4)
printf '%-17s %s\n' case instructions/packet
for case in "${cases[@]}"; do
    valgrind --tool=callgrind --callgrind-out-file="$tmp/out" --toggle-collect='*Router::handle*' \
        "$bin" "$case" "$n" >/dev/null 2>"$tmp/err" || { cat "$tmp/err" >&2; exit 1; }
    total=$(awk '/^summary:/ { print $2 }' "$tmp/out")
    ((total > 0)) || { echo "callgrind.sh: nothing counted inside Router::handle (inlined?)" >&2; exit 1; }
    printf '%-17s %s\n' "$case" "$((total / n))"
done
