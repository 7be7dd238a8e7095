#!/usr/bin/env python3
"""Runs every command sample in README.md and compares its output with the README.

Format (README.md, "How the README is tested" says the same for its readers):

  ```console
  # op25b lab up                <- "# " a command run as root, "$ " one that needs none
                                    (the command starts right after that one space)
  [lab] creating netns ...       <- the output expected, stdout and stderr together
  $ op25b check ... \\            <- a trailing backslash continues a command;
      --packet "..."                  a here-document (<<'EOF' ... EOF) belongs to it
  ```

In the expected output `<n>` stands for a number that varies from run to run (times,
counters that depend on timing, PIDs), `…` inside a line for any text, and a line that
is only `…` for any number of lines (none included). Runs of spaces compare as one
space. The exit status is not compared (a blocked packet makes `op25b check` exit 1).

Every console block runs, in README order, from the repository's top directory, with
target/release first on PATH (as after `cargo install --path .`), NO_COLOR=1, and a
time limit per command. Commands that use the lab run inside the lab the README's own
`op25b lab up` creates; whatever happens, the test takes the lab down at the end
if it brought it up (and refuses to start if a lab is already up: it is not ours).

Every other fenced block of the README must be a config file (toml, yaml) or be listed
in NOT_RUN below with the reason it is not run; a NOT_RUN entry that matches no block
is an error too, so the list stays true.

Usage: scripts/readme_test.py [--list] [--only LINE] [README]   (as root)
  --list       print the samples (README line, command) and what is not run, run nothing
  --only LINE  run only the console block that starts at README line LINE
Exit status 0 when every sample matches, 1 otherwise (a diff per sample that differs:
"-" what the README says, "+" what the command printed).
"""

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAB_STATE = "/run/op25b-lab"
LAB_NETNS = ("op25b-lab-sub", "op25b-lab-inet")

# Blocks deliberately not run: (text the block's first line starts with, why).
NOT_RUN = [
    ("scripts/setup.sh --bench && scripts/bench.sh",
     "a full benchmark takes minutes; scripts/test.sh runs bench.sh --smoke"),
    ("cargo install --path .", "installs into ~/.cargo/bin; the test puts target/release on PATH instead"),
    ("scripts/test.sh", "the test suite itself, which runs this test"),
    ("scripts/fuzz.sh", "fuzzing runs for minutes per target; scripts/test.sh runs fuzz.sh --smoke"),
    (" netns op25b-lab-sub", "a diagram of the lab"),
    ("read from a TUN", "a diagram of the pipeline"),
    ('{"action":"reject"', "lines of an events file (timestamps, ports); tests/control.rs checks them"),
    ('{"action":"blocked","attempts"', "lines of an events file (timestamps); tests/abuse.rs checks them"),
    ("src/packet/", "the source tree"),
    ("cargo install cargo-deb", "builds and installs the Debian package; scripts/package_test.sh does, and checks "
     "what it installed"),
    ("op25b check                        # --config /etc/op25b/op25b.toml",
     "needs the installed package and a running systemd"),
    ('Status: "forwarded', "systemctl status lines; tests/service.rs reads these messages from a notify socket"),
]
CONFIG_FENCES = {"toml", "yaml"}
# Files the samples write outside the repository, removed when the test ends.
CLEANUP = ["/tmp/lab.pcap", "/tmp/fwd.pcap", "/tmp/dropped.pcap", "/tmp/lab-abuse.toml"]

# Seconds a command may take; the demo builds (a no-op after cargo build --release).
TIMEOUT_DEFAULT = 60
TIMEOUT_SLOW = {"scripts/demo.sh": 600}

NAME = "README.md"  # as messages name it
NUM = r"-?[0-9]+(?:[.,][0-9]+)*"
# A prompt, one space, and the command right after it ("#   case" in an output is
# not a command).
PROMPT = r"^[$#] \S"


class Sample:
    def __init__(self, line, root, command, expected):
        self.line = line          # README line of the command
        self.root = root          # "# " prompt
        self.command = command    # as bash reads it
        self.expected = expected  # list of lines


class Block:
    def __init__(self, line, info, lines):
        self.line, self.info, self.lines = line, info, lines


def fences(text):
    """Every fenced block: Block(line of its first content line, info string, lines)."""
    out, lines, i = [], text.split("\n"), 0
    while i < len(lines):
        m = re.match(r"^(```+)(.*)$", lines[i])
        if not m:
            i += 1
            continue
        fence, info, start = m.group(1), m.group(2).strip(), i + 1
        j = start
        while j < len(lines) and lines[j].rstrip() != fence:
            j += 1
        if j == len(lines):
            raise SystemExit(f"{NAME}:{i + 1}: fence never closed")
        out.append(Block(start + 1, info, lines[start:j]))
        i = j + 1
    return out


def samples_of(block):
    """The console block's commands with their expected output."""
    out, lines, i = [], block.lines, 0
    if lines and not re.match(PROMPT, lines[0]):
        raise SystemExit(f"{NAME}:{block.line}: a console block must start with '$ ' or '# '")
    while i < len(lines):
        first = i
        root = lines[i].startswith("# ")
        cmd = [lines[i][2:]]
        i += 1
        while cmd[-1].endswith("\\") and i < len(lines):
            cmd.append(lines[i])
            i += 1
        heredoc = re.search(r"<<-?\s*'?([A-Za-z_]+)'?", "\n".join(cmd))
        if heredoc:
            while i < len(lines) and lines[i] != heredoc.group(1):
                cmd.append(lines[i])
                i += 1
            if i == len(lines):
                raise SystemExit(f"{NAME}:{block.line + first}: here-document never ends")
            cmd.append(lines[i])
            i += 1
        expected = []
        while i < len(lines) and not re.match(PROMPT, lines[i]):
            expected.append(lines[i])
            i += 1
        out.append(Sample(block.line + first, root, "\n".join(cmd), expected))
    return out


# ------------------------------------------------------------------ matching

def squeeze(line):
    return re.sub(r"[ \t]+", " ", line.rstrip())


def line_regex(expected):
    parts = re.split(r"(<n>|…)", squeeze(expected))
    rx = "".join(NUM if p == "<n>" else ".*?" if p == "…" else re.escape(p) for p in parts)
    return re.compile(rx + r"\Z")


MISS, ABSORB = 1_000_000, 1


def align(expected, actual):
    """Fewest unmatched lines, then fewest lines left to a `…` line (so a changed line
    shows as "-" and "+" rather than vanishing into a neighbouring `…`). Returns
    (unmatched, ops), ops being ('=', e, a) | ('-', e) | ('+', a) | ('…', [a...])."""
    E = [None if e.strip() == "…" else line_regex(e) for e in expected]
    A = [squeeze(a) for a in actual]
    n, m = len(E), len(A)
    INF = 10 ** 9
    cost = [[INF] * (m + 1) for _ in range(n + 1)]
    cost[n][m] = 0
    for i in range(n, -1, -1):
        for j in range(m, -1, -1):
            if i == n and j == m:
                continue
            best = INF
            if i < n and E[i] is None:
                best = min(best, cost[i + 1][j])
                if j < m:
                    best = min(best, cost[i][j + 1] + ABSORB)
            if i < n and j < m and E[i] is not None and E[i].match(A[j]):
                best = min(best, cost[i + 1][j + 1])
            if i < n and E[i] is not None:
                best = min(best, cost[i + 1][j] + MISS)
            if j < m:
                best = min(best, cost[i][j + 1] + MISS)
            cost[i][j] = best
    ops, i, j, wild = [], 0, 0, []
    while i < n or j < m:
        if i < n and E[i] is None:
            if j < m and cost[i][j] == cost[i][j + 1] + ABSORB:
                wild.append(actual[j])
                j += 1
                continue
            ops.append(("…", wild))
            wild = []
            i += 1
            continue
        if i < n and j < m and E[i].match(A[j]) and cost[i][j] == cost[i + 1][j + 1]:
            ops.append(("=", expected[i], actual[j]))
            i, j = i + 1, j + 1
        elif i < n and cost[i][j] == cost[i + 1][j] + MISS:
            ops.append(("-", expected[i]))
            i += 1
        else:
            ops.append(("+", actual[j]))
            j += 1
    return cost[0][0] // MISS, ops


def render(ops):
    out = []
    for op in ops:
        if op[0] == "=":
            out.append("  " + op[1])
        elif op[0] == "…":
            out.append(f"  …   ({len(op[1])} line{'' if len(op[1]) == 1 else 's'})")
        else:
            out.append(f"{op[0]} {op[1]}")
    return "\n".join(out)


def self_test():
    """The matcher on known cases, so that a lenient matcher cannot pass the README."""
    cases = [
        (["a 1", "b"], ["a 1", "b"], True),
        (["up <n> s"], ["up 12.5 s"], True),
        (["up <n> s"], ["up twelve s"], False),
        (["pid <n>"], ["pid 12 and more"], False),
        (["x … y"], ["x anything at all y"], True),
        (["…", "end"], ["end"], True),
        (["…", "end"], ["1", "2", "3", "end"], True),
        (["…"], [], True),
        (["a", "…"], [], False),
        (["col1   col2"], ["col1 col2   "], True),
        (["a", "b", "c"], ["a", "c"], False),
        (["a", "c"], ["a", "b", "c"], False),
        (["a", "b"], ["a", "b", "extra"], False),
    ]
    for expected, actual, ok in cases:
        unmatched, _ = align(expected, actual)
        if (unmatched == 0) != ok:
            raise SystemExit(f"readme_test.py: self-test: {expected!r} vs {actual!r}: "
                             f"{'no match' if ok else 'a match'}, which is wrong")
    _, ops = align(["a", "old", "z", "…"], ["a", "new", "z", "q"])
    if ops[1:3] != [("-", "old"), ("+", "new")]:
        raise SystemExit(f"readme_test.py: self-test: a changed line shows as {ops!r}")


# ------------------------------------------------------------------ running

def lab_exists():
    return any(os.path.exists(f"/run/netns/{ns}") for ns in LAB_NETNS) or os.path.isdir(LAB_STATE)


def run(sample, env):
    timeout = next((t for k, t in TIMEOUT_SLOW.items() if sample.command.startswith(k)),
                   TIMEOUT_DEFAULT)
    start = time.monotonic()
    proc = subprocess.Popen(["bash", "-c", sample.command], cwd=REPO, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        note = ""
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)  # the session this test started
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        note = f" (killed after the {timeout} s limit)"
    text = out.decode("utf-8", "replace")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines, proc.returncode, time.monotonic() - start, note


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--only", type=int, metavar="LINE")
    ap.add_argument("readme", nargs="?", default=os.path.join(REPO, "README.md"))
    args = ap.parse_args()
    self_test()

    global NAME
    NAME = os.path.relpath(args.readme)
    with open(args.readme, encoding="utf-8") as f:
        blocks = fences(f.read())

    problems, samples, used = [], [], set()
    for b in blocks:
        if b.info == "console":
            if args.only is None or args.only in (b.line - 1, b.line):
                samples.extend(samples_of(b))
            continue
        if b.info in CONFIG_FENCES:
            continue
        first = b.lines[0] if b.lines else ""
        hit = next((k for k, (start, _) in enumerate(NOT_RUN) if first.startswith(start)), None)
        if hit is None:
            problems.append(f"{NAME}:{b.line}: a ```{b.info} block that is neither run "
                            f"(```console) nor listed in NOT_RUN of scripts/readme_test.py: {first!r}")
        else:
            used.add(hit)
    for k, (start, why) in enumerate(NOT_RUN):
        if k not in used:
            problems.append(f"scripts/readme_test.py: NOT_RUN entry {start!r} ({why}) matches no README block")

    if args.list:
        for s in samples:
            print(f"{NAME}:{s.line}: {'#' if s.root else '$'} {s.command.splitlines()[0]}")
        for start, why in NOT_RUN:
            print(f"not run: {start!r}: {why}")
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    if args.list:
        return 0
    if os.geteuid() != 0:
        print("readme_test.py: run as root: the README's samples build the namespace lab",
              file=sys.stderr)
        return 1
    if lab_exists():
        print(f"readme_test.py: a lab is already up ({LAB_STATE} or /run/netns/op25b-lab-*): "
              "the README's samples need their own; op25b lab down first", file=sys.stderr)
        return 1

    env = dict(os.environ)
    env["PATH"] = os.path.join(REPO, "target", "release") + os.pathsep + env.get("PATH", "")
    env["NO_COLOR"] = "1"
    # What the samples make with mktemp (the demo keeps op25b's log for its
    # reader) goes into a directory of this run's own, removed at the end.
    tmpdir = tempfile.mkdtemp(prefix="op25b-readme-")
    env["TMPDIR"] = tmpdir
    env.pop("RUST_LOG", None)
    if not os.access(os.path.join(REPO, "target", "release", "op25b"), os.X_OK):
        print("readme_test.py: target/release/op25b missing: cargo build --release first",
              file=sys.stderr)
        return 1

    failed, t0 = 0, time.monotonic()
    try:
        for s in samples:
            lines, rc, secs, note = run(s, env)
            cost, ops = align(s.expected, lines)
            head = s.command.splitlines()[0]
            if cost == 0 and not note:
                print(f"ok    {NAME}:{s.line}: {head}  ({secs:.1f} s)")
                continue
            failed += 1
            print(f"FAIL  {NAME}:{s.line}: {head}  (exit {rc}, {secs:.1f} s){note}")
            print("      output differs from the README ('-' README, '+' this run; "
                  "<n> = a number, … = any text):")
            print("\n".join("      " + l for l in render(ops).split("\n")))
    finally:
        for path in CLEANUP:
            if os.path.exists(path):
                os.remove(path)
        shutil.rmtree(tmpdir, ignore_errors=True)
        if lab_exists():
            subprocess.run([os.path.join(REPO, "target", "release", "op25b"), "lab", "down"], cwd=REPO,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(f"README samples: {len(samples) - failed} of {len(samples)} match "
          f"({time.monotonic() - t0:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
