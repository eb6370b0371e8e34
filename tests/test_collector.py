"""The collector and dashboard (overlays/master): parsing, hostile input, states, the page, the units."""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from imagebuilder.layers.description import load_description
from imagebuilder.recipe.load import load_recipe
from tests.conftest import ROOT, VALID, require_programs
from tests.test_beacon import CONFIG, beacon, collector, dashboard, nodetable, render_overlay, sampler, webserver

SUBNET = nodetable.ipaddress.IPv4Network("10.0.0.0/24")


def packet(**changes: Any) -> dict[str, Any]:
    p = {"v": 1, "host": "node1", "role": "worker", "mac": "b8:27:eb:00:00:01", "ip": "10.0.0.11",
         "interval": 5, "seq": 1, "time": 1700000000.5, "uptime": 100.0, "load": [0.1, 0.2, 0.3], "cpu": 12.5,
         "mem_total": 1000, "mem_available": 750, "disk_used": 10, "disk_total": 100, "temp": 45.0,
         "cloud_init": "done", "jobs": True, "k3s": True}
    p.update(changes)
    return p


def data(**changes: Any) -> bytes:
    return json.dumps(packet(**changes)).encode()


def literal(field: str, text: str) -> bytes:
    """A packet whose `field` is written as `text` (json.dumps cannot write 1e999: it writes Infinity)."""
    return data(**{field: "@"}).replace(b'"@"', text.encode())


HOSTILE = [
    ("not-json", b"hello", "not_json"),
    ("not-utf8", b"\xff\xfe{}", "not_json"),
    ("json-list", b"[1, 2]", "not_json"),
    ("nan", data().replace(b'"cpu": 12.5', b'"cpu": NaN'), "not_json"),
    ("too-large", data(host="x" * 40) + b" " * 1200, "too_large"),
    ("schema-2", data(v=2), "unknown_schema"),
    ("schema-missing", json.dumps({k: v for k, v in packet().items() if k != "v"}).encode(), "unknown_schema"),
    ("schema-string", data(v="1"), "unknown_schema"),
    ("schema-bool", data(v=True), "unknown_schema"),
    ("cpu-string", data(cpu="12"), "bad_field"),
    ("mem-float", data(mem_total=1000.5), "bad_field"),
    ("mem-bool", data(mem_available=True), "bad_field"),
    ("jobs-int", data(jobs=1), "bad_field"),
    ("host-number", data(host=5), "bad_field"),
    ("host-empty", data(host=""), "bad_field"),
    ("field-missing", json.dumps({k: v for k, v in packet().items() if k != "uptime"}).encode(), "bad_field"),
    ("null-not-allowed", data(uptime=None), "bad_field"),
    ("load-short", data(load=[1, 2]), "bad_field"),
    ("load-strings", data(load=["1", "2", "3"]), "bad_field"),
    ("bad-mac", data(mac="<b>"), "bad_field"),
    ("bad-ip", data(ip="10.0.0.999"), "bad_field"),
    ("bad-role", data(role="admin"), "bad_field"),
    ("interval-zero", data(interval=0), "bad_field"),
    # json.loads turns these into inf, or keeps them as integers no float holds: never finite on the page.
    ("cpu-1e999", literal("cpu", "1e999"), "bad_number"),
    ("temp-minus-1e999", literal("temp", "-1e999"), "bad_number"),
    ("uptime-1e999", literal("uptime", "1e999"), "bad_number"),
    ("interval-1e999", literal("interval", "1e999"), "bad_number"),
    ("time-1e400", literal("time", "1.5e400"), "bad_number"),
    ("load-1e999", literal("load", "[1e999, 0, 0]"), "bad_number"),
    ("cpu-huge-finite", data(cpu=1e300), "bad_number"),  # finite, but infinite in the float32 history
    ("mem-400-digits", literal("mem_available", "1" + "0" * 400), "bad_number"),
    ("uptime-huge-int", data(uptime=2**64), "bad_number"),
    ("infinity-literal", literal("cpu", "Infinity"), "not_json"),
    ("minus-infinity-literal", literal("temp", "-Infinity"), "not_json"),
]


@pytest.mark.parametrize(("raw", "reason"), [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_hostile_datagram_is_dropped_and_counted(raw: bytes, reason: str) -> None:
    nodes = nodetable.Nodes()
    assert nodes.receive(raw, "10.0.0.11", SUBNET) is False
    stats = nodes.stats()
    assert stats["dropped"][reason] == 1 and stats["dropped_total"] == 1
    assert stats["received"] == 1 and stats["accepted"] == 0 and nodes.snapshot() == []


def test_outside_subnet_dropped_loopback_kept() -> None:
    nodes = nodetable.Nodes()
    assert nodes.receive(data(), "192.168.1.5", SUBNET) is False
    assert nodes.stats()["dropped"]["outside_subnet"] == 1
    assert nodes.receive(data(), "127.0.0.1", SUBNET) is True  # the master's own copy


def test_numbers_up_to_the_bound_are_kept() -> None:
    nodes = nodetable.Nodes()
    big = nodetable.MAX_NUMBER
    assert nodes.receive(data(mem_total=big, mem_available=1, disk_total=big, disk_used=big, seq=big,
                              uptime=float(big), temp=-273.0), "10.0.0.11", SUBNET)
    assert nodes.snapshot()[0]["last"]["mem_total"] == big


def test_json_output_never_holds_nan_or_infinity() -> None:
    def strict(text: str) -> Any:
        return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in the output"))

    assert strict(dashboard.to_json({"a": 1.5, "b": [2, None]})) == {"a": 1.5, "b": [2, None]}
    # Should a non-finite value ever get past the packet checks, it shows as null, not as Infinity.
    assert strict(dashboard.to_json({"a": float("inf"), "b": [float("nan"), 1.0], "c": {"d": -float("inf")}})) == {
        "a": None, "b": [None, 1.0], "c": {"d": None}}
    page = dashboard.render_page("lab", {"cluster": "lab", "interval": 5, "nodes": [{"x": float("inf")}]})
    assert "Infinity" not in page and "NaN" not in page


def test_extra_fields_are_not_kept() -> None:
    kept = nodetable.parse_packet(data(extra="x" * 100), "10.0.0.11", SUBNET)
    assert "extra" not in kept and kept == packet()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


EXPECTED = [{"hostname": "master", "mac": None, "ip": "10.0.0.1", "role": "master"},
            {"hostname": "node1", "mac": "b8:27:eb:00:00:01", "ip": "10.0.0.11", "role": "worker"},
            {"hostname": "node2", "mac": "b8:27:eb:00:00:02", "ip": "10.0.0.12", "role": "worker"}]


def states(nodes: Any) -> dict[str, str]:
    return {row["hostname"]: row["state"] for row in nodes.snapshot()}


def test_states_age_from_up_to_stale_to_down() -> None:
    clock = Clock()
    nodes = nodetable.Nodes(EXPECTED, clock=clock)
    assert states(nodes) == {"master": "expected", "node1": "expected", "node2": "expected"}
    nodes.receive(data(), "10.0.0.11", SUBNET)
    nodes.receive(data(host="master", role="master", mac="dc:a6:32:00:00:99", ip="10.0.0.1"), "127.0.0.1", SUBNET)
    # An unknown worker (not in the table) is shown like any other.
    nodes.receive(data(host="node-00002a", mac="dc:a6:32:00:00:2a", ip="10.0.0.100", interval=2), "10.0.0.100",
                  SUBNET)
    assert states(nodes) == {"master": "up", "node1": "up", "node2": "expected", "node-00002a": "up"}
    clock.now += 15  # exactly three intervals of 5 s: not yet missed
    assert states(nodes)["node1"] == "up" and states(nodes)["node-00002a"] == "stale"
    clock.now += 0.5
    assert states(nodes)["node1"] == "stale"
    clock.now += 45
    assert states(nodes) == {"master": "down", "node1": "down", "node2": "expected", "node-00002a": "down"}
    nodes.receive(data(seq=2), "10.0.0.11", SUBNET)
    assert states(nodes)["node1"] == "up"
    rows = nodes.snapshot()
    assert [r["hostname"] for r in rows] == ["master", "node-00002a", "node1", "node2"]  # master first
    assert rows[2]["age"] == 0.0 and rows[2]["last"]["seq"] == 2 and rows[3]["last"] is None


MASTER = {"host": "master", "role": "master", "mac": "dc:a6:32:00:00:99", "ip": "10.0.0.1"}
UNKNOWN = {"host": "node-00002a", "mac": "dc:a6:32:00:00:2a", "ip": "10.0.0.100"}  # a worker not in the table


def fake(i: int, **changes: Any) -> bytes:
    """Made-up sender number i: its own MAC, name and address."""
    return data(host=f"fake{i:05d}", mac=f"02:fa:ce:{i >> 16:02x}:{i >> 8 & 255:02x}:{i & 255:02x}",
                ip=f"10.0.{i >> 8 & 255}.{i & 255}", **changes)


def test_a_flood_of_made_up_senders_locks_no_real_node_out() -> None:
    clock = Clock()
    nodes = nodetable.Nodes(EXPECTED, clock=clock, interval=5)
    assert nodes.capacity == nodetable.MIN_NODES
    wide = nodetable.ipaddress.IPv4Network("10.0.0.0/16")

    node2 = {"host": "node2", "mac": "b8:27:eb:00:00:02", "ip": "10.0.0.12"}
    real = [(MASTER, "127.0.0.1"), ({}, "10.0.0.11"), (UNKNOWN, UNKNOWN["ip"])]

    def real_beacons() -> None:
        for changes, source in real:
            assert nodes.receive(data(**changes), source, wide)

    for _ in range(3):  # the worker outside the table is confirmed before the flood
        real_beacons()
        clock.now += 5
    peak = 0
    for i in range(10_000):  # 100 made-up senders a second for 100 s, each sending once
        nodes.receive(fake(i), f"10.0.{i >> 8 & 255}.{i & 255}", wide)
        peak = max(peak, len(nodes.entries))
        clock.now += 0.01
        if i % 500 == 0:
            real_beacons()
        if i == 5000:  # a worker of the table starting in the middle of the flood has its place
            real.append((node2, node2["ip"]))
            real_beacons()
    real_beacons()
    assert peak == len(nodes.entries) == nodes.capacity
    assert {"master": "up", "node1": "up", "node2": "up", "node-00002a": "up"}.items() <= states(nodes).items()
    stats = nodes.stats()
    held = len(nodes.entries) - 4
    assert stats["evicted"] > 0 and stats["dropped"]["too_many_nodes"] > 5000
    assert stats["evicted"] + held + stats["dropped"]["too_many_nodes"] == 10_000
    # A new worker outside the table gets a place once the flood has gone silent for a while.
    late = {"host": "node-00003b", "mac": "dc:a6:32:00:00:3b", "ip": "10.0.0.101"}
    assert not nodes.receive(data(**late), late["ip"], wide)  # the made-up senders are still fresh
    clock.now += nodetable.SILENT_INTERVALS * 5
    assert nodes.receive(data(**late), late["ip"], wide) and len(nodes.entries) == nodes.capacity


def test_eviction_takes_the_longest_silent_unconfirmed_sender(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nodetable, "MIN_NODES", 6)
    clock = Clock()
    nodes = nodetable.Nodes([{"hostname": "node1", "mac": "b8:27:eb:00:00:01", "ip": "10.0.0.11",
                              "role": "worker"}], clock=clock, interval=5)
    assert nodes.room == 4  # six places, less node1's and the master's

    def send(i: int, **changes: Any) -> bool:
        return nodes.receive(fake(i, **changes), "10.0.0.50", SUBNET)

    for seconds in (0, 5, 10):  # fake 0 keeps sending: confirmed at its third beacon, 10 s after its first
        assert send(0, seq=seconds)
        clock.now += 5
    for i in (1, 2, 3):  # each once, a second apart
        assert send(i)
        clock.now += 1
    silence = nodetable.SILENT_INTERVALS * 5  # 15 s
    assert not send(4)  # full, and nobody silent long enough: refused, nobody evicted
    assert nodes.stats()["dropped"]["too_many_nodes"] == 1 and nodes.stats()["evicted"] == 0
    clock.now = 1015 + silence - 1  # fake 1 was heard at 1015
    assert not send(4)
    clock.now = 1015 + silence
    assert send(2, seq=2)  # heard again: now the most recent, so fake 3 is next in line after 1
    assert send(4) and "fake00001" not in states(nodes)
    clock.now = 1017 + silence
    assert send(5) and "fake00003" not in states(nodes) and "fake00002" in states(nodes)
    # The master (from loopback) and the table's workers take places of their own, even when full.
    assert nodes.receive(data(**MASTER), "127.0.0.1", SUBNET)
    assert nodes.receive(data(), "10.0.0.11", SUBNET)
    assert len(nodes.entries) == nodes.capacity == 6
    # Every unconfirmed sender silent long enough goes before fake 0, which is confirmed...
    clock.now += silence
    assert send(6) and send(7) and send(8)  # in the places of fakes 2, 4 and 5
    assert set(nodes.pending) == {"02:fa:ce:00:00:06", "02:fa:ce:00:00:07", "02:fa:ce:00:00:08"}
    assert not send(9) and "fake00000" in states(nodes)
    # ...and goes only once silent for an hour, when no unconfirmed sender is silent.
    clock.now = 1010 + nodetable.FORGET_SECONDS
    for i in (6, 7, 8):
        assert send(i, seq=2)
    assert send(9) and "fake00000" not in states(nodes)
    # Silent for days, the master and node1 are still there; made-up senders take each other's places.
    clock.now += 3 * 86400
    for i in range(10, 14):
        assert send(i)
    assert {"master": "down", "node1": "down"}.items() <= states(nodes).items()
    assert len(nodes.entries) == 6 and nodes.stats()["evicted"] == 10


def test_a_second_master_from_loopback_is_not_kept_for_good() -> None:
    clock = Clock()
    nodes = nodetable.Nodes(EXPECTED, clock=clock)
    assert nodes.receive(data(**MASTER), "127.0.0.1", SUBNET)
    assert nodes.receive(data(**{**MASTER, "mac": "dc:a6:32:00:00:98"}), "127.0.0.1", SUBNET)
    # A master beacon from the LAN is anyone's: it gets no place of its own.
    assert nodes.receive(data(**{**MASTER, "mac": "dc:a6:32:00:00:97"}), "10.0.0.1", SUBNET)
    assert nodes.keep == {"b8:27:eb:00:00:01", "b8:27:eb:00:00:02", MASTER["mac"]}
    assert list(nodes.pending) == ["dc:a6:32:00:00:98", "dc:a6:32:00:00:97"]


def test_capacity_follows_the_cluster_table() -> None:
    assert nodetable.capacity([]) == nodetable.capacity(EXPECTED) == nodetable.MIN_NODES == 256
    table = [{"hostname": f"n{i}", "mac": f"b8:27:eb:00:{i >> 8:02x}:{i & 255:02x}", "role": "worker"}
             for i in range(300)]
    assert nodetable.capacity(table) == 600 and nodetable.Nodes(table).room == 600 - 300 - 1


def test_history_is_bounded_whatever_the_interval() -> None:
    clock = Clock()
    nodes = nodetable.Nodes(clock=clock)
    for _ in range(5000):  # a sender claiming a 10 ms interval
        nodes.receive(data(interval=0.01), "10.0.0.11", SUBNET)
        clock.now += 0.01
    history = nodes.entries["b8:27:eb:00:00:01"].history
    assert len(history.t) == int(nodetable.HISTORY_SECONDS) + 2 and history.count == len(history.t)


def test_history_keeps_ten_minutes() -> None:
    clock = Clock()
    nodes = nodetable.Nodes(clock=clock)
    for i in range(400):  # 2000 s of beacons every 5 s
        nodes.receive(data(cpu=float(i % 100), mem_available=500), "10.0.0.11", SUBNET)
        clock.now += 5
    (row,) = nodes.snapshot(with_history=True)
    history = row["history"]
    assert 119 <= len(history["t"]) <= 121 and history["t"] == sorted(history["t"])
    assert history["cpu"][-1] == 99.0 and set(history["mem"]) == {50.0}
    assert clock.now - history["t"][0] <= nodetable.HISTORY_SECONDS + 5


def test_page_escapes_what_it_shows() -> None:
    nodes = nodetable.Nodes()
    nodes.receive(data(host="<script>alert(1)</script>", cloud_init="</script><b>"), "10.0.0.11", SUBNET)
    page = dashboard.render_page("<i>lab</i>", {"cluster": "x", "interval": 5, "nodes": nodes.snapshot(True)})
    assert "<script>alert(1)" not in page and "<b>" not in page and "<i>lab" not in page
    assert "&lt;i&gt;lab&lt;/i&gt; cluster" in page
    # The embedded data still carries the exact text, for textContent to show.
    embedded = re.search(r'<script id="initial" type="application/json">(.*?)</script>', page, re.S)
    assert embedded is not None
    assert json.loads(embedded.group(1))["nodes"][0]["hostname"] == "<script>alert(1)</script>"
    # No value reaches the DOM as markup: the script sets text and attributes only.
    assert "innerHTML" not in page and "insertAdjacentHTML" not in page and "document.write" not in page
    # Self-contained: nothing is loaded from anywhere else.
    assert not re.search(r"(src|href)=|https?://(?!www\.w3\.org/2000/svg)", page)


@pytest.fixture
def listening() -> Iterator[tuple[Any, Any, str]]:
    col = collector.Collector({"cluster": "lab", "interval": 5, "subnet": "10.0.0.0/24", "expected": EXPECTED})
    (server,) = collector.serve_http(col, ["127.0.0.1"], 0)
    try:
        yield col, server, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def served(listening: tuple[Any, Any, str]) -> tuple[Any, str]:
    col, _, url = listening
    return col, url


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


def test_http_api_and_page(served: tuple[Any, str]) -> None:
    col, url = served
    col.nodes.receive(data(), "10.0.0.11", col.subnet)
    col.nodes.receive(b"garbage", "10.0.0.12", col.subnet)
    status, kind, body = get(url + "/api/nodes")
    assert status == 200 and kind == "application/json"
    document = json.loads(body)
    assert document["cluster"] == "lab" and document["interval"] == 5
    assert [(n["hostname"], n["state"]) for n in document["nodes"]] == [
        ("master", "expected"), ("node1", "up"), ("node2", "expected")]
    assert "history" not in document["nodes"][1]
    assert len(json.loads(get(url + "/api/nodes?history=1")[2])["nodes"][1]["history"]["t"]) == 1
    stats = json.loads(get(url + "/api/stats")[2])
    assert stats["accepted"] == 1 and stats["dropped"]["not_json"] == 1
    # A beacon's 1e999 must not reach /api/nodes as Infinity, which JSON.parse rejects.
    col.nodes.receive(literal("cpu", "1e999"), "10.0.0.12", col.subnet)
    body = get(url + "/api/nodes?history=1")[2]
    assert "Infinity" not in body and json.loads(get(url + "/api/stats")[2])["dropped"]["bad_number"] == 1
    status, kind, body = get(url + "/")
    assert status == 200 and kind.startswith("text/html") and "node1" in body
    assert get(url + "/nothing")[0] == 404


def test_dashboard_is_read_only(served: tuple[Any, str]) -> None:
    _, url = served
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        request = urllib.request.Request(url + "/api/nodes", data=b"{}", method=method)
        with pytest.raises(urllib.error.HTTPError) as excinfo:
            urllib.request.urlopen(request, timeout=5)
        assert excinfo.value.code == 501


def eventually(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def connect(url: str) -> socket.socket:
    return socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=5)


def seconds_until_closed(sock: socket.socket, trickle: bytes = b"", every: float = 0.05,
                         limit: float = 10.0) -> float:
    """How long the server keeps `sock` open while we send it `trickle` one byte every `every` seconds."""
    start = time.monotonic()
    sock.settimeout(every)
    for i in itertools.count():
        try:
            if sock.recv(4096) == b"":
                break
            pytest.fail("the server answered a request it should not have read")
        except TimeoutError:
            pass
        except ConnectionResetError:
            break
        try:
            sock.send(trickle[i:i + 1])
        except (BrokenPipeError, ConnectionResetError):
            break
        assert time.monotonic() - start < limit, "the server kept the connection open"
    return time.monotonic() - start


def test_a_slow_request_is_cut_at_its_deadline(monkeypatch: pytest.MonkeyPatch,
                                               listening: tuple[Any, Any, str]) -> None:
    monkeypatch.setattr(webserver, "REQUEST_SECONDS", 1.0)
    col, server, url = listening
    threads = threading.active_count()
    with connect(url) as slow, connect(url) as idle:
        slow.sendall(b"GET / HTTP/1.1\r\n")
        # Slowloris: a header one byte every 50 ms. A socket timeout alone would never fire.
        assert 1.0 <= seconds_until_closed(slow, b"X-Slow: " + b"a" * 1000) < 2.5
        assert seconds_until_closed(idle) < 1.5  # connected at the same time, and sent nothing
    assert eventually(lambda: col.stats()["http"]["timeout"] == 2)
    assert eventually(lambda: threading.active_count() == threads and not server.open)
    assert get(url + "/api/nodes")[0] == 200


def test_a_request_over_the_size_cap_is_not_read(listening: tuple[Any, Any, str]) -> None:
    col, _, url = listening
    with connect(url) as sock:
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            # One header line (http.server alone would read up to 64 KiB of it, a hundred times over).
            sock.sendall(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * webserver.MAX_REQUEST + b"\r\n\r\n")
        assert seconds_until_closed(sock) < 1
    assert eventually(lambda: col.stats()["http"]["too_large"] == 1)
    # A real browser's request with a few KiB of cookies (for other services on the master) is answered.
    request = urllib.request.Request(url + "/api/nodes", headers={"Cookie": "c=" + "x" * 8000})
    with urllib.request.urlopen(request, timeout=5) as r:
        assert r.status == 200


def test_slow_clients_cannot_keep_real_ones_out(monkeypatch: pytest.MonkeyPatch,
                                                listening: tuple[Any, Any, str]) -> None:
    monkeypatch.setattr(webserver, "MAX_CONNECTIONS", 4)
    monkeypatch.setattr(webserver, "REQUEST_SECONDS", 30.0)  # so only evictions end them
    col, server, url = listening
    with contextlib.ExitStack() as stack:
        slow = [stack.enter_context(connect(url)) for _ in range(8)]
        for sock in slow:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        assert eventually(lambda: len(server.open) == 4 and col.stats()["http"]["evicted"] == 4)
        for sock in slow[:4]:  # the oldest went first
            assert seconds_until_closed(sock) < 1
        for _ in range(5):
            assert get(url + "/api/nodes")[0] == 200
            assert len(server.open) <= 4
        assert eventually(lambda: col.stats()["http"]["served"] == 5)  # counted just after the reply
        stats = col.stats()["http"]
        assert stats["evicted"] >= 5 and stats["busy"] == 0


def test_a_full_server_turns_new_connections_away_at_once(monkeypatch: pytest.MonkeyPatch,
                                                          listening: tuple[Any, Any, str]) -> None:
    monkeypatch.setattr(webserver, "MAX_CONNECTIONS", 2)
    col, server, url = listening
    answers: list[int] = []
    clients = [threading.Thread(target=lambda: answers.append(get(url + "/api/nodes")[0])) for _ in range(2)]
    with col.nodes.lock:  # both replies wait for it: two connections past their request, none to evict
        for client in clients:
            client.start()
        assert eventually(lambda: len(server.open) == 2 and not server.reading)
        start = time.monotonic()
        with connect(url) as sock:
            assert sock.recv(1024).startswith(b"HTTP/1.0 503 ")
        assert time.monotonic() - start < 1
    for client in clients:
        client.join(5)
    assert answers == [200, 200] and col.stats()["http"]["busy"] == 1


def test_collector_config_rendered_from_recipe(recipe_file: Any) -> None:
    recipe = load_recipe(recipe_file(VALID))
    template = ROOT / "overlays/master/root/etc/imagebuilder/collector.json.j2"
    config = json.loads(render_overlay(template, recipe, "master"))
    assert config["listen"] == ["10.0.0.1", "127.0.0.1"] and config["dashboard_port"] == 8080
    assert config["subnet"] == "10.0.0.0/24" and config["interface"] == "eth0"
    assert [(e["hostname"], e["mac"]) for e in config["expected"]] == [
        ("master", None), ("node1", "b8:27:eb:00:00:01"), ("node2", "b8:27:eb:00:00:02")]
    # What the beacon (with its rendered config) sends, this collector (with its config) keeps.
    assert collector.Collector(config).subnet == SUBNET


def rendered_units(tmp_path: Path, recipe: Any) -> list[Path]:
    out = []
    for layer, name in (("common", "imagebuilder-beacon.service"), ("master", "imagebuilder-dashboard.service")):
        source = ROOT / "overlays" / layer / "root/etc/systemd/system" / name
        target = tmp_path / name
        if source.exists():
            shutil.copy(source, target)
        else:
            target.write_text(render_overlay(source.with_name(name + ".j2"), recipe, "master"))
        out.append(target)
    return out


@pytest.mark.parametrize("dashboard_port", [8080, 80])
def test_units_pass_systemd_analyze_verify(tmp_path: Path, recipe_file: Any, dashboard_port: int) -> None:
    require_programs("systemd-analyze")
    recipe = load_recipe(recipe_file(VALID + f"monitoring: {{dashboard_port: {dashboard_port}}}\n"))
    units = rendered_units(tmp_path, recipe)
    for unit in units:
        # The programs the units start are the ones the overlays install.
        for line in unit.read_text().splitlines():
            if line.startswith(("ExecStart=", "ExecCondition=")):
                python, program = line.split("=", 1)[1].split()[:2]
                assert Path(python).exists()
                layer = "common" if "beacon" in program else "master"
                assert (ROOT / "overlays" / layer / "root" / program.lstrip("/")).is_file()
    result = subprocess.run(["systemd-analyze", "verify", *map(str, units)], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stderr
    dashboard = units[1].read_text()
    assert ("AmbientCapabilities=CAP_NET_BIND_SERVICE" in dashboard) == (dashboard_port < 1024)


def test_units_are_enabled_by_their_layer() -> None:
    common = load_description(ROOT / "overlays/common").units
    master = load_description(ROOT / "overlays/master").units
    assert "imagebuilder-beacon.service" in common and "imagebuilder-dashboard.service" in master


def test_beacon_packet_survives_the_collector(tmp_path: Path) -> None:
    s = sampler(tmp_path)
    s.cpu_percent()
    nodes = nodetable.Nodes()
    assert nodes.receive(beacon.encode(s.packet("10.0.0.11")), "10.0.0.11", SUBNET)
    assert nodes.snapshot()[0]["last"]["mem_total"] == 948280 * 1024
    assert CONFIG["interval"] == nodes.snapshot()[0]["last"]["interval"]
