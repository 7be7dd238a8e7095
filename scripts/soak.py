#!/usr/bin/env python3
"""
op25b soak: load and reloads together for a bounded time, in a lab made for the run
(`op25b lab up --name o25soak-PID`, the lab's definition and config). All the while:
  - iperf3 at fixed rates both ways: TCP IPv4 up, TCP IPv6 down, UDP IPv4 up, UDP IPv6
    down (512-byte datagrams); 50 blocked SYNs a second to 203.0.113.25:25 from forged
    subscriber sources (examples/syn_load.rs flood), each answered with an RST;
  - a reload every 200 ms (`op25b lab reload`: the config replaced, SIGHUP, op25b's answer
    awaited), in the cycle valid B, invalid, valid A, ... (A is the start config).
At the end it checks, and prints: op25b is alive; every reload was accepted or refused as
expected, and the control socket's reload counters (`op25b stats`) are exact; per
direction received = forwarded + dropped + replied + terminated (the `--stats` file op25b
writes when it stops); no TCP connection of the load was reset; op25b's RSS, sampled
through the run (the curve is printed), grew by at most max(1 MiB, 5 %) after the warm-up
(the first 10 %, at least 5 s); no WARN or ERROR in op25b's log but one refusal per
invalid reload.

Usage: scripts/soak.sh [--minutes N | --seconds N] [--no-build] [--bin PATH] [--keep DIR]
  --minutes N   how long the load runs (default 10)
  --seconds N   the same in seconds (CI: 20)
  --no-build    skip `cargo build --release` (op25b, examples tun_limit and syn_load)
  --bin PATH    op25b binary (default target/release/op25b; the examples beside it)
  --keep DIR    copy the raw outputs (iperf3 JSON, op25b log, configs, stats) to DIR
Exit status: 0 when every check passed, 1 if one failed, 2 on usage errors. Needs root,
iperf3, python3 (scripts/setup.sh --bench). The lab is removed on every exit; only
processes this run started are stopped.
"""

import json
import os
import subprocess
import sys
import time

from labrun import Die, Run, main, parse_args, read_json, say, show

# The load: (name, family, protocol, reverse, rate, port).
LOAD = [("tcp4-up", "4", "tcp", False, "200M", 5201), ("tcp6-down", "6", "tcp", True, "200M", 5202),
        ("udp4-up", "4", "udp", False, "20M", 5203), ("udp6-down", "6", "udp", True, "20M", 5204)]
SYN_PPS = 50  # blocked SYNs a second
RELOAD_EVERY = 0.2
CYCLE = [("B", True), ("invalid", False), ("A", True)]  # after the start config A; True = valid
RSS_SLACK_KIB, RSS_SLACK_PCT = 1024, 5


def parse(argv):
    o = parse_args(argv, ints=(("--minutes", None), ("--seconds", None)))
    o.secs = o.seconds or (o.minutes or 10) * 60
    if o.secs < 10:
        raise ValueError("the run needs at least 10 seconds")
    return o


def rss_kib(pid):
    """(VmRSS, RssAnon, RssFile) in KiB from /proc/PID/status, or None."""
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as f:
            d = {k: int(v.split()[0]) for k, _, v in (ln.partition(":") for ln in f)
                 if k in ("VmRSS", "RssAnon", "RssFile")}
        return d["VmRSS"], d["RssAnon"], d["RssFile"]
    except (OSError, ValueError, KeyError):
        return None


class Soak(Run):
    def __init__(self, o):
        super().__init__(o, [("iperf3", "iperf3"), ("timeout", "coreutils"), ("ping", "iputils-ping")])

    def check(self, ok, msg):
        if ok:
            say(f"ok: {msg}")
        else:
            self.fail(f"FAILED: {msg}")

    def setup(self):
        """The configs: A (the lab's), B (another reply limit, so the reply buckets start
        afresh, and a counting rule) and an invalid one (a port out of range), each with a
        control socket in the run's directory; then the lab, running A."""
        lab, self.sock = self.lab, self.file("op25b.sock")
        a = lab.config() + f'\n[control]\nsocket = "{self.sock}"\n'
        b = a.replace("reply_rate = 10", "reply_rate = 20") \
            + '\n[[rule]]\nname = "count-udp"\nprotocol = "udp"\naction = "count"\n'
        for name, text in (("A", a), ("B", b), ("invalid", a.replace("ports = [25]", "ports = [25, 70000]"))):
            with open(self.file(f"{name}.toml"), "w", encoding="utf-8") as f:
                f.write(text)
        say(f"lab {lab.name}: subscribers | op25b | outside")
        self.pid = lab.up(self.file("lab-up.out"), "--config", self.file("A.toml"), "--stats", self.file("stats.json"))
        self.reach("op25b")
        for _ in range(50):
            if os.path.exists(self.sock):
                break
            time.sleep(0.1)

    def start_load(self):
        secs, lab = self.o.secs, self.lab
        self.load = {}
        for name, fam, proto, rev, rate, port in LOAD:
            # Bound to the address the client asks for: the outside has more than one.
            dst = lab.srv4 if fam == "4" else lab.srv6
            srv = self.spawn(self.file(f"{name}-server.json"), lab.exec(
                secs + 60, "iperf3", "-s", "-1", "-B", dst, "-p", str(port), "--json", outside=True))
            argv = ["iperf3", "-c", dst, "-p", str(port), "-t", str(secs), "-b", rate, "--json"]
            argv += (["-u", "-l", "512"] if proto == "udp" else []) + (["-R"] if rev else [])
            self.load[name] = (srv, argv)
        time.sleep(0.5)
        self.load = {n: (srv, self.spawn(self.file(f"{n}.json"), lab.exec(secs + 30, *argv)))
                     for n, (srv, argv) in self.load.items()}
        self.flood = self.spawn(self.file("syn-flood.json"), lab.exec(
            secs + 10, self.example("syn_load"), "flood", str(SYN_PPS), str(secs), lab.srv4, "25"))

    def run(self):
        """`op25b lab reload` every RELOAD_EVERY (or once op25b has answered the last,
        if later): its exit status says whether op25b put the config in force (0) or
        refused it (1); at the end the control socket's counters must match exactly."""
        secs, lab = self.o.secs, self.lab
        self.warmup, every = max(5.0, secs * 0.1), max(1.0, secs / 60)
        say(f"soaking for {secs} s: {len(LOAD)} iperf3 flows, {SYN_PPS} blocked SYNs/s, "
            f"a reload every {int(RELOAD_EVERY * 1000)} ms")
        self.start_load()
        t0, self.rss, wrong, k, sample = time.monotonic(), [], [], 0, 0.0
        while (now := time.monotonic() - t0) < secs:
            if now >= sample:
                self.rss.append((round(now, 1), rss_kib(self.pid)))
                sample += every
            name, valid = CYCLE[k % 3]
            rc = subprocess.run([lab.op25b, "lab", "reload", "--name", lab.name, "--config",
                                 self.file(f"{name}.toml")], capture_output=True).returncode
            k += 1
            if rc != (0 if valid else 1):
                wrong.append(f"reload {k} ({name}): exit {rc}, expected {0 if valid else 1}")
                if not lab.alive():
                    raise Die(f"op25b exited {now:.1f} s into the soak")
            time.sleep(max(0.0, RELOAD_EVERY - (time.monotonic() - t0 - now)))
        self.rss.append((round(time.monotonic() - t0, 1), rss_kib(self.pid)))
        stats = subprocess.run([lab.op25b, "stats", "--json", "--socket", self.sock], capture_output=True, text=True)
        try:
            r = json.loads(stats.stdout)["reloads"]
            self.reload_counters = r = (r["success"], r["failure"])
        except (ValueError, KeyError):
            raise Die(f"op25b stats: no answer ({stats.stderr.strip()})") from None
        self.expected = (sum(CYCLE[i % 3][1] for i in range(k)), sum(not CYCLE[i % 3][1] for i in range(k)))
        self.check(lab.alive(), "op25b is alive at the end")
        for w in wrong[:10]:
            say(w, " error:")
        self.check(not wrong and r == self.expected,
                   f"{k} reloads: {r[0]} accepted (expected {self.expected[0]}), {r[1]} refused (expected "
                   f"{self.expected[1]}), each as expected" + (f"; {len(wrong)} mismatches" if wrong else ""))

    def finish_load(self):
        rates = {}
        for name, fam, proto, *_ in LOAD:
            srv, client = self.load[name]
            rc = self.reap(client, 60)
            self.stop(srv)
            doc = read_json(self.file(f"{name}.json"))
            error, end = doc.get("error"), doc.get("end", {})
            bad = f"; exit {rc}, error: {error}" if rc or error else ""
            if proto == "tcp":
                bps = end.get("sum_received", {}).get("bits_per_second", 0)
                rates[name] = f"{bps / 1e6:.0f} Mbit/s received, {end.get('sum_sent', {}).get('retransmits', 0)} retransmits"
                self.check(not rc and not error and bps > 0, f"{name}: TCP ran to the end without a reset ({rates[name]}){bad}")
            else:
                s = end.get("sum", {})
                rates[name] = f"{s.get('bits_per_second', 0) / 1e6:.0f} Mbit/s, {s.get('packets', 0)} datagrams, " \
                              f"{s.get('lost_packets', 0)} lost"
                self.check(not rc and not error and s.get("packets", 0) > 0, f"{name}: UDP ran to the end ({rates[name]}){bad}")
        self.reap(self.flood, 15)
        self.syns = read_json(self.file("syn-flood.json"))
        if not self.syns:
            show(self.file("syn-flood.json.err"))
        return rates

    def final_checks(self):
        st = read_json(self.file("stats.json"))
        if not st:
            return self.check(False, "op25b wrote its counters when it stopped")
        for d in ("outbound", "inbound"):
            v = st[d]
            dropped, replied = sum(v["dropped"].values()), sum(v["replies"].values())
            self.check(v["received"] == v["forwarded"] + dropped + replied + v["terminated"],
                       f"{d}: received {v['received']} = forwarded {v['forwarded']} + dropped {dropped} + "
                       f"replied {replied} + terminated {v['terminated']}")
        c, syns = st["counters"], self.syns.get("sent", 0)
        self.check(syns > 0 and c["op25b_blocked"] >= syns,
                   f"blocked SYNs: {syns} sent, op25b_blocked {c['op25b_blocked']}, reply_tcp_rst "
                   f"{c['reply_tcp_rst']}, drop_reply_rate_limited {c['drop_reply_rate_limited']}")
        with open(self.file("op25b.log"), encoding="utf-8", errors="replace") as f:
            alarms = [ln for ln in f.read().splitlines() if " WARN " in ln or " ERROR " in ln]
        others = [ln for ln in alarms if "config reload failed" not in ln]
        for line in others[:10]:
            say(f"  {line}", " error:")
        self.check(not others and len(alarms) == self.expected[1],
                   f"op25b's log: {len(alarms) - len(others)} refusals (expected {self.expected[1]}), "
                   f"{len(others)} other WARN/ERROR lines")
        samples = [(t, r) for t, r in self.rss if r is not None]
        print("RSS over the run (s: VmRSS KiB = anonymous + file):", file=sys.stderr)
        for i in range(0, len(samples), 6):
            print("  " + "  ".join(f"{t:g}: {r[0]} = {r[1]} + {r[2]}" for t, r in samples[i:i + 6]), file=sys.stderr)
        after = [r[0] for t, r in samples if t >= self.warmup]
        if len(after) < 2:
            return self.check(False, "too few RSS samples after the warm-up")
        base, peak = after[0], max(after)
        slack = max(RSS_SLACK_KIB, base * RSS_SLACK_PCT // 100)
        self.check(peak - base <= slack, f"RSS flat after the {self.warmup:g} s warm-up: {base} KiB then at most "
                   f"{peak} KiB (+{peak - base} KiB, allowed +{slack} KiB); at the end {samples[-1][1][0]} KiB")

    def main(self):
        t0 = time.monotonic()
        self.setup()
        self.run()
        rates = self.finish_load()
        say("stopping op25b")
        self.lab.down(save_log=self.file("op25b.log"))
        self.final_checks()
        ok, failed = self.reload_counters
        summary = {"ok": not self.failures, "failures": self.failures, "seconds": self.o.secs,
                   "reloads_ok": ok, "reloads_failed": failed, "load": rates,
                   "syns_sent": self.syns.get("sent", 0), "rss_kib": self.rss,
                   "wall_s": round(time.monotonic() - t0, 1)}
        print(json.dumps(summary))
        return self.finish("summary.json", summary, "check(s)", f"soak passed in {summary['wall_s']} s")

    def close(self, rc=0):
        if rc and self.lab and self.lab.up_args is not None:
            show(os.path.join(self.lab.d["state_dir"], "op25b.log"), tail=20)
        super().close(rc)


if __name__ == "__main__":
    sys.exit(main("soak", parse, Soak, __doc__, sys.argv[1:]))
