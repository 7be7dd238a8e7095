#!/usr/bin/env python3
"""Helpers for scripts/bench.sh (stdlib only): parse iperf3 and ping output, probe
blocked SYNs, and turn the recorded figures into a table and one JSON line.

Subcommands (each prints one line on stdout, diagnostics on stderr, exit 1 on failure):
  tcp FILE                   iperf3 client --json: "received_bits/s retransmits"
  udp FILE                   iperf3 server --json (UDP): "pps received lost seconds
                             lost_pct", the packets received per second first
  ping FILE [--min-replies N] ping -n output: "median_us p99_us replies"
  synprobe --count N --port P --src4 A --dst4 B [--src6 A --dst6 B] [--timeout S]
                             connect N times (alternating families when both are
                             given), print "answered_v4 sent_v4 answered_v6 sent_v6
                             median_ms max_ms": answered = refused (RST) within the
                             timeout; the times are those of the refusals
  report RECORDS --meta FILE [--json]
                             the table on stdout; with --json on stderr, and the
                             JSON object as the last (only) stdout line
RECORDS is JSON lines {"path", "round", "metric", "value"}; meta is one JSON object.
"""

import argparse
import errno
import json
import math
import socket
import statistics
import sys
import time

PATHS = ("kernel", "op25b")

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
]


def fail(msg):
    print(f"bench_lib: {msg}", file=sys.stderr)
    sys.exit(1)


def load_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        fail(f"{path}: {e}")
    if not text.strip():
        fail(f"{path}: empty (iperf3 produced no output)")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        fail(f"{path}: not JSON ({e}): {text[:200]!r}")


def cmd_tcp(args):
    doc = load_json(args.file)
    if doc.get("error"):
        fail(f"{args.file}: iperf3: {doc['error']}")
    try:
        bps = float(doc["end"]["sum_received"]["bits_per_second"])
    except (KeyError, TypeError, ValueError):
        fail(f"{args.file}: no end.sum_received.bits_per_second")
    if bps <= 0:
        fail(f"{args.file}: nothing received")
    retrans = doc["end"].get("sum_sent", {}).get("retransmits", -1)
    print(f"{bps:.0f} {retrans}")


def cmd_udp(args):
    # The server's own report: on the receiver iperf3 counts "packets" as the highest
    # sequence number seen and "lost_packets" as the gaps, so received = the difference.
    doc = load_json(args.file)
    if doc.get("error"):
        fail(f"{args.file}: iperf3: {doc['error']}")
    try:
        s = doc["end"]["sum"]
        packets, lost, secs = int(s["packets"]), int(s["lost_packets"]), float(s["seconds"])
    except (KeyError, TypeError, ValueError):
        fail(f"{args.file}: no end.sum.packets/lost_packets/seconds")
    received = packets - lost
    if received <= 0 or secs <= 0:
        fail(f"{args.file}: nothing received (packets={packets} lost={lost} seconds={secs})")
    print(f"{received / secs:.0f} {received} {lost} {secs:.3f} {100.0 * lost / max(packets, 1):.1f}")


def percentile(sorted_vals, p):
    """Nearest-rank percentile of an already sorted list."""
    k = max(0, math.ceil(p / 100.0 * len(sorted_vals)) - 1)
    return sorted_vals[k]


def cmd_ping(args):
    rtts = []
    with open(args.file, encoding="utf-8", errors="replace") as f:
        for line in f:
            i = line.find(" time=")
            if i < 0 or "bytes from" not in line:
                continue
            tok = line[i + 6 :].split()[0]
            try:
                rtts.append(float(tok) * 1000.0)  # ms -> us
            except ValueError:
                continue
    if len(rtts) < args.min_replies:
        fail(f"{args.file}: {len(rtts)} replies, expected at least {args.min_replies}")
    rtts.sort()
    print(f"{statistics.median(rtts):.1f} {percentile(rtts, 99):.1f} {len(rtts)}")


def cmd_synprobe(args):
    targets = [(socket.AF_INET, args.src4, args.dst4)]
    if args.src6 and args.dst6:
        targets.append((socket.AF_INET6, args.src6, args.dst6))
    answered = {socket.AF_INET: 0, socket.AF_INET6: 0}
    sent = {socket.AF_INET: 0, socket.AF_INET6: 0}
    times = []
    for i in range(args.count):
        fam, src, dst = targets[i % len(targets)]
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.settimeout(args.timeout)
        sent[fam] += 1
        t0 = time.monotonic()
        try:
            s.bind((src, 0))
            s.connect((dst, args.port))
            print(f"synprobe: {dst}:{args.port} accepted (expected a refusal)", file=sys.stderr)
        except ConnectionRefusedError:
            answered[fam] += 1
            times.append((time.monotonic() - t0) * 1000.0)
        except socket.timeout:
            print(f"synprobe: {dst}:{args.port} no answer in {args.timeout}s", file=sys.stderr)
        except OSError as e:
            print(f"synprobe: {dst}:{args.port}: {errno.errorcode.get(e.errno, e)}", file=sys.stderr)
        finally:
            s.close()
        time.sleep(args.interval)
    med = statistics.median(times) if times else -1.0
    worst = max(times) if times else -1.0
    print(
        f"{answered[socket.AF_INET]} {sent[socket.AF_INET]} "
        f"{answered[socket.AF_INET6]} {sent[socket.AF_INET6]} {med:.2f} {worst:.2f}"
    )


def fmt(v, scale):
    x = v * scale
    if x == int(x) and abs(x) < 1e6:
        return f"{int(x)}"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def cmd_report(args):
    with open(args.meta, encoding="utf-8") as f:
        meta = json.load(f)
    values = {}  # (path, metric) -> [values in round order]
    extra = {}  # (path, metric) -> value, for non-per-round figures
    with open(args.records, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            r = json.loads(line)
            if r.get("round") is None:
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
    for key, metric in (("latency_added_us", "rtt_median_us"), ("latency_p99_added_us", "rtt_p99_us")):
        k, o = medians.get(("kernel", metric)), medians.get(("op25b", metric))
        out[key] = round(o - k, 1) if k is not None and o is not None else None
    for p in PATHS:
        for (pp, metric), v in extra.items():
            if pp == p:
                per_path[p][metric] = v
    out["kernel"] = per_path["kernel"]
    out["op25b"] = per_path["op25b"]
    # Headline figures at the top level too.
    o = per_path["op25b"]
    k = per_path["kernel"]
    out["rss_mib"] = o.get("rss_mib")
    out["cpu_s"] = o.get("cpu_s")
    out["blocked_syn_answered"] = o.get("blocked_syn_answered")
    out["blocked_syn_sent"] = o.get("blocked_syn_sent")
    out["kernel_blocked_syn_answered"] = k.get("blocked_syn_answered")
    out["kernel_blocked_syn_sent"] = k.get("blocked_syn_sent")

    # The table.
    t = sys.stderr if args.json else sys.stdout
    rounds = meta.get("rounds")
    print("", file=t)
    print(
        f"op25b vs kernel forwarding: {rounds} round(s), {meta.get('seconds')} s per test, "
        f"{meta.get('extra_rules')} extra rules, {meta.get('cpus')} CPUs, "
        f"busy poll {meta.get('busy_poll_us', 0)} us; "
        "median (min-max) over rounds",
        file=t,
    )
    hdr = f"{'figure':<26} {'kernel':>24} {'op25b':>24} {'op25b/kernel':>13}"
    print(hdr, file=t)
    print("-" * len(hdr), file=t)
    for metric, label, scale, unit, rkey in FIGURES:
        cells = []
        for p in PATHS:
            vals = values.get((p, metric), [])
            if not vals:
                cells.append("FAILED")
                continue
            med = statistics.median(vals)
            cells.append(f"{fmt(med, scale)} ({fmt(min(vals), scale)}-{fmt(max(vals), scale)})")
        ratio = out.get(rkey)
        rtxt = f"{ratio:.3f}" if ratio is not None else "-"
        print(f"{label + ' ' + unit:<26} {cells[0]:>24} {cells[1]:>24} {rtxt:>13}", file=t)
    for metric, label, scale, unit in INFO_FIGURES:
        cells = []
        for p in PATHS:
            vals = values.get((p, metric), [])
            med = statistics.median(vals) if vals else None
            cells.append(f"{fmt(med, scale)} ({fmt(min(vals), scale)}-{fmt(max(vals), scale)})" if vals else "-")
        print(f"{(label + ' ' + unit).strip():<26} {cells[0]:>24} {cells[1]:>24} {'':>13}", file=t)
    print("-" * len(hdr), file=t)
    la, lp = out.get("latency_added_us"), out.get("latency_p99_added_us")
    if la is not None:
        print(f"latency added by op25b: median {la:+.1f} us, p99 {lp:+.1f} us", file=t)
    for p in PATHS:
        d = per_path[p]
        if d.get("blocked_syn_sent") is not None:
            print(
                f"blocked SYNs to port 25 refused during load ({p}): "
                f"{d.get('blocked_syn_answered')}/{d.get('blocked_syn_sent')} "
                f"(v4 {d.get('blocked_syn_answered_v4')}/{d.get('blocked_syn_sent_v4')}, "
                f"v6 {d.get('blocked_syn_answered_v6')}/{d.get('blocked_syn_sent_v6')}; "
                f"median {d.get('blocked_syn_median_ms')} ms, max {d.get('blocked_syn_max_ms')} ms)",
                file=t,
            )
    if o.get("rss_mib") is not None:
        print(
            f"op25b process: peak RSS {o['rss_mib']} MiB, CPU {o.get('cpu_s')} s over "
            f"{o.get('run_s')} s alive, {o.get('ctxt_switches')} context switches; CPU during its tests "
            f"{o.get('cpu_busy_pct')} %, while idle (kernel tests) {o.get('cpu_idle_pct')} %",
            file=t,
        )
    if o.get("tun_sub_tx_dropped") is not None:
        print(
            f"op25b TUN queue drops (op25b too slow to read) over the run: "
            f"outbound {o.get('tun_sub_tx_dropped')}, inbound {o.get('tun_up_tx_dropped')}; "
            f"{meta.get('op25b_counters') or 'no counters line in its log'}",
            file=t,
        )
    if meta.get("failures"):
        print(f"FAILURES: {'; '.join(meta['failures'])}", file=t)
    if args.json:
        print(json.dumps(out, sort_keys=True))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("tcp")
    p.add_argument("file")
    p = sub.add_parser("udp")
    p.add_argument("file")
    p = sub.add_parser("ping")
    p.add_argument("file")
    p.add_argument("--min-replies", type=int, default=1)
    p = sub.add_parser("synprobe")
    p.add_argument("--count", type=int, default=20)
    p.add_argument("--port", type=int, default=25)
    p.add_argument("--src4", required=True)
    p.add_argument("--dst4", required=True)
    p.add_argument("--src6")
    p.add_argument("--dst6")
    p.add_argument("--timeout", type=float, default=1.0)
    p.add_argument("--interval", type=float, default=0.02)
    p = sub.add_parser("report")
    p.add_argument("records")
    p.add_argument("--meta", required=True)
    p.add_argument("--json", action="store_true")
    args = ap.parse_args()
    {"tcp": cmd_tcp, "udp": cmd_udp, "ping": cmd_ping, "synprobe": cmd_synprobe, "report": cmd_report}[
        args.cmd
    ](args)


if __name__ == "__main__":
    main()
