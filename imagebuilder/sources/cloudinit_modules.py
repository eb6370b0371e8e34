"""cloud-init in the bootstrapped base: only the modules a node can use, run by three of cloud-init's stages.

Debian's cloud.cfg lists every module for every cloud; each listed module is imported at each boot (and
renders its documentation from the schema as it is), and each stage is a Python start of its own, about
15 s on a Raspberry Pi 3 under emulation. The base keeps Debian's lists minus the modules below, and runs
the config stage's modules at the start of the final stage, later in the same boot: the config stage's
unit is masked, one Python start less per boot. A netbooted worker, whose every boot is a first one, saves it
at every boot.
"""

from __future__ import annotations

from pathlib import Path

import yaml

# Why a module can do nothing on an imagebuilder node (names as cloud-init normalises them).
UNUSED = {
    "migrator": "moves the state of cloud-init versions older than the image's",
    "rsyslog": "the base has no rsyslog",
    "set_hostname": "a node's name is imagebuilder's (the master's image, a worker's table entry)",
    "update_hostname": "a node's name is imagebuilder's",
    "update_etc_hosts": "a node's /etc/hosts is imagebuilder's",
    "snap": "no snapd",
    "ssh_import_id": "no ssh-import-id",
    "grub_dpkg": "a Raspberry Pi has no GRUB",
    "ntp": "the cluster's time is the master's (chrony there, timesyncd on the workers)",
    "disable_ec2_metadata": "EC2 only",
    "byobu": "no byobu",
    "fan": "Ubuntu's fan networking",
    "landscape": "Ubuntu's Landscape",
    "lxd": "no LXD",
    "puppet": "configuration agents: imagebuilder images are remade, not managed",
    "chef": "configuration agents",
    "mcollective": "configuration agents",
    "salt_minion": "configuration agents",
    "reset_rmc": "IBM PowerVM only",
    "refresh_rmc_and_interface": "IBM PowerVM only",
    "rightscale_userdata": "RightScale only",
}
CONFIG_STAGE_UNIT = "cloud-config.service"
MODULES_CFG = "etc/cloud/cloud.cfg.d/80-imagebuilder-modules.cfg"


def module_name(entry: object) -> str:
    """A module list entry's name: `name`, `[name, frequency]` or `{name: ...}` in cloud.cfg."""
    if isinstance(entry, list):
        entry = entry[0]
    elif isinstance(entry, dict):
        entry = entry.get("name", "")
    return str(entry).replace("-", "_")


def trimmed_lists(cloud_cfg: dict[str, list[object]]) -> dict[str, list[object]]:
    """cloud.cfg's module lists without the unused modules, the config stage's moved to the final stage's
    start (before runcmd's script and the packages are run there, as before)."""
    def kept(key: str) -> list[object]:
        return [m for m in cloud_cfg.get(key) or [] if module_name(m) not in UNUSED]

    return {"cloud_init_modules": kept("cloud_init_modules"), "cloud_config_modules": [],
            "cloud_final_modules": kept("cloud_config_modules") + kept("cloud_final_modules")}


def trim_cloud_init(root: Path) -> None:
    """Write the trimmed lists into the tree at root and mask the config stage's unit."""
    lists = trimmed_lists(yaml.safe_load((root / "etc/cloud/cloud.cfg").read_text()))
    (root / MODULES_CFG).write_text(
        "# Written by imagebuilder: Debian's module lists without the modules a node cannot use, the config\n"
        f"# stage's in the final stage ({CONFIG_STAGE_UNIT} is masked): one Python start less per boot.\n"
        + yaml.safe_dump(lists, default_flow_style=False, sort_keys=False))
    unit = root / "etc/systemd/system" / CONFIG_STAGE_UNIT
    unit.unlink(missing_ok=True)
    unit.symlink_to("/dev/null")
