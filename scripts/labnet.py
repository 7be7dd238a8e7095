#!/usr/bin/env python3
"""Tiny TCP tools for the op25b namespace lab (python3 >= 3.9, stdlib only).

serve    listen on the given TCP ports on [::] (dual stack, IPV6_V6ONLY=0); to each
         accepted connection send one line "220 <local-ip>:<local-port> lab ESMTP\\r\\n",
         read until the peer closes or 2 s pass, close. With --log, append one JSON line
         per accepted connection: {"local", "local_port", "peer", "peer_port"}.
         Once every port is bound it prints {"listening": [ports...]} on stdout.
         Exits 0 on SIGTERM or SIGINT.

connect  bind --src, connect to DST PORT with a timeout and print ONE JSON line:
         {"result": "connected"|"refused"|"timeout"|"unreachable"|"error",
          "errno": int|null, "error": str|null, "ms": float, "banner": str|null,
          "src": str, "dst": str, "port": int}
         "ms" is the time connect() took (the banner read is not included).
         Exits 0 whenever that line was printed; 2 on usage errors.

Both are used by scripts/demo.sh and by the Rust integration tests: the JSON keys
above are an interface, keep them stable (adding keys is fine, renaming is not).
"""

import argparse
import errno as errno_mod
import ipaddress
import json
import os
import selectors
import signal
import socket
import sys
import threading
import time

# How long a served connection stays open waiting for the peer to close.
SERVE_HOLD_S = 2.0
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

class Server:
    def __init__(self, ports, log_path):
        self.ports = ports
        self.log_lock = threading.Lock()
        self.log_file = open(log_path, "a", encoding="utf-8") if log_path else None
        self.stop = threading.Event()

    def log(self, record):
        if self.log_file is None:
            return
        line = json.dumps(record, sort_keys=False)
        with self.log_lock:
            self.log_file.write(line + "\n")
            self.log_file.flush()

    def handle(self, conn):
        try:
            local = conn.getsockname()
            peer = conn.getpeername()
            local_ip, local_port = plain_ip(local[0]), local[1]
            self.log({
                "local": local_ip,
                "local_port": local_port,
                "peer": plain_ip(peer[0]),
                "peer_port": peer[1],
            })
            conn.sendall(("220 %s:%d lab ESMTP\r\n" % (local_ip, local_port)).encode())
            deadline = time.monotonic() + SERVE_HOLD_S
            while not self.stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                conn.settimeout(min(left, 0.5))
                try:
                    data = conn.recv(4096)
                except socket.timeout:
                    continue
                if not data:
                    break
        except OSError:
            pass  # peer reset or vanished: nothing to report to anyone
        finally:
            conn.close()

    def run(self):
        sel = selectors.DefaultSelector()
        listeners = []
        for port in self.ports:
            s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            s.bind(("::", port))
            s.listen(128)
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
            listeners.append(s)
        print(json.dumps({"listening": self.ports}), flush=True)

        def on_signal(_signum, _frame):
            self.stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

        while not self.stop.is_set():
            for key, _ in sel.select(timeout=0.2):
                try:
                    conn, _addr = key.fileobj.accept()
                except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                    continue
                conn.setblocking(True)
                threading.Thread(target=self.handle, args=(conn,), daemon=True).start()
        for s in listeners:
            sel.unregister(s)
            s.close()
        sel.close()
        if self.log_file is not None:
            self.log_file.close()
        return 0


def cmd_serve(args):
    ports = []
    for p in args.port:
        if p not in ports:
            ports.append(p)
    return Server(ports, args.log).run()


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
    sub = parser.add_subparsers(dest="cmd", metavar="{serve,connect}")
    sub.required = True

    p = sub.add_parser("serve", help="listen on TCP ports (dual stack), send a banner")
    p.add_argument("--port", type=port_arg, action="append", required=True,
                   help="TCP port to listen on (repeat for more)")
    p.add_argument("--log", metavar="FILE", help="append one JSON line per connection")
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

    args = parser.parse_args(argv)
    if args.cmd == "connect" and args.src is not None:
        if ipaddress.ip_address(args.src).version != ipaddress.ip_address(args.dst).version:
            parser.error("--src and DST must be the same IP version")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
