#!/usr/bin/python3
"""imagebuilder beacon: multicast this node's health as one small JSON datagram every few seconds.

Runs on every node with the image's own python3 and the standard library only (nothing is
pip-installed into an image). Reads /proc, /sys and `systemctl is-active`, nothing else. The
collector on the master (collector.py) keeps and shows the packets; the packet format is its
`FIELDS` table, schema version `SCHEMA`.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SCHEMA = 1
MAX_PACKET = 1200
# One systemctl costs more CPU than the rest of a beacon put together, and unit states change
# slowly: ask at most this often.
UNITS_EVERY = 30.0
_SIOCGIFADDR = 0x8915


def read_hostname(proc: Path) -> str:
    return (proc / "sys/kernel/hostname").read_text().strip()


def read_uptime(proc: Path) -> float:
    return float((proc / "uptime").read_text().split()[0])


def read_load(proc: Path) -> list[float]:
    return [float(x) for x in (proc / "loadavg").read_text().split()[:3]]


def read_cpu_times(proc: Path) -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from the first line of /proc/stat."""
    with (proc / "stat").open() as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal; guest time is already inside user and nice.
    total = sum(fields[:8])
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return total - idle, total


def read_memory(proc: Path) -> tuple[int, int]:
    """(total, available) bytes."""
    values: dict[str, int] = {}
    with (proc / "meminfo").open() as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("MemTotal", "MemAvailable"):
                values[key] = int(rest.split()[0]) * 1024
                if len(values) == 2:
                    break
    return values["MemTotal"], values["MemAvailable"]


def read_temperature(sys_: Path) -> float | None:
    """The SoC temperature in °C: the zone named like the CPU or SoC, else the first one; None without."""
    zones = sorted((sys_ / "class/thermal").glob("thermal_zone*"))
    chosen = None
    for zone in zones:
        try:
            kind = (zone / "type").read_text().strip().lower()
        except OSError:
            continue
        if any(word in kind for word in ("cpu", "soc")):
            chosen = zone
            break
        chosen = chosen or zone
    if chosen is None:
        return None
    try:
        return round(int((chosen / "temp").read_text()) / 1000, 1)
    except (OSError, ValueError):
        return None


def read_mounted(proc: Path, mountpoint: str) -> bool:
    with (proc / "self/mountinfo").open() as f:
        # Field 5 is the mount point (octal-escaped, so a plain path compares as is).
        return any(line.split(" ", 5)[4] == mountpoint for line in f)


def read_mac(sys_: Path, interface: str) -> str | None:
    try:
        return (sys_ / "class/net" / interface / "address").read_text().strip()
    except OSError:
        return None


def root_usage(path: str) -> tuple[int, int]:
    """(used, total) bytes of the filesystem holding `path`, as df counts them."""
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize, st.f_blocks * st.f_frsize


def unit_states(systemctl: str, units: list[str]) -> list[str] | None:
    """`systemctl is-active` of each unit (e.g. 'active', 'inactive', 'failed'); None if it cannot tell."""
    try:
        result = subprocess.run([systemctl, "is-active", *units], stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    states = result.stdout.split()
    return states if len(states) == len(units) else None


_CLOUD_INIT = {"active": "done", "activating": "running", "failed": "error"}


class Sampler:
    """Builds packets from a /proc and /sys tree (the real ones, or a test's)."""

    def __init__(self, config: dict[str, Any], proc: Path = Path("/proc"), sys_: Path = Path("/sys"),
                 root: str = "/", systemctl: str = "systemctl") -> None:
        self.config = config
        self.proc, self.sys, self.root, self.systemctl = proc, sys_, root, systemctl
        self.seq = 0
        self._cpu: tuple[int, int] | None = None
        self._units: list[str] | None = None
        self._units_at = -UNITS_EVERY

    def cpu_percent(self) -> float | None:
        """Busy share of all CPUs since the previous call; None on the first."""
        now = read_cpu_times(self.proc)
        before, self._cpu = self._cpu, now
        if before is None or now[1] <= before[1]:
            return None
        return round(100 * (now[0] - before[0]) / (now[1] - before[1]), 1)

    def units(self, now: float) -> list[str] | None:
        if now - self._units_at >= UNITS_EVERY:
            self._units_at = now
            self._units = unit_states(self.systemctl, ["cloud-final.service", self.config["k3s_unit"]])
        return self._units

    def packet(self, ip: str | None, now: float | None = None) -> dict[str, Any]:
        now = time.monotonic() if now is None else now
        cfg = self.config
        mem_total, mem_available = read_memory(self.proc)
        disk_used, disk_total = root_usage(self.root)
        units = self.units(now)
        self.seq += 1
        return {
            "v": SCHEMA, "host": read_hostname(self.proc), "role": cfg["role"],
            "mac": read_mac(self.sys, cfg["interface"]) or "", "ip": ip or "",
            "interval": cfg["interval"], "seq": self.seq, "time": round(time.time(), 3),
            "uptime": read_uptime(self.proc), "load": read_load(self.proc), "cpu": self.cpu_percent(),
            "mem_total": mem_total, "mem_available": mem_available,
            "disk_used": disk_used, "disk_total": disk_total,
            "temp": read_temperature(self.sys),
            "cloud_init": None if units is None else _CLOUD_INIT.get(units[0], units[0]),
            "jobs": read_mounted(self.proc, "/srv/jobs"),
            "k3s": None if units is None else units[1] == "active",
        }


def encode(packet: dict[str, Any]) -> bytes:
    data = json.dumps(packet, separators=(",", ":"), ensure_ascii=True).encode()
    if len(data) > MAX_PACKET:
        raise ValueError(f"packet of {len(data)} bytes exceeds {MAX_PACKET}")
    return data


def interface_address(sock: socket.socket, interface: str) -> str | None:
    """The interface's IPv4 address, or None while it has none (DHCP not done yet)."""
    try:
        request = struct.pack("256s", interface.encode()[:15])
        return socket.inet_ntoa(fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, request)[20:24])
    except OSError:
        return None


class Sender:
    """One UDP socket that sends to the group on the LAN interface only, and never back to us."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # TTL 1: the packet never leaves the LAN; no loopback: this host's sockets do not get it
        # (the master's collector gets the master's packet through the unicast copy instead).
        self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        self._problem: str | None = None

    def address(self) -> str | None:
        """Point the socket at the LAN interface; return its address, or None (and say why, once)."""
        interface = self.config["interface"]
        try:
            index = socket.if_nametoindex(interface)
        except OSError:
            self._report(f"no interface {interface}; waiting for it")
            return None
        ip = interface_address(self.sock, interface)
        if ip is None:
            self._report(f"{interface} has no IPv4 address yet; waiting for one")
            return None
        # struct ip_mreqn: choose the interface by index, so a second address or route cannot move it.
        mreqn = struct.pack("=4s4si", bytes(4), bytes(4), index)
        self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
        self._report(None)
        return ip

    def send(self, data: bytes) -> None:
        cfg = self.config
        try:
            self.sock.sendto(data, (cfg["group"], cfg["port"]))
            if cfg.get("local_copy"):
                self.sock.sendto(data, ("127.0.0.1", cfg["port"]))
        except OSError as e:
            self._report(f"cannot send: {e.strerror}")

    def _report(self, problem: str | None) -> None:
        if problem != self._problem:
            print(problem or f"sending to {self.config['group']}:{self.config['port']}"
                  f" on {self.config['interface']}", file=sys.stderr, flush=True)
        self._problem = problem


def run(config: dict[str, Any], count: int | None = None) -> None:
    """Send a beacon every `interval` seconds (forever, or `count` times)."""
    sampler, sender = Sampler(config), Sender(config)
    sampler.cpu_percent()  # the first packet then carries a real CPU figure
    deadline = time.monotonic()
    sent = 0
    while count is None or sent < count:
        deadline += config["interval"]
        time.sleep(max(0.0, deadline - time.monotonic()))
        ip = sender.address()
        if ip is not None:
            sender.send(encode(sampler.packet(ip)))
        sent += 1


def load_config(path: Path) -> dict[str, Any]:
    """The recipe's settings, plus what follows from this node's role.

    The role is a file of its own (written by the master or worker overlay), because the common
    stage that carries this config is shared by both roles.
    """
    config: dict[str, Any] = json.loads(path.read_text())
    role_file = path.parent / "role"
    role = role_file.read_text().strip() if role_file.exists() else "worker"
    config.setdefault("role", role)
    config.setdefault("k3s_unit", "k3s.service" if role == "master" else "k3s-agent.service")
    # The master's collector cannot hear its own multicast (loopback is off): it gets a copy.
    config.setdefault("local_copy", role == "master")
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("/etc/imagebuilder/monitoring.json"))
    parser.add_argument("--check-enabled", action="store_true",
                        help="exit 0 if monitoring is enabled in the recipe, 1 if not (for ExecCondition)")
    parser.add_argument("--count", type=int, default=None, help="stop after this many beacons")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    if args.check_enabled:
        return 0 if config.get("enabled") else 1
    run(config, args.count)
    return 0


if __name__ == "__main__":
    sys.exit(main())
