#!/usr/bin/env bash
# op25b benchmark: scripts/bench.py is the program (options, figures, exit statuses: --help).
exec python3 "$(dirname "${BASH_SOURCE[0]}")/bench.py" "$@"
