#!/usr/bin/python3
"""imagebuilder collector: keep the cluster's beacons and serve them as JSON and a live web page.

Runs on the master with the image's own python3 and the standard library only. Joins the beacons'
multicast group on the LAN interface (and takes the master's own packet as a unicast copy on
127.0.0.1), keeps each node's latest packet and ten minutes of history in memory, and serves
`/` (the dashboard), `/api/nodes` and `/api/stats` on the LAN address and localhost only. Nothing
it serves changes anything.

Its parts beside it: nodetable.py (the packet checks and the node table, which `imagebuilder status`
imports too), webserver.py (connections that end by themselves), dashboard.py and dashboard.html (the page).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import select
import socket
import sys
import threading
import time
import urllib.parse
from collections import Counter
from pathlib import Path
from typing import Any

import dashboard
import nodetable
import webserver


class Collector:
    """The collector's state and what it answers over HTTP."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.subnet = ipaddress.IPv4Network(config["subnet"]) if config.get("subnet") else None
        self.nodes = nodetable.Nodes(config.get("expected", []), interval=config["interval"])
        self.http: Counter[str] = Counter()
        self.http_lock = threading.Lock()

    def note(self, event: str) -> None:
        with self.http_lock:
            self.http[event] += 1

    def stats(self) -> dict[str, Any]:
        with self.http_lock:
            http = {k: self.http.get(k, 0) for k in webserver.HTTP_EVENTS}
        return {**self.nodes.stats(), "http": http}

    def document(self, with_history: bool) -> dict[str, Any]:
        return {"cluster": self.config.get("cluster", ""), "now": round(time.time(), 3),
                "interval": self.config["interval"], "nodes": self.nodes.snapshot(with_history)}

    def answer(self, path: str) -> tuple[int, str, bytes]:
        """A GET of `path`: the page, the node list, the counters, or not found."""
        url = urllib.parse.urlsplit(path)
        query = urllib.parse.parse_qs(url.query)
        if url.path == "/":
            page = dashboard.render_page(self.config.get("cluster", ""), self.document(True))
            return 200, "text/html; charset=utf-8", page.encode()
        if url.path == "/api/nodes":
            document = self.document(query.get("history") == ["1"])
            return 200, "application/json", dashboard.to_json(document).encode()
        if url.path == "/api/stats":
            return 200, "application/json", dashboard.to_json(self.stats()).encode()
        return 404, "text/plain", b"not found\n"


def serve_http(collector: Collector, addresses: list[str], port: int) -> list[webserver._Server]:
    return webserver.serve(addresses, port, collector.answer, collector.note)


def local_socket(port: int) -> socket.socket:
    """The master's own beacon, sent as a unicast copy (multicast loopback is off)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


def receive_forever(collector: Collector) -> None:
    cfg = collector.config
    sockets = [local_socket(cfg["port"])]
    problem: str | None = None
    # No interface: loopback only (the bench, and tests that must not send multicast on the host).
    joined = not cfg.get("interface")
    while True:
        if not joined:
            try:
                sockets.append(nodetable.multicast_socket(cfg["group"], cfg["port"], cfg["interface"]))
                joined = True
                print(f"listening to {cfg['group']}:{cfg['port']} on {cfg['interface']}", file=sys.stderr)
            except OSError as e:
                if problem != str(e):  # the LAN interface may come up after us: retry, say it once
                    print(f"cannot join {cfg['group']} on {cfg['interface']} yet: {e}", file=sys.stderr)
                    problem = str(e)
        ready, _, _ = select.select(sockets, [], [], 5.0)
        for sock in ready:
            # One byte more than allowed, so an oversized datagram is seen as such, not truncated.
            data, (source, _) = sock.recvfrom(nodetable.MAX_PACKET + 1)
            collector.nodes.receive(data, source, collector.subnet)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("/etc/imagebuilder/collector.json"))
    parser.add_argument("--check-enabled", action="store_true",
                        help="exit 0 if monitoring is enabled in the recipe, 1 if not (for ExecCondition)")
    args = parser.parse_args(argv)
    config = json.loads(args.config.read_text())
    if args.check_enabled:
        return 0 if config.get("enabled") else 1
    collector = Collector(config)
    serve_http(collector, config["listen"], config["dashboard_port"])
    print(f"dashboard on {', '.join(config['listen'])} port {config['dashboard_port']}", file=sys.stderr)
    receive_forever(collector)
    return 0


if __name__ == "__main__":
    sys.exit(main())
