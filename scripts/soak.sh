#!/usr/bin/env bash
# op25b soak: TCP and UDP load both ways, blocked SYNs and a SIGHUP every 200 ms
# (two valid configs and an invalid one) for a bounded time, then checks op25b is
# alive, every reload went as expected, the counters add up, no connection was
# reset, RSS stayed flat and the log holds only the expected refusals. The program
# is scripts/soak.py; options and exit statuses: scripts/soak.sh --help.
#   scripts/soak.sh                  # 10 minutes
#   scripts/soak.sh --seconds 20     # the CI smoke run
set -euo pipefail
command -v python3 >/dev/null 2>&1 ||
    { echo "[soak] error: missing python3 (scripts/setup.sh --bench installs it)" >&2; exit 1; }
exec python3 "$(dirname "${BASH_SOURCE[0]}")/soak.py" "$@"
