#!/usr/bin/env bash
# op25b benchmark, kernel forwarding vs op25b on namespaces made for the run. The
# program is scripts/bench.py; this name stays for its callers (scripts/test.sh, the
# docs). Options, figures and exit statuses: scripts/bench.sh --help.
set -euo pipefail
command -v python3 >/dev/null 2>&1 ||
    { echo "[bench] error: missing python3 (scripts/setup.sh --bench installs it)" >&2; exit 1; }
exec python3 "$(dirname "${BASH_SOURCE[0]}")/bench.py" "$@"
