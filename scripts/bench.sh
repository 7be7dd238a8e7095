#!/usr/bin/env bash
# op25b benchmark: kernel forwarding, op25b and the TUN design's ceiling through the
# same lab (`op25b lab up`), in one run. The program is scripts/bench.py; options,
# figures and exit statuses: scripts/bench.sh --help.
set -euo pipefail
command -v python3 >/dev/null 2>&1 ||
    { echo "[bench] error: missing python3 (scripts/setup.sh --bench installs it)" >&2; exit 1; }
exec python3 "$(dirname "${BASH_SOURCE[0]}")/bench.py" "$@"
