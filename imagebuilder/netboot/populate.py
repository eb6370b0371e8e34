"""Fill the master's netboot tree from the worker's finished stage, inside the master's stage.

The tree holds the same root file system worker.img carries (copied from the worker's stage, so a card
and a netbooted node run the same files), the worker's boot files in `tftp/` with a command line whose
root is the tree on the master, and one empty state folder per netbooted worker (named by its MAC),
which its initramfs fills on first boot (overlays/netboot).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from imagebuilder.core.errors import ImageBuilderError
from imagebuilder.core.log import log, step
from imagebuilder.core.resources import loop_device, mounted
from imagebuilder.core.run import run
from imagebuilder.disk.fat import MTOOLS_ENV, BootPartition
from imagebuilder.disk.partitions import boot_and_root
from imagebuilder.netboot.tree import netboot_cmdline, verify_netboot_tree
from imagebuilder.recipe.catalogue import Layout


@dataclass(frozen=True)
class NetbootSource:
    """What a master stage copies into its netboot tree: the worker's final stage, and where it is served."""

    worker_image: Path
    worker_key: str
    tree: str  # the tree's path on the master (recipe: netboot.tree)
    server: str  # the master's LAN address
    nodes: tuple[str, ...]  # the netbooted workers' MACs, with dashes (their state folders' names)

    def material(self) -> dict[str, object]:
        """What the master stage's key takes from it: the worker stage by its key, not by its path."""
        return {"worker": self.worker_key, "tree": self.tree, "server": self.server, "nodes": list(self.nodes)}


def state_folder(mac: str) -> str:
    return mac.lower().replace(":", "-")


def netboot_fstab() -> str:
    # No card: none of the card's file systems exist. The root is the initramfs's overlay.
    return "# Written by imagebuilder: a netbooted worker's root is NFS under a RAM layer, set up by its initramfs.\n"


def netboot_cloud_config(boot_mount: str) -> str:
    """cloud-init on a netbooted node: its seed is the boot files copied into the root (there is no boot
    partition to find by label; the kernel command line names it too, for ds-identify). Its state lives in RAM,
    so every boot is cloud-init's first (netboot_user_data)."""
    return ("# Written by imagebuilder: a netbooted worker reads its NoCloud seed from the shared root.\n"
            "datasource_list: [NoCloud, None]\n"
            f"datasource:\n  NoCloud:\n    seedfrom: file://{boot_mount.rstrip('/')}/\n")


SEED_FILES = ("user-data", "meta-data", "network-config")


def netboot_user_data(text: str) -> str:
    """The worker's cloud-config for a RAM root: every boot is cloud-init's first, so it keeps the host keys
    the initramfs restored, and has no card to grow."""
    data = yaml.safe_load(text) or {}
    data["ssh_deletekeys"] = False
    for key in ("growpart", "resize_rootfs"):
        data.pop(key, None)
    return "#cloud-config\n# Written by imagebuilder for workers booted from the network.\n" + yaml.safe_dump(
        data, sort_keys=False)


def used_bytes(mount: Path) -> int:
    st = os.statvfs(mount)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def statvfs_free(mount: Path) -> int:
    """Free bytes for root (the build), reserved blocks included."""
    st = os.statvfs(mount)
    return st.f_bfree * st.f_frsize


def populate_tree(master_root: Path, source: NetbootSource, layout: Layout, work: Path) -> None:
    """Write the tree into the master's mounted root. Refuses a tree no board would boot from
    (verify_netboot_tree)."""
    tree = master_root / source.tree.lstrip("/")
    root, tftp, nodes = tree / "root", tree / "tftp", tree / "nodes"
    if tree.exists():
        run(["rm", "-rf", "--one-file-system", tree])
    for folder in (root, tftp, nodes):
        folder.mkdir(parents=True)
    boot_part, root_part = boot_and_root(source.worker_image)
    # The boot files first: the room left for the root is then measured with them in.
    boot_in_root = root / layout.boot_mount.lstrip("/")
    boot_in_root.mkdir(parents=True, exist_ok=True)
    where = f"{source.worker_image}@@{boot_part.start}"
    for target in (tftp, boot_in_root):
        run(["mcopy", "-i", where, "-s", "-p", "-m", "-Q", "::/*", target], env=MTOOLS_ENV)
    # The seed (user-data: users, keys, password hashes) stays off TFTP, which anyone on the LAN can read.
    for name in SEED_FILES:
        (tftp / name).unlink(missing_ok=True)
    with step(f"netboot tree: the worker's root into {source.tree}/root"), \
            loop_device(source.worker_image, offset=root_part.start, size=root_part.size, read_only=True) as device, \
            mounted(device, work / "worker-root", fstype="ext4", options=("ro", "noload")) as worker:
        need, free = used_bytes(worker), statvfs_free(master_root)
        if need > free:
            # Only with output.image_size: otherwise the stage grew the master's root by the worker's image.
            raise ImageBuilderError(f"output.image_size: the master's root has {free // 2**20} MiB free, and the "
                                    f"netboot tree needs about {need // 2**20} MiB",
                                    f"raise output.image_size by {(need - free) // 2**20 + 64} MiB or more, or "
                                    "remove it (the image then grows by what it holds)")
        # -a keeps owners, modes, hard links, times and extended attributes (file capabilities).
        run(["cp", "-a", "--one-file-system", f"{worker}/.", root])
    for config in (boot_in_root / "user-data", root / "etc/cloud/cloud.cfg.d/90-imagebuilder.cfg"):
        if config.is_file():
            config.write_text(netboot_user_data(config.read_text()))
    card = BootPartition(source.worker_image, boot_part).read("cmdline.txt").decode(errors="replace")
    cmdline = netboot_cmdline(card.splitlines()[0] if card.strip() else "", source.server, source.tree,
                              layout.boot_mount)
    for folder in (tftp, boot_in_root):
        (folder / "cmdline.txt").write_text(cmdline)
    (root / "etc/fstab").write_text(netboot_fstab())
    (root / "etc/cloud/cloud.cfg.d/90-imagebuilder-datasource.cfg").write_text(
        netboot_cloud_config(layout.boot_mount))
    for mac in source.nodes:
        # Filled by the node's initramfs on its first boot; only that node's address may mount it.
        (nodes / mac).mkdir(mode=0o700)
    verdict = verify_netboot_tree(tree, source.server, served=source.tree)
    for line in verdict.lines():
        log.info("netboot verify: %s", line)
    if not verdict.ok:
        raise ImageBuilderError(f"the netboot tree {source.tree} would boot no board: "
                                + "; ".join(verdict.general or [p for ps in verdict.boards.values() for p in ps]),
                                "report it: the worker stage's boot files or initramfs lack what netboot needs")
    size = int(run(["du", "-sxb", tree], capture=True).stdout.split()[0])
    log.info("netboot tree %s: %d MiB (the worker's root and boot files)", source.tree, size // 2**20)
