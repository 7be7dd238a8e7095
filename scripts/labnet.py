#!/usr/bin/env python3
"""The op25b lab's clients for the demo and captures (python3 >= 3.9), run inside the
lab's subscriber namespace: `op25b lab exec -- python3 scripts/labnet.py traffic|demo`.
The lab's addresses come from its definition, `op25b lab status --json`.

traffic  the lab's five connections (dynamic to MX:25 over IPv4 and IPv6, to MX:587
         and to the relay on 25, static to MX:25), one JSON line each (scripts/capture.sh).
demo     the demo's cases (scripts/demo.sh): connections, traceroute, mail, checked
         against what OP25B should do, as a table; exit 1 if any differs.
"""

import argparse
import errno as errno_mod
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import time

# The demo: a refused connection counts as "fast" under this many milliseconds (an RST
# from op25b takes about a millisecond here, a silent drop the full timeout).
FAST_MS = 500
# connect(): errno values that mean "the network said no route / not allowed".
# ICMP host/net unreachable and (IPv4) admin prohibited arrive as EHOSTUNREACH or
# ENETUNREACH; ICMPv6 "administratively prohibited" arrives as EACCES on Linux.
UNREACHABLE_ERRNOS = {
    errno_mod.EHOSTUNREACH,
    errno_mod.ENETUNREACH,
    errno_mod.EHOSTDOWN,
    errno_mod.EACCES,
}


# ---------------------------------------------------------------- connect

def read_banner(sock, timeout):
    """First line the server sends (without CR LF), or None if nothing came in time."""
    deadline, buf = time.monotonic() + timeout, b""
    while b"\n" not in buf and len(buf) < 1024 and time.monotonic() < deadline:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            data = sock.recv(1024)
        except OSError:
            break
        if not data:
            break
        buf += data
    return buf.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", "replace") if buf else None


def connect(src, dst, port, timeout=3.0):
    """Binds src, connects to dst:port: {"result": "connected"|"refused"|"timeout"|
    "unreachable"|"error", "errno", "error", "ms" (the connect() alone), "banner"}."""
    out = {"result": "error", "errno": None, "error": None, "ms": 0.0, "banner": None}
    family = socket.AF_INET6 if ipaddress.ip_address(dst).version == 6 else socket.AF_INET
    start = time.monotonic()
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((src, 0))
            sock.settimeout(timeout)
            start = time.monotonic()
            try:
                sock.connect((dst, port))
                out["ms"] = (time.monotonic() - start) * 1000.0
                out["result"], out["banner"] = "connected", read_banner(sock, 1.0)
            except socket.timeout:
                out.update(result="timeout", errno=errno_mod.ETIMEDOUT,
                           error=os.strerror(errno_mod.ETIMEDOUT))
            except OSError as e:
                out.update(errno=e.errno, error=e.strerror or str(e), result=(
                    "refused" if e.errno == errno_mod.ECONNREFUSED else
                    "timeout" if e.errno == errno_mod.ETIMEDOUT else
                    "unreachable" if e.errno in UNREACHABLE_ERRNOS else "error"))
    except OSError as e:  # socket() or bind() failed: not a network verdict
        out.update(errno=e.errno, error=e.strerror or str(e))
    if not out["ms"]:
        out["ms"] = (time.monotonic() - start) * 1000.0
    out["ms"] = round(out["ms"], 3)
    return out


def send(src, dst, port, subject, timeout=3.0):
    """One message through smtplib: {"result": "accepted"|"rejected"|"refused"|"timeout"|
    "error", "reply", "error", "ms"}."""
    import smtplib

    out = {"result": "error", "reply": None, "error": None, "ms": 0.0}
    frm, to = "alice@subscriber.example", "bob@outside.example"
    msg = "From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\n\r\nsent through the op25b lab\r\n" % (frm, to, subject)
    start = time.monotonic()
    try:
        with smtplib.SMTP(dst, port, timeout=timeout, source_address=(src, 0)) as smtp:
            smtp.ehlo("subscriber.lab")
            smtp.mail(frm)
            smtp.rcpt(to)
            code, reply = smtp.data(msg.encode())
            out["reply"] = "%d %s" % (code, reply.decode("utf-8", "replace"))
            out["result"] = "accepted" if code == 250 else "rejected"
    except ConnectionRefusedError as e:
        out["result"], out["error"] = "refused", str(e)
    except (socket.timeout, TimeoutError) as e:
        out["result"], out["error"] = "timeout", str(e) or "timed out"
    except (OSError, smtplib.SMTPException) as e:
        out["error"] = "%s: %s" % (type(e).__name__, e)
    out["ms"] = round((time.monotonic() - start) * 1000.0, 3)
    return out


# ---------------------------------------------------------------- demo

def definition(lab):
    """The lab's definition and state, from op25b itself."""
    op25b = os.environ.get("OP25B", "op25b")
    out = subprocess.run([op25b, "lab", "status", "--json", "--name", lab], capture_output=True, text=True)
    return json.loads(out.stdout)


def cmd_traffic(args):
    d = definition(args.lab)
    mx, relay = d["definition"]["servers"]
    dyn4, dyn6, static4 = d["definition"]["dyn4"], d["definition"]["dyn6"], d["definition"]["static4"]
    for src, dst, port in [(dyn4, mx["v4"], 25), (dyn4, mx["v4"], 587), (dyn4, relay["v4"], 25),
                           (static4, mx["v4"], 25), (dyn6, mx["v6"], 25)]:
        print(json.dumps(dict(connect(src, dst, port, 2.0), src=src, dst=dst, port=port)), flush=True)
    return 0


def hop1(family, dst):
    """The address that answered hop 1 (or "*"), and the path, by traceroute or ping -t1."""
    if shutil.which("traceroute"):
        out = subprocess.run(["traceroute", "-%d" % family, "-n", "-q1", "-w1", "-m3", dst],
                             capture_output=True, text=True).stdout
        hops = [l.split()[1] for l in out.splitlines() if l.split() and l.split()[0].isdigit()]
        return (hops[0] if hops else "*"), " ".join(hops), "traceroute"
    out = subprocess.run(["ping", "-%d" % family, "-n", "-c1", "-W2", "-t1", dst], capture_output=True, text=True).stdout
    first = next((l.split()[1].rstrip(":") for l in out.splitlines() if l.startswith("From ")), "*")
    return first, first, "ping -t1"


def cmd_demo(args):
    d = definition(args.lab)
    dfn, state_dir = d["definition"], d["definition"]["state_dir"]
    mx, relay = dfn["servers"]
    router4, router6 = dfn["router"]
    color = sys.stdout.isatty()
    rows, fails = [], 0
    fmt = "%-3s %-40s %-20s %-20s %8s  %s %s"

    def row(num, label, expect, seen, ms, verdict, detail):
        nonlocal fails
        if verdict == "FAIL":
            fails += 1
        if verdict in ("OK", "FAIL"):
            rows.append(verdict)
        v = "%-4s" % verdict
        if color and verdict in ("OK", "FAIL"):
            v = ("\033[32m%s\033[0m" if verdict == "OK" else "\033[31m%s\033[0m") % v
        print(fmt % (num, label, expect, seen, ms, v, detail), flush=True)

    print("MX = outside mail server %s / %s, relay = ISP relay %s / %s" % (mx["v4"], mx["v6"], relay["v4"], relay["v6"]))
    print("router = op25b's own addresses %s / %s; refused must take < %d ms" % (router4, router6, FAST_MS))
    print()
    print(fmt % ("#", "case", "expected", "seen", "ms", "    ", "detail"))
    n = 0
    for kind, src, fam in [("dynamic", dfn["dyn4"], "v4"), ("static", dfn["static4"], "v4"),
                           ("dynamic", dfn["dyn6"], "v6"), ("static", dfn["static6"], "v6")]:
        cases = [(mx, 25, "refused"), (mx, 587, "connected"), (mx, 465, "connected"), (relay, 25, "connected")]
        for server, port, expect in (cases if kind == "dynamic" else [(mx, 25, "connected")]):
            n += 1
            dst = server[fam]
            j = connect(src, dst, port)
            name = "MX" if server is mx else "relay"
            label, ms = "%s %s -> %s:%d" % (kind, src, name, port), "%.1f" % j["ms"]
            if expect == "refused":
                ok = j["result"] == "refused" and j["ms"] < FAST_MS
                seen = "refused (fast)" if ok else ("refused (slow)" if j["result"] == "refused" else j["result"])
                detail = "RST at once" if ok else (j["error"] or "passed op25b! banner: %s" % j["banner"])
                row(n, label, "refused (fast)", seen, ms, "OK" if ok else "FAIL", detail)
            else:
                ok = j["result"] == "connected" and (j["banner"] or "").startswith("220 %s:%d " % (dst, port))
                detail = "banner: %s" % j["banner"] if j["result"] == "connected" else j["error"]
                row(n, label, "connected", j["result"] if ok or j["result"] != "connected" else "connected?", ms,
                    "OK" if ok else "FAIL", detail)
    # The cases above in README order: IPv4 first (dynamic, then static), then IPv6.
    for family, dst, router in [(4, mx["v4"], router4), (6, mx["v6"], router6)]:
        n += 1
        first, path, tool = hop1(family, dst)
        row(n, "%s -%d -> %s" % (tool, family, dst), "hop1 " + router, "hop1 " + first, "",
            "OK" if first == router else "FAIL", "path: " + path)
    for server, port, expect in [(mx, 587, "mx"), (relay, 25, "relay"), (mx, 25, "refused")]:
        n += 1
        subject = "demo case %d" % n
        j = send(dfn["dyn4"], server["v4"], port, subject)
        label = "mail dynamic %s -> %s:%d" % (dfn["dyn4"], "MX" if server is mx else "relay", port)
        if expect == "refused":
            row(n, label, "refused", j["result"], "%.1f" % j["ms"], "OK" if j["result"] == "refused" else "FAIL",
                j["error"] or j["reply"])
            continue
        where = [s["name"] for s in dfn["servers"] if any(
            ("Subject: %s\r\n" % subject) in m["data"] for m in read_jsonl(os.path.join(state_dir, "mail-%s.jsonl" % s["name"])))]
        seen = "at " + (" ".join(where) or "nowhere") if j["result"] == "accepted" else j["result"]
        row(n, label, "at " + expect, seen, "%.1f" % j["ms"], "OK" if seen == "at " + expect else "FAIL",
            j["reply"] if j["result"] == "accepted" else j["error"])
    # The outside servers' view: exactly the 10 connections that should pass (8
    # connects, 2 messages), and not one from a dynamic address to MX:25.
    conns = read_jsonl(os.path.join(state_dir, "connections.jsonl"))
    leaked = [c for c in conns if c["peer"] in (dfn["dyn4"], dfn["dyn6"]) and c["server"] == "mx" and c["local_port"] == 25]
    row("S", "outside servers' connection log", "10 conns", "%d conns" % len(conns), "",
        "OK" if len(conns) == 10 and not leaked else "FAIL", "%d from a dynamic source to MX:25" % len(leaked))
    # Informational only (not counted): op25b answers ping on its own addresses.
    for family, addr in [(4, router4), (6, router6)]:
        if shutil.which("ping"):
            p = subprocess.run(["ping", "-%d" % family, "-n", "-c1", "-W1", addr], capture_output=True, text=True)
            line = next((l for l in p.stdout.splitlines() if "time=" in l or "From" in l), "")
            row("i", "ping -%d %s (router)" % (family, addr), "reply", "reply" if p.returncode == 0 else "no reply",
                "", "info", line)
    print("checks: %d of %d as expected" % (len(rows) - fails, len(rows)))
    return 1 if fails else 0


def read_jsonl(path):
    try:
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except OSError:
        return []


def main(argv=None):
    parser = argparse.ArgumentParser(prog="labnet.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", metavar="{traffic,demo}")
    sub.required = True
    for name, func in [("traffic", cmd_traffic), ("demo", cmd_demo)]:
        p = sub.add_parser(name)
        p.add_argument("--lab", default="op25b-lab", help="the lab's name (op25b lab --name)")
        p.set_defaults(func=func)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
