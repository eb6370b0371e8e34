#!/usr/bin/python3
"""imagebuilder first boot: give this worker its hostname.

Every worker card is flashed from the same image, so the name is chosen on the card, in this order:
1. a seed file `imagebuilder-hostname` on the boot partition (`imagebuilder flash --hostname NAME`
   writes it), so one card can take a name whatever its MAC;
2. this node's MAC in the cluster table (/etc/imagebuilder/cluster-table.json, from the recipe);
3. the table's pattern for unknown workers, e.g. node-{mac6}, so two unknown cards never clash.

Runs with the image's python3 and the standard library only. Writes /etc/hostname and the
127.0.1.1 line of /etc/hosts, sets the running hostname, and prints the name. `--root DIR` runs it on
a tree that is not the running system (tests; then the running hostname is left alone).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sys
import time
from pathlib import Path
from typing import Any

SEED_NAME = "imagebuilder-hostname"
TABLE = "etc/imagebuilder/cluster-table.json"
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def normalise_mac(mac: str) -> str:
    return mac.strip().lower().replace("-", ":")


def valid_hostname(name: str) -> bool:
    return bool(_LABEL.match(name))


def choose_hostname(seed: str | None, table: dict[str, Any], mac: str) -> str:
    """The seed if it is a valid name, else the MAC's entry in the table, else the unknown pattern."""
    if seed is not None and valid_hostname(seed.strip()):
        return seed.strip()
    mac = normalise_mac(mac)
    for worker in table.get("workers", []):
        if normalise_mac(worker["mac"]) == mac:
            return str(worker["hostname"])
    digits = mac.replace(":", "")
    return str(table.get("unknown_pattern", "node-{mac6}")).format(mac6=digits[-6:], mac=digits)


def read_seed(root: Path, table: dict[str, Any]) -> str | None:
    boot = str(table.get("boot_mount", "/boot/firmware")).lstrip("/")
    try:
        text = (root / boot / SEED_NAME).read_text().strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    if text and not valid_hostname(text):
        print(f"set_hostname: ignoring the seed '{text}': not a valid hostname", file=sys.stderr)
    return text or None


def read_mac(root: Path, interface: str, wait: float = 0.0) -> str:
    """The LAN interface's MAC; failing that, the first other interface's, so the name stays unique.

    wait: seconds to give the LAN interface to appear (its driver may still be probing at this point of
    the boot).
    """
    net = root / "sys/class/net"
    deadline = time.monotonic() + wait
    while not (net / interface).exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    candidates = [net / interface] + sorted(p for p in net.glob("*") if p.name not in ("lo", interface))
    for candidate in candidates:
        try:
            mac = (candidate / "address").read_text().strip()
        except OSError:
            continue
        if mac and mac != "00:00:00:00:00:00":
            return mac
    raise SystemExit(f"set_hostname: no MAC address under {net}")


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.new")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_hostname(root: Path, name: str, domain: str | None) -> None:
    _replace(root / "etc/hostname", name + "\n")
    hosts = root / "etc/hosts"
    lines = hosts.read_text().splitlines() if hosts.exists() else ["127.0.0.1\tlocalhost"]
    entry = f"127.0.1.1\t{name}.{domain}\t{name}" if domain else f"127.0.1.1\t{name}"
    kept = [line for line in lines if line.split()[:1] != ["127.0.1.1"]]
    _replace(hosts, "\n".join([*kept, entry]) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/"), help="the system's root (default /)")
    args = parser.parse_args(argv)
    root: Path = args.root
    table = json.loads((root / TABLE).read_text())
    seed = read_seed(root, table)
    wait = 30.0 if root == Path("/") else 0.0
    name = choose_hostname(seed, table, read_mac(root, table.get("lan_interface", "eth0"), wait))
    write_hostname(root, name, table.get("domain"))
    if root == Path("/"):
        socket.sethostname(name)
    print(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
