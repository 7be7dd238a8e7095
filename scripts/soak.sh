#!/usr/bin/env bash
# op25b soak: scripts/soak.py is the program (options, checks, exit statuses: --help).
exec python3 "$(dirname "${BASH_SOURCE[0]}")/soak.py" "$@"
