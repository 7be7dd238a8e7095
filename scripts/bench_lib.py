#!/usr/bin/env python3
"""The part of scripts/bench.py that builds and stops nothing (stdlib only): the test
addresses, the command line, the configs the run writes, what the tools' output means,
the blocked-SYN probe and the report. No process, namespace or cleanup here, so each
piece can be read and tried on its own; the run itself (and its safety) is in bench.py
and bench_proc.py.

Run as `bench_lib.py synprobe COUNT PORT TIMEOUT SRC4 DST4 SRC6 DST6` inside the
subscriber namespace, it is the probe (a socket belongs to the namespace of the
process that opens it).
"""

import json
import math
import os
import re
import socket
import statistics
import sys
import time
from types import SimpleNamespace

PATHS = ("kernel", "op25b")
# The subscriber and the server, on lo in their namespaces; iperf3's port.
PORT = 5201

# metric -> (label, scale for display, unit, ratio key in the JSON)
FIGURES = [
    ("tcp_bps", "TCP 1 stream", 1e-9, "Gbit/s", "tcp_ratio"),
    ("tcp4_bps", "TCP 4 streams", 1e-9, "Gbit/s", "tcp4_ratio"),
    ("udp_pps", "UDP 64 B received", 1e-3, "kpps", "udp_pps_ratio"),
    ("rtt_median_us", "RTT median", 1.0, "us", "rtt_median_ratio"),
    ("rtt_p99_us", "RTT p99", 1.0, "us", "rtt_p99_ratio"),
]
# Shown and reported (median, min-max) without a ratio.
INFO_FIGURES = [
    ("tcp_retransmits", "TCP 1 stream retransmits", 1.0, ""),
    ("tcp4_retransmits", "TCP 4 streams retransmits", 1.0, ""),
    ("udp_lost_pct", "UDP lost (sent, not received)", 1.0, "%"),
    ("tcp_tun_drops", "TCP 1 TUN queue drops", 1.0, ""),
    ("tcp4_tun_drops", "TCP 4 TUN queue drops", 1.0, ""),
    ("udp_tun_drops", "UDP TUN queue drops", 1.0, ""),
    ("tcp_flood_pps", "TCP 1 flood SYNs sent/s", 1.0, ""),
]


# ------------------------------------------------------------------ options


class Usage(Exception):
    """Bad command line: exit 2 after the help."""


def parse_args(argv, default_bin):
    """The command line as bench.sh always took it (hand-parsed: argparse's own help and
    error formats, and its exit 0 on --help, are not this tool's interface)."""
    o = SimpleNamespace(build=True, json=False, smoke=False, rounds=None, secs=None, pings=None,
                        rules=100, syn=20, keep=None, busy=0, flood=0, events=False, abuse=False,
                        bin=default_bin)
    numeric = {"--rounds": "rounds", "--rules": "rules", "-t": "secs", "--time": "secs",
               "--pings": "pings", "--syn": "syn", "--busy-poll": "busy", "--flood": "flood"}
    args = list(argv)
    while args:
        a = args.pop(0)
        if a == "--smoke":
            o.smoke = True
        elif a == "--json":
            o.json = True
        elif a == "--no-build":
            o.build = False
        elif a == "--events":
            o.events = True
        elif a == "--abuse":
            o.abuse = True
        elif a in numeric or a in ("--bin", "--keep"):
            if not args:
                raise Usage(None)
            v = args.pop(0)
            if a == "--bin":
                o.bin = os.path.abspath(v)
            elif a == "--keep":
                o.keep = os.path.abspath(v)
            elif not re.fullmatch(r"[0-9]+", v):
                raise Usage(f"{a} needs a whole number, got '{v}'")
            else:
                setattr(o, numeric[a], int(v))
        elif a in ("-h", "--help"):
            raise Usage(None)
        else:
            raise Usage(f"unknown argument: {a}")
    defaults = (1, 1, 50) if o.smoke else (3, 5, 300)
    o.rounds, o.secs, o.pings = (v if v is not None else d
                                 for v, d in zip((o.rounds, o.secs, o.pings), defaults))
    if not (o.rounds >= 1 and o.secs >= 1 and o.pings >= 1 and o.syn >= 1 and o.rules <= 10000):
        raise Usage("--rounds, -t, --pings and --syn must be at least 1, --rules at most 10000")
    return o


# ------------------------------------------------------------------ output parsing


class BadOutput(Exception):
    """A tool's output holds no usable figure."""


def load_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise BadOutput(f"{path}: {e}") from None
    if not text.strip():
        raise BadOutput(f"{path}: empty (iperf3 produced no output)")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadOutput(f"{path}: not JSON ({e}): {text[:200]!r}") from None
    if doc.get("error"):
        raise BadOutput(f"{path}: iperf3: {doc['error']}")
    return doc


def parse_tcp(path):
    """iperf3 client --json: (received bits/s, retransmits)."""
    doc = load_json(path)
    try:
        bps = float(doc["end"]["sum_received"]["bits_per_second"])
    except (KeyError, TypeError, ValueError):
        raise BadOutput(f"{path}: no end.sum_received.bits_per_second") from None
    if bps <= 0:
        raise BadOutput(f"{path}: nothing received")
    return round(bps), doc["end"].get("sum_sent", {}).get("retransmits", -1)


def parse_udp(path):
    """iperf3 server --json (UDP): (packets received per second, lost %). On the receiver
    iperf3 counts "packets" as the highest sequence number seen and "lost_packets" as the
    gaps, so received = the difference."""
    doc = load_json(path)
    try:
        s = doc["end"]["sum"]
        packets, lost, secs = int(s["packets"]), int(s["lost_packets"]), float(s["seconds"])
    except (KeyError, TypeError, ValueError):
        raise BadOutput(f"{path}: no end.sum.packets/lost_packets/seconds") from None
    received = packets - lost
    if received <= 0 or secs <= 0:
        raise BadOutput(f"{path}: nothing received (packets={packets} lost={lost} seconds={secs})")
    return round(received / secs), round(100.0 * lost / max(packets, 1), 1)


def percentile(sorted_vals, p):
    """Nearest-rank percentile of an already sorted list."""
    return sorted_vals[max(0, math.ceil(p / 100.0 * len(sorted_vals)) - 1)]


def parse_ping(path, min_replies):
    """ping -n output: (median us, p99 us, replies)."""
    rtts = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            i = line.find(" time=")
            if i < 0 or "bytes from" not in line:
                continue
            try:
                rtts.append(float(line[i + 6:].split()[0]) * 1000.0)  # ms -> us
            except (ValueError, IndexError):
                continue
    if len(rtts) < min_replies:
        raise BadOutput(f"{path}: {len(rtts)} replies, expected at least {min_replies}")
    rtts.sort()
    return round(statistics.median(rtts), 1), round(percentile(rtts, 99), 1), len(rtts)


def nft_packets(chain):
    """Packets counted by the rules of `nft list chain ...` output (the kernel's rejects)."""
    total = 0
    for line in chain.splitlines():
        if "counter" in line:
            tok = line.split()
            total += sum(int(tok[i + 1]) for i in range(len(tok) - 1)
                         if tok[i] == "packets" and tok[i + 1].isdigit())
    return total


def counters_line(log):
    """op25b's last "counters: ..." log line, colour codes removed: the only part of its
    log the benchmark reads (it shows it, and the JSON carries it as op25b_counters)."""
    last = ""
    for line in log.splitlines():
        i = line.find("counters: ")
        if i >= 0:
            last = line[i:]
    return re.sub(r"\x1b\[[0-9;]*m", "", last)


# ------------------------------------------------------------------ blocked-SYN probe


def synprobe_main(argv):
    """`synprobe COUNT PORT TIMEOUT SRC4 DST4 SRC6 DST6`, run inside the subscriber
    namespace: connect COUNT times, v4/v6 alternating; answered = refused (RST) within
    the timeout. One JSON line on stdout, diagnostics on stderr."""
    count, port, timeout = int(argv[0]), int(argv[1]), float(argv[2])
    targets = [(socket.AF_INET, argv[3], argv[4]), (socket.AF_INET6, argv[5], argv[6])]
    answered = {socket.AF_INET: 0, socket.AF_INET6: 0}
    sent = {socket.AF_INET: 0, socket.AF_INET6: 0}
    times = []
    for i in range(count):
        fam, src, dst = targets[i % len(targets)]
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.settimeout(timeout)
        sent[fam] += 1
        t0 = time.monotonic()
        try:
            s.bind((src, 0))
            s.connect((dst, port))
            print(f"synprobe: {dst}:{port} accepted (expected a refusal)", file=sys.stderr)
        except ConnectionRefusedError:
            answered[fam] += 1
            times.append((time.monotonic() - t0) * 1000.0)
        except socket.timeout:
            print(f"synprobe: {dst}:{port} no answer in {timeout}s", file=sys.stderr)
        except OSError as e:
            print(f"synprobe: {dst}:{port}: {e}", file=sys.stderr)
        finally:
            s.close()
        time.sleep(0.02)
    print(json.dumps({
        "answered_v4": answered[socket.AF_INET], "sent_v4": sent[socket.AF_INET],
        "answered_v6": answered[socket.AF_INET6], "sent_v6": sent[socket.AF_INET6],
        "median_ms": round(statistics.median(times), 2) if times else -1.0,
        "max_ms": round(max(times), 2) if times else -1.0,
    }))
    return 0


# ------------------------------------------------------------------ op25b config


def gen_rules(n):
    """The extra rules: varied names, directions, protocols, prefixes and ports, none
    matching the benchmark traffic (100.64.1.10 <-> 203.0.113.25 TCP/UDP 5201, ICMP, and
    the return traffic to ephemeral ports 32768-60999), so every packet walks them all."""
    dsts = ["192.0.2.0/24", "198.51.100.128/25", "2001:db8:dead::/48", "192.0.2.77/32"]
    out = []
    for i in range(n):
        direction = "inbound" if i % 3 == 2 else "outbound"
        proto = "tcp" if i % 2 == 1 else "udp"
        out.append(f'\n[[rule]]\nname = "bench-{i:02d}"\ndirection = "{direction}"\n'
                   f'protocol = "{proto}"\ndst = ["{dsts[i % len(dsts)]}"]\n'
                   f'dst_ports = [{6000 + i}]\naction = "drop"\n')
    return "".join(out)


def op25b_extra(o, work):
    """What the run adds to the lab's config: o.rules extra rules; busy polling; with
    o.events, events and the capture of what was not forwarded into work; [abuse]."""
    text = f"\n# Added by scripts/bench.py: {o.rules} non-matching rules.\n"
    if o.busy > 0:
        text += f"\n[dataplane]\nbusy_poll_us = {o.busy}\n"
    if o.events:
        text += (f'\n[events]\npath = "{work}/events.jsonl"\n'
                 f'\n[capture]\ndropped = "{work}/dropped.pcap"\n')
    if o.abuse:
        # Thresholds no benchmark traffic reaches: what tracking alone costs.
        text += "\n[abuse]\nthreshold = 1000000000\ndestinations_threshold = 1000000000\n"
    return text + gen_rules(o.rules)


def kernel_net(ksub, krtr, kup, lab):
    """The kernel path as (namespace, `ip -n NS` arguments), in order:
    SUB ==veth== RTR (100.64.0.0/30, 2001:db8:100::/64) ==veth== UP (198.51.100.252/30,
    2001:db8:ff::/64), and routes so RTR forwards between the client and the server."""
    return [
        (ksub, "link add sub0 type veth peer name rtr-sub netns " + krtr),
        (kup, "link add up0 type veth peer name rtr-up netns " + krtr),
        (ksub, f"addr add {lab.cli4}/32 dev lo"),
        (ksub, f"addr add {lab.cli6}/128 dev lo nodad"),
        (ksub, "addr add 100.64.0.2/30 dev sub0"),
        (ksub, "addr add 2001:db8:100::2/64 dev sub0 nodad"),
        (ksub, "link set sub0 up"),
        (ksub, f"route add default via 100.64.0.1 src {lab.cli4}"),
        (ksub, f"-6 route add default via 2001:db8:100::1 src {lab.cli6}"),
        (krtr, "addr add 100.64.0.1/30 dev rtr-sub"),
        (krtr, "addr add 2001:db8:100::1/64 dev rtr-sub nodad"),
        (krtr, "addr add 198.51.100.253/30 dev rtr-up"),
        (krtr, "addr add 2001:db8:ff::1/64 dev rtr-up nodad"),
        (krtr, "link set rtr-sub up"),
        (krtr, "link set rtr-up up"),
        (krtr, "route add 100.64.0.0/10 via 100.64.0.2"),
        (krtr, "-6 route add 2001:db8:100::/48 via 2001:db8:100::2"),
        (krtr, "route add 203.0.113.0/24 via 198.51.100.254"),
        (krtr, "-6 route add 2001:db8:203::/48 via 2001:db8:ff::2"),
        (kup, f"addr add {lab.srv4}/32 dev lo"),
        (kup, f"addr add {lab.srv6}/128 dev lo nodad"),
        (kup, "addr add 198.51.100.254/30 dev up0"),
        (kup, "addr add 2001:db8:ff::2/64 dev up0 nodad"),
        (kup, "link set up0 up"),
        (kup, "route add 100.64.0.0/10 via 198.51.100.253"),
        (kup, "-6 route add 2001:db8:100::/48 via 2001:db8:ff::1"),
    ]


# The OP25B policy as a user would write it for a Linux router.
NFT_RULES = """\
table inet op25b {
    chain forward {
        type filter hook forward priority filter; policy accept;
        tcp dport 25 ip saddr 100.64.0.0/10 ip saddr != 100.64.9.0/24 ip daddr != 198.51.100.25 counter reject with tcp reset
        tcp dport 25 ip6 saddr 2001:db8:100::/48 ip6 saddr != 2001:db8:100:9::/64 ip6 daddr != 2001:db8:25::25 counter reject with tcp reset
    }
}
"""

# ------------------------------------------------------------------ report


def fmt(v, scale):
    x = v * scale
    if x == int(x) and abs(x) < 1e6:
        return f"{int(x)}"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def report(records, meta, as_json):
    """The table (on stdout, or stderr with --json) and, with --json, one JSON object as
    the last stdout line: meta, ratios op25b/kernel, latency added, per-path figures."""
    values = {}  # (path, metric) -> [values in round order]
    extra = {}  # (path, metric) -> value, for non-per-round figures
    for r in records:
        if r["round"] is None:
            extra[(r["path"], r["metric"])] = r["value"]
        else:
            values.setdefault((r["path"], r["metric"]), []).append(r["value"])

    out = dict(meta)
    per_path = {p: {} for p in PATHS}
    medians = {}
    for metric, *_ in FIGURES + INFO_FIGURES:
        for p in PATHS:
            vals = values.get((p, metric), [])
            if vals:
                med = statistics.median(vals)
                medians[(p, metric)] = med
                per_path[p][metric] = round(med, 1)
                per_path[p][metric + "_min"] = round(min(vals), 1)
                per_path[p][metric + "_max"] = round(max(vals), 1)
                per_path[p][metric + "_n"] = len(vals)
            else:
                per_path[p][metric] = None
    for metric, _label, _scale, _unit, rkey in FIGURES:
        k, o = medians.get(("kernel", metric)), medians.get(("op25b", metric))
        out[rkey] = round(o / k, 3) if k and o is not None else None
    for key, metric in (("latency_added_us", "rtt_median_us"),
                        ("latency_p99_added_us", "rtt_p99_us")):
        k, o = medians.get(("kernel", metric)), medians.get(("op25b", metric))
        out[key] = round(o - k, 1) if k is not None and o is not None else None
    for (p, metric), v in extra.items():
        per_path[p][metric] = v
    out["kernel"] = per_path["kernel"]
    out["op25b"] = per_path["op25b"]
    # Headline figures at the top level too.
    o, k = per_path["op25b"], per_path["kernel"]
    out["rss_mib"] = o.get("rss_mib")
    out["cpu_s"] = o.get("cpu_s")
    out["blocked_syn_answered"] = o.get("blocked_syn_answered")
    out["blocked_syn_sent"] = o.get("blocked_syn_sent")
    out["kernel_blocked_syn_answered"] = k.get("blocked_syn_answered")
    out["kernel_blocked_syn_sent"] = k.get("blocked_syn_sent")

    t = sys.stderr if as_json else sys.stdout

    def line(text=""):
        print(text, file=t)

    def cell(p, metric, scale, missing):
        vals = values.get((p, metric))
        if not vals:
            return missing
        med, lo, hi = statistics.median(vals), min(vals), max(vals)
        return f"{fmt(med, scale)} ({fmt(lo, scale)}-{fmt(hi, scale)})"

    line()
    line(f"op25b vs kernel forwarding: {meta.get('rounds')} round(s), "
         f"{meta.get('seconds')} s per test, "
         f"{meta.get('extra_rules')} extra rules, {meta.get('cpus')} CPUs, "
         f"busy poll {meta.get('busy_poll_us', 0)} us; median (min-max) over rounds")
    hdr = f"{'figure':<26} {'kernel':>24} {'op25b':>24} {'op25b/kernel':>13}"
    line(hdr)
    line("-" * len(hdr))
    for metric, label, scale, unit, rkey in FIGURES:
        cells = [cell(p, metric, scale, "FAILED") for p in PATHS]
        ratio = out.get(rkey)
        rtxt = f"{ratio:.3f}" if ratio is not None else "-"
        line(f"{label + ' ' + unit:<26} {cells[0]:>24} {cells[1]:>24} {rtxt:>13}")
    for metric, label, scale, unit in INFO_FIGURES:
        cells = [cell(p, metric, scale, "-") for p in PATHS]
        line(f"{(label + ' ' + unit).strip():<26} {cells[0]:>24} {cells[1]:>24} {'':>13}")
    line("-" * len(hdr))
    la, lp = out.get("latency_added_us"), out.get("latency_p99_added_us")
    if la is not None:
        line(f"latency added by op25b: median {la:+.1f} us, p99 {lp:+.1f} us")
    for p in PATHS:
        d = per_path[p]
        if d.get("blocked_syn_sent") is not None:
            line(f"blocked SYNs to port 25 refused during load ({p}): "
                 f"{d.get('blocked_syn_answered')}/{d.get('blocked_syn_sent')} "
                 f"(v4 {d.get('blocked_syn_answered_v4')}/{d.get('blocked_syn_sent_v4')}, "
                 f"v6 {d.get('blocked_syn_answered_v6')}/{d.get('blocked_syn_sent_v6')}; "
                 f"median {d.get('blocked_syn_median_ms')} ms, "
                 f"max {d.get('blocked_syn_max_ms')} ms)")
    if o.get("rss_mib") is not None:
        line(f"op25b process: peak RSS {o['rss_mib']} MiB, CPU {o.get('cpu_s')} s over "
             f"{o.get('run_s')} s alive, {o.get('ctxt_switches')} context switches; "
             "CPU during its tests "
             f"{o.get('cpu_busy_pct')} %, while idle (kernel tests) {o.get('cpu_idle_pct')} %")
    if o.get("tun_sub_tx_dropped") is not None:
        line(f"op25b TUN queue drops (op25b too slow to read) over the run: "
             f"outbound {o.get('tun_sub_tx_dropped')}, inbound {o.get('tun_up_tx_dropped')}; "
             f"{meta.get('op25b_counters') or 'no counters line in its log'}")
    if o.get("flood_syns_sent") is not None:
        line(f"blocked-SYN flood at op25b (TCP 1 stream tests): {o['flood_syns_sent']} SYNs sent; "
             + (f"events: {o.get('events_lines')} lines ({o.get('events_blocked_lines')} blocked, "
                f"{o.get('events_suppressed')} suppressed), capture: {o.get('capture_records')} "
                "records; " if meta.get("events") else "events and capture off; ")
             + f"events_dropped {o.get('events_dropped')}, "
             f"capture_dropped {o.get('capture_dropped')}")
    if meta.get("failures"):
        line(f"FAILURES: {'; '.join(meta['failures'])}")
    t.flush()
    if as_json:
        print(json.dumps(out, sort_keys=True), flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] != ["synprobe"]:
        sys.exit("usage: bench_lib.py synprobe COUNT PORT TIMEOUT SRC4 DST4 SRC6 DST6")
    sys.exit(synprobe_main(sys.argv[2:]))
