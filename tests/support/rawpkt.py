#!/usr/bin/env python3
"""Raw IP packets through a TUN device, for tests/tunnels_netns.rs.

  rawpkt.py send DEV    hex packets on stdin, one a line, written to DEV
  rawpkt.py recv DEV S  prints "ready", then the hex of every packet that
                        arrives on DEV, until a line "end" is seen in a
                        packet's payload or S seconds pass

AF_PACKET with SOCK_DGRAM: a TUN has no link header, so the bytes are the IP
packet as sent, with no kernel IP processing on the way out (this kernel has
no ipip, sit or gre drivers to build tunnels with).
"""
import binascii
import select
import socket
import sys
import time

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


def send(dev):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM)
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        pkt = binascii.unhexlify(line)
        proto = 0x86DD if pkt[0] >> 4 == 6 else 0x0800
        s.sendto(pkt, (dev, proto))
        time.sleep(0.002)


def recv(dev, seconds):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
    s.bind((dev, 0))
    print("ready", flush=True)
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            print("timeout", flush=True)
            return
        r, _, _ = select.select([s], [], [], left)
        if not r:
            continue
        pkt, addr = s.recvfrom(65535)
        if addr[2] == PACKET_OUTGOING:
            continue
        print(binascii.hexlify(pkt).decode(), flush=True)
        if pkt.endswith(b"end-of-test"):
            return


if __name__ == "__main__":
    if sys.argv[1] == "send":
        send(sys.argv[2])
    else:
        recv(sys.argv[2], float(sys.argv[3]))
