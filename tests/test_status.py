"""`imagebuilder status` against the real collector program, served on 127.0.0.1."""

from __future__ import annotations

import json
import re
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

from imagebuilder.cli.status import POLL as POLL_SECONDS
from imagebuilder.core.resources import spawned
from imagebuilder.status.nodelist import read_node_list
from imagebuilder.status.table import StatusError, format_table, nodes_url
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
    assert lines[0].split() == ["NODE", "ROLE", "STATE", "SEEN", "IP", "MAC", "CPU", "MEM", "LOAD", "TEMP", "DISK",
                                "K3S", "JOBS", "CLOUD-INIT"]
    # SEEN: seconds since the beacon, as long as starting `imagebuilder status` took (seconds on a busy machine).
    seen = [line.split()[3] for line in lines[1:3]]
    assert all(re.fullmatch(r"\d+s", s) and int(s[:-1]) < 30 for s in seen), seen
    assert lines[1].split() == ["master", "master", "up", seen[0], "10.0.0.1", "dc:a6:32:00:00:99", "3%", "25%",
                                "0.10", "45C", "10%", "up", "yes", "done"]
    assert lines[2].split() == ["node1", "worker", "up", seen[1], "10.0.0.11", "b8:27:eb:00:00:01", "42%", "25%",
                                "0.10", "-", "10%", "?", "no", "running"]
    assert lines[3].split() == ["node2", "worker", "expected", "never", "10.0.0.12", "b8:27:eb:00:00:02"] + ["-"] * 8
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
    assert result.returncode == 2 and "give the dashboard URL, --listen IFACE or --recipe RECIPE" in result.stderr


def test_status_listen_on_missing_interface() -> None:
    result = imagebuilder("status", "--listen", "nosuch0", "--seconds", "0.1")
    assert result.returncode == 2
    first = result.stderr.splitlines()[0]
    assert first.startswith("imagebuilder: cannot listen for beacons on nosuch0: ") and "None" not in first, first
    assert "Traceback" not in result.stderr


def test_status_json_errors_are_json() -> None:
    """A program reading --json gets its error as JSON too, with the exit status of the error."""
    result = imagebuilder("status", f"127.0.0.1:{free_port(socket.SOCK_STREAM)}", "--json")
    assert result.returncode == 2
    document = json.loads(result.stdout)
    assert document["error"].endswith("/api/nodes: connection refused") and document["hint"]


def test_nodes_url() -> None:
    assert nodes_url("10.0.0.1:8080") == "http://10.0.0.1:8080/api/nodes"
    assert nodes_url("http://m:8080/") == "http://m:8080/api/nodes"
    assert nodes_url("http://m:8080/api/nodes") == "http://m:8080/api/nodes"


def test_table_shows_control_characters_escaped() -> None:
    table = format_table(read_node_list({"cluster": "x", "nodes": [
        {"hostname": "evil\x1b[2Jname", "role": "worker", "state": "up", "age": 1.0, "ip": "10.0.0.5",
         "last": None}]}, "test"))
    assert "\x1b" not in table and "evil\\x1b[2Jname" in table


def recipe_of(tmp_path: Path, workers: str) -> Path:
    """A recipe whose table is the dashboard's (master, node1, node2) or a part of it."""
    path = tmp_path / "lab.yaml"
    path.write_text("cluster: {name: lab}\nbase: {bootstrap: {suite: bookworm}}\nk3s: {assets: none}\n"
                    f"workers:\n{workers}output: {{dir: {tmp_path / 'out'}}}\n")
    return path


NODE1 = '  - {hostname: node1, mac: "B8-27-EB-00-00-01"}\n'
NODE2 = '  - {hostname: node2, mac: "b8:27:eb:00:00:02"}\n'


def test_status_wait_returns_once_every_node_of_the_table_is_up(dashboard: tuple[str, int], tmp_path: Path) -> None:
    url, port = dashboard
    recipe = recipe_of(tmp_path, NODE1 + NODE2)
    proc = subprocess.Popen([sys.executable, "-m", "imagebuilder", "status", url, "--recipe", str(recipe),
                             "--wait", "120"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        send(port, host="master", role="master", mac="dc:a6:32:00:00:99", ip="10.0.0.1")
        send(port, cloud_init="running")
        time.sleep(2 * POLL_SECONDS)
        assert proc.poll() is None, "status --wait ended while node2 was never heard and node1 was booting"
        send(port, host="node2", mac="b8:27:eb:00:00:02", ip="10.0.0.12", jobs=False)
        send(port)  # node1 done
        time.sleep(2 * POLL_SECONDS)
        assert proc.poll() is None, "status --wait ended while node2 had no /srv/jobs"
        send(port, host="node2", mac="b8:27:eb:00:00:02", ip="10.0.0.12")
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    assert "node2 (b8:27:eb:00:00:02): not heard yet" in err and "node1 (b8:27:eb:00:00:01): cloud-init running" in err
    assert "node2 (b8:27:eb:00:00:02): /srv/jobs not mounted" in err
    assert out.splitlines()[-1] == "lab: 3 up"


def test_status_wait_says_what_is_missing_at_the_deadline(dashboard: tuple[str, int], tmp_path: Path) -> None:
    url, port = dashboard
    send(port, cloud_init="error", k3s=False)
    wait_accepted(url, 1)
    result = imagebuilder("status", url, "--recipe", str(recipe_of(tmp_path, NODE1 + NODE2)), "--wait", "1")
    assert result.returncode == 3, result.stderr
    tail = result.stderr.split("imagebuilder: the cluster is not up after 1 s:\n")[1].splitlines()
    assert tail == ["  master (master): not heard yet", "  node1 (b8:27:eb:00:00:01): cloud-init error",
                    "  node2 (b8:27:eb:00:00:02): not heard yet"]


def test_status_wait_asks_again_while_the_master_boots(tmp_path: Path) -> None:
    """No dashboard yet (the master is still booting): the wait goes on, and ends once it answers."""
    udp, http = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM)
    proc = subprocess.Popen([sys.executable, "-m", "imagebuilder", "status", f"127.0.0.1:{http}", "--wait", "120"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        time.sleep(2 * POLL_SECONDS)
        assert proc.poll() is None
        config = {"enabled": True, "cluster": "lab", "group": "239.255.77.1", "port": udp, "interval": 5,
                  "interface": None, "subnet": "10.0.0.0/24", "listen": ["127.0.0.1"], "dashboard_port": http,
                  "expected": EXPECTED[:2]}
        (tmp_path / "collector.json").write_text(json.dumps(config))
        with spawned([sys.executable, COLLECTOR, "--config", tmp_path / "collector.json"],
                     stderr=subprocess.DEVNULL):
            wait_for(f"http://127.0.0.1:{http}/api/stats")
            send(udp, host="master", role="master", mac="dc:a6:32:00:00:99", ip="10.0.0.1")
            send(udp)
            out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    assert "connection refused" in err and out.splitlines()[-1] == "lab: 2 up"


def test_scan_prints_the_entries_of_workers_not_in_the_table(dashboard: tuple[str, int], tmp_path: Path) -> None:
    url, port = dashboard
    send(port)  # node1, in the table
    send(port, host="node-000007", mac="dc:a6:32:00:00:07", ip="10.0.0.107")
    send(port, host="evil\nworkers: []", mac="dc:a6:32:00:00:08", ip="10.0.0.108")
    send(port, host="master", role="master", mac="dc:a6:32:00:00:99", ip="10.0.0.1")
    wait_accepted(url, 4)
    recipe = recipe_of(tmp_path, NODE1)
    result = imagebuilder("scan", str(recipe), url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        '  - {hostname: node2, mac: "dc:a6:32:00:00:07"}  # heard as node-000007 at 10.0.0.107',
        '  - {hostname: node3, mac: "dc:a6:32:00:00:08"}  # heard as evil\\nworkers: [] at 10.0.0.108']
    # Pasted under workers:, the recipe is valid and names them.
    recipe.write_text(recipe.read_text().replace("output:", result.stdout + "output:"))
    listed = json.loads(imagebuilder("validate", str(recipe), "--json").stdout)
    assert [(w["hostname"], w["mac"]) for w in listed["workers"]] == [
        ("node1", "b8:27:eb:00:00:01"), ("node2", "dc:a6:32:00:00:07"), ("node3", "dc:a6:32:00:00:08")]
    assert imagebuilder("scan", str(recipe), url).stdout == ""


@pytest.mark.parametrize("document", [
    [], {"nodes": {}}, {"nodes": [1]}, {"nodes": [{"hostname": 5, "role": "worker", "state": "up"}]},
    {"nodes": [{"hostname": "n", "role": "worker", "state": "up", "last": {"load": [1, 2]}}]},
    {"nodes": [{"hostname": "n", "role": "worker", "state": "up", "age": float("nan")}]},
])
def test_a_document_that_is_not_a_node_list_is_one_error(document: object) -> None:
    """Any server may answer at the URL a user gives: what is not a node list is refused where it is read."""
    with pytest.raises(StatusError, match=r"^http://m/api/nodes did not return a node list \("):
        read_node_list(document, "http://m/api/nodes")
