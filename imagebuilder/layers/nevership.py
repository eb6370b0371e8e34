"""What must never ship in an image: the one list, used by the bootstrap, by every stage and by the tests.

Every card starts as the same bytes, so anything that identifies a machine, or that the build left behind,
is removed before an image is emitted; each node makes its own at first boot.
"""

from __future__ import annotations

import shutil
from pathlib import Path

# Globs relative to the image's root, and why each must not ship.
NEVER_SHIP: tuple[tuple[str, str], ...] = (
    ("etc/ssh/ssh_host_*", "SSH host keys: shared keys let any node impersonate every other"),
    ("var/lib/dbus/machine-id", "the D-Bus machine id (made from /etc/machine-id at first boot)"),
    ("var/lib/systemd/random-seed", "the build's random seed"),
    ("var/lib/systemd/credential.secret", "the build's credential key"),
    ("var/lib/cloud/*", "cloud-init's instance state: the node would skip its own first boot"),
    ("var/log/cloud-init*.log", "cloud-init's logs of the build"),
    ("var/lib/dhcp/*.leases", "DHCP leases of the build"),
    ("var/lib/NetworkManager/*.lease", "DHCP leases of the build"),
    ("var/lib/misc/dnsmasq.leases", "the master's leases"),
    ("var/lib/apt/lists/*_*", "package lists (the node fetches current ones)"),
    ("var/cache/apt/*.bin", "apt's caches of those lists"),
    ("var/log/journal/*", "the build's journal"),
    # k3s never runs in the build; what its first start makes must be the node's own. (The server CA the
    # master image carries in server/tls is the cluster's, made once for it: not in this list.)
    ("var/lib/rancher/k3s/server/db", "k3s's datastore"),
    ("var/lib/rancher/k3s/server/token", "k3s's token file of a server that ran"),
    ("var/lib/rancher/k3s/agent/*.kubeconfig", "an agent's credentials"),
    ("etc/rancher/node", "the k3s node password: duplicated, it makes the server refuse the node"),
    ("root/.bash_history", "the build's shell history"),
    # Dated at each install: two builds of the same recipe would differ in them (disk/rewrite.py).
    ("var/log/dpkg.log", "dpkg's log of the build's installs"),
    ("var/log/alternatives.log", "update-alternatives' log of the build"),
    ("var/log/apt/*.log", "apt's logs of the build's installs"),
    ("var/log/apt/eipp.log.xz", "apt's log of the build's install plans"),
    ("var/cache/ldconfig/aux-cache", "ldconfig's cache of the build's file times (made again on the node)"),
)
MACHINE_ID = "etc/machine-id"


def leftovers(root: Path) -> list[str]:
    """What of the list is in the tree at `root` (empty when the image is clean)."""
    found = []
    for pattern, why in NEVER_SHIP:
        for path in sorted(root.glob(pattern)):
            if path.is_file() or path.is_symlink() or (path.is_dir() and any(path.iterdir())):
                found.append(f"/{path.relative_to(root)}: {why}")
    machine_id = root / MACHINE_ID
    if machine_id.is_file() and machine_id.read_text().strip() not in ("", "uninitialized"):
        found.append(f"/{MACHINE_ID}: holds the build's machine id; every node would share it")
    return found


def forget_identity(root: Path, machine_id: str = "") -> None:
    """Remove everything in the list; leave /etc/machine-id in the form the base's first boot expects.

    machine_id: "" (systemd makes one at first boot) or "uninitialized" (Raspberry Pi OS trixie, whose
    first-boot actions wait for it).
    """
    for pattern, _ in NEVER_SHIP:
        for path in root.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    (root / MACHINE_ID).write_text(f"{machine_id}\n" if machine_id else "")
