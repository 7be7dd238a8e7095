#!/usr/bin/env bash
# Builds the Debian package (scripts/package.sh), runs lintian on it (no error or warning;
# overrides only in packaging/lintian-overrides, each with its reason), installs it with
# dpkg -i, checks what it installed (binary, configs, conffiles, man pages, completions,
# unit, `op25b lab demo` and the CI example examples/ci/mail-through-op25b.sh against the
# installed op25b, licences, changelog), and purges it, also when a check fails. As root.
#   scripts/package_test.sh              # release build, package, test
#   scripts/package_test.sh --no-build   # use the release binary already built
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

[[ $(id -u) -eq 0 ]] || { echo "package_test.sh: run as root (dpkg -i)" >&2; exit 1; }
[[ $(dpkg-query -W -f='${Status}' op25b 2>/dev/null || true) != *" installed" ]] ||
    { echo "package_test.sh: a package op25b is already installed here; remove it first (dpkg --purge op25b)" >&2; exit 1; }

deb=$(scripts/package.sh "$@" | tail -n 1)
[[ -f $deb ]] || { echo "package_test.sh: package.sh made no package ($deb)" >&2; exit 1; }

passed=0 failed=0
check() { # check DESCRIPTION COMMAND...: runs COMMAND, counts and reports the outcome
    local out
    if out=$("${@:2}" 2>&1); then
        passed=$((passed + 1)) && echo "  ok    $1"
    else
        failed=$((failed + 1)) && echo "  FAIL  $1" && sed 's/^/        /' <<<"$out"
    fi
}
installed=0
trap '((!installed)) || dpkg --purge op25b >/dev/null || echo "package_test.sh: dpkg --purge op25b failed" >&2' EXIT

echo "== lintian $deb"
command -v lintian >/dev/null || { echo "package_test.sh: lintian is missing (scripts/setup.sh --package)" >&2; exit 1; }
check "lintian: no error, no warning" bash -c \
    'out=$(lintian --fail-on error,warning --display-level ">=warning" "$0" 2>&1) || { echo "$out"; exit 1; }; [[ -z $out ]] || echo "$out"' "$deb"
check "the changelog's version is the package's" bash -c \
    '[[ $(dpkg-parsechangelog -l packaging/changelog -S Version) == $(dpkg-deb -f "$0" Version) ]]' "$deb"

echo "== dpkg -i $deb"
dpkg -i "$deb"
installed=1

unit=/usr/lib/systemd/system/op25b.service
check "the package installed /usr/bin/op25b" bash -c 'test -x /usr/bin/op25b && dpkg -L op25b | grep -qx /usr/bin/op25b'
check "op25b --version" bash -c '/usr/bin/op25b --version | grep -q "^op25b "'
check "op25b check on the packaged config" /usr/bin/op25b check --config /etc/op25b/op25b.toml
check "the config's commented options validate too" bash -c \
    'sed "s/^# \(\[events\]\|\[capture\]\|\[abuse\]\|path = \|dropped = \|metrics = \|state_file = \)/\1/" /etc/op25b/op25b.toml >"$0" &&
     grep -q "^\[events\]" "$0" && /usr/bin/op25b check --config "$0" >/dev/null; rc=$?; rm -f "$0"; exit $rc' \
    "$(mktemp)"
check "/etc/op25b/op25b.toml is a conffile" bash -c 'dpkg-query -W -f="\${Conffiles}" op25b | grep -q "/etc/op25b/op25b.toml "'
check "/etc/logrotate.d/op25b is a conffile" bash -c 'dpkg-query -W -f="\${Conffiles}" op25b | grep -q "/etc/logrotate.d/op25b "'
check "logrotate reads /etc/logrotate.d/op25b (postrotate reloads op25b)" bash -c \
    'out=$(logrotate --debug --state "$0" /etc/logrotate.d/op25b 2>&1); rc=$?; rm -f "$0";
     ((rc == 0)) && ! grep -qi "^error" <<<"$out" && grep -q "systemctl reload op25b" /etc/logrotate.d/op25b || { echo "$out"; exit 1; }' \
    "$(mktemp)"
check "man op25b lists the subcommands" bash -c 'MANPAGER=cat MANWIDTH=80 man op25b 2>/dev/null | grep -q "op25b-run(1)"'
check "man op25b-run shows --config" bash -c 'MANPAGER=cat man op25b-run 2>/dev/null | grep -q -- "--config"'
check "man op25b-lab lists the lab's subcommands, each with its page" bash -c 'p=$(MANPAGER=cat MANWIDTH=200 man op25b-lab) &&
    for s in up down status exec mail reload config demo traffic; do grep -q "op25b-lab-$s(1)" <<<"$p" && man -w op25b-lab-$s || exit 1; done'
check "man -l renders every page" bash -c 'for p in /usr/share/man/man1/op25b*.1.gz /usr/share/man/man5/op25b*.5.gz; do man -l "$p" >/dev/null 2>&1 || exit 1; done'
check "man op25b.toml lists the keys and RUST_LOG" bash -c \
    'page=$(MANPAGER=cat MANWIDTH=200 man 5 op25b.toml 2>/dev/null) && for k in op25b.action abuse.quarantine_for rule.program RUST_LOG; do grep -q "$k" <<<"$page" || { echo "no $k"; exit 1; }; done'
check "the examples: configs that validate, rule programs and build.sh" bash -c \
    'd=/usr/share/doc/op25b/examples; /usr/bin/op25b check --config $d/lab.toml >/dev/null &&
     cat $d/lab.toml $d/abuse-section.toml >"$0" && /usr/bin/op25b check --config "$0" >/dev/null; rc=$?; rm -f "$0";
     ((rc == 0)) && test -s $d/rules/op25b.h -a -s $d/rules/port_block.c -a -s $d/rules/submission_limit.c -a -x $d/rules/build.sh' \
    "$(mktemp)"
check "bash completion loads and completes" bash --norc -c \
    'source /usr/share/bash-completion/completions/op25b && COMP_WORDS=(op25b ""); COMP_CWORD=1; _op25b op25b "" op25b;
     [[ " ${COMPREPLY[*]} " == *" run "* ]]'
check "zsh and fish completions installed" test -s /usr/share/zsh/vendor-completions/_op25b -a -s /usr/share/fish/vendor_completions.d/op25b.fish
check "the unit is installed" test -f "$unit"
check "systemd-analyze verify on the installed unit (man pages included)" bash -c \
    'out=$(systemd-analyze verify "$0" 2>&1) && [[ -z $out ]] || { echo "$out"; exit 1; }' "$unit"
check "the package did not enable or start the unit" bash -c '! test -e /etc/systemd/system/multi-user.target.wants/op25b.service'
example=/usr/share/doc/op25b/examples/ci/mail-through-op25b.sh
check "the CI example runs against the installed op25b (op25b lab up --servers, swaks, lab down)" \
    env OP25B=/usr/bin/op25b LAB="o25pkg-$$" "$example"
check "op25b lab demo: what the lab blocks and passes, from the package alone" bash -c \
    'trap "op25b lab down --name $0 >/dev/null" EXIT; op25b lab up --servers --name "$0" >/dev/null && op25b lab demo --name "$0"' "o25demo-$$"
check "the CI example and the demo left no namespace or state behind" bash -c \
    'for l in o25pkg-$0 o25demo-$0; do ! test -e /run/netns/$l-sub -o -e /run/netns/$l-inet -o -e /run/$l || exit 1; done' "$$"
check "both licence texts and the copyright file" \
    test -s /usr/share/doc/op25b/LICENSE-MIT -a -s /usr/share/doc/op25b/LICENSE-APACHE -a -s /usr/share/doc/op25b/copyright
check "the installed alert rules pass promtool check rules and their unit tests" bash -c \
    'cd /usr/share/doc/op25b/prometheus && promtool check rules op25b.rules.yml >/dev/null && promtool test rules op25b.rules.test.yml >/dev/null'
check "the Grafana dashboard is installed and is JSON" \
    python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); sys.exit(d.get("uid") != "op25b")' /usr/share/doc/op25b/grafana/op25b.json
check "the Debian changelog" bash -c 'zcat /usr/share/doc/op25b/changelog.Debian.gz | head -n 1 | grep -q "^op25b ("'

echo "== dpkg --purge op25b"
dpkg --purge op25b >/dev/null
installed=0
check "purge removed the binary, the config, the logrotate file and the unit" bash -c \
    '! test -e /usr/bin/op25b -o -e /etc/op25b -o -e /etc/logrotate.d/op25b -o -e "$0"' "$unit"

echo "package: $passed passed, $failed failed"
((failed == 0))
