#!/usr/bin/env python3
"""
op25b benchmark: the same traffic through one lab with each router in turn (`op25b lab
up`, one at a time, every round through every path), in one run:
  kernel: --router kernel  the kernel forwards (veth, ip_forward, OP25B as an nftables rule)
  op25b:  --config C       op25b (release build) between two TUNs
  tun:    --bin tun_limit  the TUN design's ceiling, a bare forwarder (examples/tun_limit.rs)
  eth:    --upstream veth  op25b with an Ethernet (veth) upstream
Figures per path (median and min-max over rounds; ratios op25b/kernel, op25b/tun,
eth/kernel): TCP 1 and 4 streams from 100.64.1.10 to 203.0.113.25 (Gbit/s received),
64-byte UDP packets a second received and the % lost at the rate offered, ping RTT median
and p99 (us); each router process's peak RSS (VmHWM), CPU time, CPU % forwarding and
idle, TUN queue drops. During the first TCP 4-stream test of each path with a policy,
SYNs to 203.0.113.25:25 and [2001:db8:203::25]:25 must all be refused.

Usage: scripts/bench.sh [options]
  --smoke        end-to-end check in seconds (1 round, 1 s tests, 50 pings): works, not speed
  --json         the last stdout line is one JSON object; the table goes to stderr
  --no-build     skip `cargo build --release` (op25b, examples tun_limit and syn_load)
  --rounds N     rounds (default 3; --smoke: 1)
  --rules N      extra [[rule]]s in op25b's config, none matching (default 100)
  -t, --time S   seconds per iperf3 test (default 5; --smoke: 1)
  --pings N      pings per latency test, 10 ms apart (default 300; --smoke: 50)
  --syn N        blocked-SYN probes per path, v4/v6 alternating (default 20)
  --busy-poll US dataplane.busy_poll_us (default 0: workers sleep at once; polling
                 trades a core per worker for latency)
  --flood PPS    during each TCP 1-stream test, PPS blocked SYNs a second from forged
                 sources in 100.64.200.0/24 to 203.0.113.25:25; reports the rate reached
  --events       op25b writes [events] and [capture] (dropped.pcap); reports lines and
                 records written, events_dropped and capture_dropped
  --abuse        op25b tracks blocked attempts ([abuse], thresholds no run reaches)
  --bin PATH     op25b binary (default target/release/op25b; the examples beside it)
  --keep DIR     copy the raw outputs (iperf3 JSON, ping, logs, configs) to DIR
Exit status: 0 when every measurement and the blocked-SYN checks succeeded, 1 if not, 2
on usage errors. Needs root, iperf3, nft, ping, ss (scripts/setup.sh --bench). The lab
o25bench-PID is removed on exit, also after failures; only processes this run started
are stopped.
"""

import glob
import json
import os
import re
import statistics
import sys
import time

from labrun import Die, Run, main, parse_args, read_json, say, show

PORT = 5201
POLICY = ("kernel", "op25b", "eth")  # the paths that refuse SYNs to port 25
RATIOS = [("op25b", "kernel", ""), ("op25b", "tun", "ceiling_"), ("eth", "kernel", "eth_")]  # a/b, JSON prefix
# metric, label, scale, unit, ratio key (None: shown without a ratio)
FIGURES = [("tcp_bps", "TCP 1 stream", 1e-9, "Gbit/s", "tcp_ratio"),
           ("tcp4_bps", "TCP 4 streams", 1e-9, "Gbit/s", "tcp4_ratio"),
           ("udp_pps", "UDP 64 B received", 1e-3, "kpps", "udp_pps_ratio"),
           ("rtt_median_us", "RTT median", 1.0, "us", "rtt_median_ratio"),
           ("rtt_p99_us", "RTT p99", 1.0, "us", "rtt_p99_ratio")] + [
    (m, label, 1.0, unit, None) for m, label, unit in (
        ("tcp_retransmits", "TCP 1 stream retransmits", ""), ("tcp4_retransmits", "TCP 4 streams retransmits", ""),
        ("udp_lost_pct", "UDP lost (sent, not received)", "%"), ("tcp_tun_drops", "TCP 1 TUN queue drops", ""),
        ("tcp4_tun_drops", "TCP 4 TUN queue drops", ""), ("udp_tun_drops", "UDP TUN queue drops", ""),
        ("tcp_flood_pps", "TCP 1 flood SYNs sent/s", ""))]


def parse(argv):
    o = parse_args(argv, ("--smoke", "--json", "--events", "--abuse"), (
        ("--rounds", None), ("--rules", 100), ("--pings", None), ("--syn", 20), ("--busy-poll", 0), ("--flood", 0),
        ("-t|--time", None)))
    d = (1, 1, 50) if o.smoke else (3, 5, 300)
    o.rounds, o.secs, o.pings = (v if v is not None else x for v, x in zip((o.rounds, o.time, o.pings), d))
    if min(o.rounds, o.secs, o.pings, o.syn) < 1 or not 0 <= o.rules <= 10000:
        raise ValueError("--rounds, -t, --pings and --syn must be at least 1, --rules 0 to 10000")
    return o


def extra(o, files):
    """Added to op25b's config: o.rules rules none matching the traffic (100.64.1.10 <->
    203.0.113.25 TCP/UDP 5201, ICMP, ephemeral ports), so every packet walks them all;
    busy polling; events and capture into files; [abuse] with thresholds never reached."""
    text = f"\n# Added by scripts/bench.py: {o.rules} non-matching rules.\n"
    text += f"\n[dataplane]\nbusy_poll_us = {o.busy_poll}\n" if o.busy_poll else ""
    text += f'\n[events]\npath = "{files}events.jsonl"\n\n[capture]\ndropped = "{files}dropped.pcap"\n' \
        if o.events else ""
    text += "\n[abuse]\nthreshold = 1000000000\ndestinations_threshold = 1000000000\n" if o.abuse else ""
    dsts = ["192.0.2.0/24", "198.51.100.128/25", "2001:db8:dead::/48", "192.0.2.77/32"]
    return text + "".join(f'\n[[rule]]\nname = "bench-{i:02d}"\ndirection = "{"inbound" if i % 3 == 2 else "outbound"}"'
                          f'\nprotocol = "{"tcp" if i % 2 else "udp"}"\ndst = ["{dsts[i % 4]}"]\n'
                          f'dst_ports = [{6000 + i}]\naction = "drop"\n' for i in range(o.rules))


def load(path, key):
    """end[key] of an iperf3 JSON report (ValueError saying why there is none)."""
    doc = read_json(path)
    if key not in doc.get("end", {}):
        raise ValueError(f"{path}: {doc.get('error', 'no end.' + key)}")
    return doc["end"][key]


class Bench(Run):
    def __init__(self, o):
        super().__init__(o, [("iperf3", "iperf3"), ("nft", "nftables"), ("ping", "iputils-ping"),
                             ("timeout", "coreutils"), ("ss", "iproute2")])
        self.records, self.hz = [], os.sysconf("SC_CLK_TCK")
        self.paths = {"kernel": ["--router", "kernel"], "op25b": [], "tun": ["--bin", self.example("tun_limit")],
                      "eth": ["--upstream", "veth"]}

    def record(self, path, rnd, metric, value):
        self.records.append({"path": path, "round": rnd, "metric": metric, "value": value})

    def ticks(self):
        try:
            with open(f"/proc/{self.pid}/stat", encoding="utf-8") as f:
                return sum(int(x) for x in f.read().rsplit(") ", 1)[1].split()[11:13])
        except (OSError, IndexError):
            return 0

    def tun_drops(self):
        """What the kernel dropped because the router did not read in time (a full TUN
        queue): tx_dropped of the subscriber side's device (outbound) and the upstream's."""
        total = 0
        for outside, dev in ((False, self.lab.names["sub_tun"]), (True, self.lab.names["up_tun"])):
            self.ns(self.file("drops"), 10, "cat", f"/sys/class/net/{dev}/statistics/tx_dropped", outside=outside)
            with open(self.file("drops"), encoding="utf-8") as f:
                total += int(f.read().strip() or 0)
        return total

    def lab_up(self, path, rnd):
        tag, args = f"{path}-r{rnd}", list(self.paths[path])
        if path != "kernel":
            with open(self.file(f"{tag}.toml"), "w", encoding="utf-8") as f:
                f.write(self.lab.config(*args[:2] if path == "eth" else ()) + extra(self.o, self.file(tag + "-")))
            args += ["--config", self.file(f"{tag}.toml")]
        self.pid = self.lab.up(self.file(f"{tag}-up.out"), *args)
        self.reach(tag)
        t0, c0 = time.monotonic(), self.ticks()
        time.sleep(1 if self.pid else 0)  # the router's CPU while nothing passes
        self.idle, self.busy = (self.ticks() - c0, time.monotonic() - t0), [0, 0.0]

    def measured(self, path, run):
        """run(); meanwhile the router's CPU and TUN queue drops are counted."""
        t0, c0, d0 = time.monotonic(), self.ticks(), self.tun_drops() if self.pid else 0
        rc = run()
        if not self.pid:
            return rc, None
        self.busy = [self.busy[0] + self.ticks() - c0, self.busy[1] + time.monotonic() - t0]
        if not self.lab.alive():
            show(os.path.join(self.lab.d["state_dir"], "op25b.log"))
            raise Die(f"the {path} router exited during the benchmark (log above)")
        return rc, self.tun_drops() - d0

    def iperf(self, path, rnd, kind):
        secs, lab, tag = self.o.secs, self.lab, f"{path}-r{rnd}-{kind}"
        srv, cli = self.file(f"{tag}-server.json"), self.file(f"{tag}-client.json")
        server = self.spawn(srv, lab.exec(secs + 30, "iperf3", "-s", "-1", "--json", "-B", lab.srv4, "-p", str(PORT),
                                          outside=True))
        for _ in range(50):  # until it listens
            if not self.ns(srv + ".ss", 5, "ss", "-Hltn", f"sport = :{PORT}", outside=True) \
                    and os.path.getsize(srv + ".ss"):
                break
            time.sleep(0.1)

        def run():
            client = self.spawn(cli, lab.exec(secs + 20, "iperf3", "-c", lab.srv4, "-B", lab.cli4, "-p", str(PORT),
                                              "-t", str(secs), "--json", *{"tcp": [], "tcp4": ["-P", "4"],
                                                                          "udp": ["-u", "-l", "64", "-b", "0"]}[kind]))
            syn_load = self.example("syn_load")
            flood = kind == "tcp" and self.o.flood and self.spawn(self.file(f"{tag}-flood"), lab.exec(
                secs + 5, syn_load, "flood", str(self.o.flood), str(secs), lab.srv4, "25"))
            if kind == "tcp4" and rnd == 1 and path in POLICY:
                time.sleep(1 if secs > 2 else 0.3)  # well into the load, short of its end
                self.probe(path, self.spawn(self.file(f"{path}-synprobe"), lab.exec(
                    self.o.syn * 3 + 10, syn_load, "probe", str(self.o.syn), "25", lab.srv4, lab.srv6)))
            rc = self.reap(client, secs + 30)
            if flood and (self.reap(flood, secs + 10) or not read_json(self.file(f"{tag}-flood"))):
                self.fail(f"{tag}: the SYN flood failed")
            elif flood:
                r = read_json(self.file(f"{tag}-flood"))
                self.record(path, rnd, "tcp_flood_pps", r["pps"])
                self.record(path, rnd, "tcp_flood_sent", r["sent"])
            return rc
        rc, drops = self.measured(path, run)
        self.reap(server, 10 if rc == 0 else 0)
        if drops is not None:
            self.record(path, rnd, f"{kind}_tun_drops", drops)
        try:
            if kind == "udp":
                # On the receiver "packets" is the highest sequence number seen, "lost" the gaps.
                s = load(srv, "sum")
                pps = (s["packets"] - s["lost_packets"]) / s["seconds"]
                self.record(path, rnd, "udp_lost_pct", round(100.0 * s["lost_packets"] / s["packets"], 1))
                self.record(path, rnd, "udp_pps", round(pps))
                say(f"{path:<6} round {rnd}  udp   {pps / 1e3:10.1f} kpps received")
            else:
                bps = load(cli, "sum_received")["bits_per_second"]
                self.record(path, rnd, f"{kind}_bps", round(bps))
                self.record(path, rnd, f"{kind}_retransmits", load(cli, "sum_sent").get("retransmits", -1))
                say(f"{path:<6} round {rnd}  {kind:<5} {bps / 1e9:10.2f} Gbit/s")
        except (ValueError, ZeroDivisionError) as e:
            show(cli + ".err", tail=5)
            self.fail(f"{tag}: no result (iperf3 client exit {rc}; {e})")

    def probe(self, path, proc):
        """Every SYN to port 25 refused within 2 s, during load."""
        syn, out = self.o.syn, self.file(f"{path}-synprobe")
        rc = self.reap(proc, syn * 3 + 15)
        show(out + ".err")
        r = read_json(out)
        if "sent_v6" not in r:
            return self.fail(f"{path}: the blocked-SYN probe printed no result (exit {rc})")
        r.update(answered=r["answered_v4"] + r["answered_v6"], sent=r["sent_v4"] + r["sent_v6"])
        for k, v in r.items():
            self.record(path, None, f"blocked_syn_{k}", v)
        if r["answered"] != syn:
            self.fail(f"{path}: only {r['answered']} of {syn} blocked SYNs to port 25 were refused within 2 s")

    def ping(self, path, rnd):
        out, n = self.file(f"{path}-r{rnd}-ping.txt"), self.o.pings
        self.measured(path, lambda: self.ns(out, n // 50 + 10, "ping", "-n", "-i0.01", "-c", str(n), "-W1",
                                            "-I", self.lab.cli4, self.lab.srv4))
        with open(out, encoding="utf-8", errors="replace") as f:
            rtts = sorted(float(m) * 1000 for m in re.findall(r"bytes from .* time=([0-9.]+)", f.read()))
        if len(rtts) < (n * 9 + 9) // 10:  # a lost ping or two is no failure of the measurement
            return self.fail(f"{path}-r{rnd}-ping: {len(rtts)} of {n} replies")
        med, p99 = round(statistics.median(rtts), 1), round(rtts[-(-99 * len(rtts) // 100) - 1], 1)
        self.record(path, rnd, "rtt_median_us", med)
        self.record(path, rnd, "rtt_p99_us", p99)
        say(f"{path:<6} round {rnd}  ping  median {med:7.1f} us  p99 {p99:7.1f} us  ({len(rtts)}/{n})")

    def router_figures(self, path):
        """The router process's own figures, read before it stops (the last round's stay)."""
        with open(f"/proc/{self.pid}/status", encoding="utf-8") as f:
            rss = next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:"))
        switches = 0
        for status in glob.glob(f"/proc/{self.pid}/task/*/status"):
            with open(status, encoding="utf-8") as f:
                switches += sum(int(ln.split()[1]) for ln in f if "ctxt_switches:" in ln)
        pct = [round(100 * t / self.hz / max(s, 1e-9), 1) for t, s in (self.busy, self.idle)]
        for metric, v in (("rss_mib", round(rss / 1024, 1)), ("cpu_s", round(self.ticks() / self.hz, 2)),
                          ("ctxt_switches", switches), ("cpu_busy_pct", pct[0]), ("cpu_idle_pct", pct[1])):
            self.record(path, None, metric, v)

    def written(self):
        """op25b's last counters line; with --flood or --events, what it wrote about the
        SYNs sent at it over all rounds (its counters, event lines, capture records)."""
        def text(name):
            with open(name, encoding="utf-8", errors="replace") as f:
                return f.read()
        lines = [(re.findall(r"counters: .*", text(self.file(f"op25b-r{r}.log"))) or [""])[-1]
                 for r in range(1, self.o.rounds + 1)]
        n = {k: sum(int(m) for ln in lines for m in re.findall(rf"\b{k}=([0-9]+)", ln))
             for k in ("events_dropped", "capture_dropped")}
        if self.o.events:
            events = "".join(text(e) for e in glob.glob(self.file("op25b-r*-events.jsonl*"))).splitlines()
            blocked = [ln for ln in events if '"event":"blocked"' in ln]
            n.update(events_lines=len(events), events_blocked_lines=len(blocked),
                     events_suppressed=sum(int(m) for ln in blocked for m in re.findall(r'"suppressed":([0-9]+)', ln)),
                     capture_records=sum(pcap_records(p) for p in glob.glob(self.file("op25b-r*-dropped.pcap*"))))
        n["flood_syns_sent"] = sum(r["value"] for r in self.records if r["metric"] == "tcp_flood_sent" and
                                   r["path"] == "op25b")
        for k, v in n.items() if self.o.flood or self.o.events else ():
            self.record("op25b", None, k, v)
        return lines[-1] if lines else ""

    def main(self):
        o, t0 = self.o, time.monotonic()
        say(f"measuring: {o.rounds} round(s), {o.secs} s per iperf3 test, {o.pings} pings, "
            f"paths {', '.join(self.paths)} in turn")
        for rnd in range(1, o.rounds + 1):
            for path in self.paths:
                self.lab_up(path, rnd)
                for kind in ("tcp", "tcp4", "udp"):
                    self.iperf(path, rnd, kind)
                self.ping(path, rnd)
                if self.pid:
                    self.router_figures(path)
                self.lab.down(save_log=self.file(f"{path}-r{rnd}.log"))
        line = self.written()
        meta = {"ok": not self.failures, "failures": self.failures, "smoke": o.smoke, "rounds": o.rounds,
                "seconds": o.secs, "pings": o.pings, "extra_rules": o.rules, "busy_poll_us": o.busy_poll,
                "flood_pps": o.flood, "events": o.events, "abuse": o.abuse, "paths": list(self.paths),
                "cpus": len(os.sched_getaffinity(0)), "measure_s": round(time.monotonic() - t0, 1),
                "op25b_counters": line}
        report(self.records, meta, o.json, list(self.paths))
        return self.finish("meta.json", meta, "measurement(s)", f"done in {meta['measure_s']} s")


def pcap_records(name):
    """Records in a pcap file."""
    with open(name, "rb") as f:
        data = f.read()
    endian, i, records = "little" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else "big", 24, 0
    while i + 16 <= len(data):
        i, records = i + 16 + int.from_bytes(data[i + 8:i + 12], endian), records + 1
    return records


def fmt(x):
    return f"{int(x)}" if x == int(x) and abs(x) < 1e6 else f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 \
        else f"{x:.2f}"


def report(records, meta, as_json, paths):
    """The table (stdout, or stderr with --json) and with --json one JSON object as the
    last stdout line: meta, the ratios, latency added, the figures per path."""
    values, out, per = {}, dict(meta), {p: {} for p in paths}
    for r in records:
        if r["round"] is None:
            per[r["path"]][r["metric"]] = r["value"]
        else:
            values.setdefault((r["path"], r["metric"]), []).append(r["value"])
    med = {k: statistics.median(v) for k, v in values.items()}
    for (p, m), v in values.items():
        per[p].update({m: round(med[p, m], 1), m + "_min": round(min(v), 1), m + "_max": round(max(v), 1),
                       m + "_n": len(v)})
    ratios = [r for r in RATIOS if r[0] in paths and r[1] in paths]
    for metric, *_, rkey in FIGURES[:5]:
        for a, b, pre in ratios:
            x, y = med.get((a, metric)), med.get((b, metric))
            out[pre + rkey] = round(x / y, 3) if x is not None and y else None
    for key, m in (("latency_added_us", "rtt_median_us"), ("latency_p99_added_us", "rtt_p99_us")):
        x, y = med.get(("op25b", m)), med.get(("kernel", m))
        out[key] = round(x - y, 1) if x is not None and y is not None else None
    out.update(per)
    op = per.get("op25b", {})
    out.update({k: op.get(k) for k in ("rss_mib", "cpu_s", "blocked_syn_answered", "blocked_syn_sent")})
    out.update({f"kernel_{k}": per.get("kernel", {}).get(k) for k in ("blocked_syn_answered", "blocked_syn_sent")})

    hdr = f"{'figure':<30}" + "".join(f"{p:>21}" for p in paths) + "".join(f"{a + '/' + b:>13}" for a, b, _ in ratios)
    lines = [f"\nrouters compared: {meta['rounds']} round(s), {meta['seconds']} s per test, {meta['extra_rules']} extra "
             f"rules, {meta['cpus']} CPUs, busy poll {meta['busy_poll_us']} us; median (min-max) over rounds",
             hdr, "-" * len(hdr)]
    for metric, label, k, unit, rkey in FIGURES:
        cells = [f"{fmt(med[p, metric] * k)} ({fmt(min(values[p, metric]) * k)}-{fmt(max(values[p, metric]) * k)})"
                 if (p, metric) in med else "FAILED" if rkey else "-" for p in paths]
        rs = [out.get(pre + rkey) if rkey else None for _, _, pre in ratios]
        lines.append(f"{(label + ' ' + unit).strip():<30}" + "".join(f"{c:>21}" for c in cells)
                     + "".join(f"{r:>13.3f}" if r is not None else " " * 13 for r in rs))
    lines.append("-" * len(hdr))
    if out["latency_added_us"] is not None:
        lines.append(f"latency added by op25b: median {out['latency_added_us']:+.1f} us, "
                     f"p99 {out['latency_p99_added_us']:+.1f} us")
    for p, d in per.items():
        if d.get("blocked_syn_sent") is not None:
            lines.append(f"blocked SYNs to port 25 refused during load ({p}): {d['blocked_syn_answered']}/"
                         f"{d['blocked_syn_sent']} (v4 {d['blocked_syn_answered_v4']}/"
                         f"{d['blocked_syn_sent_v4']}, v6 {d['blocked_syn_answered_v6']}/{d['blocked_syn_sent_v6']}; "
                         f"median {d['blocked_syn_median_ms']} ms, max {d['blocked_syn_max_ms']} ms)")
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
    print("\n".join(lines), file=sys.stderr if as_json else sys.stdout, flush=True)
    if as_json:
        print(json.dumps(out, sort_keys=True), flush=True)


if __name__ == "__main__":
    sys.exit(main("bench", parse, Bench, __doc__, sys.argv[1:]))
