"""The op25b lab for the benchmark and the soak (stdlib only): a lab of the run's own
name made and removed by `op25b lab`, whose definition (names, addresses) comes from
`op25b lab status --json`. Nothing here writes a namespace or an address itself."""

import json
import os
import subprocess

from bench_proc import Die, Proc, show_file


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

    def alive(self):
        return self.proc is not None and self.proc.alive()

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
