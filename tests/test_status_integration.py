"""Beacons and collector on a LAN of network namespaces the test makes; the dashboard in Chromium.

Every multicast datagram stays inside namespaces made here: a bridge in a hub namespace, and one
veth per node whose far end (eth0) lives in the node's namespace. Nothing is created in the
machine's own namespace, and everything is deleted at the end, whatever happened.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imagebuilder.core.resources import spawned
from imagebuilder.core.run import output, run, terminate
from tests.conftest import ROOT, lacking, require_programs, require_root
from tests.test_beacon import BEACON, COLLECTOR

pytestmark = pytest.mark.integration

PYTHON = "/usr/bin/python3"  # the image's own interpreter, standard library only
INTERVAL = 1
PORT = 7777
DASHBOARD = 8080
ARTIFACTS = ROOT / "tests/artifacts"
# hostname, namespace suffix, address, MAC
NODES = [("master", "c", "10.77.0.1", "02:00:00:77:00:01"),
         ("node1", "a", "10.77.0.11", "02:00:00:77:00:11"),
         ("node2", "b", "10.77.0.12", "02:00:00:77:00:12")]
# Sets the beacon's hostname in its own UTS namespace (ip netns exec shares the host's), then runs it.
AS_HOST = ("import runpy, socket, sys; socket.sethostname(sys.argv[1]); sys.argv = sys.argv[2:]; "
           "runpy.run_path(sys.argv[0], run_name='__main__')")


@contextlib.contextmanager
def lan(prefix: str, nodes: list[tuple[str, str, str, str]] = NODES, mask: int = 24) -> Iterator[dict[str, str]]:
    """A bridge in namespace <prefix>hub and a namespace per node wired to it; yields name -> namespace."""
    names = {host: f"{prefix}{suffix}" for host, suffix, _, _ in nodes}
    hub = f"{prefix}hub"
    made: list[str] = []
    try:
        for ns in [hub, *names.values()]:
            run(["ip", "netns", "add", ns])
            made.append(ns)
        # No IGMP snooping: with no querier on this LAN the bridge would otherwise guess.
        run(["ip", "-n", hub, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"])
        run(["ip", "-n", hub, "link", "set", "br0", "up"])
        for host, suffix, address, mac in nodes:
            ns = names[host]
            run(["ip", "-n", hub, "link", "add", f"p{suffix}", "type", "veth", "peer", "name", "eth0", "netns", ns])
            run(["ip", "-n", hub, "link", "set", f"p{suffix}", "master", "br0", "up"])
            run(["ip", "-n", ns, "link", "set", "eth0", "address", mac])
            run(["ip", "-n", ns, "addr", "add", f"{address}/{mask}", "dev", "eth0"])
            run(["ip", "-n", ns, "link", "set", "eth0", "up"])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
        yield names
    finally:
        for ns in reversed(made):
            run(["ip", "netns", "delete", ns], check=False)


class Cluster:
    def __init__(self, names: dict[str, str], workdir: Path, stack: contextlib.ExitStack) -> None:
        self.names, self.workdir, self.stack = names, workdir, stack
        self.beacons: dict[str, subprocess.Popen[bytes]] = {}

    def in_master(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.names["master"], *argv]

    def start_collector(self, **changes: Any) -> None:
        """The collector in the master's namespace; `changes` replace settings of its config."""
        config = {"enabled": True, "cluster": "nslab", "group": "239.255.77.1", "port": PORT,
                  "interval": INTERVAL, "interface": "eth0", "subnet": "10.77.0.0/24",
                  "listen": ["10.77.0.1", "127.0.0.1"], "dashboard_port": DASHBOARD,
                  "expected": [{"hostname": "master", "mac": None, "ip": "10.77.0.1", "role": "master"},
                               *({"hostname": h, "mac": m, "ip": a, "role": "worker"} for h, _, a, m in NODES[1:]),
                               {"hostname": "node3", "mac": "02:00:00:77:00:13", "ip": "10.77.0.13",
                                "role": "worker"}]}
        config.update(changes)
        path = self.workdir / "collector.json"
        path.write_text(json.dumps(config))
        log = self.stack.enter_context((self.workdir / "collector.log").open("wb"))
        # `ip netns exec` execs the program: this is the collector's own process.
        self.collector = self.stack.enter_context(spawned(self.in_master(PYTHON, str(COLLECTOR), "--config",
                                                                         str(path)), stdout=log, stderr=log))

    def start_beacon(self, host: str) -> None:
        role = "master" if host == "master" else "worker"
        config = {"enabled": True, "group": "239.255.77.1", "port": PORT, "interval": INTERVAL,
                  "interface": "eth0", "role": role, "k3s_unit": "k3s.service", "local_copy": role == "master"}
        path = self.workdir / f"beacon-{host}.json"
        path.write_text(json.dumps(config))
        argv = ["ip", "netns", "exec", self.names[host], "unshare", "--uts", "--",
                PYTHON, "-c", AS_HOST, host, str(BEACON), "--config", str(path)]
        self.beacons[host] = self.stack.enter_context(spawned(argv, stderr=subprocess.DEVNULL))

    def stop_beacon(self, host: str) -> None:
        terminate(self.beacons[host])

    def api(self, path: str) -> Any:
        fetch = ("import sys, urllib.request; "
                 "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())")
        return json.loads(output(self.in_master(PYTHON, "-c", fetch, f"http://10.77.0.1:{DASHBOARD}{path}")))

    def states(self) -> dict[str, str]:
        return {n["hostname"]: n["state"] for n in self.api("/api/nodes")["nodes"]}

    def wait_for(self, wanted: dict[str, str], timeout: float = 15.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                states = self.states()
            except Exception:  # the collector may not be listening yet
                states = {}
            if all(states.get(k) == v for k, v in wanted.items()) or time.monotonic() > deadline:
                return states
            time.sleep(0.25)

    def make_stale(self, host: str) -> None:
        if self.beacons[host].poll() is None:
            self.stop_beacon(host)
        states = self.wait_for({host: "stale"})
        assert states[host] == "stale", states


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    require_root()
    require_programs("ip", "unshare")
    if not Path(PYTHON).exists():
        lacking(f"not installed: {PYTHON}")
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ib-status-")))
        try:
            names = stack.enter_context(lan(f"ib{os.getpid() % 100000}"))
        except Exception as e:
            lacking(f"cannot make network namespaces here: {e}")
        c = Cluster(names, workdir, stack)
        c.start_collector()
        for host, *_ in NODES:
            c.start_beacon(host)
        yield c


def test_beacons_reach_the_collector(cluster: Cluster) -> None:
    states = cluster.wait_for({"master": "up", "node1": "up", "node2": "up"})
    assert states == {"master": "up", "node1": "up", "node2": "up", "node3": "expected"}, states
    nodes = {n["hostname"]: n for n in cluster.api("/api/nodes")["nodes"]}
    assert nodes["node1"]["mac"] == "02:00:00:77:00:11" and nodes["node1"]["ip"] == "10.77.0.11"
    assert nodes["node1"]["last"]["role"] == "worker" and nodes["master"]["last"]["role"] == "master"
    assert nodes["node1"]["last"]["mem_total"] > 0 and nodes["node1"]["age"] < 3 * INTERVAL
    stats = cluster.api("/api/stats")
    assert stats["dropped_total"] == 0 and stats["accepted"] >= 3


def test_dashboard_is_not_on_other_addresses(cluster: Cluster) -> None:
    # Bound to the LAN address and localhost only: a second address on the master gets nothing.
    master = cluster.names["master"]
    run(["ip", "-n", master, "addr", "add", "192.168.99.1/24", "dev", "eth0"])
    try:
        probe = ("import socket, sys; s = socket.socket(); s.settimeout(2); "
                 "sys.exit(s.connect_ex(('192.168.99.1', int(sys.argv[1]))))")
        result = run(cluster.in_master(PYTHON, "-c", probe, str(DASHBOARD)), check=False)
        assert result.returncode != 0
    finally:
        run(["ip", "-n", master, "addr", "del", "192.168.99.1/24", "dev", "eth0"])


def test_status_listen_reads_beacons(cluster: Cluster) -> None:
    cluster.wait_for({"node1": "up"})
    argv = cluster.in_master(str(ROOT / ".venv/bin/python"), "-m", "imagebuilder", "status", "--listen", "eth0",
                             "--port", str(PORT), "--seconds", str(3 * INTERVAL))
    table = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, check=False, timeout=30)
    assert table.returncode == 0, table.stderr
    rows = {line.split()[0]: line.split() for line in table.stdout.splitlines()[1:-1]}
    # The master's own beacon is not among them: multicast loopback is off.
    assert rows["node1"][:5] == ["node1", "worker", "up", rows["node1"][3], "10.77.0.11"]
    assert "master" not in rows


def test_stopped_beacon_turns_stale(cluster: Cluster) -> None:
    cluster.wait_for({"node2": "up"})
    cluster.make_stale("node2")
    states = cluster.states()
    assert states["node1"] == "up" and states["master"] == "up" and states["node3"] == "expected"


def chromium(cluster: Cluster, profile: Path, *args: str, url: str = f"http://127.0.0.1:{DASHBOARD}/") -> str:
    argv = cluster.in_master("chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                             "--disable-background-networking", "--disable-component-update", "--disable-sync",
                             "--no-first-run", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
                             "--window-size=1280,340", "--hide-scrollbars", *args, url)
    return run(argv, capture=True, env={"HOME": str(profile)}).stdout.decode()


def cards(dom: str) -> dict[str, str]:
    """host -> state of every card in the rendered DOM."""
    import html.parser

    found: dict[str, str] = {}

    class Cards(html.parser.HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            a = dict(attrs)
            if tag == "div" and "card" in (a.get("class") or "").split():
                found[a["data-host"] or ""] = a["data-state"] or ""

    Cards().feed(dom)
    return found


def test_dashboard_in_chromium(cluster: Cluster, tmp_path: Path) -> None:
    require_programs("chromium")
    cluster.wait_for({"node1": "up"})
    cluster.make_stale("node2")
    time.sleep(3 * INTERVAL)  # a few more samples, so the sparklines have a shape
    dom = chromium(cluster, tmp_path / "profile", "--dump-dom")
    assert cards(dom) == {"master": "up", "node1": "up", "node2": "stale", "node3": "expected"}
    assert "in the cluster table, never seen" in dom and "<polyline points=" in dom
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    chromium(cluster, tmp_path / "profile", f"--screenshot={shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def test_hostile_hostname_shows_as_text(cluster: Cluster, tmp_path: Path) -> None:
    require_programs("chromium")
    evil = "<img src=x onerror=document.title='owned'>"
    packet = {"v": 1, "host": evil, "role": "worker", "mac": "02:00:00:77:00:66", "ip": "10.77.0.66",
              "interval": 60, "seq": 1, "time": 0, "uptime": 1, "load": [0, 0, 0], "cpu": None, "mem_total": 1,
              "mem_available": 1, "disk_used": 0, "disk_total": 1, "temp": None, "cloud_init": None,
              "jobs": False, "k3s": None}
    send = ("import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            "s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1); "
            "s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton('10.77.0.11')); "
            "s.sendto(sys.argv[1].encode(), ('239.255.77.1', int(sys.argv[2])))")
    run(["ip", "netns", "exec", cluster.names["node1"], PYTHON, "-c", send, json.dumps(packet), str(PORT)])
    run(["ip", "netns", "exec", cluster.names["node1"], PYTHON, "-c", send, "not json", str(PORT)])
    deadline = time.monotonic() + 5
    while cluster.api("/api/stats")["dropped"]["not_json"] < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert cluster.api("/api/stats")["dropped"]["not_json"] == 1
    dom = chromium(cluster, tmp_path / "profile", "--dump-dom")
    assert cards(dom)[evil] == "up"
    assert "&lt;img src=x onerror" in dom and "<img" not in dom and "owned" not in dom.split("<title>")[1][:40]
