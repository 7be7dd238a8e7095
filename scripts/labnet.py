#!/usr/bin/env python3
"""Tiny TCP and SMTP tools for the op25b namespace lab (python3 >= 3.9).

serve    a real SMTP server (aiosmtpd, Debian package python3-aiosmtpd) on the given
         TCP ports on [::] (dual stack, IPV6_V6ONLY=0). Its greeting names the address
         and port the client reached: "220 <local-ip>:<local-port> lab ESMTP". It
         accepts every message; with --mail-dir DIR each one is appended as a JSON
         line to DIR/mail-NAME.jsonl, NAME being the --name given to the local address
         the client reached (IP=NAME, repeatable; "other" if none): {"time", "server",
         "local", "local_port", "peer", "peer_port", "helo", "mail_from", "rcpt_tos",
         "data"}. With --log, append one JSON line per accepted connection: {"local",
         "local_port", "peer", "peer_port", "server"}. Once every port is bound it
         prints {"listening": [ports...]} on stdout. Exits 0 on SIGTERM or SIGINT.

send     send one message with smtplib from --src to DST PORT; print ONE JSON line:
         {"result": "accepted"|"rejected"|"refused"|"timeout"|"error", "reply": str|null,
          "error": str|null, "ms": float, "src", "dst", "port", "subject"}

connect  bind --src, connect to DST PORT with a timeout and print ONE JSON line:
         {"result": "connected"|"refused"|"timeout"|"unreachable"|"error",
          "errno": int|null, "error": str|null, "ms": float, "banner": str|null,
          "src": str, "dst": str, "port": int}
         "ms" is the time connect() took (the banner read is not included).
         Exits 0 whenever that line was printed; 2 on usage errors.

Both are used by scripts/lab.sh and scripts/demo.sh: the JSON keys above are an
interface, keep them stable (adding keys is fine, renaming is not). connect needs
only the standard library.
"""

import argparse
import errno as errno_mod
import ipaddress
import json
import os
import re
import signal
import socket
import sys
import time

# A served connection that says nothing for this long is closed.
SERVE_IDLE_S = 30
# connect(): errno values that mean "the network said no route / not allowed".
# ICMP host/net unreachable and (IPv4) admin prohibited arrive as EHOSTUNREACH or
# ENETUNREACH; ICMPv6 "administratively prohibited" arrives as EACCES on Linux.
UNREACHABLE_ERRNOS = {
    errno_mod.EHOSTUNREACH,
    errno_mod.ENETUNREACH,
    errno_mod.EHOSTDOWN,
    errno_mod.EACCES,
}


def plain_ip(addr):
    """'::ffff:203.0.113.25' -> '203.0.113.25'; strips a '%scope' suffix."""
    addr = addr.split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return addr
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


# ---------------------------------------------------------------- serve

def serve_names(pairs):
    """["203.0.113.25=mx", ...] -> {"203.0.113.25": "mx", ...}."""
    names = {}
    for pair in pairs:
        ip, sep, name = pair.partition("=")
        if not sep or not name or not re.fullmatch(r"[a-z0-9_-]+", name):
            raise SystemExit("labnet.py serve: --name wants IP=NAME (NAME of a-z0-9_-): %r" % pair)
        names[str(ipaddress.ip_address(ip))] = name
    return names


class Server:
    """aiosmtpd on [::] (dual stack) on every port; the server a connection reaches is
    named by its local address (--name IP=NAME), so one process plays the MX and the
    relay. Received messages go to MAILDIR/mail-NAME.jsonl, one JSON line each."""

    def __init__(self, ports, log_path, mail_dir, names):
        self.ports = ports
        self.names = names
        self.mail_dir = mail_dir
        self.log_file = open(log_path, "a", encoding="utf-8") if log_path else None

    def name_of(self, local_ip):
        return self.names.get(local_ip, "other")

    def log(self, record):
        if self.log_file is not None:
            self.log_file.write(json.dumps(record) + "\n")
            self.log_file.flush()

    def deliver(self, name, record):
        if self.mail_dir is None:
            return
        path = os.path.join(self.mail_dir, "mail-%s.jsonl" % name)
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def protocol(self):
        from aiosmtpd.smtp import SMTP

        server = self

        class Handler:
            async def handle_DATA(self, smtp, session, envelope):
                local_ip, local_port = smtp.lab_local
                server.deliver(server.name_of(local_ip), {
                    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "server": server.name_of(local_ip),
                    "local": local_ip,
                    "local_port": local_port,
                    "peer": plain_ip(session.peer[0]),
                    "peer_port": session.peer[1],
                    "helo": session.host_name,
                    "mail_from": envelope.mail_from,
                    "rcpt_tos": list(envelope.rcpt_tos),
                    "data": envelope.content.decode("utf-8", "replace"),
                })
                return "250 OK message accepted by the lab's %s" % server.name_of(local_ip)

        class LabSMTP(SMTP):
            def __init__(self):
                super().__init__(Handler(), ident="lab ESMTP", timeout=SERVE_IDLE_S)
                self.lab_local = ("?", 0)

            def connection_made(self, transport):
                local = transport.get_extra_info("sockname")
                peer = transport.get_extra_info("peername")
                local_ip = plain_ip(local[0])
                self.lab_local = (local_ip, local[1])
                # The greeting names the address and port the client reached:
                # "220 203.0.113.25:587 lab ESMTP" (scripts/demo.sh checks it).
                self.hostname = "%s:%d" % (local_ip, local[1])
                server.log({
                    "local": local_ip,
                    "local_port": local[1],
                    "peer": plain_ip(peer[0]),
                    "peer_port": peer[1],
                    "server": server.name_of(local_ip),
                })
                super().connection_made(transport)

        return LabSMTP

    async def main(self):
        import asyncio

        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        factory = self.protocol()
        servers = []
        for port in self.ports:
            s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            s.bind(("::", port))
            s.listen(128)
            s.setblocking(False)
            servers.append(await loop.create_server(factory, sock=s))
        print(json.dumps({"listening": self.ports}), flush=True)
        await stop.wait()
        for srv in servers:
            srv.close()
        if self.log_file is not None:
            self.log_file.close()
        return 0


def cmd_serve(args):
    import asyncio
    import importlib.util

    if importlib.util.find_spec("aiosmtpd") is None:
        print("labnet.py serve: needs aiosmtpd (Debian package python3-aiosmtpd, "
              "scripts/setup.sh installs it) for %s" % sys.executable, file=sys.stderr)
        return 1
    ports = []
    for p in args.port:
        if p not in ports:
            ports.append(p)
    return asyncio.run(Server(ports, args.log, args.mail_dir, serve_names(args.name)).main())


# ---------------------------------------------------------------- connect

def read_banner(sock, timeout):
    """First line the server sends (without CR LF), or None if nothing came in time."""
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf and len(buf) < 1024:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            data = sock.recv(1024)
        except (socket.timeout, OSError):
            break
        if not data:
            break
        buf += data
    if not buf:
        return None
    return buf.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", "replace")


def cmd_connect(args):
    out = {
        "result": "error",
        "errno": None,
        "error": None,
        "ms": 0.0,
        "banner": None,
        "src": args.src,
        "dst": args.dst,
        "port": args.port,
    }
    family = socket.AF_INET6 if ipaddress.ip_address(args.dst).version == 6 else socket.AF_INET
    sock = None
    start = time.monotonic()
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
        if args.src:
            sock.bind((args.src, 0))
        sock.settimeout(args.timeout)
        start = time.monotonic()
        try:
            sock.connect((args.dst, args.port))
            out["ms"] = (time.monotonic() - start) * 1000.0
            out["result"] = "connected"
            out["banner"] = read_banner(sock, args.banner_timeout)
        except socket.timeout:
            out["ms"] = (time.monotonic() - start) * 1000.0
            out["result"] = "timeout"
            out["errno"] = errno_mod.ETIMEDOUT
            out["error"] = os.strerror(errno_mod.ETIMEDOUT)
        except OSError as e:
            out["ms"] = (time.monotonic() - start) * 1000.0
            out["errno"] = e.errno
            out["error"] = e.strerror or str(e)
            if e.errno == errno_mod.ECONNREFUSED:
                out["result"] = "refused"
            elif e.errno == errno_mod.ETIMEDOUT:
                out["result"] = "timeout"
            elif e.errno in UNREACHABLE_ERRNOS:
                out["result"] = "unreachable"
            else:
                out["result"] = "error"
    except OSError as e:  # socket() or bind() failed: not a network verdict
        out["ms"] = (time.monotonic() - start) * 1000.0
        out["errno"] = e.errno
        out["error"] = e.strerror or str(e)
        out["result"] = "error"
    finally:
        if sock is not None:
            sock.close()
    out["ms"] = round(out["ms"], 3)
    print(json.dumps(out), flush=True)
    return 0


# ---------------------------------------------------------------- send

def cmd_send(args):
    """One message through smtplib; prints ONE JSON line."""
    import smtplib

    out = {"result": "error", "reply": None, "error": None, "ms": 0.0,
           "src": args.src, "dst": args.dst, "port": args.port, "subject": args.subject}
    msg = "From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\n\r\nsent through the op25b lab\r\n" % (
        args.mail_from, args.rcpt_to, args.subject)
    start = time.monotonic()
    try:
        source = (args.src, 0) if args.src else None
        with smtplib.SMTP(args.dst, args.port, timeout=args.timeout, source_address=source) as smtp:
            smtp.ehlo("subscriber.lab")
            smtp.mail(args.mail_from)
            smtp.rcpt(args.rcpt_to)
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
    print(json.dumps(out), flush=True)
    return 0


# ---------------------------------------------------------------- CLI

def ip_arg(text):
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError("not an IP address: %r" % text)


def port_arg(text):
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a port number: %r" % text)
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError("port out of range: %d" % port)
    return port


def positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a number: %r" % text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be > 0: %r" % text)
    return value


def main(argv=None):
    parser = argparse.ArgumentParser(prog="labnet.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", metavar="{serve,connect,send}")
    sub.required = True

    p = sub.add_parser("serve", help="SMTP servers on TCP ports (dual stack), logging mail")
    p.add_argument("--port", type=port_arg, action="append", required=True,
                   help="TCP port to listen on (repeat for more)")
    p.add_argument("--log", metavar="FILE", help="append one JSON line per connection")
    p.add_argument("--mail-dir", metavar="DIR", help="append each message to DIR/mail-NAME.jsonl")
    p.add_argument("--name", metavar="IP=NAME", action="append", default=[],
                   help="name of the server at local address IP (repeatable)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("connect", help="one TCP connect, print one JSON line")
    p.add_argument("--src", type=ip_arg, help="source address to bind")
    p.add_argument("--timeout", type=positive_float, default=3.0,
                   help="connect timeout in seconds (default 3)")
    p.add_argument("--banner-timeout", type=positive_float, default=1.0,
                   help="how long to wait for the banner line (default 1)")
    p.add_argument("dst", type=ip_arg, metavar="DST")
    p.add_argument("port", type=port_arg, metavar="PORT")
    p.set_defaults(func=cmd_connect)

    p = sub.add_parser("send", help="send one message with smtplib, print one JSON line")
    p.add_argument("--src", type=ip_arg, help="source address to bind")
    p.add_argument("--timeout", type=positive_float, default=3.0, help="seconds (default 3)")
    p.add_argument("--subject", default="lab message")
    p.add_argument("--mail-from", default="alice@subscriber.example")
    p.add_argument("--rcpt-to", default="bob@outside.example")
    p.add_argument("dst", type=ip_arg, metavar="DST")
    p.add_argument("port", type=port_arg, metavar="PORT")
    p.set_defaults(func=cmd_send)

    args = parser.parse_args(argv)
    if args.cmd in ("connect", "send") and args.src is not None:
        if ipaddress.ip_address(args.src).version != ipaddress.ip_address(args.dst).version:
            parser.error("--src and DST must be the same IP version")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
