#!/usr/bin/env python3
"""
op25b soak: load and reloads together for a bounded time, in a lab made for the run
(`op25b lab up --name o25soak-PID`, the lab's own definition and config).

  SUB (100.64.1.10, 2001:db8:100:1::10) ==TUN==> op25b ==TUN==> UP (203.0.113.25, 2001:db8:203::25)

During the whole run:
  - iperf3 load in both directions, at fixed rates: TCP IPv4 upload, TCP IPv6 download,
    UDP IPv4 upload and UDP IPv6 download (512-byte datagrams);
  - a trickle of blocked SYNs to 203.0.113.25:25 from forged subscriber sources
    (scripts/bench_syn.py flood), each answered with an RST by op25b;
  - a SIGHUP every 200 ms (or once op25b has answered the previous one, if later), the
    config file replaced (atomically) before each, in the cycle valid B, invalid,
    valid A, valid B, invalid, ... (A is the start config).
At the end it checks, and prints:
  - op25b is alive;
  - every reload was accepted or refused as expected: after each SIGHUP the control
    socket's reload counters (`op25b stats --json`) moved in the expected column, and
    the totals are exact;
  - per direction received = forwarded + dropped + replied + terminated, exactly (the
    `--stats` file op25b writes when it stops);
  - no TCP connection of the load was reset (every iperf3 ended well);
  - op25b's RSS, sampled through the run (the curve is printed), grew by at most
    max(1 MiB, 5 %) after the warm-up (the first 10 %, at least 5 s);
  - no WARN or ERROR line in op25b's log but the expected refusals, one per invalid reload.

Usage: scripts/soak.sh [--minutes N | --seconds N] [--no-build] [--bin PATH] [--keep DIR]
  --minutes N   how long the load runs (default 10)
  --seconds N   the same in seconds (CI: 20)
  --no-build    skip `cargo build --release`
  --bin PATH    op25b binary (default target/release/op25b)
  --keep DIR    copy the raw outputs (iperf3 JSON, op25b log, configs, stats) to DIR
Exit status: 0 when every check passed, 1 if one failed, 2 on usage errors. Needs root,
iperf3, python3 (scripts/setup.sh --bench). The lab (namespaces o25soak-PID-sub and
-inet) is removed on every exit; only processes this run started are stopped.
"""
# The process plumbing (messages, signals, the processes it starts) is bench_proc.py's,
# the SYN generator bench_syn.py's; this file is the soak itself.

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import bench_proc  # SIGNALLED, CLOSING and TAG are read and set there
from bench_proc import Die, catch_signals, err, info, pause, show_file
from lablib import Run

SCRIPTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(SCRIPTS_DIR)
TOOLS = [("iperf3", "iperf3"), ("timeout", "coreutils"), ("ping", "iputils-ping")]

# The load: (name, family, protocol, reverse, rate, port).
LOAD = [
    ("tcp4-up", "4", "tcp", False, "200M", 5201),
    ("tcp6-down", "6", "tcp", True, "200M", 5202),
    ("udp4-up", "4", "udp", False, "20M", 5203),
    ("udp6-down", "6", "udp", True, "20M", 5204),
]
SYN_PPS = 50  # blocked SYNs a second
RELOAD_EVERY = 0.2
# The reload cycle after the start config A: True = valid (accepted).
CYCLE = [("B", True), ("invalid", False), ("A", True)]
RSS_SLACK_KIB = 1024
RSS_SLACK_PCT = 5


def usage(msg=None):
    if msg:
        err(msg)
    print(__doc__.strip("\n"), file=sys.stderr)
    return 2


def parse_args(argv):
    o = {"secs": 600, "build": True, "bin": os.path.join(REPO_DIR, "target/release/op25b"),
         "keep": None}
    args = list(argv)
    while args:
        a = args.pop(0)
        if a == "--no-build":
            o["build"] = False
        elif a in ("--minutes", "--seconds", "--bin", "--keep"):
            if not args:
                raise ValueError(f"{a} needs a value")
            v = args.pop(0)
            if a in ("--minutes", "--seconds"):
                if not re.fullmatch(r"[0-9]+", v) or int(v) < 1:
                    raise ValueError(f"{a} needs a whole number of at least 1, got '{v}'")
                o["secs"] = int(v) * (60 if a == "--minutes" else 1)
            else:
                o[a[2:]] = os.path.abspath(v)
        elif a in ("-h", "--help"):
            raise ValueError(None)
        else:
            raise ValueError(f"unknown argument: {a}")
    if o["secs"] < 10:
        raise ValueError("the run needs at least 10 seconds")
    return o


def config(lab, name, work):
    """The start config A (the lab's own), the other valid one B (another reply limit,
    so the reply buckets start afresh, and a counting rule), or an invalid one (a port
    out of range); each with a control socket in the run's directory."""
    text = lab.config(f'\n[control]\nsocket = "{work}/op25b.sock"\n')
    if name == "B":
        text = text.replace("reply_rate = 10", "reply_rate = 20")
        text += '\n[[rule]]\nname = "count-udp"\nprotocol = "udp"\naction = "count"\n'
    elif name == "invalid":
        text = text.replace("ports = [25]", "ports = [25, 70000]")
    return text


def ask_stats(path):
    """`GET /v1/stats` on the control socket (HTTP/1.1): the JSON answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(path)
        s.sendall(b"GET /v1/stats HTTP/1.1\r\nHost: op25b\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise ValueError(f"GET /v1/stats: {head.splitlines()[0] if head else b'no answer'}")
    return json.loads(body)


def rss_kib(pid):
    """(VmRSS, RssAnon, RssFile) in KiB from /proc/PID/status, or None."""
    fields = {}
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "RssAnon", "RssFile"):
                    fields[key] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if len(fields) < 3:
        return None
    return fields["VmRSS"], fields["RssAnon"], fields["RssFile"]


class Soak(Run):
    def __init__(self, o):
        super().__init__(f"o25soak-{os.getpid()}")
        self.o = o

    # -------------------------------------------------------------- bookkeeping

    def check(self, ok, msg):
        if ok:
            info(f"ok: {msg}")
        else:
            self.failures.append(msg)
            err(f"FAILED: {msg}")

    # -------------------------------------------------------------- set-up

    def preflight(self):
        self.prepare(TOOLS, self.o["build"], self.o["bin"], self.pfx)
        for name in ("A", "B", "invalid"):
            with open(self.file(f"{name}.toml"), "w", encoding="utf-8") as f:
                f.write(config(self.lab, name, self.work))
        # op25b runs the lab's copy of A; each reload replaces that file.
        self.config = os.path.join(self.lab.d["state_dir"], "op25b.toml")

    def setup(self):
        lab = self.lab
        info(f"lab {lab.name}: {lab.sub_ns} | op25b | {lab.up_ns}")
        lab.up(self.file("A.toml"), self.file("lab-up.out"), stats=self.file("stats.json"))
        self.op25b = lab.proc
        for fam, dst in (("4", lab.srv4), ("6", lab.srv6)):
            ping = lab.exec(10, "ping", f"-{fam}", "-c", "2", "-i", "0.2", "-W", "2", dst)
            if subprocess.run(ping, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode:
                raise Die(f"no ping through op25b to {dst}")
        for _ in range(50):
            if os.path.exists(self.file("op25b.sock")):
                break
            pause(0.1)

    # -------------------------------------------------------------- the run

    def start_load(self):
        secs = self.o["secs"]
        self.load = {}
        for name, fam, proto, rev, rate, port in LOAD:
            # Bound to the address the client asks for: the outside has more than one
            # (the MX, the relay), and an unbound UDP server answers from whichever the
            # kernel picks.
            dst = self.lab.srv4 if fam == "4" else self.lab.srv6
            srv = self.spawn(self.file(f"{name}-server.json"),
                             self.lab.exec(secs + 60, "iperf3", "-s", "-1", "-B", dst, "-p", str(port),
                                           "--json", outside=True))
            self.load[name] = {"server": srv}
        pause(0.5)
        for name, fam, proto, rev, rate, port in LOAD:
            dst = self.lab.srv4 if fam == "4" else self.lab.srv6
            argv = ["iperf3", "-c", dst, "-p", str(port), "-t", str(secs), "-b", rate, "--json"]
            if proto == "udp":
                argv += ["-u", "-l", "512"]
            if rev:
                argv.append("-R")
            self.load[name]["client"] = self.spawn(self.file(f"{name}.json"),
                                                   self.lab.exec(secs + 30, *argv))
        self.flood = self.spawn(self.file("syn-flood.json"),
                                self.lab.exec(secs + 10, sys.executable,
                                              os.path.join(SCRIPTS_DIR, "bench_syn.py"), "flood",
                                              str(SYN_PPS), str(secs), self.lab.srv4, "25"))

    def run(self):
        secs = self.o["secs"]
        warmup = max(5.0, secs * 0.1)
        sample_every = max(1.0, secs / 60)
        info(f"soaking for {secs} s: {len(LOAD)} iperf3 flows, {SYN_PPS} blocked SYNs/s, "
             f"SIGHUP every {int(RELOAD_EVERY * 1000)} ms")
        self.start_load()
        t0 = time.monotonic()
        sock = self.file("op25b.sock")
        self.rss = []  # (seconds, (VmRSS, RssAnon, RssFile) KiB)
        sent = {"ok": 0, "failed": 0}
        wrong = []
        k = 0
        next_sample = 0.0
        while True:
            now = time.monotonic() - t0
            if now >= secs:
                break
            if not self.op25b_alive():
                raise Die(f"op25b exited {now:.1f} s into the soak")
            if now >= next_sample:
                self.rss.append((round(now, 1), rss_kib(self.op25b.pid)))
                next_sample += sample_every
            # The previous reload's outcome, then the next one.
            if k > 0:
                r = self.settled(sock, k)
                if r != (sent["ok"], sent["failed"]):
                    wrong.append(f"after reload {k} ({CYCLE[(k - 1) % len(CYCLE)][0]}): "
                                 f"counters ok={r[0]} failed={r[1]}, expected "
                                 f"ok={sent['ok']} failed={sent['failed']}")
                    sent["ok"], sent["failed"] = r  # count on from what op25b says
            name, valid = CYCLE[k % len(CYCLE)]
            tmp = self.config + ".new"
            shutil.copy(self.file(f"{name}.toml"), tmp)
            os.rename(tmp, self.config)
            self.op25b.kill(signal.SIGHUP)
            sent["ok" if valid else "failed"] += 1
            k += 1
            pause(RELOAD_EVERY)
        r = self.settled(sock, k)
        if r != (sent["ok"], sent["failed"]):
            wrong.append(f"after the last reload: ok={r[0]} failed={r[1]}, expected "
                         f"ok={sent['ok']} failed={sent['failed']}")
        self.rss.append((round(time.monotonic() - t0, 1), rss_kib(self.op25b.pid)))
        self.sent_reloads = (sum(1 for i in range(k) if CYCLE[i % len(CYCLE)][1]),
                             sum(1 for i in range(k) if not CYCLE[i % len(CYCLE)][1]))
        self.reload_counters = r
        self.check(self.op25b_alive(), "op25b is alive at the end")
        ok, failed = self.sent_reloads
        for w in wrong[:10]:
            err(w)
        self.check(not wrong and r == (ok, failed),
                   f"{k} reloads: {r[0]} accepted (expected {ok}), {r[1]} refused "
                   f"(expected {failed}), each as expected after its SIGHUP"
                   + (f"; {len(wrong)} mismatches" if wrong else ""))
        self.warmup = warmup

    def settled(self, sock, k):
        """The reload counters once op25b has answered k SIGHUPs (or after 5 s, when
        the caller finds them wrong): a slow reload is waited for, not miscounted,
        and two SIGHUPs are never pending at once."""
        end = time.monotonic() + 5
        while True:
            r = self.reloads(sock)
            if sum(r) >= k or time.monotonic() >= end:
                return r
            pause(0.01)

    def reloads(self, sock):
        try:
            v = ask_stats(sock)["reloads"]
            return (v["success"], v["failure"])
        except (OSError, ValueError, KeyError) as e:
            raise Die(f"the control socket did not answer: {e}") from None

    def finish_load(self):
        rates = []
        for name, fam, proto, rev, rate, port in LOAD:
            client = self.load[name]["client"]
            if not client.wait(60):
                self.stop(client)
            rc = client.status()
            self.stop(client)
            self.stop(self.load[name]["server"])
            try:
                with open(self.file(f"{name}.json"), encoding="utf-8") as f:
                    doc = json.load(f)
            except (OSError, ValueError):
                doc = {}
            error = doc.get("error")
            end = doc.get("end", {})
            if proto == "tcp":
                bps = end.get("sum_received", {}).get("bits_per_second", 0)
                retr = end.get("sum_sent", {}).get("retransmits", 0)
                detail = f"{bps / 1e6:.0f} Mbit/s received, {retr} retransmits"
                self.check(rc == 0 and not error and bps > 0,
                           f"{name}: TCP ran to the end without a reset ({detail})"
                           + (f"; exit {rc}, error: {error}" if rc or error else ""))
            else:
                s = end.get("sum", {})
                bps, lost, pkts = (s.get("bits_per_second", 0), s.get("lost_packets", 0),
                                   s.get("packets", 0))
                detail = f"{bps / 1e6:.0f} Mbit/s, {pkts} datagrams, {lost} lost"
                self.check(rc == 0 and not error and pkts > 0,
                           f"{name}: UDP ran to the end ({detail})"
                           + (f"; exit {rc}, error: {error}" if rc or error else ""))
            rates.append((name, detail))
        self.flood.wait(15)
        self.stop(self.flood)
        try:
            with open(self.file("syn-flood.json"), encoding="utf-8") as f:
                self.syns = json.load(f)
        except (OSError, ValueError):
            self.syns = {}
            show_file(self.file("syn-flood.json.err"))
        return rates

    def final_checks(self):
        try:
            with open(self.file("stats.json"), encoding="utf-8") as f:
                st = json.load(f)
        except (OSError, ValueError) as e:
            self.check(False, f"op25b wrote its counters when it stopped ({e})")
            return
        for d in ("outbound", "inbound"):
            v = st[d]
            dropped, replied = sum(v["dropped"].values()), sum(v["replies"].values())
            total = v["forwarded"] + dropped + replied + v["terminated"]
            self.check(v["received"] == total,
                       f"{d}: received {v['received']} = forwarded {v['forwarded']} + dropped "
                       f"{dropped} + replied {replied} + terminated {v['terminated']}")
        c = st["counters"]
        syns = self.syns.get("sent", 0)
        self.check(syns > 0 and c["op25b_blocked"] >= syns,
                   f"blocked SYNs: {syns} sent, op25b_blocked {c['op25b_blocked']}, "
                   f"reply_tcp_rst {c['reply_tcp_rst']}, drop_reply_rate_limited "
                   f"{c['drop_reply_rate_limited']}")
        with open(self.file("op25b.log"), encoding="utf-8", errors="replace") as f:
            log = f.read().splitlines()
        alarms = [l for l in log if " WARN " in l or " ERROR " in l]
        refusals = [l for l in alarms if "config reload failed" in l]
        others = [l for l in alarms if "config reload failed" not in l]
        for line in others[:10]:
            err(f"  {line}")
        self.check(not others and len(refusals) == self.sent_reloads[1],
                   f"op25b's log: {len(refusals)} refusals (expected {self.sent_reloads[1]}), "
                   f"{len(others)} other WARN/ERROR lines")
        # RSS after the warm-up.
        samples = [(t, r) for t, r in self.rss if r is not None]
        print("RSS over the run (s: VmRSS KiB = anonymous + file):", file=sys.stderr)
        for i in range(0, len(samples), 6):
            print("  " + "  ".join(f"{t:g}: {r[0]} = {r[1]} + {r[2]}"
                                   for t, r in samples[i:i + 6]), file=sys.stderr)
        after = [r[0] for t, r in samples if t >= self.warmup]
        if len(after) >= 2:
            base, peak = after[0], max(after)
            slack = max(RSS_SLACK_KIB, base * RSS_SLACK_PCT // 100)
            self.check(peak - base <= slack,
                       f"RSS flat after the {self.warmup:g} s warm-up: {base} KiB then at most "
                       f"{peak} KiB (+{peak - base} KiB, allowed +{slack} KiB); at the end "
                       f"{samples[-1][1][0]} KiB")
        else:
            self.check(False, "too few RSS samples after the warm-up")
        self.stats = st

    def main(self):
        t_start = time.monotonic()
        self.preflight()
        self.setup()
        self.run()
        rates = self.finish_load()
        info("stopping op25b")
        self.stop_op25b()
        self.final_checks()
        ok, failed = self.reload_counters
        summary = {
            "ok": not self.failures, "failures": self.failures, "seconds": self.o["secs"],
            "reloads_ok": ok, "reloads_failed": failed,
            "load": dict(rates), "syns_sent": self.syns.get("sent", 0),
            "rss_kib": self.rss, "wall_s": round(time.monotonic() - t_start, 1),
        }
        print(json.dumps(summary))
        return self.finish("summary.json", summary, "check(s)", f"soak passed in {summary['wall_s']} s")

    def cleanup(self, rc):
        if rc != 0 and self.work:
            show_file(self.lab.log() if self.lab and self.lab.is_up else self.file("op25b.log"), tail=20)
        self.close(self.o["keep"])


def main(argv):
    bench_proc.TAG = "soak"
    try:
        o = parse_args(argv)
    except ValueError as e:
        return usage(e.args[0])
    os.environ["LC_ALL"] = "C"
    catch_signals()
    return bench_proc.run_to_end(Soak(o))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
