"""`imagebuilder verify IMAGE`: what the firmware and the early boot need, checked on the image file itself.

Per board the image's architecture runs: the firmware files, the kernel, initramfs and device tree the
firmware would pick (boards/firmware.py), the kernel's architecture, and the SD/MMC drivers in the
initramfs (or built into the kernel). For the image as a whole: cmdline.txt is one line whose root=
resolves to the image's root partition, and every /etc/fstab entry resolves to a partition of the image.

Nothing is mounted: the boot partition is read with mtools, the root file system with debugfs.
"""

from __future__ import annotations

import gzip
import io
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from imagebuilder.boards.firmware import Selection, select
from imagebuilder.boards.models import BOARDS, boards_for
from imagebuilder.core.errors import ChecksFailed, CommandFailed
from imagebuilder.core.resources import temporary_directory
from imagebuilder.core.run import output, run
from imagebuilder.disk.fat import BootPartition, fat_label, fat_serial
from imagebuilder.disk.partitions import Partition, read_partitions

ARM64_MAGIC = (56, b"ARM\x64")
ARM_ZIMAGE_MAGIC = (0x24, bytes.fromhex("18286f01"))


@dataclass
class Verdict:
    image: Path
    arch: str
    general: list[str] = field(default_factory=list)  # problems whatever the board
    boards: dict[str, list[str]] = field(default_factory=dict)  # board -> its problems (empty: it boots)
    notes: list[str] = field(default_factory=list)

    @property
    def good_boards(self) -> list[str]:
        return [name for name, problems in self.boards.items() if not problems]

    @property
    def ok(self) -> bool:
        return not self.general and bool(self.good_boards)

    def lines(self) -> list[str]:
        out = [f"{self.image.name}: {self.arch}; boots on: {', '.join(self.good_boards) or 'no board'}"]
        out += [f"  problem: {p}" for p in self.general]
        for name, problems in self.boards.items():
            out += [f"  {name}: {p}" for p in problems]
        out += [f"  note: {n}" for n in self.notes]
        return out


def bootable_boards(verdict: Verdict, what: str) -> list[str]:
    """The boards an image to be emitted boots on; ChecksFailed, naming what is missing, when none."""
    if not verdict.ok:
        raise ChecksFailed(f"{what}: verify: " + "; ".join(verdict.lines()[1:] or ["no board would boot it"]),
                           "the firmware or the early boot would fail with this image: fix what is named")
    return verdict.good_boards


def read_root_file(image: Path, part: Partition, path: str) -> str | None:
    result = run(["debugfs", "-R", f"cat {path}", f"{image}?offset={part.start}"], capture=True, check=False)
    return result.stdout.decode(errors="replace") if result.returncode == 0 and result.stdout else None


def image_arch(image: Path, root: Partition) -> str:
    """The Debian architecture of the image's userland (dpkg's own)."""
    return dpkg_arch(read_root_file(image, root, "/var/lib/dpkg/status") or "")


def dpkg_arch(status: str) -> str:
    """dpkg's own architecture, from /var/lib/dpkg/status."""
    found = re.search(r"^Package: dpkg\n(?:[^\n]+\n)*?Architecture: (\S+)", status, re.M)
    return found.group(1) if found else "unknown"


def kernel_arch(data: bytes) -> str | None:
    if data[:2] == b"\x1f\x8b":
        data = gzip.GzipFile(fileobj=io.BytesIO(data)).read(64)  # a compressed kernel (Ubuntu's vmlinuz)
    for arch, (offset, magic) in (("arm64", ARM64_MAGIC), ("armhf", ARM_ZIMAGE_MAGIC)):
        if data[offset:offset + len(magic)] == magic:
            return arch
    return None


def partition_ids(image: Path, parts: list[Partition]) -> dict[str, Partition]:
    """Every name an fstab or root= may use for a partition: LABEL=, UUID=, PARTUUID=, and /dev paths."""
    table = output(["sfdisk", "--dump", image])
    disk = re.search(r"^label-id: 0x([0-9a-f]+)", table, re.M)
    names: dict[str, Partition] = {}
    for part in parts:
        if disk:
            names[f"PARTUUID={disk.group(1).lower()}-{part.number:02d}"] = part
        for prefix in ("/dev/mmcblk0p", "/dev/sda", "/dev/vda"):
            names[f"{prefix}{part.number}"] = part
        if part.type.lower() in ("b", "c", "e", "6"):
            names[f"LABEL={fat_label(image, part)}"] = part
            serial = fat_serial(image, part)
            if serial:
                names[f"UUID={serial[:4].upper()}-{serial[4:].upper()}"] = part
        elif part.type == "83":
            header = output(["dumpe2fs", "-h", f"{image}?offset={part.start}"])
            label = re.search(r"^Filesystem volume name:\s*(\S*)", header, re.M)
            uuid = re.search(r"^Filesystem UUID:\s*(\S+)", header, re.M)
            if label and label.group(1) not in ("", "<none>"):
                names[f"LABEL={label.group(1)}"] = part
            if uuid:
                names[f"UUID={uuid.group(1)}"] = part
    return names


def modules_in(listing: str) -> set[str]:
    """The module names (dashes as underscores) in an lsinitramfs listing."""
    return {re.sub(r"\.ko(\.(xz|zst|gz))?$", "", line.rsplit("/", 1)[1]).replace("-", "_")
            for line in listing.splitlines() if re.search(r"\.ko(\.(xz|zst|gz))?$", line)}


def verify_image(image: Path, boards: list[str] | None = None) -> Verdict:
    parts = read_partitions(image)
    if len(parts) < 2:
        return Verdict(image, "unknown", [f"{len(parts)} partitions: a card needs a boot and a root partition"])
    boot_part, root = parts[0], parts[1]
    verdict = Verdict(image, image_arch(image, root))
    boot = BootPartition(image, boot_part)
    _check_general(verdict, image, boot, root, parts)
    config = boot.config_txt()
    if not config:
        verdict.general.append("config.txt: missing from the boot partition")
    chosen = [BOARDS[b] for b in boards] if boards else boards_for(verdict.arch)
    # Every board usually picks the same kernel and initramfs: each is read and listed once.
    listings: dict[str, tuple[set[str], set[str]] | None] = {}
    with temporary_directory("verify-") as work:
        for board in chosen:
            selection = select(config, board, boot.files)
            verdict.boards[board.name] = check_board(
                selection, verdict.arch, boot, lambda path: read_root_file(image, root, path), work, listings)
            verdict.notes += [n for n in selection.notes if n not in verdict.notes]
    return verdict


def _check_general(verdict: Verdict, image: Path, boot: BootPartition, root: Partition,
                   parts: list[Partition]) -> None:
    names = partition_ids(image, parts)
    cmdline = boot.read("cmdline.txt").decode(errors="replace") if "cmdline.txt" in boot.files else None
    if cmdline is None:
        verdict.general.append("cmdline.txt: missing from the boot partition")
    else:
        lines = [line for line in cmdline.splitlines() if line.strip()]
        if len(lines) != 1:
            verdict.general.append(f"cmdline.txt: {len(lines)} lines; the kernel reads only the first")
        roots = re.findall(r"(?:^|\s)root=(\S+)", cmdline)
        if not roots:
            verdict.general.append("cmdline.txt: no root=")
        elif names.get(roots[-1]) != root:
            verdict.general.append(f"cmdline.txt: root={roots[-1]} is not the image's root partition "
                                   f"(partition {root.number})")
    fstab = read_root_file(image, root, "/etc/fstab") or ""
    for number, line in enumerate(fstab.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#") or len(fields) < 3 or fields[2] in ("proc", "tmpfs", "swap"):
            continue
        if fields[0] not in names:
            verdict.general.append(f"/etc/fstab:{number}: {fields[0]} (for {fields[1]}) is no partition of the image")


class BootSource(Protocol):
    """What the firmware reads: a card's boot partition, or a netboot TFTP tree."""
    files: set[str]

    def read(self, name: str) -> bytes: ...
    def copy(self, name: str, target: Path) -> Path: ...


Listings = dict[str, tuple[set[str], set[str]] | None]


def check_board(selection: Selection, arch: str, boot: BootSource, read_root: Callable[[str], str | None],
                work: Path, listings: Listings,
                drivers: tuple[tuple[str, ...], str] | None = None) -> list[str]:
    """What would stop this board: the firmware files, the kernel, initramfs and device tree it picks, and
    the drivers the initramfs must hold (default: the SD card's; `drivers`: others, and what they are for)."""
    board = selection.board
    problems = list(selection.problems)
    if arch not in board.arches:
        return [f"{board.title} does not run {arch}"]
    missing = [f for f in board.firmware if f not in boot.files]
    problems += [f"the firmware looks for {f}: missing" for f in missing]
    for what, name in (("kernel", selection.kernel), ("initramfs", selection.initramfs),
                       ("command line", selection.cmdline)):
        if name is not None and name not in boot.files:
            problems.append(f"the firmware looks for the {what} {name}: missing")
    if selection.device_tree is not None and selection.device_tree not in boot.files:
        problems.append(f"the firmware looks for the device tree {' or '.join(selection.device_tree_names)}: missing")
    if selection.kernel in boot.files:
        found = kernel_arch(boot.read(selection.kernel)[:1 << 20])
        if found != arch:
            problems.append(f"the kernel {selection.kernel} is {found or 'no ARM kernel'}, the image is {arch}")
        if (arch == "arm64") != selection.arm_64bit:
            # A Pi 4's firmware defaults to arm_64bit=1 unless kernel= names one of its own kernel files.
            problems.append(f"the firmware would start the {arch} kernel {selection.kernel} in "
                            f"{64 if selection.arm_64bit else 32}-bit mode: config.txt needs "
                            f"arm_64bit={int(arch == 'arm64')} for this board")
    if selection.initramfs in boot.files and selection.initramfs is not None:
        name = selection.initramfs
        if name not in listings:
            listings[name] = _initramfs_modules(boot.copy(name, work / "initrd"), read_root)
        wanted, purpose = drivers or (board.sd_modules, "the SD card would not be found")
        problems += _missing_drivers(name, listings[name], wanted, purpose)
    elif selection.initramfs is None:
        problems.append("no initramfs: the root file system's drivers would have to be built into the kernel")
    return problems


def _initramfs_modules(initrd: Path, read_root: Callable[[str], str | None]) -> tuple[set[str], set[str]] | None:
    """The modules in the initramfs and those built into its kernel; None when it cannot be listed."""
    try:
        listing = output(["lsinitramfs", initrd])
    except (OSError, CommandFailed):
        return None
    version = re.search(r"lib/modules/([^/\s]+)/", listing)
    builtin_text = read_root(f"/lib/modules/{version.group(1)}/modules.builtin") if version else ""
    builtin = {re.sub(r"\.ko$", "", line.rsplit("/", 1)[-1]).replace("-", "_")
               for line in (builtin_text or "").splitlines()}
    return modules_in(listing), builtin


def _missing_drivers(name: str, found: tuple[set[str], set[str]] | None, wanted: tuple[str, ...],
                     purpose: str) -> list[str]:
    if found is None:
        return [f"cannot list the initramfs {name}"]
    modules, builtin = found
    problems = []
    for needed in wanted:
        choices = needed.split("|")
        if not any(c in modules or c in builtin for c in choices):
            problems.append(f"the initramfs lacks {' or '.join(choices)}: {purpose}")
    return problems
