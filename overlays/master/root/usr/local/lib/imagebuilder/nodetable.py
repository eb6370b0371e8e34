"""The cluster's node table, kept from the beacons: shared by the collector on the master and `imagebuilder status`.

Packet checks (a beacon is dropped whole unless every field is as the schema says), each node's latest packet
and ten minutes of history, its state from the age of its last beacon, and the socket that hears the beacons'
multicast group. The collector (collector.py beside this file) serves this table; `imagebuilder status
--listen` keeps one of its own on the workstation, imported as imagebuilder.status.nodetable (the same file),
so the terminal table and the page agree. The standard library only: the master runs it with the image's
own python3.
"""

from __future__ import annotations

import array
import ipaddress
import json
import math
import re
import socket
import struct
import threading
import time
from collections import Counter
from typing import Any

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
