"""The tree a netbooting worker reads from the master: the boot files over TFTP, the root over NFS.

`<tree>/tftp` holds what a card's boot partition holds (firmware, kernel, initramfs, device trees,
config.txt) and a cmdline.txt whose root is `<tree>/root` on the master over NFSv4, under a writable layer in
RAM (overlays/netboot). `verify_netboot_tree` reads it as the Raspberry Pi bootloader would, per board.
"""

from __future__ import annotations

import re
from pathlib import Path

from imagebuilder.boards.firmware import select
from imagebuilder.boards.models import BOARDS, boards_for
from imagebuilder.boards.verify import Listings, Verdict, check_board, dpkg_arch
from imagebuilder.core.resources import temporary_directory

# What the card's command line says about its root, which a netbooted node does not have.
_CARD_ROOT = re.compile(r"^(root|rootfstype|rootwait|rootdelay|fsck\.repair|init)=|^(rw|ro|rootwait|quiet)$")
NETBOOT_MODULES = ("nfsv4", "overlay")


def netboot_cmdline(card: str, server: str, tree: str, boot_mount: str = "/boot/firmware") -> str:
    """The card's kernel command line with its root replaced: NFSv4 from the master, a RAM layer on top, and
    cloud-init's seed in the root's copy of the boot files (there is no boot partition to find by label)."""
    kept = [a for a in card.split() if not _CARD_ROOT.match(a)]
    return " ".join([*kept, "boot=nfs4root", "root=/dev/nfs", f"nfsroot={server}:{tree}/root", "ip=dhcp", "ro",
                     "netboot.overlay", f"ds=nocloud;s=file://{boot_mount.rstrip('/')}/"]) + "\n"


def served_at(tree: Path) -> tuple[str, str]:
    """The server and the path a built tree is served under, read back from its cmdline.txt's nfsroot=
    (("", "") when it has none)."""
    cmdline = tree / "tftp" / "cmdline.txt"
    words = cmdline.read_text(errors="replace").split() if cmdline.is_file() else []
    nfsroot = next((w.removeprefix("nfsroot=") for w in words if w.startswith("nfsroot=")), "")
    server, _, path = nfsroot.partition(":")
    return server, path.removesuffix("/root")


class BootTree:
    """A TFTP tree, read like a boot partition."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.files = {p.name for p in folder.iterdir() if p.is_file()} if folder.is_dir() else set()

    def read(self, name: str) -> bytes:
        return (self.folder / name).read_bytes()

    def copy(self, name: str, target: Path) -> Path:
        target.write_bytes(self.read(name))
        return target


def verify_netboot_tree(tree: Path, server: str, boards: list[str] | None = None,
                        served: str | None = None) -> Verdict:
    """Each board's boot from `tree` (the master's netboot folder, as built): what its bootloader would read
    over TFTP, the drivers the initramfs needs to reach the root, and the command line naming that root.
    served: the tree's path on the master, when `tree` is where it is seen from here (a mounted image)."""
    tftp, root = BootTree(tree / "tftp"), tree / "root"
    verdict = Verdict(tree, "unknown")
    if not tftp.files:
        verdict.general.append(f"{tftp.folder}: no boot files")
        return verdict
    if "cmdline.txt" not in tftp.files:
        verdict.general.append("cmdline.txt: missing from the TFTP tree")
    else:
        cmdline = tftp.read("cmdline.txt").decode(errors="replace")
        wanted = ["boot=nfs4root", f"nfsroot={server}:{served or tree}/root", "netboot.overlay"]
        verdict.general += [f"cmdline.txt: no {w}" for w in wanted if w not in cmdline.split()]
    if not (root / "etc").is_dir():
        verdict.general.append(f"{root}: no root file system")
    config = tftp.read("config.txt").decode(errors="replace") if "config.txt" in tftp.files else ""

    def read_root(path: str) -> str | None:
        file = root / path.lstrip("/")
        return file.read_text(errors="replace") if file.is_file() else None

    verdict.arch = dpkg_arch(read_root("/var/lib/dpkg/status") or "")
    chosen = [BOARDS[b] for b in boards] if boards else boards_for(verdict.arch)

    listings: Listings = {}
    with temporary_directory("verify-netboot-") as work:
        for board in chosen:
            if not board.net_modules:
                verdict.boards[board.name] = [f"{board.title}: its boot ROM cannot boot from the network"]
                continue
            selection = select(config, board, tftp.files)
            verdict.boards[board.name] = check_board(
                selection, verdict.arch, tftp, read_root, work, listings,
                ((*NETBOOT_MODULES, *board.net_modules), "the root on the master would not be reached"))
            verdict.notes += [n for n in selection.notes if n not in verdict.notes]
    return verdict
