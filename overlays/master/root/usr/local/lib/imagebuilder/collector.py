#!/usr/bin/python3
"""imagebuilder collector: keep the cluster's beacons and serve them as JSON and a live web page.

Runs on the master with the image's own python3 and the standard library only. Joins the beacons'
multicast group on the LAN interface (and takes the master's own packet as a unicast copy on
127.0.0.1), keeps each node's latest packet and ten minutes of history in memory, and serves
`/` (the dashboard), `/api/nodes` and `/api/stats` on the LAN address and localhost only. Nothing
it serves changes anything.

`imagebuilder status` on the workstation imports this file for `parse_packet`, `Nodes` and
`multicast_socket`, so the terminal table and the page agree.
"""

from __future__ import annotations

import argparse
import array
import contextlib
import http.server
import io
import ipaddress
import json
import math
import re
import select
import socket
import struct
import sys
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

SCHEMA = 1
MAX_PACKET = 1200
HISTORY_SECONDS = 600.0
STALE_AFTER = 3    # intervals missed
DOWN_AFTER = 12    # intervals missed
# The node table. Beacons are not authenticated, so anyone on the LAN can make up MACs; the table is
# capped, and its places go first to the cluster table's workers and the master, which are never
# evicted, then to other senders while there is room. A sender outside the cluster table is
# "confirmed" once heard CONFIRM_PACKETS times over at least CONFIRM_INTERVALS of our interval (a real
# node does that on its own; a made-up MAC sent once never does). When the table is full, a new
# sender takes the place of the longest-silent sender never confirmed, if that one has been silent
# for SILENT_INTERVALS, or else of a confirmed one silent for FORGET_SECONDS; if none is, the new
# sender is refused (and tries again with its next beacon). So a node that keeps sending is never
# evicted, and a flood can only hold the places of senders that gave up.
# A /24 LAN holds 254 hosts. A node costs about 4 KiB at a 5 s interval, 12 KiB at most (a full
# history at one sample a second), so this many places cost 3 MiB at worst.
MIN_NODES = 256
CONFIRM_PACKETS = 3
CONFIRM_INTERVALS = 2
SILENT_INTERVALS = STALE_AFTER
FORGET_SECONDS = 3600.0
# The largest magnitude a number field may have: a browser's JSON numbers hold integers exactly up to
# here, and the float32 history rings stay finite. json.loads reads 1e999 as infinity and a 400-digit
# integer as itself; either would otherwise reach the page (as Infinity, which JSON.parse rejects) or
# overflow the memory percentage.
MAX_NUMBER = 2**53
_IP_FREEBIND = 15  # Linux: bind to the LAN address even before the interface has it
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")

Number = (int, float)
# Every field of a schema-1 packet: (accepted types, may be null). Anything else is dropped whole.
FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "v": ((int,), False), "host": ((str,), False), "role": ((str,), False), "mac": ((str,), False),
    "ip": ((str,), False), "interval": (Number, False), "seq": ((int,), False), "time": (Number, False),
    "uptime": (Number, False), "load": ((list,), False), "cpu": (Number, True),
    "mem_total": ((int,), False), "mem_available": ((int,), False),
    "disk_used": ((int,), False), "disk_total": ((int,), False), "temp": (Number, True),
    "cloud_init": ((str,), True), "jobs": ((bool,), False), "k3s": ((bool,), True),
}


class Dropped(Exception):
    """A datagram we do not keep; the argument is the counter it goes to in /api/stats."""


def _reject_constant(name: str) -> Any:
    raise ValueError(name)  # NaN and Infinity are not JSON, and would poison every sum


def parse_packet(data: bytes, source: str, subnet: ipaddress.IPv4Network | None) -> dict[str, Any]:
    """Validate one datagram from `source`; return the packet or raise Dropped(reason)."""
    if len(data) > MAX_PACKET:
        raise Dropped("too_large")
    address = ipaddress.IPv4Address(source)
    # The master's own beacon arrives as a unicast copy from loopback.
    if subnet is not None and address not in subnet and not address.is_loopback:
        raise Dropped("outside_subnet")
    try:
        packet = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise Dropped("not_json") from None
    if not isinstance(packet, dict):
        raise Dropped("not_json")
    version = packet.get("v")
    if type(version) is not int or version != SCHEMA:
        raise Dropped("unknown_schema")
    kept: dict[str, Any] = {}
    for name, (types, nullable) in FIELDS.items():
        value = packet.get(name)
        if value is None and nullable and name in packet:
            kept[name] = None
            continue
        # bool is an int in Python: only fields that say bool take one.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise Dropped("bad_field")
        kept[name] = value
    _check_finite(kept)
    _check_values(kept)
    return kept


def _is_number(value: Any) -> bool:
    return isinstance(value, Number) and not isinstance(value, bool)


def _check_finite(p: dict[str, Any]) -> None:
    numbers = [v for v in p.values() if _is_number(v)] + [x for x in p["load"] if _is_number(x)]
    # abs(nan) <= x is False too: one comparison rejects NaN, infinities and huge integers.
    if not all(abs(x) <= MAX_NUMBER for x in numbers):
        raise Dropped("bad_number")


def _check_values(p: dict[str, Any]) -> None:
    ok = (0 < len(p["host"]) <= 64 and p["role"] in ("master", "worker") and _MAC.match(p["mac"])
          and 0 < p["interval"] <= 3600 and len(p["load"]) == 3
          and all(_is_number(x) for x in p["load"])
          and (p["cloud_init"] is None or len(p["cloud_init"]) <= 16))
    if ok and p["ip"]:
        try:
            ipaddress.IPv4Address(p["ip"])
        except ValueError:
            ok = False
    if not ok:
        raise Dropped("bad_field")


def node_state(age: float, interval: float) -> str:
    if age > DOWN_AFTER * interval:
        return "down"
    if age > STALE_AFTER * interval:
        return "stale"
    return "up"


class History:
    """The last ten minutes of (time, cpu %, memory used %) in fixed rings: 16 bytes a sample."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        size = int(HISTORY_SECONDS / max(interval, 1.0)) + 2
        self.t = array.array("d", bytes(8 * size))
        self.cpu = array.array("f", bytes(4 * size))
        self.mem = array.array("f", bytes(4 * size))
        self.next = 0
        self.count = 0

    def add(self, t: float, cpu: float | None, mem: float) -> None:
        i = self.next
        self.t[i], self.cpu[i], self.mem[i] = t, math.nan if cpu is None else cpu, mem
        self.next = (i + 1) % len(self.t)
        self.count = min(self.count + 1, len(self.t))

    def since(self, cutoff: float) -> dict[str, list[Any]]:
        size = len(self.t)
        order = [(self.next - self.count + k) % size for k in range(self.count)]
        order = [i for i in order if self.t[i] >= cutoff]
        return {"t": [round(self.t[i], 1) for i in order],
                "cpu": [None if math.isnan(self.cpu[i]) else round(self.cpu[i], 1) for i in order],
                "mem": [round(self.mem[i], 1) for i in order]}


def capacity(expected: list[dict[str, Any]]) -> int:
    """Places in the node table: the cluster table, and as many again for workers it does not list.

    Cards flashed with the shared worker image boot on MACs the table may not know (they get DHCP
    leases and names of their own), so the margin grows with the cluster; never fewer than MIN_NODES."""
    return max(MIN_NODES, 2 * len(expected))


class _Entry:
    """One sender: its latest packet, when it was first and last heard, how often, its history."""

    __slots__ = ("first", "heard", "history", "packet", "seen")

    def __init__(self, now: float, packet: dict[str, Any]) -> None:
        self.first = self.seen = now
        self.heard = 0
        self.packet = packet
        self.history = History(packet["interval"])

    def update(self, now: float, packet: dict[str, Any]) -> None:
        self.seen, self.packet = now, packet
        self.heard += 1
        if self.history.interval != packet["interval"]:
            self.history = History(packet["interval"])
        total = packet["mem_total"]
        used = 100 * (1 - packet["mem_available"] / total) if total > 0 else 0.0
        self.history.add(now, packet["cpu"], used)


class Nodes:
    """Every node seen (keyed by MAC), the cluster table's nodes not seen yet, and the drop counters.

    `interval` is the cluster's beacon interval (the recipe's, not a packet's own claim): it times
    confirmation and silence."""

    def __init__(self, expected: list[dict[str, Any]] | None = None, clock: Any = time.time,
                 interval: float = 5.0) -> None:
        self.expected = expected or []
        self.clock = clock
        self.interval = interval
        self.entries: dict[str, _Entry] = {}
        # Never evicted: the cluster table's workers, and the master once its own beacon names its MAC.
        self.keep = {e["mac"] for e in self.expected if e.get("mac")}
        self.master: str | None = None
        self.capacity = capacity(self.expected)
        self.room = self.capacity - len(self.keep) - 1  # the places left for other senders
        # Other senders in order of last heard, so the longest silent is first: never confirmed, confirmed.
        self.pending: dict[str, None] = {}
        self.confirmed: dict[str, None] = {}
        self.counts: Counter[str] = Counter()
        self.started = clock()
        self.lock = threading.Lock()

    def receive(self, data: bytes, source: str, subnet: ipaddress.IPv4Network | None) -> bool:
        """Take one datagram; return whether it was kept."""
        try:
            packet = parse_packet(data, source, subnet)
        except Dropped as e:
            with self.lock:
                self.counts["received"] += 1
                self.counts[str(e)] += 1
            return False
        return self.add(packet, source)

    def add(self, packet: dict[str, Any], source: str = "") -> bool:
        """Keep a checked packet from `source`; return False if the table had no place for a new sender."""
        now = self.clock()
        mac = packet["mac"]
        with self.lock:
            self.counts["received"] += 1
            entry = self.entries.get(mac)
            if entry is None:
                entry = self._admit(mac, packet, source, now)
                if entry is None:
                    self.counts["too_many_nodes"] += 1
                    return False
            self.counts["accepted"] += 1
            entry.update(now, packet)
            self._reorder(mac, entry, now)
        return True

    def _admit(self, mac: str, packet: dict[str, Any], source: str, now: float) -> _Entry | None:
        if mac not in self.keep and not self._is_master(mac, packet, source):
            if len(self.pending) + len(self.confirmed) >= self.room and not self._evict(now):
                return None
            self.pending[mac] = None
        entry = self.entries[mac] = _Entry(now, packet)
        return entry

    def _is_master(self, mac: str, packet: dict[str, Any], source: str) -> bool:
        # Only a process on the master can send from loopback (the kernel drops such packets from the
        # LAN); the first master beacon there names the master's MAC, and only one.
        loopback = bool(source) and ipaddress.IPv4Address(source).is_loopback
        if self.master is None and packet["role"] == "master" and loopback:
            self.master = mac
            self.keep.add(mac)
            return True
        return False

    def _reorder(self, mac: str, entry: _Entry, now: float) -> None:
        if mac in self.pending:
            del self.pending[mac]  # re-inserted at the end: the most recently heard
            confirmed = (entry.heard >= CONFIRM_PACKETS
                         and now - entry.first >= CONFIRM_INTERVALS * self.interval)
            (self.confirmed if confirmed else self.pending)[mac] = None
        elif mac in self.confirmed:
            del self.confirmed[mac]
            self.confirmed[mac] = None

    def _evict(self, now: float) -> bool:
        """Free one place for a new sender, if a sender outside the cluster table has given up."""
        for queue, silence in ((self.pending, SILENT_INTERVALS * self.interval),
                               (self.confirmed, FORGET_SECONDS)):
            oldest = next(iter(queue), None)
            if oldest is not None and now - self.entries[oldest].seen >= silence:
                del queue[oldest], self.entries[oldest]
                self.counts["evicted"] += 1
                return True
        return False

    def snapshot(self, with_history: bool = False) -> list[dict[str, Any]]:
        """The node list of /api/nodes: seen nodes with state and age, then the expected unseen ones."""
        now = self.clock()
        rows = []
        with self.lock:
            for mac, node in self.entries.items():
                age, p = now - node.seen, node.packet
                row = {"hostname": p["host"], "role": p["role"], "mac": mac, "ip": p["ip"],
                       "state": node_state(age, p["interval"]), "age": round(age, 1), "last": p}
                if with_history:
                    row["history"] = node.history.since(now - HISTORY_SECONDS)
                rows.append(row)
            seen_macs = set(self.entries)
            seen_names = {(n.packet["host"], n.packet["role"]) for n in self.entries.values()}
        for entry in self.expected:
            known = entry.get("mac") in seen_macs if entry.get("mac") else (
                (entry["hostname"], entry["role"]) in seen_names)
            if not known:
                rows.append({"hostname": entry["hostname"], "role": entry["role"], "mac": entry.get("mac"),
                             "ip": entry.get("ip"), "state": "expected", "age": None, "last": None})
        rows.sort(key=lambda r: (r["role"] != "master", r["hostname"], r["mac"] or ""))
        return rows

    def stats(self) -> dict[str, Any]:
        with self.lock:
            counts = dict(self.counts)
            nodes = len(self.entries)
        dropped = {k: counts.get(k, 0) for k in ("not_json", "too_large", "unknown_schema",
                                                 "outside_subnet", "bad_field", "bad_number", "too_many_nodes")}
        return {"received": counts.get("received", 0), "accepted": counts.get("accepted", 0),
                "dropped": dropped, "dropped_total": sum(dropped.values()), "nodes": nodes,
                "capacity": self.capacity, "evicted": counts.get("evicted", 0),
                "uptime": round(self.clock() - self.started, 1)}


# ---------------------------------------------------------------------------------------------------
# The page: one self-contained file (the LAN may have no internet). Every value reaches the page
# through JSON and textContent/setAttribute, so a hostname like <script> shows as text.

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
body{font:14px system-ui,sans-serif;margin:0;background:#f3f4f6;color:#111}
header{background:#1f2937;color:#fff;padding:10px 16px;display:flex;gap:16px;align-items:baseline}
header h1{font-size:18px;margin:0}#summary{opacity:.8}#conn{margin-left:auto}
#conn.lost{color:#fca5a5;font-weight:bold}
#nodes{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:12px;padding:16px}
.card{background:#fff;border-radius:8px;padding:10px 12px;border-left:6px solid #16a34a;
box-shadow:0 1px 2px #0002}
.card[data-state=stale]{border-color:#d97706;background:#fffbeb}
.card[data-state=down]{border-color:#dc2626;background:#fef2f2}
.card[data-state=expected]{border-color:#9ca3af;background:#f9fafb;color:#6b7280}
.top{display:flex;justify-content:space-between;align-items:baseline}
.name{font-weight:bold;font-size:16px;word-break:break-all}
.badge{font-size:11px;text-transform:uppercase;padding:1px 6px;border-radius:9px;background:#dcfce7}
.card[data-state=stale] .badge{background:#fde68a}.card[data-state=down] .badge{background:#fecaca}
.card[data-state=expected] .badge{background:#e5e7eb}
.sub{color:#6b7280;font-size:12px;margin:2px 0 6px}
.row{display:flex;align-items:center;gap:6px;margin:2px 0}.row b{width:34px;font-size:12px}
.row span{width:48px;text-align:right;font-variant-numeric:tabular-nums}
svg{background:#f9fafb;border:1px solid #e5e7eb}polyline{fill:none;stroke-width:1.5}
.cpu polyline{stroke:#2563eb}.mem polyline{stroke:#9333ea}
dl{display:grid;grid-template-columns:auto 1fr;gap:0 8px;margin:6px 0 0;font-size:12px}dt{color:#6b7280}dd{margin:0}
</style></head>
<body><header><h1>__TITLE__</h1><span id="summary"></span><span id="conn"></span></header>
<main id="nodes"></main>
<script id="initial" type="application/json">__INITIAL__</script>
<script>
"use strict";
const initial = JSON.parse(document.getElementById("initial").textContent);
const interval = initial.interval;
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = String(text);
  return e;
}
function spark(cls, values) {
  const ns = "http://www.w3.org/2000/svg", w = 150, h = 28;
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", cls); svg.setAttribute("width", w); svg.setAttribute("height", h);
  const pts = [], n = values.length;
  values.forEach((v, i) => { if (v !== null) pts.push(
    ((n > 1 ? i / (n - 1) : 1) * w).toFixed(1) + "," + (h - 1 - Math.min(100, v) / 100 * (h - 2)).toFixed(1)); });
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", pts.join(" ")); svg.appendChild(line);
  return svg;
}
function fmtBytes(b) { return (b / 2 ** 30).toFixed(1) + " GiB"; }
function fmtAge(s) {
  return s === null ? "never" : s < 90 ? s.toFixed(0) + " s ago" : (s / 60).toFixed(0) + " min ago";
}
function card(node) {
  const c = el("div", "card"), p = node.last;
  c.setAttribute("data-state", node.state);
  c.setAttribute("data-host", node.hostname);
  const top = el("div", "top");
  top.append(el("span", "name", node.hostname), el("span", "badge", node.state));
  c.append(top, el("div", "sub", [node.role, node.ip || "", node.mac || ""].filter(Boolean).join(" · ")));
  if (p) {
    const h = node.history || {cpu: [], mem: []};
    const memUsed = 100 * (1 - p.mem_available / p.mem_total);
    for (const [label, cls, vals, now] of [["CPU", "cpu", h.cpu, p.cpu], ["MEM", "mem", h.mem, memUsed]]) {
      const r = el("div", "row");
      r.append(el("b", "", label), spark(cls, vals), el("span", "", now === null ? "–" : now.toFixed(0) + "%"));
      c.append(r);
    }
    const dl = el("dl");
    const facts = [["load", p.load.map(x => x.toFixed(2)).join(" ")],
      ["memory", fmtBytes(p.mem_total - p.mem_available) + " of " + fmtBytes(p.mem_total)],
      ["disk", fmtBytes(p.disk_used) + " of " + fmtBytes(p.disk_total)],
      ["temp", p.temp === null ? "–" : p.temp.toFixed(1) + " °C"],
      ["k3s", p.k3s === null ? "?" : p.k3s ? "active" : "not active"],
      ["/srv/jobs", p.jobs ? "mounted" : "not mounted"],
      ["cloud-init", p.cloud_init === null ? "?" : p.cloud_init],
      ["up", (p.uptime / 3600).toFixed(1) + " h"], ["seen", fmtAge(node.age)]];
    for (const [k, v] of facts) dl.append(el("dt", "", k), el("dd", "", v));
    c.append(dl);
  } else {
    c.append(el("div", "sub", "in the cluster table, never seen"));
  }
  return c;
}
function render(data) {
  const nodes = document.getElementById("nodes");
  nodes.replaceChildren(...data.nodes.map(card));
  const count = {};
  for (const n of data.nodes) count[n.state] = (count[n.state] || 0) + 1;
  document.getElementById("summary").textContent =
    Object.entries(count).map(([k, v]) => v + " " + k).join(", ");
}
async function poll() {
  const conn = document.getElementById("conn");
  try {
    const r = await fetch("api/nodes?history=1", {cache: "no-store"});
    if (!r.ok) throw new Error(r.status);
    render(await r.json());
    conn.textContent = "live, every " + interval + " s"; conn.className = "";
  } catch (e) {
    conn.textContent = "master not reachable: showing old figures"; conn.className = "lost";
  }
}
render(initial);
document.getElementById("conn").textContent = "live, every " + interval + " s";
setInterval(poll, interval * 1000);
</script></body></html>
"""


def to_json(document: Any) -> str:
    """JSON that a browser's JSON.parse accepts: never NaN or Infinity, which would blank the page.

    Packets with such values are dropped on arrival; should one reach here all the same (a bug), it
    shows as null rather than taking every other node's figures with it."""
    try:
        return json.dumps(document, allow_nan=False)
    except ValueError:
        return json.dumps(_finite_only(document), allow_nan=False)


def _finite_only(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_only(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_only(v) for v in value]
    return value


def render_page(cluster: str, document: dict[str, Any]) -> str:
    import html
    # Inside <script> only "</" could end the element; escaping <, > and & keeps any text inert.
    data = (to_json(document).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))
    title = html.escape(f"{cluster} cluster")
    return PAGE.replace("__TITLE__", title).replace("__INITIAL__", data)


# ---------------------------------------------------------------------------------------------------
# HTTP: a thread per connection (ThreadingHTTPServer), so every connection must end by itself. The
# request has one deadline and a size cap, each write of the reply a timeout, and each listening
# address at most MAX_CONNECTIONS connections. HTTP/1.0: one request per connection.

MAX_CONNECTIONS = 64   # per listening address; a browser opens six at most
REQUEST_SECONDS = 5.0  # for the whole request line and headers, however slowly they come
WRITE_SECONDS = 10.0   # for each of the reply's two writes (headers, body): a client that does not read
MAX_REQUEST = 16384    # request line and headers; a GET has no body, and 16 KiB leaves room for cookies
HTTP_EVENTS = ("served", "timeout", "too_large", "evicted", "busy", "broken")
_BUSY = b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\n\r\n"


class Refused(Exception):
    """A request we stop reading; the argument is its counter under "http" in /api/stats."""


class _Ended(Exception):
    """The request stopped before its end: the client left, or was evicted. Nothing to answer."""


class _RequestReader(io.RawIOBase):
    """The socket's bytes, within one deadline and one size cap for the whole request.

    A socket timeout alone starts again with every byte, so a client sending one byte every few
    seconds (slowloris) would hold its thread for ever."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock
        self.deadline = time.monotonic() + REQUEST_SECONDS
        self.left = MAX_REQUEST

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise Refused("timeout")
        if self.left <= 0:
            raise Refused("too_large")
        self.sock.settimeout(remaining)
        try:
            count = self.sock.recv_into(buffer, min(len(buffer), self.left))
        except TimeoutError:
            raise Refused("timeout") from None
        if count == 0:
            # Only reached before the request's end (the headers' blank line stops the reading):
            # a cut-short request is not answered, as http.server would with what it has.
            raise _Ended
        self.left -= count
        return count


class Collector:
    """The collector's state and its HTTP view."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.subnet = ipaddress.IPv4Network(config["subnet"]) if config.get("subnet") else None
        self.nodes = Nodes(config.get("expected", []), interval=config["interval"])
        self.http: Counter[str] = Counter()
        self.http_lock = threading.Lock()

    def note(self, event: str) -> None:
        with self.http_lock:
            self.http[event] += 1

    def stats(self) -> dict[str, Any]:
        with self.http_lock:
            http = {k: self.http.get(k, 0) for k in HTTP_EVENTS}
        return {**self.nodes.stats(), "http": http}

    def document(self, with_history: bool) -> dict[str, Any]:
        return {"cluster": self.config.get("cluster", ""), "now": round(time.time(), 3),
                "interval": self.config["interval"], "nodes": self.nodes.snapshot(with_history)}

    def handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            server_version = "imagebuilder-collector"

            def setup(self) -> None:
                super().setup()
                self.rfile.close()  # replaced: left open, it would keep the socket open after finish()
                self.rfile = io.BufferedReader(_RequestReader(self.connection))

            def handle(self) -> None:
                try:
                    super().handle()
                except Refused as e:
                    collector.note(str(e))
                except _Ended:
                    pass

            def parse_request(self) -> bool:
                ok = super().parse_request()
                # The request is in: the connection is no longer one to evict, and has its reply's timeout.
                cast(_Server, self.server).request_read(self.request)
                self.connection.settimeout(WRITE_SECONDS)
                return ok

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query)
                if url.path == "/":
                    body = render_page(collector.config.get("cluster", ""), collector.document(True)).encode()
                    self.reply(200, "text/html; charset=utf-8", body)
                elif url.path == "/api/nodes":
                    document = collector.document(query.get("history") == ["1"])
                    self.reply(200, "application/json", to_json(document).encode())
                elif url.path == "/api/stats":
                    self.reply(200, "application/json", to_json(collector.stats()).encode())
                else:
                    self.reply(404, "text/plain", b"not found\n")

            def reply(self, status: int, kind: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.send_header("Content-Security-Policy",
                                 "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'")
                try:
                    self.end_headers()
                    self.wfile.write(body)
                except TimeoutError:
                    collector.note("timeout")
                    raise  # http.server closes the connection
                collector.note("served")

            def log_message(self, format: str, *args: Any) -> None:
                pass  # one line per poll would fill the journal

        return Handler


class _Server(http.server.ThreadingHTTPServer):
    """One listening address, with at most MAX_CONNECTIONS connections.

    When full, a new connection takes the place of the oldest one still sending its request: a real
    client's request follows its connection within milliseconds, a slow attacker's never comes, so
    slow clients cannot keep real ones out. Only when every connection has sent its request (and
    waits for its reply, a bounded time) is a new one turned away, at once, with a 503."""

    daemon_threads = True
    request_queue_size = 128  # the listen backlog: under attack connections come in bursts

    def __init__(self, address: tuple[str, int], handler: type[http.server.BaseHTTPRequestHandler],
                 note: Callable[[str], None]) -> None:
        self.note = note
        self.guard = threading.Lock()
        self.open: set[socket.socket] = set()
        self.reading: dict[socket.socket, None] = {}  # open and still sending their request, oldest first
        super().__init__(address, handler)

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IP, _IP_FREEBIND, 1)
        super().server_bind()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.guard:
            if len(self.open) >= MAX_CONNECTIONS and not self._evict_oldest_reader():
                self.note("busy")
                self._turn_away(request)
                return
            self.open.add(request)
            self.reading[request] = None
        try:
            super().process_request(request, client_address)  # starts its thread
        except Exception:
            self.forget(request)
            raise

    def _evict_oldest_reader(self) -> bool:
        oldest = next(iter(self.reading), None)
        if oldest is None:
            return False
        self.open.discard(oldest)
        del self.reading[oldest]
        # Its thread wakes from recv with nothing and ends. The socket is not closed yet: its thread
        # takes it off these books, under this lock, before closing it (process_request_thread).
        with contextlib.suppress(OSError):
            oldest.shutdown(socket.SHUT_RDWR)
        self.note("evicted")
        return True

    def _turn_away(self, request: socket.socket) -> None:
        with contextlib.suppress(OSError):
            request.setblocking(False)  # never wait on a client we are refusing
            request.send(_BUSY)
        self.shutdown_request(request)

    def request_read(self, request: socket.socket) -> None:
        with self.guard:
            self.reading.pop(request, None)

    def forget(self, request: socket.socket) -> None:
        with self.guard:
            self.open.discard(request)
            self.reading.pop(request, None)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        # ThreadingMixIn's, but off the books before the socket is closed, so that an eviction never
        # shuts down a socket whose descriptor number was given to another.
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.forget(request)
            self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that goes away mid-reply is its own business; anything else is a bug: keep its traceback.
        if isinstance(sys.exc_info()[1], OSError):
            self.note("broken")
        else:
            super().handle_error(request, client_address)


def serve_http(collector: Collector, addresses: list[str], port: int) -> list[_Server]:
    servers = []
    for address in addresses:
        server = _Server((address, port), collector.handler(), collector.note)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    return servers


def multicast_socket(group: str, port: int, interface: str) -> socket.socket:
    """A socket that receives the group's datagrams arriving on `interface` only.

    Bound to the group address, so it gets neither unicast nor other groups' traffic."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((group, port))
        index = socket.if_nametoindex(interface)
        mreqn = struct.pack("=4s4si", socket.inet_aton(group), bytes(4), index)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
    except OSError:
        sock.close()
        raise
    return sock


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
                sockets.append(multicast_socket(cfg["group"], cfg["port"], cfg["interface"]))
                joined = True
                print(f"listening to {cfg['group']}:{cfg['port']} on {cfg['interface']}", file=sys.stderr)
            except OSError as e:
                if problem != str(e):  # the LAN interface may come up after us: retry, say it once
                    print(f"cannot join {cfg['group']} on {cfg['interface']} yet: {e}", file=sys.stderr)
                    problem = str(e)
        ready, _, _ = select.select(sockets, [], [], 5.0)
        for sock in ready:
            # One byte more than allowed, so an oversized datagram is seen as such, not truncated.
            data, (source, _) = sock.recvfrom(MAX_PACKET + 1)
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
