#!/usr/bin/env python3
"""
op25b benchmark: the same traffic, in one run, through kernel forwarding with the
OP25B policy as an nftables rule (the peer a user would pick instead) and through
op25b, alternating kernel, op25b, kernel, op25b, ... on namespaces made for the run.

  kernel: SUB ==veth== RTR (ip_forward, nft: tcp dport 25 ... reject) ==veth== UP
  op25b:  SUB ==TUN==> op25b (release binary, root namespace) ==TUN==> UP
  SUB: 100.64.1.10, 2001:db8:100:1::10 (iperf3 client, ping, SYN probe)
  UP:  203.0.113.25, 2001:db8:203::25 (an iperf3 server per test, port 5201)

Figures per path (median and min-max over rounds, ratio op25b/kernel): TCP 1 stream
and 4 streams (Gbit/s received), 64-byte UDP packets per second received by the
server, ping RTT median and p99 (us). For op25b also peak RSS (VmHWM, MiB) and CPU
time (utime+stime, s). During the first TCP 4-stream test of each path, SYNs to
203.0.113.25:25 (and [2001:db8:203::25]:25) must all be refused by the router.

Usage: scripts/bench.sh [options]
  --smoke        end-to-end check in a few seconds (1 round, 1 s tests, 50 pings);
                 judges that everything works, not speed
  --json         the last stdout line is one JSON object; the table goes to stderr
  --no-build     skip `cargo build --release`
  --rounds N     rounds (default 3; --smoke: 1)
  --rules N      extra [[rule]]s in op25b's config, none matching (default 100)
  -t, --time S   seconds per iperf3 test (default 5; --smoke: 1)
  --pings N      pings per latency test, 10 ms apart (default 300; --smoke: 50)
  --syn N        blocked-SYN probes per path, v4/v6 alternating (default 20)
  --busy-poll US op25b's dataplane.busy_poll_us (default 0: workers sleep at
                 once; polling mode trades a core per worker for latency)
  --flood PPS    during each TCP 1-stream test (both paths), PPS blocked SYNs a second
                 from forged sources in 100.64.200.0/24 to 203.0.113.25:25 (raw
                 socket in the subscriber namespace); reports the rate reached
  --events       op25b writes [events] and [capture] (dropped.pcap) into its work
                 directory; reports lines and records written, events_dropped and
                 capture_dropped
  --abuse        op25b tracks blocked attempts ([abuse], thresholds no run reaches):
                 what abuse handling costs while nobody is over a threshold
  --bin PATH     op25b binary (default target/release/op25b)
  --keep DIR     copy the raw outputs (iperf3 JSON, ping, op25b log, config) to DIR
Exit status: 0 when every measurement and the blocked-SYN check succeeded, 1 if not,
2 on usage errors. Needs root, iproute2, iperf3, nft (nftables), ping, python3
(scripts/setup.sh --bench installs them). Namespaces are named o25b-bench-PID-* and
removed on exit, also after failures; only processes this run started are stopped.
"""
# The benchmark is this program (python3, stdlib only) and two modules beside it:
# bench_lib.py (the command line, what the tools' output means, config texts, the SYN
# probe itself, the report: no side effects), bench_proc.py (messages, signals, the
# processes it starts, short commands) and bench_syn.py (blocked SYNs during the load:
# the probe, the --flood generator, what --events wrote). scripts/bench.sh only execs
# it. This file is the run: namespaces, measurements, cleanup.

import glob
import json
import os
import re
import subprocess
import sys
import time

from bench_lib import (NFT_RULES, PATHS, PORT, BadOutput, Usage, counters_line, kernel_net,
                       nft_packets, op25b_extra, parse_args, parse_ping, parse_tcp, parse_udp,
                       report)
from bench_syn import (flood_finish, flood_start, synprobe_finish, synprobe_start,
                       visibility_figures)
import bench_proc  # its SIGNALLED and CLOSING are read and set there, never copied here
from bench_proc import (Die, catch_signals, checkpoint, err, in_ns, info, nsx, pause,
                        proc_fields, sh, show_file, warn)
from lablib import Run

SCRIPTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(SCRIPTS_DIR)

# Tools run by name, with the package that has each.
TOOLS = [("ip", "iproute2"), ("ss", "iproute2"), ("iperf3", "iperf3"), ("nft", "nftables"),
         ("ping", "iputils-ping"), ("timeout", "coreutils")]

# ------------------------------------------------------------------ the run


class Bench(Run):
    """One run: the namespaces and processes it made (removed by cleanup, whatever
    happens), its records and failures."""

    def __init__(self, o):
        super().__init__(f"o25b-bench-{os.getpid()}")
        self.o = o
        self.ns = {k: f"{self.pfx}-{k}" for k in ("ksub", "krtr", "kup")}
        self.lab = None  # the op25b path: an op25b lab of the run's own name (preflight)
        self.hz = os.sysconf("SC_CLK_TCK")
        self.namespaces = []  # the kernel path's, created by this run, deleted on exit
        self.records = []  # {"path", "round", "metric", "value"}
        self.cpu_ticks = {p: 0 for p in PATHS}  # op25b's CPU during each path's tests
        self.wall = {p: 0.0 for p in PATHS}

    # -------------------------------------------------------------- bookkeeping

    def reap(self, proc, secs):
        """Its exit status once it ends; 124 (and stopped) if it outlives secs."""
        if not proc.wait(secs):
            self.stop(proc)
            return 124
        self.stop(proc)  # reaps it
        return proc.status()

    def record(self, path, rnd, metric, value):
        r = {"path": path, "round": rnd, "metric": metric, "value": value}
        self.records.append(r)
        with open(os.path.join(self.work, "records.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps(r) + "\n")

    def fail_measure(self, msg):
        self.failures.append(msg)
        err(msg)

    # -------------------------------------------------------------- checks, build

    def preflight(self):
        o = self.o
        # Namespaces of earlier runs that were killed hard (their pid is gone): say so only.
        for line in (sh("ip", "netns", "list", ok=True) or "").splitlines():
            ns = line.split(" ", 1)[0]
            m = re.match(r"o25b?-?bench-([0-9]+)-", ns)
            if m and not os.path.exists(f"/proc/{m.group(1)}"):
                warn(f"stale namespace from an earlier run: {ns} (remove it: ip netns delete {ns})")
        self.prepare(TOOLS, o.build, o.bin, f"o25bench-{os.getpid()}")
        self.ns["osub"], self.ns["oup"] = self.lab.sub_ns, self.lab.up_ns
        self.sub = {"kernel": self.ns["ksub"], "op25b": self.ns["osub"]}
        self.up = {"kernel": self.ns["kup"], "op25b": self.ns["oup"]}
        self.tun_sub, self.tun_up = self.lab.sub_tun, self.lab.up_tun

    def write_config(self):
        o = self.o
        self.config = self.file("op25b.toml")
        with open(self.config, "w", encoding="utf-8") as f:
            f.write(self.lab.config(op25b_extra(o, self.work)))
        out = self.file("check.out")
        with open(out, "wb") as f:
            rc = subprocess.run([o.bin, "check", "--config", self.config], stdin=subprocess.DEVNULL,
                                stdout=f, stderr=subprocess.STDOUT).returncode
        if rc != 0:
            show_file(out)
            with open(out, encoding="utf-8", errors="replace") as f:
                mentions_rule = "rule" in f.read().lower()
            if o.rules > 0 and mentions_rule:
                raise Die(f"op25b check rejects the generated config ({o.rules} extra [[rule]]s): "
                          "this op25b may not support [[rule]] yet; try --rules 0")
            raise Die("op25b check rejects the generated config")

    # -------------------------------------------------------------- namespaces

    def ns_add(self, name, addr_gen_mode=0):
        """A namespace with lo up and quiet IPv6 (no DAD, router solicitations or RA
        processing; addr_gen_mode 1 = no link-local on new devices)."""
        if os.path.exists(f"/run/netns/{name}"):
            raise Die(f"netns {name} exists already (an earlier run's?): not touching it")
        self.namespaces.append(name)  # before it exists: an interrupted add is removed too
        sh("ip", "netns", "add", name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        v6 = "net.ipv6.conf"
        nsx(name, "sysctl", "-q", "-w", f"{v6}.all.accept_dad=0", f"{v6}.default.accept_dad=0",
            f"{v6}.all.accept_ra=0", f"{v6}.default.accept_ra=0",
            f"{v6}.all.router_solicitations=0", f"{v6}.default.router_solicitations=0",
            f"{v6}.default.addr_gen_mode={addr_gen_mode}")

    def setup_kernel(self):
        ksub, krtr, kup = self.ns["ksub"], self.ns["krtr"], self.ns["kup"]
        info(f"kernel path: {ksub} | {krtr} | {kup} (veth, ip_forward, nftables)")
        for ns in (ksub, krtr, kup):
            self.ns_add(ns)
        nsx(krtr, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1")
        for ns, cmd in kernel_net(ksub, krtr, kup, self.lab):
            sh("ip", "-n", ns, *cmd.split())
        nft = self.file("op25b.nft")
        with open(nft, "w", encoding="utf-8") as f:
            f.write(NFT_RULES)
        nsx(krtr, "nft", "-f", nft)

    def check_op25b(self):
        if not self.op25b_alive():
            show_file(self.lab.log())
            raise Die("op25b exited during the benchmark (log above)")

    def setup_op25b(self):
        o = self.o
        info(f"op25b path: op25b lab up --name {self.lab.name} ({o.rules} extra rules)")
        self.lab.up(self.config, self.file("lab-up.out"))
        self.op25b = self.lab.proc
        self.run_t0 = time.monotonic()
        self.cpu0 = self.op25b_ticks()

    def reach_check(self, path):
        """Both families reach the server before anything is measured (also fills ARP/ND)."""
        lab = self.lab
        for fam, src, dst in (("4", lab.cli4, lab.srv4), ("6", lab.cli6, lab.srv6)):
            out = self.file(f"{path}-reach{fam}")
            argv = in_ns(self.sub[path], 10, "ping", f"-{fam}", "-n", "-q", "-c", "3", "-i", "0.2",
                         "-W", "2", "-I", src, dst)
            with open(out, "wb") as f:
                rc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=f,
                                    stderr=subprocess.STDOUT).returncode
            checkpoint()
            if rc != 0:
                show_file(out)
                raise Die(f"{path} path: {dst} unreachable from {src}")

    # -------------------------------------------------------------- op25b's figures

    def op25b_ticks(self):
        """utime + stime in clock ticks (fields 14 and 15 of /proc/PID/stat)."""
        f = proc_fields(self.op25b.pid) if self.op25b else None
        return int(f[11]) + int(f[12]) if f and len(f) > 12 else 0

    def tun_stat(self, ns, dev, stat):
        out = nsx(ns, "cat", f"/sys/class/net/{dev}/statistics/{stat}", ok=True)
        try:
            return int(out)
        except (TypeError, ValueError):
            return 0

    def tun_drops(self):
        """Packets the kernel dropped because op25b did not read them in time (TUN queue
        full): tx_dropped of the subscriber TUN counts outbound packets, of the upstream
        TUN inbound ones."""
        return (self.tun_stat(self.ns["osub"], self.tun_sub, "tx_dropped")
                + self.tun_stat(self.ns["oup"], self.tun_up, "tx_dropped"))

    def cpu_mark(self):
        self.t_mark, self.c_mark = time.monotonic(), self.op25b_ticks()

    def cpu_account(self, path):
        """op25b's CPU while it forwards (its own tests) and while it idles (the kernel's)."""
        self.cpu_ticks[path] += self.op25b_ticks() - self.c_mark
        self.wall[path] += time.monotonic() - self.t_mark

    # -------------------------------------------------------------- measurements

    def wait_listen(self, ns):
        for _ in range(100):
            if (nsx(ns, "ss", "-Hltn", f"sport = :{PORT}", ok=True) or "").strip():
                return True
            pause(0.05)
        return False

    def iperf_test(self, path, rnd, kind, probe):
        """kind is tcp (1 stream), tcp4 or udp; with probe, the blocked-SYN check runs
        during it."""
        secs, op = self.o.secs, path == "op25b"
        if op:
            self.check_op25b()
        tag = f"{path}-r{rnd}-{kind}"
        srv, cli = self.file(f"{tag}-server.json"), self.file(f"{tag}-client.json")
        args = ["-c", self.lab.srv4, "-B", self.lab.cli4, "-p", str(PORT), "-t", str(secs), "--json"]
        args += {"tcp": [], "tcp4": ["-P", "4"], "udp": ["-u", "-l", "64", "-b", "0"]}[kind]
        server = self.spawn(srv, in_ns(self.up[path], secs + 30, "iperf3", "-s", "-1", "--json",
                                       "-B", self.lab.srv4, "-p", str(PORT)))
        if not self.wait_listen(self.up[path]):
            self.stop(server)
            self.fail_measure(f"{tag}: iperf3 server did not listen")
            return
        drops0 = self.tun_drops() if op else 0
        self.cpu_mark()
        client = self.spawn(cli, in_ns(self.sub[path], secs + 20, "iperf3", *args))
        flood = flood_start(self, path, tag) if kind == "tcp" and self.o.flood else None
        prober = None
        if probe:
            pause(1 if secs > 2 else 0.3)  # well into the load, short of its end
            prober = synprobe_start(self, path)
        rc = self.reap(client, secs + 30)
        if prober:
            synprobe_finish(self, path, prober)
        if flood:
            flood_finish(self, path, rnd, tag, flood)
        self.cpu_account(path)
        if op:
            self.record(path, rnd, f"{kind}_tun_drops", self.tun_drops() - drops0)
        # The one-off server exits after writing its report.
        if rc == 0:
            self.reap(server, 10)
        else:
            self.stop(server)
        if op:
            self.check_op25b()
        if rc != 0:
            show_file(cli, cli + ".err", tail=5)
            self.fail_measure(f"{tag}: iperf3 client failed (exit {rc})")
            return
        try:
            if kind == "udp":
                pps, lost = parse_udp(srv)
                self.record(path, rnd, "udp_pps", pps)
                self.record(path, rnd, "udp_lost_pct", lost)
                info(f"{path:<6} round {rnd}  {kind:<5} {pps / 1e3:10.1f} kpps received")
            else:
                bps, retrans = parse_tcp(cli)
                self.record(path, rnd, f"{kind}_bps", bps)
                self.record(path, rnd, f"{kind}_retransmits", retrans)
                info(f"{path:<6} round {rnd}  {kind:<5} {bps / 1e9:10.2f} Gbit/s")
        except BadOutput as e:
            err(str(e))
            self.fail_measure(f"{tag}: no usable {'UDP' if kind == 'udp' else 'TCP'} result")

    def ping_test(self, path, rnd):
        pings = self.o.pings
        if path == "op25b":
            self.check_op25b()
        tag = f"{path}-r{rnd}-ping"
        out = self.file(f"{tag}.txt")
        self.cpu_mark()
        proc = self.spawn(out, in_ns(self.sub[path], pings // 50 + 10, "ping", "-n", "-i", "0.01",
                                     "-c", str(pings), "-W", "1", "-I", self.lab.cli4,
                                     self.lab.srv4))
        rc = self.reap(proc, pings // 50 + 20)
        self.cpu_account(path)
        if path == "op25b":
            self.check_op25b()
        # At least 90 % answered; a lost ping or two is no failure of the measurement.
        try:
            med, p99, n = parse_ping(out, (pings * 9 + 9) // 10)
        except BadOutput as e:
            err(str(e))
            self.fail_measure(f"{tag}: ping failed (exit {rc})")
            return
        self.record(path, rnd, "rtt_median_us", med)
        self.record(path, rnd, "rtt_p99_us", p99)
        info(f"{path:<6} round {rnd}  ping  median {med:7.1f} us  p99 {p99:7.1f} us  "
             f"({n}/{pings} replies)")

    def op25b_figures(self):
        """op25b's own figures, read before it stops."""
        self.check_op25b()
        pid = self.op25b.pid
        with open(f"/proc/{pid}/status", encoding="utf-8") as f:
            rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
        # Rounded as shown (bench.sh printed them with printf): the JSON carries the same.
        self.record("op25b", None, "rss_mib", round(rss_kb / 1024, 1))
        self.record("op25b", None, "cpu_s", round((self.op25b_ticks() - self.cpu0) / self.hz, 2))
        self.record("op25b", None, "run_s", round(time.monotonic() - self.run_t0, 1))
        # Voluntary + involuntary, all threads: how often it slept and woke while forwarding.
        switches = 0
        for status in glob.glob(f"/proc/{pid}/task/*/status"):
            try:
                with open(status, encoding="utf-8") as f:
                    switches += sum(int(line.split()[1]) for line in f if "ctxt_switches:" in line)
            except OSError:
                pass
        self.record("op25b", None, "ctxt_switches", switches)
        # op25b's CPU use as % of one core: while forwarding (op25b) and idle (kernel).
        for path, metric in (("op25b", "cpu_busy_pct"), ("kernel", "cpu_idle_pct")):
            w = self.wall[path]
            pct = 100 * self.cpu_ticks[path] / self.hz / w if w > 0 else 0.0
            self.record("op25b", None, metric, round(pct, 1))
        for metric, ns, dev in (("tun_sub_tx_dropped", "osub", self.tun_sub),
                                ("tun_up_tx_dropped", "oup", self.tun_up)):
            self.record("op25b", None, metric, self.tun_stat(self.ns[ns], dev, "tx_dropped"))
        chain = nsx(self.ns["krtr"], "nft", "list", "chain", "inet", "op25b", "forward", ok=True)
        self.record("kernel", None, "nft_rejected_packets", nft_packets(chain or ""))

    def main(self):
        o = self.o
        self.preflight()
        self.write_config()
        self.setup_kernel()
        self.setup_op25b()
        self.reach_check("kernel")
        self.reach_check("op25b")

        t_start = time.monotonic()
        info(f"measuring: {o.rounds} round(s), {o.secs} s per iperf3 test, {o.pings} pings, "
             "kernel and op25b alternating")
        for rnd in range(1, o.rounds + 1):
            for kind in ("tcp", "tcp4", "udp"):
                for path in PATHS:
                    self.iperf_test(path, rnd, kind, probe=kind == "tcp4" and rnd == 1)
                    pause(0.2)
            for path in PATHS:
                self.ping_test(path, rnd)

        self.op25b_figures()
        info(f"stopping op25b (pid {self.op25b.pid})")
        self.stop_op25b()
        try:
            with open(self.file("op25b.log"), encoding="utf-8", errors="replace") as f:
                counters = counters_line(f.read())
        except OSError:
            counters = ""
        if counters:
            info(f"op25b {counters}")
        if o.flood or o.events:
            visibility_figures(self, counters)

        total_s = round(time.monotonic() - t_start, 1)
        meta = {"ok": not self.failures, "failures": self.failures, "smoke": o.smoke,
                "rounds": o.rounds, "seconds": o.secs, "pings": o.pings, "extra_rules": o.rules,
                "busy_poll_us": o.busy, "flood_pps": o.flood, "events": o.events, "abuse": o.abuse,
                "cpus": len(os.sched_getaffinity(0)), "measure_s": total_s,
                "op25b_counters": counters}
        report(self.records, meta, o.json)
        return self.finish("meta.json", meta, "measurement(s)", f"done in {total_s} s")

    # -------------------------------------------------------------- cleanup

    def cleanup(self, rc):
        """Stop what this run started (by pid), take its lab down, delete the kernel
        path's namespaces, keep or drop its files. Runs on every exit."""
        if rc != 0 and self.work:
            info(f"exiting with status {rc}: stopping what this run started, "
                 "removing its namespaces")
        self.close(self.o.keep, also=self.delete_namespaces)

    def delete_namespaces(self):
        for ns in self.namespaces:
            if not os.path.exists(f"/run/netns/{ns}"):
                continue
            pids = " ".join((sh("ip", "netns", "pids", ns, ok=True) or "").split())
            # Not started by this run (or escaped its bookkeeping): left alone; the
            # namespace lives on, unnamed, until they exit.
            if pids:
                warn(f"processes still inside {ns}, left alone: {pids}")
            if sh("ip", "netns", "delete", ns, ok=True) is None:
                warn(f"could not delete netns {ns}")

# ------------------------------------------------------------------ main


def main(argv):
    try:
        o = parse_args(argv, os.path.join(REPO_DIR, "target/release/op25b"))
    except Usage as e:
        if e.args[0]:
            err(e.args[0])
        print(__doc__.strip("\n"), file=sys.stderr)
        return 2
    # Decimal points in the tools' output, whatever the locale.
    os.environ["LC_ALL"] = "C"
    catch_signals()
    return bench_proc.run_to_end(Bench(o))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
