#!/usr/bin/env python3
"""
op25b benchmark: the same traffic, in one run, through the same lab (`op25b lab up`,
one path at a time, every round through every path), each router in turn:

  kernel: op25b lab up --router kernel   (veth, ip_forward, OP25B as an nftables rule)
  op25b:  op25b lab up --config C        (the release binary between two TUNs)
  tun:    op25b lab up --config C --bin target/release/examples/tun_limit
          (the TUN design's ceiling: the data plane's I/O without a policy)
  SUB: 100.64.1.10, 2001:db8:100:1::10 (iperf3 client, ping, SYN probe)
  UP:  203.0.113.25, 2001:db8:203::25 (an iperf3 server per test, port 5201)

Figures per path (median and min-max over rounds; ratios op25b/kernel and
op25b/tun): TCP 1 stream and 4 streams (Gbit/s received), 64-byte UDP packets per
second received by the server and the % lost at the rate offered, ping RTT median
and p99 (us). For each router process also peak RSS (VmHWM, MiB), CPU time, CPU %
while forwarding and idle, and the TUN queue drops. During the first TCP 4-stream
test of each path with a policy, SYNs to 203.0.113.25:25 (and [2001:db8:203::25]:25)
must all be refused by the router.

Usage: scripts/bench.sh [options]
  --smoke        end-to-end check in a few seconds (1 round, 1 s tests, 50 pings);
                 judges that everything works, not speed
  --json         the last stdout line is one JSON object; the table goes to stderr
  --no-build     skip `cargo build --release` (op25b, examples tun_limit and syn_load)
  --rounds N     rounds (default 3; --smoke: 1)
  --rules N      extra [[rule]]s in op25b's config, none matching (default 100)
  -t, --time S   seconds per iperf3 test (default 5; --smoke: 1)
  --pings N      pings per latency test, 10 ms apart (default 300; --smoke: 50)
  --syn N        blocked-SYN probes per path, v4/v6 alternating (default 20)
  --busy-poll US op25b's dataplane.busy_poll_us (default 0: workers sleep at
                 once; polling mode trades a core per worker for latency)
  --flood PPS    during each TCP 1-stream test (every path), PPS blocked SYNs a second
                 from forged sources in 100.64.200.0/24 to 203.0.113.25:25 (raw
                 socket in the subscriber namespace); reports the rate reached
  --events       op25b writes [events] and [capture] (dropped.pcap) into the run's
                 directory; reports lines and records written, events_dropped and
                 capture_dropped
  --abuse        op25b tracks blocked attempts ([abuse], thresholds no run reaches):
                 what abuse handling costs while nobody is over a threshold
  --bin PATH     op25b binary (default target/release/op25b)
  --keep DIR     copy the raw outputs (iperf3 JSON, ping, logs, configs) to DIR
Exit status: 0 when every measurement and the blocked-SYN check succeeded, 1 if not,
2 on usage errors. Needs root, iperf3, nft (nftables), ping, python3 (scripts/setup.sh
--bench installs them). The lab (o25bench-PID) is removed on exit, also after failures;
only processes this run started are stopped.
"""

import argparse
import glob
import json
import os
import re
import statistics
import sys
import time

from labrun import Die, Run, main, say, show

PORT = 5201
POLICY = ("kernel", "op25b")  # the paths that refuse SYNs to port 25
RATIOS = [("op25b", "kernel", ""), ("op25b", "tun", "ceiling_")]  # (a, b, JSON key prefix) for a/b
# metric -> (label, scale for display, unit, ratio key); a None key: shown, no ratio.
FIGURES = [
    ("tcp_bps", "TCP 1 stream", 1e-9, "Gbit/s", "tcp_ratio"),
    ("tcp4_bps", "TCP 4 streams", 1e-9, "Gbit/s", "tcp4_ratio"),
    ("udp_pps", "UDP 64 B received", 1e-3, "kpps", "udp_pps_ratio"),
    ("rtt_median_us", "RTT median", 1.0, "us", "rtt_median_ratio"),
    ("rtt_p99_us", "RTT p99", 1.0, "us", "rtt_p99_ratio"),
    ("tcp_retransmits", "TCP 1 stream retransmits", 1.0, "", None),
    ("tcp4_retransmits", "TCP 4 streams retransmits", 1.0, "", None),
    ("udp_lost_pct", "UDP lost (sent, not received)", 1.0, "%", None),
    ("tcp_tun_drops", "TCP 1 TUN queue drops", 1.0, "", None),
    ("tcp4_tun_drops", "TCP 4 TUN queue drops", 1.0, "", None),
    ("udp_tun_drops", "UDP TUN queue drops", 1.0, "", None),
    ("tcp_flood_pps", "TCP 1 flood SYNs sent/s", 1.0, "", None),
]


def parse(argv):
    class P(argparse.ArgumentParser):
        def error(self, message):
            raise ValueError(message)
    p = P(add_help=False)
    for flag in ("--smoke", "--json", "--no-build", "--events", "--abuse", "-h", "--help"):
        p.add_argument(flag, action="store_true")
    for flag, default in (("--rounds", None), ("--rules", 100), ("--pings", None), ("--syn", 20),
                          ("--busy-poll", 0), ("--flood", 0)):
        p.add_argument(flag, type=int, default=default)
    p.add_argument("-t", "--time", type=int, dest="secs")
    p.add_argument("--bin", default=os.path.join(os.path.dirname(__file__), "../target/release/op25b"))
    p.add_argument("--keep")
    o = p.parse_args(argv)
    if o.h or o.help:
        raise ValueError(None)
    o.build, o.bin = not o.no_build, os.path.abspath(o.bin)
    o.keep = o.keep and os.path.abspath(o.keep)
    d = (1, 1, 50) if o.smoke else (3, 5, 300)
    o.rounds, o.secs, o.pings = (v if v is not None else x for v, x in zip((o.rounds, o.secs, o.pings), d))
    if min(o.rounds, o.secs, o.pings, o.syn) < 1 or not 0 <= o.rules <= 10000:
        raise ValueError("--rounds, -t, --pings and --syn must be at least 1, --rules 0 to 10000")
    return o


def load(path):
    """An iperf3 JSON report, or an error saying why there is none."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: no iperf3 report ({e})") from None
    if doc.get("error"):
        raise ValueError(f"{path}: iperf3: {doc['error']}")
    return doc["end"]


def op25b_extra(o, work, tag):
    """o.rules extra rules, none matching the traffic (100.64.1.10 <-> 203.0.113.25
    TCP/UDP 5201, ICMP, ephemeral ports), so every packet walks them all; busy polling;
    events and capture; [abuse] with thresholds no run reaches."""
    text = f"\n# Added by scripts/bench.py: {o.rules} non-matching rules.\n"
    if o.busy_poll:
        text += f"\n[dataplane]\nbusy_poll_us = {o.busy_poll}\n"
    if o.events:
        text += f'\n[events]\npath = "{work}/{tag}-events.jsonl"\n\n[capture]\ndropped = "{work}/{tag}-dropped.pcap"\n'
    if o.abuse:
        text += "\n[abuse]\nthreshold = 1000000000\ndestinations_threshold = 1000000000\n"
    dsts = ["192.0.2.0/24", "198.51.100.128/25", "2001:db8:dead::/48", "192.0.2.77/32"]
    for i in range(o.rules):
        text += (f'\n[[rule]]\nname = "bench-{i:02d}"\ndirection = "{"inbound" if i % 3 == 2 else "outbound"}"\n'
                 f'protocol = "{"tcp" if i % 2 else "udp"}"\ndst = ["{dsts[i % 4]}"]\n'
                 f'dst_ports = [{6000 + i}]\naction = "drop"\n')
    return text


class Bench(Run):
    def __init__(self, o):
        super().__init__(o, [("iperf3", "iperf3"), ("nft", "nftables"), ("ping", "iputils-ping"),
                             ("timeout", "coreutils"), ("ss", "iproute2")])
        self.records, self.hz = [], os.sysconf("SC_CLK_TCK")
        self.paths = {"kernel": ["--router", "kernel"], "op25b": [],
                      "tun": ["--bin", self.example("tun_limit")]}

    def record(self, path, rnd, metric, value):
        self.records.append({"path": path, "round": rnd, "metric": metric, "value": value})

    def ns_cmd(self, argv, out, secs=10, outside=False):
        """A short command in the lab; its exit status, its output in out."""
        p = self.spawn(out, self.lab.exec(secs, *argv, outside=outside))
        return self.reap(p, secs + 5)

    def ticks(self):
        try:
            with open(f"/proc/{self.pid}/stat", encoding="utf-8") as f:
                f = f.read().rsplit(") ", 1)[1].split()
            return int(f[11]) + int(f[12])
        except (OSError, IndexError, TypeError):
            return 0

    def tun_drops(self):
        """Packets the kernel dropped because the router did not read them in time (a full
        TUN queue): tx_dropped of the subscriber TUN (outbound) and upstream TUN (inbound)."""
        total = 0
        for outside, dev in ((False, self.lab.names["sub_tun"]), (True, self.lab.names["up_tun"])):
            out = self.file("drops")
            self.ns_cmd(["cat", f"/sys/class/net/{dev}/statistics/tx_dropped"], out, outside=outside)
            with open(out, encoding="utf-8") as f:
                total += int(f.read().strip() or 0)
        return total

    def lab_up(self, path, rnd):
        tag = f"{path}-r{rnd}"
        args = list(self.paths[path])
        if path != "kernel":
            cfg = self.file(f"{tag}.toml")
            with open(cfg, "w", encoding="utf-8") as f:
                f.write(self.lab.config(op25b_extra(self.o, self.work, tag)))
            args += ["--config", cfg]
        self.pid = self.lab.up(self.file(f"{tag}-up.out"), *args)
        for fam, dst in (("4", self.lab.srv4), ("6", self.lab.srv6)):
            if self.ns_cmd(["ping", f"-{fam}", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "2", dst],
                           self.file(f"{tag}-reach{fam}")):
                show(self.file(f"{tag}-reach{fam}"))
                raise Die(f"{path} path: {dst} unreachable")
        if self.pid:  # the router's CPU while nothing passes
            t0, c0 = time.monotonic(), self.ticks()
            time.sleep(1)
            self.idle = (self.ticks() - c0, time.monotonic() - t0)
            self.busy = [0, 0.0]

    def measured(self, path, run):
        """run() while the router's CPU time and the TUN drops are counted."""
        t0, c0 = time.monotonic(), self.ticks()
        drops = self.tun_drops() if self.pid else 0
        result = run()
        if self.pid:
            self.busy[0] += self.ticks() - c0
            self.busy[1] += time.monotonic() - t0
            if not self.lab.alive():
                show(self.lab.d["state_dir"] + "/op25b.log")
                raise Die(f"the {path} router exited during the benchmark (log above)")
            return result, self.tun_drops() - drops
        return result, None

    def iperf(self, path, rnd, kind, probe):
        secs, lab, tag = self.o.secs, self.lab, f"{path}-r{rnd}-{kind}"
        srv, cli = self.file(f"{tag}-server.json"), self.file(f"{tag}-client.json")
        server = self.spawn(srv, lab.exec(secs + 30, "iperf3", "-s", "-1", "--json", "-B", lab.srv4,
                                          "-p", str(PORT), outside=True))
        for _ in range(50):  # until the server listens
            if not self.ns_cmd(["ss", "-Hltn", f"sport = :{PORT}"], srv + ".ss", outside=True) \
                    and os.path.getsize(srv + ".ss"):
                break
            time.sleep(0.1)
        args = {"tcp": [], "tcp4": ["-P", "4"], "udp": ["-u", "-l", "64", "-b", "0"]}[kind]

        def run():
            client = self.spawn(cli, lab.exec(secs + 20, "iperf3", "-c", lab.srv4, "-B", lab.cli4, "-p",
                                              str(PORT), "-t", str(secs), "--json", *args))
            flood = kind == "tcp" and self.o.flood and self.spawn(
                self.file(f"{tag}-flood.json"),
                lab.exec(secs + 5, self.example("syn_load"), "flood", str(self.o.flood), str(secs),
                         lab.srv4, "25"))
            if probe:
                time.sleep(1 if secs > 2 else 0.3)  # well into the load, short of its end
                self.probe(path, self.spawn(self.file(f"{path}-synprobe"), lab.exec(
                    self.o.syn * 3 + 10, self.example("syn_load"), "probe", str(self.o.syn), "25",
                    lab.srv4, lab.srv6)))
            rc = self.reap(client, secs + 30)
            if flood:
                self.reap(flood, secs + 10)
                try:
                    with open(self.file(f"{tag}-flood.json"), encoding="utf-8") as f:
                        r = json.load(f)
                    self.record(path, rnd, "tcp_flood_pps", r["pps"])
                    self.record(path, rnd, "tcp_flood_sent", r["sent"])
                except (OSError, ValueError, KeyError):
                    self.fail(f"{tag}: the SYN flood printed no result")
            return rc
        rc, drops = self.measured(path, run)
        self.reap(server, 10 if rc == 0 else 0)
        if drops is not None:
            self.record(path, rnd, f"{kind}_tun_drops", drops)
        try:
            if rc:
                raise ValueError(f"iperf3 client exit {rc}")
            if kind == "udp":
                s = load(srv)["sum"]
                received = int(s["packets"]) - int(s["lost_packets"])
                if received <= 0:
                    raise ValueError("nothing received")
                # On the receiver "packets" is the highest sequence number seen, "lost" the gaps.
                self.record(path, rnd, "udp_pps", round(received / float(s["seconds"])))
                self.record(path, rnd, "udp_lost_pct", round(100.0 * int(s["lost_packets"]) / int(s["packets"]), 1))
                say(f"{path:<6} round {rnd}  udp   {received / float(s['seconds']) / 1e3:10.1f} kpps received")
            else:
                end = load(cli)
                bps = float(end["sum_received"]["bits_per_second"])
                self.record(path, rnd, f"{kind}_bps", round(bps))
                self.record(path, rnd, f"{kind}_retransmits", end.get("sum_sent", {}).get("retransmits", -1))
                say(f"{path:<6} round {rnd}  {kind:<5} {bps / 1e9:10.2f} Gbit/s")
        except (ValueError, KeyError, TypeError) as e:
            show(cli + ".err", tail=5)
            self.fail(f"{tag}: no usable result ({e})")

    def probe(self, path, proc):
        """The SYN probe's verdict: every SYN to port 25 refused within 2 s, during load."""
        syn, out = self.o.syn, self.file(f"{path}-synprobe")
        rc = self.reap(proc, syn * 3 + 15)
        show(out + ".err")
        try:
            with open(out, encoding="utf-8") as f:
                r = json.load(f)
            answered, sent = r["answered_v4"] + r["answered_v6"], r["sent_v4"] + r["sent_v6"]
        except (OSError, ValueError, KeyError):
            return self.fail(f"{path}: the blocked-SYN probe printed no result (exit {rc})")
        for k, v in list(r.items()) + [("answered", answered), ("sent", sent)]:
            self.record(path, None, f"blocked_syn_{k}", v)
        if answered != syn:
            self.fail(f"{path}: only {answered} of {syn} blocked SYNs to port 25 were refused within 2 s")

    def ping(self, path, rnd):
        out, n = self.file(f"{path}-r{rnd}-ping.txt"), self.o.pings
        self.measured(path, lambda: self.ns_cmd(["ping", "-n", "-i", "0.01", "-c", str(n), "-W", "1",
                                                 "-I", self.lab.cli4, self.lab.srv4], out, n // 50 + 10))
        with open(out, encoding="utf-8", errors="replace") as f:
            rtts = sorted(float(m) * 1000 for m in re.findall(r"bytes from .* time=([0-9.]+)", f.read()))
        if len(rtts) < (n * 9 + 9) // 10:  # a lost ping or two is no failure of the measurement
            return self.fail(f"{path}-r{rnd}-ping: {len(rtts)} of {n} replies")
        med, p99 = round(statistics.median(rtts), 1), round(rtts[max(0, -(-99 * len(rtts) // 100) - 1)], 1)
        self.record(path, rnd, "rtt_median_us", med)
        self.record(path, rnd, "rtt_p99_us", p99)
        say(f"{path:<6} round {rnd}  ping  median {med:7.1f} us  p99 {p99:7.1f} us  ({len(rtts)}/{n})")

    def router_figures(self, path, rnd):
        """The router process's own figures, read before it stops (the last round's stay)."""
        with open(f"/proc/{self.pid}/status", encoding="utf-8") as f:
            rss = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
        switches = 0
        for status in glob.glob(f"/proc/{self.pid}/task/*/status"):
            with open(status, encoding="utf-8") as f:
                switches += sum(int(line.split()[1]) for line in f if "ctxt_switches:" in line)
        for metric, v in (("rss_mib", round(rss / 1024, 1)), ("cpu_s", round(self.ticks() / self.hz, 2)),
                          ("ctxt_switches", switches),
                          ("cpu_busy_pct", round(100 * self.busy[0] / self.hz / max(self.busy[1], 1e-9), 1)),
                          ("cpu_idle_pct", round(100 * self.idle[0] / self.hz / max(self.idle[1], 1e-9), 1))):
            self.record(path, None, metric, v)

    def main(self):
        o, t0 = self.o, time.monotonic()
        say(f"measuring: {o.rounds} round(s), {o.secs} s per iperf3 test, {o.pings} pings, "
            f"paths {', '.join(self.paths)} in turn")
        counters = {}
        for rnd in range(1, o.rounds + 1):
            for path in self.paths:
                self.lab_up(path, rnd)
                for kind in ("tcp", "tcp4", "udp"):
                    self.iperf(path, rnd, kind, probe=kind == "tcp4" and rnd == 1 and path in POLICY)
                self.ping(path, rnd)
                if self.pid:
                    self.router_figures(path, rnd)
                log = self.file(f"{path}-r{rnd}.log")
                self.lab.down(save_log=log)
                if path == "op25b":
                    self.visibility(rnd, log, counters)
        meta = {"ok": not self.failures, "failures": self.failures, "smoke": o.smoke, "rounds": o.rounds,
                "seconds": o.secs, "pings": o.pings, "extra_rules": o.rules, "busy_poll_us": o.busy_poll,
                "flood_pps": o.flood, "events": o.events, "abuse": o.abuse, "paths": list(self.paths),
                "cpus": len(os.sched_getaffinity(0)), "measure_s": round(time.monotonic() - t0, 1),
                "op25b_counters": counters.get("line", "")}
        report(self.records, meta, o.json, list(self.paths))
        return self.finish("meta.json", meta, "measurement(s)", f"done in {meta['measure_s']} s")

    def visibility(self, rnd, log, acc):
        """op25b's last counters line and, with --flood or --events, what it wrote about
        the SYNs sent at it (summed over rounds, recorded after the last)."""
        try:
            with open(log, encoding="utf-8", errors="replace") as f:
                acc["line"] = re.sub(r"\x1b\[[0-9;]*m", "", re.findall(r"counters: .*", f.read())[-1])
            say(f"op25b {acc['line']}")
        except (OSError, IndexError):
            acc["line"] = ""
        tag = f"op25b-r{rnd}"
        n = {k: int(v) for k, v in re.findall(r"\b(events_dropped|capture_dropped)=([0-9]+)", acc["line"])}
        if self.o.events:
            try:
                with open(self.file(f"{tag}-events.jsonl"), encoding="utf-8") as f:
                    lines = f.read().splitlines()
            except OSError:
                lines = []
            blocked = [ln for ln in lines if '"event":"blocked"' in ln]
            n.update(events_lines=len(lines), events_blocked_lines=len(blocked),
                     events_suppressed=sum(int(m) for ln in blocked for m in re.findall(r'"suppressed":([0-9]+)', ln)),
                     capture_records=pcap_records(self.file(f"{tag}-dropped.pcap")))
        for k, v in n.items():
            acc[k] = acc.get(k, 0) + v
        if (self.o.flood or self.o.events) and rnd == self.o.rounds:
            sent = sum(r["value"] for r in self.records if r["path"] == "op25b" and r["metric"] == "tcp_flood_sent")
            for k in ("events_dropped", "capture_dropped", "events_lines", "events_blocked_lines",
                      "events_suppressed", "capture_records"):
                if k in acc or k.endswith("_dropped"):
                    self.record("op25b", None, k, acc.get(k, 0))
            self.record("op25b", None, "flood_syns_sent", sent)


def pcap_records(path):
    """Records in a pcap file and its rotated predecessors (path.1, path.2, ...)."""
    records = 0
    for name in [path] + sorted(glob.glob(glob.escape(path) + ".[0-9]*")):
        try:
            with open(name, "rb") as f:
                data = f.read()
        except OSError:
            continue
        endian, i = ("little" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else "big"), 24
        while i + 16 <= len(data):
            i += 16 + int.from_bytes(data[i + 8:i + 12], endian)
            records += 1
    return records


def fmt(x):
    return f"{int(x)}" if x == int(x) and abs(x) < 1e6 else f"{x:.0f}" if x >= 100 else \
        f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def report(records, meta, as_json, paths):
    """The table (stdout, or stderr with --json) and with --json one JSON object as the
    last stdout line: meta, the ratios, latency added, figures per path."""
    values, out = {}, dict(meta)
    per = {p: {} for p in paths}
    for r in records:
        if r["round"] is None:
            per[r["path"]][r["metric"]] = r["value"]
        else:
            values.setdefault((r["path"], r["metric"]), []).append(r["value"])
    med = {k: statistics.median(v) for k, v in values.items()}
    for (p, metric), v in values.items():
        per[p].update({metric: round(med[p, metric], 1), metric + "_min": round(min(v), 1),
                       metric + "_max": round(max(v), 1), metric + "_n": len(v)})
    ratios = [(a, b, pre) for a, b, pre in RATIOS if a in paths and b in paths]
    for metric, _, _, _, rkey in FIGURES:
        for a, b, pre in ratios:
            if rkey:
                x, y = med.get((a, metric)), med.get((b, metric))
                out[pre + rkey] = round(x / y, 3) if x is not None and y else None
    for key, metric in (("latency_added_us", "rtt_median_us"), ("latency_p99_added_us", "rtt_p99_us")):
        x, y = med.get(("op25b", metric)), med.get(("kernel", metric))
        out[key] = round(x - y, 1) if x is not None and y is not None else None
    out.update(per)
    op = per.get("op25b", {})
    out.update({k: op.get(k) for k in ("rss_mib", "cpu_s", "blocked_syn_answered", "blocked_syn_sent")})
    out.update({f"kernel_{k}": per.get("kernel", {}).get(k) for k in ("blocked_syn_answered", "blocked_syn_sent")})

    t = sys.stderr if as_json else sys.stdout
    lines = [f"\nrouters compared: {meta['rounds']} round(s), {meta['seconds']} s per test, "
             f"{meta['extra_rules']} extra rules, {meta['cpus']} CPUs, busy poll {meta['busy_poll_us']} us; "
             "median (min-max) over rounds"]
    hdr = f"{'figure':<30}" + "".join(f"{p:>22}" for p in paths) + "".join(f"{a + '/' + b:>13}" for a, b, _ in ratios)
    lines += [hdr, "-" * len(hdr)]
    for metric, label, scale, unit, rkey in FIGURES:
        cells = []
        for p in paths:
            v = values.get((p, metric))
            cells.append(f"{fmt(med[p, metric] * scale)} ({fmt(min(v) * scale)}-{fmt(max(v) * scale)})" if v
                         else "FAILED" if rkey else "-")
        rs = [out.get(pre + rkey) if rkey else None for _, _, pre in ratios]
        lines.append(f"{(label + ' ' + unit).strip():<30}" + "".join(f"{c:>22}" for c in cells)
                     + "".join(f"{r:>13.3f}" if r is not None else f"{'':>13}" for r in rs))
    lines.append("-" * len(hdr))
    if out["latency_added_us"] is not None:
        lines.append(f"latency added by op25b: median {out['latency_added_us']:+.1f} us, "
                     f"p99 {out['latency_p99_added_us']:+.1f} us")
    for p, d in per.items():
        if d.get("blocked_syn_sent") is not None:
            lines.append(f"blocked SYNs to port 25 refused during load ({p}): {d['blocked_syn_answered']}/"
                         f"{d['blocked_syn_sent']} (v4 {d['blocked_syn_answered_v4']}/{d['blocked_syn_sent_v4']}, "
                         f"v6 {d['blocked_syn_answered_v6']}/{d['blocked_syn_sent_v6']}; median "
                         f"{d['blocked_syn_median_ms']} ms, max {d['blocked_syn_max_ms']} ms)")
        if d.get("rss_mib") is not None:
            lines.append(f"{p} process: peak RSS {d['rss_mib']} MiB, CPU {d['cpu_s']} s, {d['ctxt_switches']} "
                         f"context switches; CPU during its tests {d['cpu_busy_pct']} %, idle {d['cpu_idle_pct']} %")
    if meta["op25b_counters"]:
        lines.append(f"op25b {meta['op25b_counters']}")
    if op.get("flood_syns_sent") is not None:
        lines.append(f"blocked-SYN flood at op25b (TCP 1 stream tests): {op['flood_syns_sent']} SYNs sent; "
                     + (f"events: {op.get('events_lines')} lines ({op.get('events_blocked_lines')} blocked, "
                        f"{op.get('events_suppressed')} suppressed), capture: {op.get('capture_records')} records; "
                        if meta["events"] else "events and capture off; ")
                     + f"events_dropped {op.get('events_dropped')}, capture_dropped {op.get('capture_dropped')}")
    if meta["failures"]:
        lines.append(f"FAILURES: {'; '.join(meta['failures'])}")
    print("\n".join(lines), file=t, flush=True)
    if as_json:
        print(json.dumps(out, sort_keys=True), flush=True)


if __name__ == "__main__":
    sys.exit(main("bench", parse, Bench, __doc__, sys.argv[1:]))
