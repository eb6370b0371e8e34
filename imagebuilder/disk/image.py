"""Raspberry Pi SD-card layout on regular files: MBR, FAT32 boot partition, ext4 root partition.

Everything here works on the image file itself (sfdisk, mkfs with offsets, mtools, e2fsprogs), so it needs
neither kernel vfat nor MBR partition parsing, and no root.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from imagebuilder.core.run import output, run
from imagebuilder.recipe.catalogue import Layout

SECTOR = 512
MIB = 2**20
BOOT_START = 4 * MIB  # the alignment the Raspberry Pi images use
BOOT_SIZE = 512 * MIB
MTOOLS_ENV = {"MTOOLS_SKIP_CHECK": "1"}


@dataclass(frozen=True)
class Partition:
    number: int
    start: int  # bytes
    size: int  # bytes
    type: str

    @property
    def end(self) -> int:
        return self.start + self.size


def read_partitions(image: Path) -> list[Partition]:
    table = json.loads(output(["sfdisk", "--json", image]))["partitiontable"]
    assert table.get("unit", "sectors") == "sectors"
    return [
        Partition(i + 1, p["start"] * SECTOR, p["size"] * SECTOR, p["type"])
        for i, p in enumerate(table["partitions"])
    ]


def boot_and_root(image: Path) -> tuple[Partition, Partition]:
    parts = read_partitions(image)
    if len(parts) < 2:
        raise ValueError(f"{image}: expected a boot and a root partition, found {len(parts)}")
    return parts[0], parts[1]


def partition_table(image: Path, root_size: int, disk_id: str) -> None:
    """Write an MBR: p1 FAT32 (LBA) bootable, p2 Linux, sized to fill the image."""
    script = "\n".join([
        "label: dos",
        f"label-id: 0x{disk_id}",
        "unit: sectors",
        f"start={BOOT_START // SECTOR}, size={BOOT_SIZE // SECTOR}, type=c, bootable",
        f"start={(BOOT_START + BOOT_SIZE) // SECTOR}, size={root_size // SECTOR}, type=83",
        "",
    ])
    run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", image], input=script.encode())


def make_fat(image: Path, part: Partition, label: str, content: Path, serial: str | None = None) -> None:
    """Create the FAT32 boot filesystem inside the image and copy `content` into it."""
    volume_id = ["-i", serial] if serial else []
    run(["mkfs.vfat", "-F", "32", "-n", label, *volume_id, "-S", str(SECTOR), "-h", str(part.start // SECTOR),
         "--offset", str(part.start // SECTOR), image, str(part.size // 1024)])
    entries = sorted(content.iterdir())
    if entries:
        run(["mcopy", "-i", f"{image}@@{part.start}", "-s", "-p", "-m", "-Q", *entries, "::/"], env=MTOOLS_ENV)


def make_ext4(image: Path, part: Partition, label: str, content: Path) -> None:
    """Create the ext4 root filesystem inside the image, filled from `content`, without mounting."""
    run(["mkfs.ext4", "-F", "-q", "-L", label, "-d", content, "-E", f"offset={part.start}",
         image, f"{part.size // 1024}k"])


def assemble(image: Path, root_tree: Path, boot_tree: Path, layout: Layout, root_size: int, disk_id: str) -> None:
    """Write a complete SD-card image from a root tree and a boot tree."""
    with open(image, "wb") as f:
        f.truncate(BOOT_START + BOOT_SIZE + root_size)
    partition_table(image, root_size, disk_id)
    boot, root = boot_and_root(image)
    make_fat(image, boot, layout.boot_label, boot_tree)
    make_ext4(image, root, layout.root_label, root_tree)


def fat_read(image: Path, part: Partition, name: str) -> str:
    return output(["mtype", "-i", f"{image}@@{part.start}", f"::/{name}"], env=MTOOLS_ENV)


def fat_list(image: Path, part: Partition) -> list[str]:
    text = output(["mdir", "-b", "-i", f"{image}@@{part.start}", "::/"], env=MTOOLS_ENV)
    return sorted(line.removeprefix("::/") for line in text.splitlines() if line)


def fat_label(image: Path, part: Partition) -> str:
    return output(["mlabel", "-s", "-i", f"{image}@@{part.start}", "::"], env=MTOOLS_ENV).split()[-1]


def check_filesystems(image: Path, scratch: Path) -> None:
    """sfdisk --verify, e2fsck -fn on the root and fsck.vfat -n on a copy of the boot partition."""
    run(["sfdisk", "--verify", image])
    boot, root = boot_and_root(image)
    run(["e2fsck", "-fn", f"{image}?offset={root.start}"])
    # fsck.vfat has no offset option: check a sparse copy of the partition.
    copy = scratch / "boot-partition.check"
    try:
        with open(image, "rb") as src, open(copy, "wb") as dst:
            src.seek(boot.start)
            remaining = boot.size
            while remaining:
                chunk = src.read(min(remaining, 4 * MIB))
                if chunk.count(0) == len(chunk):
                    dst.seek(len(chunk), os.SEEK_CUR)
                else:
                    dst.write(chunk)
                remaining -= len(chunk)
            dst.truncate(boot.size)
        run(["fsck.vfat", "-n", copy])
    finally:
        copy.unlink(missing_ok=True)


def grow_image(image: Path, size: int) -> bool:
    """Enlarge the image file to `size` bytes and its last (root) partition to fill it.

    The file stays sparse; the filesystem is grown when it is mounted (imagemount.mounted_image).
    Returns whether anything grew.
    """
    if size <= image.stat().st_size:
        return False
    with open(image, "r+b") as f:
        f.truncate(size)
    run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", "-N", "2", image], input=b", +\n")
    return True



def detect_layout(image: Path) -> Layout:
    """The layout of an image we did not make, from its boot partition's label."""
    from imagebuilder.recipe.catalogue import LAYOUTS

    boot, _ = boot_and_root(image)
    label = fat_label(image, boot).lower()
    for layout in LAYOUTS.values():
        if layout.boot_label == label:
            return layout
    known = ", ".join(layout.boot_label for layout in LAYOUTS.values())
    raise ValueError(f"{image}: boot partition label {label!r} is none of {known}")
