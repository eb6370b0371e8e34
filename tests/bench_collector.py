"""Bench: the collector fed by 250 nodes at 1 packet/s for 60 s, and the beacon's cost per 1,000 packets.

Everything goes over 127.0.0.1 unicast (the collector's local-copy socket), so no multicast is sent
in this machine's namespace. Run by `make bench`, or: .venv/bin/python -m tests.bench_collector
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BEACON = ROOT / "overlays/common/root/usr/local/lib/imagebuilder/beacon.py"
COLLECTOR = ROOT / "overlays/master/root/usr/local/lib/imagebuilder/collector.py"
PYTHON = "/usr/bin/python3"  # the interpreter the image runs them with


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_kib(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {line.split(":")[0]: int(line.split()[1]) for line in status if line.startswith(("VmRSS", "VmHWM"))}


def node_packet(i: int, seq: int) -> bytes:
    return json.dumps({
        "v": 1, "host": f"node{i:03d}", "role": "worker", "mac": f"02:00:00:00:{i >> 8:02x}:{i & 255:02x}",
        "ip": f"10.0.{i >> 8}.{i & 255}", "interval": 1, "seq": seq, "time": time.time(), "uptime": 1000.0 + seq,
        "load": [0.5, 0.4, 0.3], "cpu": float(seq % 100), "mem_total": 948280 * 1024,
        "mem_available": 600000 * 1024, "disk_used": 2 * 10**9, "disk_total": 15 * 10**9, "temp": 48.5,
        "cloud_init": "done", "jobs": True, "k3s": True}, separators=(",", ":")).encode()


def bench_collector(nodes: int, seconds: float) -> dict[str, Any]:
    udp, http = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM)
    with tempfile.TemporaryDirectory(prefix="ib-bench-") as tmp:
        config = Path(tmp) / "collector.json"
        config.write_text(json.dumps({
            "enabled": True, "cluster": "bench", "group": "239.255.77.1", "port": udp, "interval": 1,
            "interface": None, "subnet": "10.0.0.0/16", "listen": ["127.0.0.1"], "dashboard_port": http,
            "expected": []}))
        proc = subprocess.Popen([PYTHON, str(COLLECTOR), "--config", str(config)], stdin=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{http}"
            for _ in range(100):
                try:
                    urllib.request.urlopen(url + "/api/stats", timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.05)
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            start_cpu, start = cpu_seconds(proc.pid), time.monotonic()
            sent, tick, polls = 0, 0, 0
            # Spread each second's packets over ten ticks, as 250 unsynchronised nodes would.
            while (now := time.monotonic()) - start < seconds:
                second = int(now - start)
                for i in range(tick % 10, nodes, 10):
                    sock.sendto(node_packet(i, second), ("127.0.0.1", udp))
                    sent += 1
                tick += 1
                if tick % 50 == 0:  # one open dashboard polls every 5 s
                    urllib.request.urlopen(url + "/api/nodes?history=1", timeout=10).read()
                    polls += 1
                time.sleep(max(0.0, start + tick * 0.1 - time.monotonic()))
            wall = time.monotonic() - start
            used = cpu_seconds(proc.pid) - start_cpu
            stats = json.loads(urllib.request.urlopen(url + "/api/stats", timeout=10).read())
            page = len(urllib.request.urlopen(url + "/api/nodes?history=1", timeout=10).read())
            memory = memory_kib(proc.pid)
        finally:
            proc.terminate()
            proc.wait()
    return {"nodes": nodes, "seconds": round(wall, 1), "sent": sent, "accepted": stats["accepted"],
            "dropped": stats["dropped_total"], "cpu_seconds": round(used, 2),
            "cpu_share_percent": round(100 * used / wall, 2), "rss_mib": round(memory["VmRSS"] / 1024, 1),
            "peak_rss_mib": round(memory["VmHWM"] / 1024, 1), "dashboard_polls": polls,
            "nodes_json_with_history_kib": round(page / 1024)}


def bench_beacon(count: int) -> dict[str, Any]:
    """CPU time of `count` beacons: reading /proc and /sys, encoding, sending (to a loopback sink)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("beacon", BEACON)
    assert spec is not None and spec.loader is not None
    beacon = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(beacon)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    config = {"group": "127.0.0.1", "port": sink.getsockname()[1], "interval": 5, "interface": "lo",
              "role": "worker", "k3s_unit": "k3s-agent.service"}
    sampler, sender = beacon.Sampler(config), beacon.Sender(config)
    sampler.cpu_percent()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.process_time()
    for i in range(count):
        # As on a node, systemctl runs once every 30 s of beacons (every 6th at the default 5 s).
        ip = sender.address()
        sender.send(beacon.encode(sampler.packet(ip, now=i * config["interval"])))
        sink.recv(2048)
    own = time.process_time() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    child = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    total = own + child
    return {"beacons": count, "cpu_seconds": round(total, 3), "of_which_systemctl": round(child, 3),
            "share_of_a_core_at_5s_percent": round(100 * total / count / 5, 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=250)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--beacons", type=int, default=1000)
    args = parser.parse_args(argv)
    print(json.dumps({"beacon": bench_beacon(args.beacons)}), flush=True)
    print(json.dumps({"collector": bench_collector(args.nodes, args.seconds)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
