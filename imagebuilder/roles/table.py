"""The roles, and the few facts about them that are code rather than layer content (overlays/<role>/)."""

from __future__ import annotations

ROLES = ("master", "worker")
K3S_UNIT = {"master": "k3s.service", "worker": "k3s-agent.service"}
# Services of role packages that their package does not enable by itself (rootless builds enable them
# at first boot, when the package arrives).
UNITS_OF_PACKAGES = {"nftables": "nftables.service"}
