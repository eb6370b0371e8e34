"""What each role adds to the common stage: packages and the built-in overlay layer."""

from __future__ import annotations

# Packages the built-in overlays need. The master is the gateway; every node mounts /srv/jobs over NFS.
ROLE_PACKAGES: dict[str, tuple[str, ...]] = {
    "common": ("nfs-common",),
    "master": ("dnsmasq", "nfs-kernel-server", "nftables"),
    "worker": (),
}
ROLES = ("master", "worker")
