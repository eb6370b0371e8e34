"""Hostile traffic for the collector's flood test (tests/test_collector_flood.py).

Runs inside a network namespace that test made, with the system python3 and the standard library
only, like the programs it attacks. Two modes:

- `beacons`: made-up senders, each one datagram with its own MAC, hostname and source address
  (a raw socket writes the IP header, so 10,000 senders need no 10,000 addresses on the interface);
  every 50th carries a number json reads as infinity, or one too large for a float.
- `slowloris`: HTTP clients that send their headers one byte at a time and connect again as soon
  as the server drops them.

Each prints one JSON line of what it did.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import socket
import struct
import sys
import time
from typing import Any


def fake_packet(i: int, source: str, interval: float) -> bytes:
    mac = f"02:fa:ce:{i >> 16:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"
    text = json.dumps({
        "v": 1, "host": f"fake{i:05d}", "role": "worker", "mac": mac, "ip": source, "interval": interval,
        "seq": 1, "time": time.time(), "uptime": 1.0, "load": [0.0, 0.0, 0.0], "cpu": "@", "mem_total": 1 << 30,
        "mem_available": 1 << 29, "disk_used": 1, "disk_total": 2, "temp": None, "cloud_init": "done",
        "jobs": False, "k3s": None}, separators=(",", ":"))
    cpu = "1e999" if i % 100 == 0 else "1" + "0" * 400 if i % 100 == 50 else "5.0"
    return text.replace('"@"', cpu).encode()


def udp_datagram(source: str, group: str, port: int, payload: bytes) -> bytes:
    # The kernel fills in the total length, the header checksum and the id; a UDP checksum of 0 is "none".
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 0, 0, 0, 1, socket.IPPROTO_UDP, 0,
                     socket.inet_aton(source), socket.inet_aton(group))
    return ip + struct.pack("!HHHH", 40000, port, 8 + len(payload), 0) + payload


def beacons(args: argparse.Namespace) -> dict[str, Any]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    mreqn = struct.pack("=4s4si", bytes(4), bytes(4), socket.if_nametoindex(args.interface))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
    first = int(ipaddress.IPv4Address(args.first_source))
    start = time.monotonic()
    for i in range(args.count):
        source = str(ipaddress.IPv4Address(first + i))
        sock.sendto(udp_datagram(source, args.group, args.port, fake_packet(i, source, args.interval)),
                    (args.group, 0))
        if i % 50 == 49:  # paced, so that the kernel's socket buffer is not what drops them
            time.sleep(max(0.0, start + (i + 1) / args.rate - time.monotonic()))
    return {"sent": args.count, "seconds": round(time.monotonic() - start, 2),
            "last_source": str(ipaddress.IPv4Address(first + args.count - 1))}


class Slow:
    """One slow client: a connection from `address` that sends a byte every tick."""

    def __init__(self, address: str, target: tuple[str, int]) -> None:
        self.address, self.target = address, target
        self.sock: socket.socket | None = None
        self.opened = 0.0

    def connect(self) -> None:
        sock = socket.create_connection(self.target, timeout=2, source_address=(self.address, 0))
        sock.setblocking(False)
        sock.send(b"GET / HTTP/1.1\r\nHost: dashboard\r\n")
        self.sock, self.opened = sock, time.monotonic()

    def tick(self) -> float | None:
        """Send one more byte; return how long the connection lasted if the server has dropped it."""
        assert self.sock is not None
        try:
            self.sock.recv(4096)  # returns only with a reply (a 503) or the end
            return self.close()
        except BlockingIOError:
            pass
        except OSError:
            return self.close()
        try:
            self.sock.send(b"X")
        except BlockingIOError:
            pass
        except OSError:
            return self.close()
        return None

    def close(self) -> float:
        assert self.sock is not None
        self.sock.close()
        self.sock = None
        return time.monotonic() - self.opened


def slowloris(args: argparse.Namespace) -> dict[str, Any]:
    clients = [Slow(a, (args.host, args.port)) for a in args.address for _ in range(args.per_address)]
    connects = failed = dropped = 0
    longest = 0.0
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        for client in clients:
            if client.sock is None:
                try:
                    client.connect()
                    connects += 1
                except OSError:
                    failed += 1
                continue
            lasted = client.tick()
            if lasted is not None:
                dropped += 1
                longest = max(longest, lasted)
        time.sleep(args.every)
    still_open = [time.monotonic() - c.opened for c in clients if c.sock is not None]
    return {"clients": len(clients), "connects": connects, "connect_failures": failed, "dropped_by_server": dropped,
            "longest_seconds": round(max([longest, *still_open]), 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    b = modes.add_parser("beacons")
    b.add_argument("--interface", default="eth0")
    b.add_argument("--group", required=True)
    b.add_argument("--port", type=int, required=True)
    b.add_argument("--first-source", required=True, help="sender i sends from this address + i")
    b.add_argument("--count", type=int, default=10_000)
    b.add_argument("--rate", type=float, default=2000.0, help="datagrams a second")
    b.add_argument("--interval", type=float, default=1.0, help="the interval the made-up senders claim")
    s = modes.add_parser("slowloris")
    s.add_argument("--host", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--address", action="append", required=True, help="a local address to connect from")
    s.add_argument("--per-address", type=int, default=25)
    s.add_argument("--every", type=float, default=0.5, help="seconds between two bytes")
    s.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    print(json.dumps(beacons(args) if args.mode == "beacons" else slowloris(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
