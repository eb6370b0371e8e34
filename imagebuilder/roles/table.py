"""The roles, and what each needs from the distribution: packages, and units their packages do not enable."""

from __future__ import annotations

# Packages the built-in overlays need. The master is the gateway; every node mounts /srv/jobs over NFS.
ROLE_PACKAGES: dict[str, tuple[str, ...]] = {
    # tzdata: cloud-init's timezone module needs /usr/share/zoneinfo, which a minimal base lacks.
    "common": ("nfs-common", "tzdata"),
    "master": ("dnsmasq", "nfs-kernel-server", "nftables"),
    "worker": (),
}
ROLES = ("master", "worker")
K3S_UNIT = {"master": "k3s.service", "worker": "k3s-agent.service"}
# Services of role packages that their package does not enable by itself.
UNITS_OF_PACKAGES = {"nftables": "nftables.service"}
