"""The process plumbing of scripts/bench.py (stdlib only): messages, the exit
exceptions, signal notes, the processes the run starts and the short commands it runs.
Apart from bench.py so each stays short; the run (namespaces, cleanup) stays there.

SIGNALLED and CLOSING are this module's state: read and set them as bench_proc.NAME,
never through `from bench_proc import`, which would copy the value once.
"""

import os
import signal
import subprocess
import sys
import time

# ------------------------------------------------------------------ messages

_TTY = sys.stderr.isatty()
# The tag in front of every message: scripts/soak.py sets it to "soak".
TAG = "bench"


def _say(colour, label, msg):
    on, off = (f"\033[{colour}m", "\033[0m") if _TTY else ("", "")
    print(f"{on}[{TAG}]{label}{off} {msg}", file=sys.stderr, flush=True)


def info(msg):
    _say("1", "", msg)


def warn(msg):
    _say("33", " warning:", msg)


def err(msg):
    _say("31", " error:", msg)


def show_file(*paths, tail=None):
    """Echo tools' output to stderr, indented, when a step fails (tail: last lines only)."""
    lines = []
    for p in paths:
        try:
            with open(p, encoding="utf-8", errors="replace") as f:
                lines += f.read().splitlines()
        except OSError:
            pass
    for line in lines[-tail:] if tail else lines:
        print(f"    {line}", file=sys.stderr)


class Die(Exception):
    """A step the run cannot go on without failed: exit 1 (after cleanup)."""


class Interrupted(BaseException):
    """SIGINT/SIGTERM arrived; code is the shell-style exit status (130, 143)."""

    def __init__(self, code):
        super().__init__(code)
        self.code = code


# ------------------------------------------------------------------ signals

# The handlers only note the signal. The run looks at the note at every wait (pause(),
# at most 0.1 s apart, and after each short command), so no step is cut in half and
# cleanup always runs to its end; a second signal during cleanup changes nothing.
SIGNALLED = None
CLOSING = False


def _on_signal(signum, _frame):
    global SIGNALLED
    if SIGNALLED is None:
        SIGNALLED = 128 + signum


def checkpoint():
    if SIGNALLED is not None and not CLOSING:
        raise Interrupted(SIGNALLED)


def pause(secs):
    time.sleep(secs)
    checkpoint()


def catch_signals():
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)


def run_to_end(runner):
    """runner.main() with SIGINT and SIGTERM caught, then runner.cleanup(status)
    whatever happened; the exit status (a signal's, if one came)."""
    rc = 1
    try:
        rc = runner.main()
    except Die as e:
        for line in str(e).splitlines():
            err(line)
        rc = 1
    except Interrupted as e:
        rc = e.code
    finally:
        runner.cleanup(SIGNALLED or rc)
    return SIGNALLED or rc


# ------------------------------------------------------------------ processes


def proc_fields(pid):
    """/proc/PID/stat from field 3 (state) on; comm may hold spaces and parens."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rfind(") ") + 2:].split()


def proc_starttime(pid):
    """Field 22 (clock ticks since boot): with the pid it names one process for good."""
    f = proc_fields(pid)
    return f[19] if f and len(f) > 19 else None


def proc_cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class Proc:
    """A process this run started. A child of ours is ours until we reap it; op25b (the
    child of its `timeout`) is known by pid and start time, since a reused pid has another."""

    def __init__(self, pid, popen=None):
        self.pid, self.popen = pid, popen
        self.start = proc_starttime(pid) if popen is None else None

    def alive(self):
        if self.popen is not None:
            return self.popen.poll() is None
        f = proc_fields(self.pid)
        return bool(f) and len(f) > 19 and f[19] == self.start and f[0] != "Z"

    def wait(self, secs):
        """Wait up to secs for it to end; True if it did."""
        end = time.monotonic() + secs
        while self.alive():
            if time.monotonic() >= end:
                return False
            pause(0.05)
        return True

    def stop(self):
        """SIGTERM (only if it is still the process we started), SIGKILL after 3 s; reap."""
        if self.alive():
            self.kill(signal.SIGTERM)
            if not self.wait(3):
                warn(f"pid {self.pid} ({proc_cmdline(self.pid)}) ignored SIGTERM for 3 s: SIGKILL")
                if self.alive():
                    self.kill(signal.SIGKILL)
                self.wait(5)
        if self.popen is not None and self.popen.returncode is None:
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                warn(f"pid {self.pid} still not gone after SIGKILL")

    def kill(self, sig):
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:  # op25b ended (and was reaped) just now
            pass

    def status(self):
        """Exit status as a shell shows it (128 + signal when killed)."""
        rc = self.popen.returncode
        if rc is None:
            return 124
        return 128 - rc if rc < 0 else rc


def sh(*argv, ok=False):
    """A short command (ip, sysctl, nft): its output is returned; a failure ends the run
    unless ok, since nothing measured on a half-built network means anything."""
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    checkpoint()
    if r.returncode != 0 and not ok:
        raise Die(f"`{' '.join(argv)}` failed (exit {r.returncode}): {r.stderr.strip()}")
    return r.stdout if r.returncode == 0 else None


def nsx(ns, *argv, ok=False):
    return sh("ip", "netns", "exec", ns, *argv, ok=ok)


def in_ns(ns, secs, *argv):
    """argv inside namespace ns under `timeout` (SIGKILL 2 s after SIGTERM): every tool
    the run starts ends by itself, even if this program is killed hard."""
    return ["ip", "netns", "exec", ns, "timeout", "-k", "2", str(secs), *argv]
