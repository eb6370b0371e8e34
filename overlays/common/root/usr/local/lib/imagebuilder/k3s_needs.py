#!/usr/bin/python3
"""Does this node give k3s what it needs? Run as root on a node (the boot test does, over ssh; on a real board
run it by hand before blaming k3s). Prints one JSON object:

- the kernel options k3s's check-config requires, read from the running kernel's config, and those missing;
- the modules the agent loads at start, loaded now, and those that would not load;
- the cgroup v2 controllers pods are limited with;
- an overlay mount with its upper layer where containerd keeps its snapshots (tmpfs on a netbooted node);
- a container run by runc with the limits a pod gets, when runc and busybox-static are installed.
"""

from __future__ import annotations

import gzip
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

KERNEL_OPTIONS = (
    "NAMESPACES", "NET_NS", "PID_NS", "IPC_NS", "UTS_NS", "CGROUPS", "CGROUP_PIDS", "CGROUP_CPUACCT",
    "CGROUP_DEVICE", "CGROUP_FREEZER", "CGROUP_SCHED", "CPUSETS", "MEMCG", "KEYS", "VETH", "BRIDGE",
    "BRIDGE_NETFILTER", "IP_NF_FILTER", "IP_NF_TARGET_MASQUERADE", "NETFILTER_XT_MATCH_ADDRTYPE",
    "NETFILTER_XT_MATCH_CONNTRACK", "NETFILTER_XT_MATCH_COMMENT", "NETFILTER_XT_MATCH_MULTIPORT",
    "NETFILTER_XT_MATCH_STATISTIC", "NETFILTER_XT_MARK", "IP_NF_NAT", "NF_NAT", "NF_CONNTRACK", "POSIX_MQUEUE",
    "OVERLAY_FS", "VXLAN", "SECCOMP", "SECCOMP_FILTER", "NF_TABLES", "NFT_NAT", "NFT_MASQ", "NFT_COMPAT",
)
MODULES = ("overlay", "br_netfilter", "vxlan", "nf_conntrack", "veth")
SNAPSHOTS = Path("/var/lib/rancher/k3s/agent/containerd")
MEMORY_LIMIT, PIDS_LIMIT = 64 * 1024 * 1024, 64


def read_kernel_config(release: str) -> tuple[str, dict[str, str]]:
    """(where it was read, option -> y/m) for the running kernel."""
    for path in (Path(f"/boot/config-{release}"), Path("/proc/config.gz")):
        try:
            text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
        except OSError:
            continue
        options = {}
        for line in text.splitlines():
            name, _, value = line.partition("=")
            if name.startswith("CONFIG_") and value in ("y", "m"):
                options[name.removeprefix("CONFIG_")] = value
        return str(path), options
    return "", {}


def load_modules() -> list[str]:
    """The modules that would not load (modprobe succeeds for one built into the kernel too)."""
    return [m for m in MODULES if subprocess.run(["modprobe", m], capture_output=True, check=False).returncode]


def read_controllers() -> tuple[bool, list[str]]:
    fstype = subprocess.run(["stat", "-f", "-c", "%T", "/sys/fs/cgroup"], capture_output=True, text=True,
                            check=False).stdout.strip()
    try:
        controllers = Path("/sys/fs/cgroup/cgroup.controllers").read_text().split()
    except OSError:
        controllers = []
    return fstype == "cgroup2fs", controllers


def try_overlay() -> str:
    """Mount an overlay as containerd's overlayfs snapshotter would, its upper layer in the snapshots folder."""
    SNAPSHOTS.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="imagebuilder-check-", dir=SNAPSHOTS))
    try:
        for name in ("lower", "upper", "work", "merged"):
            (work / name).mkdir()
        (work / "lower/image").write_text("layer\n")
        options = f"lowerdir={work / 'lower'},upperdir={work / 'upper'},workdir={work / 'work'}"
        mount = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(work / "merged")],
                               capture_output=True, text=True, check=False)
        if mount.returncode:
            fstype = subprocess.run(["stat", "-f", "-c", "%T", str(SNAPSHOTS)], capture_output=True, text=True,
                                    check=False).stdout.strip()
            return f"overlay with its upper layer on {SNAPSHOTS} ({fstype}) fails: {mount.stderr.strip()}"
        try:
            (work / "merged/written").write_text("container\n")
            seen = (work / "merged/image").read_text()
        finally:
            subprocess.run(["umount", str(work / "merged")], check=False)
        if seen != "layer\n" or not (work / "upper/written").is_file():
            return "the overlay mounted, but reads or writes through it went wrong"
        return "ok"
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_container() -> str:
    """busybox in an OCI bundle, run by runc in a cgroup with a pod's memory and pids limits."""
    runc, busybox = shutil.which("runc"), shutil.which("busybox")
    if not runc or not busybox:
        return "skipped: runc or busybox-static is not installed"
    with tempfile.TemporaryDirectory(prefix="imagebuilder-bundle-", dir="/run") as bundle:
        rootfs = Path(bundle, "rootfs")
        (rootfs / "bin").mkdir(parents=True)
        shutil.copy2(busybox, rootfs / "bin/busybox")
        made = subprocess.run([runc, "spec"], cwd=bundle, capture_output=True, text=True, check=False)
        if made.returncode:
            return f"runc spec fails: {made.stderr.strip()}"
        config = json.loads(Path(bundle, "config.json").read_text())
        config["process"]["terminal"] = False
        config["process"]["args"] = ["/bin/busybox", "sh", "-c",
                                     "cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max; echo ran"]
        config["linux"]["resources"] = {"memory": {"limit": MEMORY_LIMIT}, "pids": {"limit": PIDS_LIMIT},
                                        "cpu": {"quota": 50000, "period": 100000}}
        config["linux"]["cgroupsPath"] = f"/imagebuilder-check-{os.getpid()}"
        Path(bundle, "config.json").write_text(json.dumps(config))
        ran = subprocess.run([runc, "run", "--bundle", bundle, f"imagebuilder-check-{os.getpid()}"],
                             capture_output=True, text=True, check=False, timeout=120)
    said = ran.stdout.split()
    if ran.returncode or said != [str(MEMORY_LIMIT), str(PIDS_LIMIT), "ran"]:
        return f"runc run: exit {ran.returncode}, said {said}, {ran.stderr.strip()[-300:]}"
    return f"ok: runc ran busybox with memory.max {MEMORY_LIMIT} and pids.max {PIDS_LIMIT}"


def main() -> int:
    release = platform.release()
    where, options = read_kernel_config(release)
    cgroup2, controllers = read_controllers()
    print(json.dumps({
        "release": release, "config": where,
        "missing_options": [o for o in KERNEL_OPTIONS if o not in options] if where else list(KERNEL_OPTIONS),
        "unloaded_modules": load_modules(), "cgroup2": cgroup2, "controllers": controllers,
        "overlay": try_overlay(), "container": run_container(),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
