"""`imagebuilder status` against the real collector program, served on 127.0.0.1."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imagebuilder.core.resources import spawned
from imagebuilder.status.table import format_table, nodes_url
from tests.conftest import ROOT
from tests.test_beacon import COLLECTOR
from tests.test_collector import EXPECTED, packet


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(url: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """The collector program on loopback only (no interface: it joins no multicast group here)."""
    udp, http = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM)
    config = {"enabled": True, "cluster": "lab", "group": "239.255.77.1", "port": udp, "interval": 5,
              "interface": None, "subnet": "10.0.0.0/24", "listen": ["127.0.0.1"], "dashboard_port": http,
              "expected": EXPECTED}
    (tmp_path / "collector.json").write_text(json.dumps(config))
    with spawned([sys.executable, COLLECTOR, "--config", tmp_path / "collector.json"],
                 stderr=subprocess.DEVNULL):
        url = f"http://127.0.0.1:{http}"
        wait_for(url + "/api/stats")
        yield url, udp


def send(port: int, **changes: Any) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(json.dumps(packet(**changes)).encode(), ("127.0.0.1", port))


def wait_accepted(url: str, count: int) -> None:
    deadline = time.monotonic() + 5
    while json.loads(urllib.request.urlopen(url + "/api/stats").read())["accepted"] < count:
        assert time.monotonic() < deadline, "the collector did not take the packets"
        time.sleep(0.05)


def imagebuilder(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "imagebuilder", *args], capture_output=True, text=True,
                          cwd=ROOT, check=False, timeout=timeout)


def test_status_prints_the_table(dashboard: tuple[str, int]) -> None:
    url, port = dashboard
    send(port, host="master", role="master", mac="dc:a6:32:00:00:99", ip="10.0.0.1", cpu=3.0, k3s=True)
    send(port, cpu=42.4, temp=None, k3s=None, cloud_init="running", jobs=False)
    wait_accepted(url, 2)
    result = imagebuilder("status", url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NODE", "ROLE", "STATE", "SEEN", "IP", "CPU", "MEM", "LOAD", "TEMP", "DISK", "K3S",
                                "JOBS", "CLOUD-INIT"]
    assert lines[1].split() == ["master", "master", "up", "0s", "10.0.0.1", "3%", "25%", "0.10", "45C", "10%", "up",
                                "yes", "done"]
    assert lines[2].split() == ["node1", "worker", "up", "0s", "10.0.0.11", "42%", "25%", "0.10", "-", "10%", "?",
                                "no", "running"]
    assert lines[3].split() == ["node2", "worker", "expected", "never", "10.0.0.12"] + ["-"] * 8
    assert lines[4] == "lab: 2 up, 1 expected"


def test_status_watch_refreshes(dashboard: tuple[str, int]) -> None:
    url, port = dashboard
    proc = subprocess.Popen([sys.executable, "-m", "imagebuilder", "status", url + "/api/nodes", "--watch", "0.2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        summaries = 0
        while summaries < 2:  # two tables, with node1 only expected
            line = proc.stdout.readline()
            assert line, "status --watch ended"
            summaries += line.startswith("lab: ")
        send(port)
        while (line := proc.stdout.readline()).split()[:3] != ["node1", "worker", "up"]:
            assert line, "status --watch ended before node1 showed up"
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 130 and "interrupted by SIGINT" in err


def test_status_unreachable_is_one_line() -> None:
    result = imagebuilder("status", f"127.0.0.1:{free_port(socket.SOCK_STREAM)}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[0].endswith("/api/nodes: connection refused")


def test_status_needs_url_or_listen() -> None:
    result = imagebuilder("status")
    assert result.returncode == 2 and "give the dashboard URL or --listen IFACE" in result.stderr


def test_status_listen_on_missing_interface() -> None:
    result = imagebuilder("status", "--listen", "nosuch0", "--seconds", "0.1")
    assert result.returncode == 2
    assert "cannot listen for beacons on nosuch0" in result.stderr and "Traceback" not in result.stderr


def test_nodes_url() -> None:
    assert nodes_url("10.0.0.1:8080") == "http://10.0.0.1:8080/api/nodes"
    assert nodes_url("http://m:8080/") == "http://m:8080/api/nodes"
    assert nodes_url("http://m:8080/api/nodes") == "http://m:8080/api/nodes"


def test_table_shows_control_characters_escaped() -> None:
    table = format_table({"cluster": "x", "nodes": [
        {"hostname": "evil\x1b[2Jname", "role": "worker", "state": "up", "age": 1.0, "ip": "10.0.0.5",
         "last": None}]})
    assert "\x1b" not in table and "evil\\x1b[2Jname" in table
