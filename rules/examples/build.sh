#!/usr/bin/env bash
# Builds the example program rules (*.c here) into WebAssembly modules.
#   rules/examples/build.sh [OUT_DIR]    # default: rules/examples/build
# Needs clang and wasm-ld (Debian: clang lld; scripts/setup.sh installs them).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/build}
mkdir -p "$out"
for tool in clang wasm-ld; do
    command -v "$tool" >/dev/null || { echo "build.sh: $tool not found; run scripts/setup.sh" >&2; exit 1; }
done
for src in "$here"/*.c; do
    name=$(basename "$src" .c)
    # -nostdlib: no libc in a program; --no-entry: a library of one export;
    # __heap_base: where op25b copies the packet.
    clang --target=wasm32 -O2 -nostdlib -ffreestanding -Wall -Werror \
        -Wl,--no-entry -Wl,--export=__heap_base -Wl,--strip-all \
        -o "$out/$name.wasm" "$src"
done
ls "$out"/*.wasm
