"""cloud-init's seed per role (user-data, network-config, meta-data), built as data and dumped, so that
nothing a user writes in the recipe (an SSH key, a Wi-Fi passphrase) can break the YAML."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from imagebuilder.layers.render import OverlayFile, RenderedLayer
from imagebuilder.recipe.catalogue import Layout, load_catalogue
from imagebuilder.recipe.model import Recipe
from imagebuilder.roles.table import UNITS_OF_PACKAGES


def cloud_init_for_base(recipe: Recipe, layout: Layout) -> tuple[tuple[str, ...], RenderedLayer | None]:
    """What a base without cloud-init (Raspberry Pi OS Bookworm) needs so that its nodes configure themselves.

    Returns the packages to install into the common stage and a layer pointing cloud-init at the seed.
    """
    if recipe.base.image is None or load_catalogue()[recipe.base.image].firstboot != "raspios-firstboot":
        return (), None
    layer = RenderedLayer("cloud-init for " + recipe.base.image, (OverlayFile(
        "etc/cloud/cloud.cfg.d/90-imagebuilder-datasource.cfg", layout.nocloud_datasource().encode(),
        0o644),))
    return ("cloud-init", "cloud-guest-utils"), layer


def user_data(recipe: Recipe, role: str, first_boot_packages: tuple[str, ...] = ()) -> dict[str, Any]:
    """The node's cloud-config: users, keys, time zone, growth, first-boot packages.

    It is installed as system configuration (/etc/cloud/cloud.cfg.d/), not as the seed's user-data, so a
    card whose seed files were replaced (Raspberry Pi Imager's OS customisation writes its own) keeps it;
    such user-data is applied on top.
    """
    # The master's name is in its /etc/hostname; a worker's comes from imagebuilder-hostname.service, before
    # cloud-init starts. cloud-init must neither set it nor rewrite /etc/hosts, on any boot, whatever
    # user-data says (Imager gives every card it writes the same hostname).
    data: dict[str, Any] = {"preserve_hostname": True, "manage_etc_hosts": False}
    users: list[dict[str, Any]] = []
    for user in recipe.users:
        entry: dict[str, Any] = {"name": user.name, "shell": "/bin/bash", "groups": ["sudo"],
                                 "sudo": "ALL=(ALL) NOPASSWD:ALL", "lock_passwd": user.password_hash is None}
        if user.password_hash:
            entry["hashed_passwd"] = user.password_hash
        if user.ssh_authorized_keys:
            entry["ssh_authorized_keys"] = list(user.ssh_authorized_keys)
        users.append(entry)
    if users:
        # An empty list is not valid cloud-config; without the key the distribution's locked default
        # user is made, which nobody can log in as.
        data["users"] = users
    data.update(
        disable_root=True,
        ssh_pwauth=any(u.password_hash for u in recipe.users),
        # Every card makes its own host keys: the image carries none. No RSA key: it is most of the time
        # cloud-init takes to make them, and sshd is told of these two (sshd_config.d, overlays/common).
        ssh_deletekeys=True,
        ssh_genkeytypes=["ed25519", "ecdsa"],
        timezone=recipe.timezone,
        # Built into glibc, so it needs no generated locale (cloud-init's default, en_US.UTF-8, does).
        locale="C.UTF-8",
        growpart={"mode": "auto", "devices": ["/"]},
        resize_rootfs=True,
        final_message="IMAGEBUILDER: cloud-init-done $UPTIME",
    )
    if first_boot_packages:
        data.update(package_update=True, packages=list(first_boot_packages))
        # Units of packages that arrive only now could not be enabled in the image (rootless build).
        units = [UNITS_OF_PACKAGES[p] for p in first_boot_packages if p in UNITS_OF_PACKAGES]
        if units:
            data["runcmd"] = [["systemctl", "enable", "--now", *units]]
    return data


def network_config(recipe: Recipe, role: str) -> dict[str, Any]:
    """cloud-init network-config version 2."""
    net = recipe.network
    lan = net.lan_interface
    if role != "master":
        return {"version": 2, "ethernets": {lan: {"dhcp4": True}}}
    prefix = recipe.lan().prefixlen
    ethernets: dict[str, Any] = {lan: {
        "dhcp4": False, "addresses": [f"{net.master_ip}/{prefix}"],
        "nameservers": {"addresses": ["127.0.0.1"], "search": [recipe.cluster.domain]},
    }}
    config: dict[str, Any] = {"version": 2, "ethernets": ethernets}
    if net.uplink_interface and net.wifi:
        config["wifis"] = {net.uplink_interface: {
            "dhcp4": True, "regulatory-domain": net.wifi.country,
            "access-points": {net.wifi.ssid: {"password": net.wifi.psk}},
        }}
    elif net.uplink_interface:
        ethernets[net.uplink_interface] = {"dhcp4": True}
    return config


def meta_data(recipe: Recipe, role: str, seed: dict[str, Any]) -> dict[str, Any]:
    """The instance-id changes with the configuration, so a changed seed runs again on a used card."""
    digest = hashlib.sha256(json.dumps(seed, sort_keys=True).encode()).hexdigest()[:12]
    return {"instance-id": f"{recipe.cluster.name}-{role}-{digest}"}
