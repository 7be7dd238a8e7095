#!/usr/bin/env bash
# Builds the Debian package of op25b: a release build, the man pages and shell
# completions generated from the CLI (`op25b man`, `op25b completions`) and
# op25b.toml(5) from the config reference (docs/CONFIG.md) (`op25b man op25b.toml`) into
# target/release/package/, then `cargo deb --no-build`. Prints the .deb's path
# as its last line. Needs cargo-deb (scripts/setup.sh --package installs it).
#   scripts/package.sh              # build and package
#   scripts/package.sh --no-build   # package the release binary already built
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! cargo deb --version >/dev/null 2>&1; then
    echo "package.sh: cargo-deb is missing: cargo install cargo-deb --locked (or scripts/setup.sh --package)" >&2
    exit 1
fi
if [[ "${1:-}" != "--no-build" ]]; then
    cargo build --release --locked
fi

target=$(cargo metadata --format-version 1 --no-deps --locked |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
bin=$target/release/op25b
out=$target/release/package
rm -rf "$out"
mkdir -p "$out/man" "$out/completions"

"$bin" man >"$out/man/op25b.1"
# A page per subcommand and per subcommand of those (op25b-lab-up.1), as --help lists them.
subs() { "$bin" "$@" --help | awk '/^Commands:/ {on = 1; next} on && /^$/ {exit} on && $1 != "help" {print $1}'; }
for sub in $(subs); do
    "$bin" man "$sub" >"$out/man/op25b-$sub.1"
    for subsub in $(subs "$sub"); do "$bin" man "$sub" "$subsub" >"$out/man/op25b-$sub-$subsub.1"; done
done
[[ -s $out/man/op25b-run.1 && -s $out/man/op25b-lab-up.1 ]] || { echo "package.sh: subcommand pages missing" >&2; exit 1; }
# op25b.toml(5): this tree's config reference (docs/CONFIG.md), as roff.
"$bin" man op25b.toml --reference docs/CONFIG.md >"$out/man/op25b.toml.5"
gzip -9n "$out"/man/*.1 "$out"/man/*.5
"$bin" completions bash >"$out/completions/op25b.bash"
"$bin" completions zsh >"$out/completions/_op25b"
"$bin" completions fish >"$out/completions/op25b.fish"

cargo deb --no-build --locked --strip --quiet >/dev/null
deb=$(ls -t "$target"/debian/op25b_*.deb | head -n 1)
echo "$deb"
