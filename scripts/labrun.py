"""What scripts/bench.py and scripts/soak.py share (python3, stdlib only): messages, the
run's work directory, the processes it starts (stopped by pid, whatever happens), the
build, and its lab, made and removed by `op25b lab` (which alone touches namespaces)."""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

TAG = ["run"]  # the tag in front of every message: [bench] or [soak]


def say(msg, kind=""):
    colour = {"": "1", " warning:": "33", " error:": "31"}[kind]
    on, off = (f"\033[{colour}m", "\033[0m") if sys.stderr.isatty() else ("", "")
    print(f"{on}[{TAG[0]}]{kind}{off} {msg}", file=sys.stderr, flush=True)


def show(path, tail=None):
    """A tool's output to stderr, indented, when a step fails."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            print("".join(f"    {ln}\n" for ln in f.read().splitlines()[-(tail or 0):]), end="", file=sys.stderr)
    except OSError:
        pass


def read_json(path):
    """The JSON document in a file, or {} when there is none."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def parse_args(argv, flags=(), ints=()):
    """The options both take (--no-build, --bin, --keep, -h), flags, and ints ("-x|--name",
    default); a ValueError on a usage error."""
    class P(argparse.ArgumentParser):
        def error(self, message):
            raise ValueError(message)
    p = P(add_help=False)
    for f in ("--no-build", "-h", "--help", *flags):
        p.add_argument(f, action="store_true")
    for f, d in ints:
        p.add_argument(*f.split("|"), type=int, default=d)
    p.add_argument("--bin", default=os.path.join(os.path.dirname(__file__), "../target/release/op25b"))
    p.add_argument("--keep")
    o = p.parse_args(argv)
    if o.h or o.help:
        raise ValueError(None)
    o.build, o.bin, o.keep = not o.no_build, os.path.abspath(o.bin), o.keep and os.path.abspath(o.keep)
    return o


class Die(Exception):
    """A step the run cannot go on without failed: exit 1 (after cleanup)."""


class Lab:
    """`op25b lab ... --name NAME`: its definition, up, commands in it, down."""

    def __init__(self, op25b, name):
        self.op25b, self.name, self.up_args = op25b, name, None
        self.d = self.status()["definition"]
        self.cli4, self.srv4, self.srv6 = self.d["dyn4"], self.d["servers"][0]["v4"], self.d["servers"][0]["v6"]

    def cmd(self, *args):
        return [self.op25b, "lab", *args, "--name", self.name]

    def status(self):
        out = subprocess.run(self.cmd("status", "--json"), capture_output=True, text=True)
        try:
            return json.loads(out.stdout)
        except ValueError:
            raise Die(f"op25b lab status --json: {out.stderr.strip()}") from None

    def config(self, *args):
        return subprocess.run(self.cmd("config", *args), capture_output=True, text=True, check=True).stdout

    def up(self, out, *args):
        """`op25b lab up ARGS`; the router's pid (None for the kernel)."""
        self.up_args = args  # before: a failed or interrupted up is taken down too
        with open(out, "wb") as f:
            rc = subprocess.run(self.cmd("up", *args), stdin=subprocess.DEVNULL, stdout=f, stderr=f).returncode
        if rc != 0:
            show(out)
            raise Die(f"op25b lab up {' '.join(args)} failed (exit {rc})")
        st = self.status()["state"]
        self.names = st["names"]
        return (st.get("op25b") or {}).get("pid")

    def alive(self):
        return self.status()["up"]

    def exec(self, secs, *argv, outside=False):
        """argv in the subscriber (or outside) namespace under `timeout` (SIGKILL 2 s after
        SIGTERM): it ends by itself, even if the run is killed hard."""
        return self.cmd("exec", *(["--outside"] if outside else [])) + ["--", "timeout", "-k", "2", str(secs), *argv]

    def down(self, save_log=None):
        """Stops the router (op25b writes its counters), removes the lab; idempotent."""
        if self.up_args is not None:
            subprocess.run(self.cmd("down", *(["--save-log", save_log] if save_log else [])),
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        self.up_args = None


class Run:
    """A run: its checks and build, work directory, processes and lab; main() is the subclass's."""

    def __init__(self, o, tools):
        self.o, self.started, self.failures, self.work, self.lab = o, set(), [], None, None
        if os.getuid() != 0:
            raise Die("must run as root (network namespaces and TUN devices need CAP_NET_ADMIN)")
        missing = [f"{c} (package: {p})" for c, p in tools if shutil.which(c) is None]
        if missing:
            raise Die("missing command(s); scripts/setup.sh --bench installs them: " + ", ".join(missing))
        if o.build:
            say("cargo build --release (op25b and the examples tun_limit, syn_load)")
            if subprocess.run(["cargo", "build", "--release", "--bin", "op25b", "--example", "tun_limit",
                               "--example", "syn_load"], cwd=os.path.dirname(os.path.dirname(__file__))).returncode:
                raise Die("cargo build --release failed")
        for b in (o.bin, self.example("syn_load")):
            if not os.access(b, os.X_OK):
                raise Die(f"not found or not executable: {b} (cargo build --release --examples)")
        self.lab = Lab(o.bin, f"o25{TAG[0]}-{os.getpid()}")
        self.work = tempfile.mkdtemp(prefix=f"o25{TAG[0]}-{os.getpid()}.", dir="/tmp")

    def file(self, name):
        return os.path.join(self.work, name)

    def example(self, name):
        """An example program built beside the op25b binary (target/PROFILE/examples)."""
        return os.path.join(os.path.dirname(self.o.bin), "examples", name)

    def ns(self, out, secs, *argv, outside=False):
        """A short command in the lab; its exit status (its output in out)."""
        return self.reap(self.spawn(out, self.lab.exec(secs, *argv, outside=outside)), secs + 5)

    def reach(self, tag):
        """Both families reach the outside server through the router (also fills ARP/ND)."""
        for fam, dst in (("4", self.lab.srv4), ("6", self.lab.srv6)):
            if self.ns(self.file(f"{tag}-reach{fam}"), 10, "ping", f"-{fam}", "-nq", "-c3", "-i0.2", "-W2", dst):
                show(self.file(f"{tag}-reach{fam}"))
                raise Die(f"{tag}: {dst} unreachable")

    def spawn(self, out, argv):
        """argv in the background, stdout to out, stderr to out.err; in its own process
        group (a terminal's Ctrl-C reaches only us), not its own session (which would
        change how the cores are shared)."""
        with open(out, "wb") as fo, open(out + ".err", "wb") as fe:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fo, stderr=fe, process_group=0)
        self.started.add(p)
        return p

    def reap(self, p, secs):
        """Its exit status (128 + signal when killed); 124 (and stopped) if it outlives secs."""
        try:
            rc = p.wait(secs)
        except subprocess.TimeoutExpired:
            rc = 124
        self.stop(p)
        return 128 - rc if rc < 0 else rc

    def stop(self, p):
        """SIGTERM, SIGKILL after 3 s; reaped."""
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(3)
            except subprocess.TimeoutExpired:
                say(f"pid {p.pid} ignored SIGTERM for 3 s: SIGKILL", " warning:")
                p.kill()
                p.wait()
        self.started.discard(p)

    def fail(self, msg):
        self.failures.append(msg)
        say(msg, " error:")

    def finish(self, name, doc, what, done):
        """Writes doc to the run's file name; 1 if anything failed, else 0."""
        with open(self.file(name), "w", encoding="utf-8") as f:
            json.dump(doc, f)
        say(f"{len(self.failures)} {what} failed" if self.failures else done, " error:" if self.failures else "")
        return 1 if self.failures else 0

    def close(self, rc):
        """Stops what the run started, takes its lab down, keeps (--keep) or drops its files."""
        for p in list(self.started):
            self.stop(p)
        if self.lab:
            self.lab.down()
        if self.work:
            if self.o.keep:
                shutil.copytree(self.work, self.o.keep, dirs_exist_ok=True)
                say(f"raw outputs kept in {self.o.keep}")
            shutil.rmtree(self.work, ignore_errors=True)


def interrupted(signum, _frame):
    raise KeyboardInterrupt(128 + signum)


def main(tag, parse, run_class, doc, argv):
    """run_class(parse(argv)).main() with SIGINT and SIGTERM ending it, and its close()
    whatever happens; the exit status (2 and the help on a usage error)."""
    TAG[0] = tag
    try:
        o = parse(argv)
    except ValueError as e:
        if e.args and e.args[0]:
            say(e.args[0], " error:")
        print(doc.strip("\n"), file=sys.stderr)
        return 2
    os.environ["LC_ALL"] = "C"  # decimal points in the tools' output, whatever the locale
    signal.signal(signal.SIGTERM, interrupted)
    run, rc = None, 1
    try:
        run = run_class(o)
        rc = run.main()
    except Die as e:
        say(str(e), " error:")
    except KeyboardInterrupt as e:
        rc = e.args[0] if e.args else 130
    finally:
        for s in (signal.SIGINT, signal.SIGTERM):  # a second signal must not cut the cleanup short
            signal.signal(s, signal.SIG_IGN)
        if run:
            if rc:
                say(f"exiting with status {rc}: stopping what this run started, removing its lab")
            run.close(rc)
    return rc
