"""The op25b lab for the benchmark and the soak (stdlib only): a lab of the run's own
name made and removed by `op25b lab`, whose definition (names, addresses) comes from
`op25b lab status --json`. Nothing here writes a namespace or an address itself."""

import json
import os
import shutil
import subprocess
import tempfile

import bench_proc  # its CLOSING is set there, never copied here
from bench_proc import Die, Proc, checkpoint, err, info, show_file, warn


def definition(op25b, name):
    """The lab's definition (names, addresses, prefixes): `op25b lab status --json`
    answers it whether the lab is up or not."""
    out = subprocess.run([op25b, "lab", "status", "--json", "--name", name],
                         capture_output=True, text=True)
    try:
        return json.loads(out.stdout)["definition"]
    except (ValueError, KeyError):
        raise Die(f"{op25b} lab status --json: no definition ({out.stderr.strip()})") from None


class Lab:
    """`op25b lab up --name NAME --config FILE` and its life: op25b's pid (a Proc),
    commands inside its namespaces, `down` keeping op25b's log."""

    def __init__(self, op25b, name):
        self.op25b, self.name = op25b, name
        self.d = definition(op25b, name)
        names = self.d["names"]
        self.sub_ns, self.up_ns = names["sub_ns"], names["inet_ns"]
        self.sub_tun, self.up_tun = names["sub_tun"], names["up_tun"]
        self.cli4, self.cli6 = self.d["dyn4"], self.d["dyn6"]
        mx = self.d["servers"][0]
        self.srv4, self.srv6 = mx["v4"], mx["v6"]
        self.proc = None
        self.is_up = False

    def config(self, *extra):
        """The lab's config for this lab's namespaces, with extra TOML appended."""
        text = subprocess.run([self.op25b, "lab", "config", "--name", self.name],
                              capture_output=True, text=True, check=True).stdout
        return text + "".join(extra)

    def up(self, config, out, stats=None):
        """Builds the lab around `config`; `out` gets what `op25b lab up` said."""
        argv = [self.op25b, "lab", "up", "--name", self.name, "--config", config]
        if stats:
            argv += ["--stats", stats]
        self.is_up = True  # before: a failed or interrupted up is taken down too
        with open(out, "wb") as f:
            rc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=f,
                                stderr=subprocess.STDOUT).returncode
        if rc != 0:
            show_file(out)
            raise Die(f"op25b lab up failed (exit {rc})")
        state = json.loads(subprocess.run([self.op25b, "lab", "status", "--json", "--name", self.name],
                                          capture_output=True, text=True).stdout)["state"]
        self.proc = Proc(state["op25b"]["pid"])
        if self.proc.start is None:
            raise Die("op25b exited right after the lab came up")

    def log(self):
        return os.path.join(self.d["state_dir"], "op25b.log")

    def exec(self, secs, *argv, outside=False):
        """argv inside the lab's subscriber (or outside) namespace, under `timeout`
        (SIGKILL 2 s after SIGTERM): it ends by itself, even if the run is killed hard."""
        return [self.op25b, "lab", "exec", "--name", self.name] + (["--outside"] if outside else []) \
            + ["--", "timeout", "-k", "2", str(secs), *argv]

    def down(self, save_log=None):
        """Stops op25b (it writes its counters) and removes the lab; idempotent."""
        if not self.is_up:
            return
        argv = [self.op25b, "lab", "down", "--name", self.name]
        if save_log:
            argv += ["--save-log", save_log]
        subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        self.is_up, self.proc = False, None


class Run:
    """What the benchmark and the soak share: a work directory, the processes they
    start (stopped by pid at the end, whatever happens), the build, their lab."""

    def __init__(self, pfx):
        self.pfx, self.work, self.lab, self.op25b = pfx, None, None, None
        self.started = {}  # pid -> Proc, every background process this run started
        self.failures = []

    def file(self, name):
        return os.path.join(self.work, name)

    def spawn(self, out, argv, env=None):
        """Start argv in the background, stdout to out and stderr to out.err. Its own
        process group, so a terminal's Ctrl-C reaches only us and we stop our processes by
        pid; not its own session, which would give it its own scheduler autogroup and
        change how the two cores are shared between iperf3, op25b and the kernel."""
        with open(out, "wb") as fo, open(out + ".err", "wb") as fe:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fo, stderr=fe, env=env,
                                 preexec_fn=os.setpgrp)  # no threads here: preexec_fn is safe
        proc = Proc(p.pid, p)
        self.started[p.pid] = proc
        return proc

    def stop(self, proc):
        proc.stop()
        self.started.pop(proc.pid, None)

    def op25b_alive(self):
        return self.op25b is not None and self.op25b.alive()

    def prepare(self, tools, build, binary, lab_name):
        """Root, the tools, the build, the binary; then the work directory and the lab."""
        if os.getuid() != 0:
            raise Die("must run as root (network namespaces and TUN devices need CAP_NET_ADMIN)")
        missing = [f"{c} (package: {p})" for c, p in tools if shutil.which(c) is None]
        if missing:
            raise Die("missing required command(s); scripts/setup.sh --bench installs them:\n"
                      + "\n".join(f"  - {m}" for m in missing))
        if build:
            info("cargo build --release")
            rc = subprocess.run(["timeout", "1800", "cargo", "build", "--release"],
                                cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))).returncode
            checkpoint()
            if rc != 0:
                raise Die("cargo build --release failed")
        if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
            raise Die(f"op25b binary not found or not executable: {binary} (cargo build --release)")
        self.work = tempfile.mkdtemp(prefix=f"{self.pfx}.", dir="/tmp")
        self.lab = Lab(binary, lab_name)

    def finish(self, name, doc, what, done):
        """Writes doc (JSON) to the run's file name; the exit status: 1 saying how many
        of what failed, else 0 saying done."""
        with open(self.file(name), "w", encoding="utf-8") as f:
            json.dump(doc, f)
        if self.failures:
            err(f"{len(self.failures)} {what} failed")
            return 1
        info(done)
        return 0

    def stop_op25b(self):
        """`op25b lab down`: op25b writes its counters; its log stays in the run's files."""
        if self.lab is not None and self.work:
            self.lab.down(save_log=self.file("op25b.log"))
        self.op25b = None

    def close(self, keep, also=None):
        """Stops what the run started, takes the lab down, calls also(), keeps (copied
        to keep) or drops the run's files. Signals are only noted meanwhile."""
        bench_proc.CLOSING = True
        for proc in list(self.started.values()):
            try:
                self.stop(proc)
            except Exception as e:  # one stuck process must not keep the rest running
                warn(f"while stopping pid {proc.pid}: {e}")
        try:
            self.stop_op25b()
        except Exception as e:
            warn(f"while stopping op25b: {e}")
        if also:
            also()
        if self.work and os.path.isdir(self.work):
            if keep:
                try:
                    shutil.copytree(self.work, keep, dirs_exist_ok=True)
                    info(f"raw outputs kept in {keep}")
                except OSError as e:
                    warn(f"could not copy the raw outputs to {keep}: {e}")
            shutil.rmtree(self.work, ignore_errors=True)
