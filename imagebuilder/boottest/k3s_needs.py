"""What k3s needs from each booted node, checked the way `k3s check-config` and the agent would use it: the
kernel's options and modules, cgroup v2 controllers, an overlay snapshot where containerd keeps them, a
container run by runc with the limits pods get, and flannel's VXLAN (8472/udp, VNI 1) between the nodes.

A real k3s binary cannot be fetched here; these are the kernel and network pieces it relies on, each proven
on every node type the boot test starts (card nodes on virt, the board models, netbooted nodes).
"""

from __future__ import annotations

import ipaddress
import json
import shlex
from collections.abc import Iterator

from imagebuilder.boottest.plan import CheckResult, NodeResult
from imagebuilder.boottest.ssh import Ssh

# The node program that reads the rest (installed on every node by the common layer).
PROGRAM = "/usr/local/lib/imagebuilder/k3s_needs.py"
CONTROLLERS = ("cpu", "cpuset", "memory", "pids")  # what pods are limited with
VXLAN_PORT, VXLAN_VNI, VXLAN_DEVICE = 8472, 1, "flannel.1"
# Addresses on the test's own VXLAN link, which exists only between the guests for the length of the check.
VXLAN_NET = ipaddress.ip_network("10.254.0.0/24")


def check_k3s_needs(results: list[NodeResult], ssh: Ssh) -> Iterator[CheckResult]:
    """Kernel, cgroups, overlay snapshot and a container on each node; then VXLAN among them all."""
    for r in results:
        probe = ssh.run(r.host, ["sudo", "python3", PROGRAM])
        try:
            found = json.loads(probe.stdout.decode(errors="replace").strip().splitlines()[-1])
        except (ValueError, IndexError):
            tail = probe.stderr.decode(errors="replace").strip()[-300:]
            yield CheckResult("k3s kernel", r.node.name, False, f"the probe did not run: {tail}")
            continue
        yield from probe_results(r.node.name, found)
    yield from check_vxlan(results, ssh)


def probe_results(name: str, found: dict[str, object]) -> Iterator[CheckResult]:
    missing, unloaded = found.get("missing_options"), found.get("unloaded_modules")
    yield CheckResult("k3s kernel", name, not missing and not unloaded and bool(found.get("config")),
                      f"kernel {found.get('release')}: config {found.get('config') or 'not found'}; "
                      f"options missing: {missing or 'none'}; modules that do not load: {unloaded or 'none'}")
    controllers = [str(c) for c in found.get("controllers") or []]  # type: ignore[attr-defined]
    lacking = [c for c in CONTROLLERS if c not in controllers]
    yield CheckResult("k3s cgroups", name, found.get("cgroup2") is True and not lacking,
                      f"cgroup v2 {'mounted' if found.get('cgroup2') else 'not mounted'} on /sys/fs/cgroup; "
                      f"controllers {' '.join(controllers) or 'none'}; lacking: {lacking or 'none'}")
    yield CheckResult("overlay snapshot", name, found.get("overlay") == "ok", f"{found.get('overlay')}")
    container = str(found.get("container"))
    yield CheckResult("container runs", name, container.startswith("ok"), container,
                      skipped=container.startswith("skipped"))


def check_vxlan(results: list[NodeResult], ssh: Ssh) -> Iterator[CheckResult]:
    """flannel's device on each node (flannel.1: the master's firewall treats it as flannel's), flooding to
    every other node as flannel's static forwarding entries do; each worker opens a TCP connection to every
    other node's sshd across it, which needs packets both ways."""
    nodes = [r for r in results if r.address]
    if len(nodes) < 2:
        return
    inner = {r.node.name: str(VXLAN_NET[i + 1]) for i, r in enumerate(nodes)}
    made = []
    try:
        for r in nodes:
            peers = [p.address for p in nodes if p is not r]
            commands = [["ip", "link", "add", VXLAN_DEVICE, "type", "vxlan", "id", str(VXLAN_VNI), "dstport",
                         str(VXLAN_PORT), "local", str(r.address), "nolearning"],
                        *(["bridge", "fdb", "append", "00:00:00:00:00:00", "dev", VXLAN_DEVICE, "dst", str(p)]
                          for p in peers),
                        ["ip", "addr", "add", f"{inner[r.node.name]}/{VXLAN_NET.prefixlen}", "dev", VXLAN_DEVICE],
                        ["ip", "link", "set", VXLAN_DEVICE, "up"]]
            added = ssh.run(r.host, ["sudo", "sh", "-c", " && ".join(shlex.join(c) for c in commands)])
            made.append(r)
            if added.returncode:
                yield CheckResult("VXLAN", r.node.name, False, f"cannot make {VXLAN_DEVICE}: "
                                  f"{added.stderr.decode(errors='replace').strip()[-200:]}")
                return
        for r in nodes[1:]:
            for peer in (p for p in nodes if p is not r):
                connect = f"exec 3<>/dev/tcp/{inner[peer.node.name]}/22 && head -c 4 <&3"
                said = ssh.text(r.host, ["timeout", "20", "bash", "-c", connect])
                yield CheckResult("VXLAN", r.node.name, said == "SSH-",
                                  f"to {peer.node.name} over VNI {VXLAN_VNI} on {VXLAN_PORT}/udp "
                                  f"({inner[r.node.name]} -> {inner[peer.node.name]}:22): "
                                  f"{'sshd answered' if said == 'SSH-' else 'no answer'}")
    finally:
        for r in made:
            ssh.run(r.host, ["sudo", "ip", "link", "del", VXLAN_DEVICE])
