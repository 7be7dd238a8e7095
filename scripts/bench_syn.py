#!/usr/bin/env python3
"""Blocked SYNs during scripts/bench.py's load, stdlib only: the probe (the check that
every SYN to port 25 is refused), the flood (`--flood PPS`) and what op25b wrote about
it (`--events`).

Run as `bench_syn.py flood PPS SECS DST PORT` inside the subscriber namespace, it is the
generator: hand-built TCP SYNs (IPv4 + TCP, both checksums computed here) on a raw socket
(IPPROTO_RAW: the IP header is ours, the source included, as tests/redirect_flood.rs
does), from forged sources in FORGED_NET (random hosts and ports, all inside the
subscriber prefixes and the dynamic pool, so op25b blocks every one) to DST:PORT, PPS a
second for SECS seconds at most; then one JSON line: {"sent", "secs", "pps", "errors"}.

The rest is for bench.py: start and finish the probe (bench_lib.py synprobe) and the
generator during a test, and count the event lines and capture records op25b wrote
once it has stopped.
"""

import glob
import json
import os
import random
import re
import socket
import struct
import sys
import time

from bench_proc import in_ns, show_file

FORGED_NET = "100.64.200.0/24"  # inside 100.64.0.0/10, apart from the client 100.64.1.10
POOL = 4096  # distinct SYNs, built before the clock starts and sent round robin

# ------------------------------------------------------------------ the generator


def checksum(data):
    """The Internet checksum (RFC 1071) of data."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def syn4(src, sport, dst, dport, seq, ident):
    """A 40-byte IPv4 TCP SYN (no options, DF, TTL 64, window 64240), checksums set."""
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, 0x02, 64240, 0, 0)
    csum = checksum(s + d + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp)) + tcp)
    tcp = tcp[:16] + struct.pack("!H", csum) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), ident, 0x4000, 64,
                     socket.IPPROTO_TCP, 0, s, d)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return ip + tcp


def forged_pool(dst, dport, n=POOL):
    """n SYNs from random hosts (.1-.254) of FORGED_NET and random ports."""
    base = FORGED_NET.rsplit(".", 1)[0]
    rnd = random.Random()
    return [syn4(f"{base}.{rnd.randint(1, 254)}", rnd.randint(1024, 65535), dst, dport,
                 rnd.getrandbits(32), rnd.getrandbits(16)) for _ in range(n)]


def flood_main(argv):
    """`flood PPS SECS DST PORT`: paced on the clock (as many as are due, then a short
    sleep), stopped after SECS whatever happens."""
    pps, secs, dst, dport = int(argv[0]), float(argv[1]), argv[2], int(argv[3])
    pool = forged_pool(dst, dport)
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    addr = (dst, 0)
    sent = errors = 0
    t0 = time.monotonic()
    end = t0 + secs
    while True:
        now = time.monotonic()
        if now >= end:
            break
        due = min(int((now - t0) * pps), sent + 256)  # a late start is not a burst
        while sent < due:
            try:
                s.sendto(pool[sent % POOL], addr)
            except OSError:  # a full queue (ENOBUFS): counted, the pace goes on
                errors += 1
            sent += 1
        time.sleep(0.0005)
    elapsed = time.monotonic() - t0
    ok = sent - errors
    print(json.dumps({"sent": ok, "secs": round(elapsed, 3), "pps": round(ok / elapsed),
                      "errors": errors}))
    return 0


# ------------------------------------------------------------------ in the run


def synprobe_start(bench, path):
    """Connects to port 25 from the subscriber, in the background."""
    syn = bench.o.syn
    lib = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_lib.py")
    return bench.spawn(bench.file(f"{path}-synprobe"),
                       in_ns(bench.sub[path], syn * 2 + 10, sys.executable, lib, "synprobe",
                             str(syn), "25", "2", bench.lab.cli4, bench.lab.srv4, bench.lab.cli6,
                             bench.lab.srv6))


def synprobe_finish(bench, path, proc):
    syn, out = bench.o.syn, bench.file(f"{path}-synprobe")
    rc = bench.reap(proc, syn * 2 + 15)
    show_file(out + ".err")
    if rc != 0:
        bench.fail_measure(f"{path}: blocked-SYN probe failed")
        return
    try:
        with open(out, encoding="utf-8") as f:
            r = json.loads(f.read())
        a4, s4, a6, s6 = (int(r[k]) for k in ("answered_v4", "sent_v4", "answered_v6", "sent_v6"))
        med, worst = float(r["median_ms"]), float(r["max_ms"])
    except (OSError, ValueError, KeyError, TypeError):
        bench.fail_measure(f"{path}: blocked-SYN probe printed no result")
        return
    for metric, v in (("answered", a4 + a6), ("sent", s4 + s6), ("answered_v4", a4),
                      ("sent_v4", s4), ("answered_v6", a6), ("sent_v6", s6),
                      ("median_ms", med), ("max_ms", worst)):
        bench.record(path, None, f"blocked_syn_{metric}", v)
    if a4 + a6 != syn:
        bench.fail_measure(f"{path}: only {a4 + a6} of {syn} blocked SYNs to port 25 were "
                           "refused within 2 s during load")


def flood_start(bench, path, tag):
    """The generator in path's subscriber namespace for the test's duration."""
    o = bench.o
    return bench.spawn(bench.file(f"{tag}-flood.json"),
                       in_ns(bench.sub[path], o.secs + 5, sys.executable,
                             os.path.abspath(__file__), "flood", str(o.flood), str(o.secs),
                             bench.lab.srv4, "25"))


def flood_finish(bench, path, rnd, tag, proc):
    """Reaps the generator; records the SYNs it sent per second (and their number)."""
    out = bench.file(f"{tag}-flood.json")
    rc = bench.reap(proc, bench.o.secs + 10)
    show_file(out + ".err")
    try:
        with open(out, encoding="utf-8") as f:
            r = json.loads(f.read())
        pps, sent = int(r["pps"]), int(r["sent"])
    except (OSError, ValueError, KeyError, TypeError):
        bench.fail_measure(f"{tag}: the SYN flood printed no result (exit {rc})")
        return
    bench.record(path, rnd, "tcp_flood_pps", pps)
    bench.record(path, rnd, "tcp_flood_sent", sent)


def count_events(path):
    """(lines, "blocked" lines, sum of their "suppressed") of an events file."""
    lines = blocked = suppressed = 0
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                lines += 1
                if '"event":"blocked"' in line:
                    blocked += 1
                    m = re.search(r'"suppressed":([0-9]+)', line)
                    suppressed += int(m.group(1)) if m else 0
    except OSError:
        pass
    return lines, blocked, suppressed


def count_pcap(path):
    """Records in a pcap file and its rotated predecessors (path.1, path.2, ...)."""
    records = 0
    for name in [path] + sorted(glob.glob(glob.escape(path) + ".[0-9]*")):
        try:
            with open(name, "rb") as f:
                hdr = f.read(24)
                if len(hdr) < 24:
                    continue
                endian = "<" if hdr[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
                while True:
                    rec = f.read(16)
                    if len(rec) < 16:
                        break
                    incl = struct.unpack(endian + "IIII", rec)[2]
                    f.seek(incl, os.SEEK_CUR)
                    records += 1
        except OSError:
            pass
    return records


def counter(counters, name):
    """A counter from op25b's "counters: k=v ..." line (absent = 0: it shows non-zero ones)."""
    m = re.search(rf"\b{name}=([0-9]+)", counters or "")
    return int(m.group(1)) if m else 0


def visibility_figures(bench, counters):
    """After op25b stopped (its writers flushed): what it wrote vs the SYNs sent at it."""
    o = bench.o
    sent = sum(r["value"] for r in bench.records
               if r["path"] == "op25b" and r["metric"] == "tcp_flood_sent")
    figures = {"flood_syns_sent": sent}
    if o.events:
        lines, blocked, suppressed = count_events(bench.file("events.jsonl"))
        figures.update(events_lines=lines, events_blocked_lines=blocked,
                       events_suppressed=suppressed,
                       capture_records=count_pcap(bench.file("dropped.pcap")))
    figures.update(events_dropped=counter(counters, "events_dropped"),
                   capture_dropped=counter(counters, "capture_dropped"))
    for metric, v in figures.items():
        bench.record("op25b", None, metric, v)


if __name__ == "__main__":
    if sys.argv[1:2] != ["flood"] or len(sys.argv) != 6:
        sys.exit("usage: bench_syn.py flood PPS SECS DST PORT")
    sys.exit(flood_main(sys.argv[2:]))
