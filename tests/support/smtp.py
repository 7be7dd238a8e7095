#!/usr/bin/python3
"""SMTP client and SYN flood for the op25b action tests (tests/actions.rs), whose
SMTP servers are the lab's (`op25b lab serve`). Run inside a test namespace:

  ip netns exec NS /usr/bin/python3 tests/support/smtp.py client \
      --dest 203.0.113.25:25 [--source ADDR] [--send --tag T] [--watch-icmp]
  ip netns exec NS /usr/bin/python3 tests/support/smtp.py flood \
      --dest 203.0.113.25:25 --count 200 --duration 2.0 --hold 0.8

client: smtplib; prints one JSON line: what the connect did (error, errno,
  timeout), the greeting (code, text), the peer the client believes it talks
  to, whether the message was accepted, timings, and optionally the ICMP
  errors that arrived meanwhile (source, type, code).
flood: --count non-blocking connects spread over --duration seconds, each
  abandoned after --hold seconds (shorter than the 1 s SYN retransmission
  timeout, so every connect is exactly one SYN); prints one JSON line with how
  many were refused (RST), unanswered, connected or failed otherwise.

Every wait is bounded; nothing here touches an address outside the test's
namespaces (the caller chooses them).
"""

import argparse
import errno
import json
import select
import selectors
import smtplib
import socket
import sys
import time


def parse_addr(text):
    """"a.b.c.d:port" or "[v6]:port" -> (host, port)."""
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
    else:
        host, _, port = text.rpartition(":")
    if not host or not port:
        raise SystemExit(f"bad address {text!r}: want HOST:PORT or [V6]:PORT")
    return host, int(port)


def family_of(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def addr_json(a):
    """A socket address as "host:port" / "[host]:port" (IPv4-mapped folded)."""
    if a is None:
        return None
    host, port = a[0], a[1]
    if host.startswith("::ffff:") and "." in host:
        host = host[len("::ffff:"):]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def errno_name(n):
    return errno.errorcode.get(n, str(n)) if n is not None else None


# --------------------------------------------------------------------- client


class TimedSMTP(smtplib.SMTP):
    """smtplib.SMTP that times the TCP connect apart from the greeting."""

    connect_ms = None
    connected = False

    def _get_socket(self, host, port, timeout):
        t0 = time.monotonic()
        try:
            sock = super()._get_socket(host, port, timeout)
            self.connected = True
            return sock
        finally:
            self.connect_ms = round((time.monotonic() - t0) * 1000, 1)


def open_icmp_watch(family):
    """A raw socket that sees the ICMP errors arriving while the client runs."""
    if family == socket.AF_INET:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    else:
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    s.setblocking(False)
    return s


def read_icmp(sock, family, wait):
    """Error messages (not echo / neighbour discovery) read from the watch socket."""
    seen = []
    deadline = time.monotonic() + wait
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([sock], [], [], left)[0]:
            break
        data, src = sock.recvfrom(2048)
        if family == socket.AF_INET:
            ihl = (data[0] & 0x0F) * 4
            src_ip = socket.inet_ntop(socket.AF_INET, data[12:16])
            icmp = data[ihl:]
            errors = (3, 11, 12)
        else:
            src_ip = src[0]
            icmp = data
            errors = (1, 2, 3, 4)
        if len(icmp) >= 2 and icmp[0] in errors:
            seen.append({"src": src_ip, "type": icmp[0], "code": icmp[1]})
    return seen


def run_client(args):
    host, port = parse_addr(args.dest)
    family = family_of(host)
    out = {"dest": args.dest, "source": args.source, "tag": args.tag}
    watch = open_icmp_watch(family) if args.watch_icmp else None
    source = (args.source, 0) if args.source else None
    smtp = TimedSMTP(timeout=args.timeout, source_address=source)
    t0 = time.monotonic()
    try:
        code, text = smtp.connect(host, port)
        out["banner_code"] = code
        out["banner_text"] = text.decode("utf-8", "replace")
        out["peer"] = addr_json(smtp.sock.getpeername())
        out["local"] = addr_json(smtp.sock.getsockname())
        if code == 220 and args.send:
            smtp.ehlo("client.test")
            msg = (
                f"From: <{args.mail_from}>\r\nTo: <{args.rcpt_to}>\r\n"
                f"Subject: op25b test {args.tag}\r\n\r\nbody of {args.tag}\r\n"
            )
            refused = smtp.sendmail(args.mail_from, [args.rcpt_to], msg)
            out["refused"] = {k: [v[0], v[1].decode("utf-8", "replace")] for k, v in refused.items()}
            out["accepted"] = not refused
        # Say goodbye as RFC 5321 asks, also after a 554 greeting; a server
        # that already closed makes this fail, which is recorded, not fatal.
        try:
            smtp.quit()
            out["quit"] = "ok"
        except (OSError, smtplib.SMTPException) as e:
            out["quit"] = f"{type(e).__name__}: {e}"
    except (OSError, smtplib.SMTPException) as e:
        out["stage"] = "connect" if not smtp.connected else "smtp"
        out["error"] = f"{type(e).__name__}: {e}"
        out["errno"] = getattr(e, "errno", None)
        out["errname"] = errno_name(out["errno"])
        out["timeout"] = isinstance(e, (TimeoutError, socket.timeout))
        out["smtp_code"] = getattr(e, "smtp_code", None)
    finally:
        smtp.close()
    out["connected"] = smtp.connected
    out["connect_ms"] = smtp.connect_ms
    out["elapsed_ms"] = round((time.monotonic() - t0) * 1000, 1)
    out.setdefault("accepted", False)
    if watch is not None:
        out["icmp"] = read_icmp(watch, family, 0.2)
        watch.close()
    print(json.dumps(out), flush=True)


# ---------------------------------------------------------------------- flood


def run_flood(args):
    host, port = parse_addr(args.dest)
    family = family_of(host)
    sel = selectors.DefaultSelector()
    started = {}  # fd -> (socket, start time)
    counts = {"sent": 0, "refused": 0, "unanswered": 0, "connected": 0, "other": 0}
    others = []
    interval = args.duration / args.count
    t0 = time.monotonic()
    first = last = None

    def finish(fd, outcome):
        sock, _ = started.pop(fd)
        sel.unregister(sock)
        sock.close()
        counts[outcome] += 1

    def poll(until):
        while True:
            now = time.monotonic()
            # Abandon connects older than --hold: closing a socket in SYN-SENT
            # sends nothing, so each connect stays exactly one SYN.
            for fd, (sock, st) in list(started.items()):
                if now - st >= args.hold:
                    finish(fd, "unanswered")
            left = until - now
            if left <= 0:
                return
            for key, _ in sel.select(min(left, 0.02)):
                fd = key.fd
                if fd not in started:
                    continue
                err = key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err == 0:
                    finish(fd, "connected")
                elif err == errno.ECONNREFUSED:
                    finish(fd, "refused")
                else:
                    others.append(errno_name(err))
                    finish(fd, "other")

    for i in range(args.count):
        poll(t0 + i * interval)
        s = socket.socket(family, socket.SOCK_STREAM)
        if args.source:
            s.bind((args.source, 0))
        s.setblocking(False)
        now = time.monotonic()
        rc = s.connect_ex((host, port))
        first = first if first is not None else now
        last = now
        counts["sent"] += 1
        if rc not in (errno.EINPROGRESS, 0):
            others.append(errno_name(rc))
            counts["other"] += 1
            s.close()
            continue
        started[s.fileno()] = (s, now)
        sel.register(s, selectors.EVENT_WRITE)
    poll(time.monotonic() + args.hold + 0.05)
    counts["send_seconds"] = round(last - first, 3)
    counts["other_errors"] = others
    print(json.dumps(counts), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("client")
    c.add_argument("--dest", required=True)
    c.add_argument("--source")
    c.add_argument("--timeout", type=float, default=3.0)
    c.add_argument("--send", action="store_true")
    c.add_argument("--tag", default="")
    c.add_argument("--mail-from", default="sender@subscriber.test")
    c.add_argument("--rcpt-to", default="rcpt@outside.test")
    c.add_argument("--watch-icmp", action="store_true")
    f = sub.add_parser("flood")
    f.add_argument("--dest", required=True)
    f.add_argument("--source")
    f.add_argument("--count", type=int, default=200)
    f.add_argument("--duration", type=float, default=2.0)
    f.add_argument("--hold", type=float, default=0.8)
    args = p.parse_args()
    if args.cmd == "flood" and not (0 < args.hold < 1.0 and args.count > 0 and args.duration <= 10):
        raise SystemExit("flood: need 0 < --hold < 1 s, --count > 0, --duration <= 10 s")
    {"client": run_client, "flood": run_flood}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
