#!/usr/bin/env python3
"""Runs every command sample in README.md and docs/*.md and compares its output with the text.

A ```console block holds commands ("# " as root, "$ " as anyone; a trailing backslash or a
here-document continues one), each followed by its output (stdout and stderr). There `<n>`
is a number, `…` in a line any text, a line of only `…` any lines; runs of spaces are one.
The exit status is not compared. Files run in order (README.md, then docs/ by name), their
blocks in order, from the top directory, target/release first on PATH, NO_COLOR=1, with a
time limit; the lab is taken down at the end (and none may be up at the start). Other fenced
blocks are configs (toml, yaml, ini) or in NOT_RUN with why; a NOT_RUN entry that matches no
block of the files is an error too.

Usage (as root): scripts/readme_test.py [--list] [--only LINE] [FILE...]
  --list: print the samples and what is not run.  --only LINE: the block at line LINE of FILE.
Exit 0 when every sample matches, else 1 with a diff per sample ("-" the text, "+" run).
"""

import argparse
import functools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OP25B = os.path.join(REPO, "target", "release", "op25b")
NOT_RUN = [  # (text a block's first line starts with, why it is not run)
    ("scripts/setup.sh --bench && scripts/bench.sh", "minutes; scripts/test.sh runs bench.sh --smoke"),
    ("main.rs (CLI", "a diagram of the modules"), ("netns NAME-sub", "a diagram of several instances"),
    ("instance A:", "prefixes of instances"), ("protocol static", "a BIRD config"), ("router bgp", "an FRR config"),
    ("# op25b top --socket /run/op25b-1", "needs two instances; tests/abuse_instances.rs runs it"),
    ("nft add table", "changes the host's nftables"), ("#!/usr/bin/env bash", "a script run by systemd"),
    ("cargo install --path .", "installs into ~/.cargo/bin; the test puts target/release on PATH instead"),
    ("scripts/test.sh", "the test suite itself, which runs this test"), ("src/packet/", "the source tree"),
    ("scripts/fuzz.sh", "minutes per target; scripts/test.sh runs fuzz.sh --smoke"),
    ("netns op25b-lab-sub", "a diagram of the lab"), ("read from a TUN", "a diagram of the pipeline"),
    ('{"action":"reject"', "an events file (timestamps, ports); tests/control.rs checks them"),
    ('{"action":"blocked","attempts"', "an events file (timestamps); tests/abuse.rs checks them"),
    ("cargo install cargo-deb", "installs the package; scripts/package_test.sh does, and checks it"),
    ("op25b check                        # --config /etc/op25b/op25b.toml", "needs the package and systemd"),
    ('Status: "forwarded', "systemctl status; tests/service.rs reads these from a notify socket"),
]
CLEANUP = ["/tmp/lab.pcap", "/tmp/fwd.pcap", "/tmp/dropped.pcap", "/tmp/lab-abuse.toml"]
TIMEOUT, SLOW = 60, {"scripts/demo.sh": 600}  # seconds; the demo builds
PROMPT = re.compile(r"^[$#] \S")  # "#   case" in an output is no command

def blocks(text, name):
    """Every fenced block: (line of its first content line, info string, lines)."""
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        m = re.match(r"^(```+)(.*)$", lines[i])
        if m:
            end = next((j for j in range(i + 1, len(lines)) if lines[j].rstrip() == m[1]), None)
            if end is None:
                sys.exit(f"{name}:{i + 1}: fence never closed")
            out.append((i + 2, m[2].strip(), lines[i + 1:end]))
            i = end
        i += 1
    return out

def samples(line, lines, name):
    """A console block's samples: (line, command, expected output lines)."""
    if lines and not PROMPT.match(lines[0]):
        sys.exit(f"{name}:{line}: a console block must start with '$ ' or '# '")
    out, i = [], 0
    while i < len(lines):
        start, cmd = i, [lines[i][2:]]
        i += 1
        while cmd[-1].endswith("\\") and i < len(lines):
            cmd.append(lines[i])
            i += 1
        here = re.search(r"<<-?\s*'?([A-Za-z_]+)'?", "\n".join(cmd))
        if here:
            end = next((j for j in range(i, len(lines)) if lines[j] == here[1]), None)
            if end is None:
                sys.exit(f"{name}:{line + start}: here-document never ends")
            cmd, i = cmd + lines[i:end + 1], end + 1
        expected = []
        while i < len(lines) and not PROMPT.match(lines[i]):
            expected.append(lines[i])
            i += 1
        out.append((line + start, "\n".join(cmd), expected))
    return out

def align(expected, actual):
    """(unmatched lines, ops): fewest unmatched lines, then fewest lines given to a `…`
    line (a changed line shows as "-" and "+", not swallowed by a neighbouring `…`).
    ops: ('=', line) | ('-', expected) | ('+', actual) | ('~', taken by …) | ('…', '')."""
    num, squeeze = r"-?[0-9]+(?:[.,][0-9]+)*", lambda line: re.sub(r"[ \t]+", " ", line.rstrip())
    E = [None if e.strip() == "…" else re.compile("".join(
        num if p == "<n>" else ".*?" if p == "…" else re.escape(p)
        for p in re.split(r"(<n>|…)", squeeze(e))) + r"\Z") for e in expected]
    A = [squeeze(a) for a in actual]
    MISS = 1_000_000

    @functools.cache
    def best(i, j):  # (cost, ops) of expected[i:] against actual[j:]
        if i == len(E) and j == len(A):
            return 0, ()
        options = []
        if i < len(E) and E[i] is None:
            options.append((0, ("…", ""), i + 1, j))
            if j < len(A):
                options.append((1, ("~", actual[j]), i, j + 1))
        elif i < len(E):
            if j < len(A) and E[i].match(A[j]):
                options.append((0, ("=", expected[i]), i + 1, j + 1))
            options.append((MISS, ("-", expected[i]), i + 1, j))
        if j < len(A):
            options.append((MISS, ("+", actual[j]), i, j + 1))
        return min(((c + best(ni, nj)[0], (op,) + best(ni, nj)[1]) for c, op, ni, nj in options),
                   key=lambda o: o[0])

    sys.setrecursionlimit(max(1000, 4 * (len(E) + len(A)) + 100))
    cost, ops = best(0, 0)
    return cost // MISS, list(ops)

def render(ops):
    out, taken = [], 0
    for op, line in ops:
        if op == "~":
            taken += 1
        elif op == "…":
            out.append(f"  …   ({taken} line{'' if taken == 1 else 's'})")
            taken = 0
        else:
            out.append(f"{' ' if op == '=' else op} {line}")
    return out

def self_test():
    """The matcher on known cases, so that a lenient matcher cannot pass a sample."""
    for expected, actual, ok in [
        (["a 1", "b"], ["a 1", "b"], True), (["up <n> s"], ["up 12.5 s"], True),
        (["up <n> s"], ["up twelve s"], False), (["pid <n>"], ["pid 12 and more"], False),
        (["x … y"], ["x anything at all y"], True), (["…", "end"], ["end"], True),
        (["…", "end"], ["1", "2", "3", "end"], True), (["…"], [], True), (["a", "…"], [], False),
        (["col1   col2"], ["col1 col2   "], True), (["a", "b", "c"], ["a", "c"], False),
        (["a", "c"], ["a", "b", "c"], False), (["a", "b"], ["a", "b", "extra"], False),
    ]:
        if (align(expected, actual)[0] == 0) != ok:
            sys.exit(f"readme_test.py: self-test: {expected!r} vs {actual!r}: wrongly {'no ' * ok}match")
    ops = align(["a", "old", "z", "…"], ["a", "new", "z", "q"])[1]
    if ops[1:3] != [("-", "old"), ("+", "new")]:
        sys.exit(f"readme_test.py: self-test: a changed line shows as {ops!r}")

def run(command, env):
    """Output lines, exit status, seconds, and a note if it was killed at its time limit."""
    limit = next((t for k, t in SLOW.items() if command.startswith(k)), TIMEOUT)
    start, note = time.monotonic(), ""
    proc = subprocess.Popen(["bash", "-c", command], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    for sig, wait in [(None, limit), (signal.SIGTERM, 10), (signal.SIGKILL, None)]:
        if sig:  # the session this test started, after its time limit
            note = f" (killed after the {limit} s limit)"
            os.killpg(proc.pid, sig)
        try:
            out = proc.communicate(timeout=wait)[0]
            break
        except subprocess.TimeoutExpired:
            pass
    lines = out.decode("utf-8", "replace").split("\n")
    return lines[:-1] if lines[-1] == "" else lines, proc.returncode, time.monotonic() - start, note

def lab_up():
    return any(os.path.exists(p) for p in ["/run/op25b-lab", "/run/netns/op25b-lab-sub", "/run/netns/op25b-lab-inet"])

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--only", type=int, metavar="LINE")
    every = [os.path.join(REPO, "README.md")] + sorted(
        os.path.join(REPO, "docs", f) for f in os.listdir(os.path.join(REPO, "docs")) if f.endswith(".md"))
    ap.add_argument("files", nargs="*", default=every)
    args = ap.parse_args()
    self_test()
    todo, problems, used = [], [], set()
    for path in args.files:
        name = os.path.relpath(path, REPO)
        with open(path, encoding="utf-8") as f:
            found = [(name,) + b for b in blocks(f.read(), name)]
        todo += [(name,) + s for name, line, info, lines in found if info == "console"
                 for s in samples(line, lines, name) if args.only in (None, line - 1, line)]
        for name, line, info, lines in found:
            if info in ("console", "toml", "yaml", "ini"):
                continue
            hit = [k for k, (start, _) in enumerate(NOT_RUN) if (lines or [""])[0].lstrip().startswith(start)]
            used.update(hit[:1])
            if not hit:
                problems.append(f"{name}:{line}: a ```{info} block neither run (```console) nor in NOT_RUN "
                                f"of scripts/readme_test.py: {(lines or [''])[0]!r}")
    problems += [f"scripts/readme_test.py: NOT_RUN entry {s!r} ({why}) matches no block of the files"
                 for k, (s, why) in enumerate(NOT_RUN) if k not in used and args.files == every]
    if args.list:
        print("\n".join([f"{name}:{line}: {cmd.splitlines()[0]}" for name, line, cmd, _ in todo] +
                        [f"not run: {s!r}: {why}" for s, why in NOT_RUN]))
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    if args.list:
        return 0
    for wrong, why in [(os.geteuid() != 0, "run as root: the samples build the namespace lab"),
                       (lab_up(), "a lab is already up (/run/op25b-lab, /run/netns/op25b-lab-*): op25b lab down"),
                       (not os.access(OP25B, os.X_OK), "target/release/op25b missing: cargo build --release")]:
        if wrong:
            print(f"readme_test.py: {why}", file=sys.stderr)
            return 1
    # What the samples make with mktemp goes into a directory of this run's own.
    tmp = tempfile.mkdtemp(prefix="op25b-readme-")
    env = {k: v for k, v in os.environ.items() if k != "RUST_LOG"}
    env.update(PATH=os.path.dirname(OP25B) + os.pathsep + env.get("PATH", ""), NO_COLOR="1", TMPDIR=tmp)
    failed, t0 = 0, time.monotonic()
    try:
        for name, line, cmd, expected in todo:
            lines, rc, secs, note = run(cmd, env)
            unmatched, ops = align(expected, lines)
            head = f"{name}:{line}: {cmd.splitlines()[0]}"
            if unmatched == 0 and not note:
                print(f"ok    {head}  ({secs:.1f} s)")
                continue
            failed += 1
            print(f"FAIL  {head}  (exit {rc}, {secs:.1f} s){note}\n      output differs from the text "
                  "('-' the text, '+' this run; <n> = a number, … = any text):")
            print("\n".join("      " + l for l in render(ops)))
    finally:
        for path in filter(os.path.exists, CLEANUP):
            os.remove(path)
        shutil.rmtree(tmp, ignore_errors=True)
        if lab_up():
            subprocess.run([OP25B, "lab", "down"], cwd=REPO, capture_output=True)
    print(f"Samples of {len(args.files)} files: {len(todo) - failed} of {len(todo)} match ({time.monotonic() - t0:.0f} s)")
    return 1 if failed else 0

if __name__ == "__main__":
    sys.exit(main())
