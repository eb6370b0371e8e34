"""A whole Raspberry Pi SD-card image on a regular file: MBR, FAT32 boot partition, ext4 root partition.

Everything here works on the image file itself (sfdisk, mkfs with offsets, mtools, e2fsprogs), so it needs
neither kernel vfat nor MBR partition parsing, and no root.
"""

from __future__ import annotations

from pathlib import Path

from imagebuilder.core.run import run
from imagebuilder.disk.copy import copy_range
from imagebuilder.disk.ext4 import make_ext4
from imagebuilder.disk.fat import fat_label, make_fat
from imagebuilder.disk.partitions import BOOT_SIZE, BOOT_START, boot_and_root, partition_table
from imagebuilder.disk.usage import fat_used
from imagebuilder.recipe.catalogue import LAYOUTS, Layout


def assemble(image: Path, root_tree: Path, boot_tree: Path, layout: Layout, root_size: int, disk_id: str) -> None:
    """Write a complete SD-card image from a root tree and a boot tree."""
    with open(image, "wb") as f:
        f.truncate(BOOT_START + BOOT_SIZE + root_size)
    partition_table(image, root_size, disk_id)
    boot, root = boot_and_root(image)
    make_fat(image, boot, layout.boot_label, boot_tree)
    make_ext4(image, root, layout.root_label, root_tree)


def check_filesystems(image: Path, scratch: Path) -> None:
    """sfdisk --verify, e2fsck -fn on the root and fsck.vfat -n on a copy of the boot partition."""
    run(["sfdisk", "--verify", image])
    boot, root = boot_and_root(image)
    run(["e2fsck", "-fn", f"{image}?offset={root.start}"])
    # fsck.vfat has no offset option: check a sparse copy of the partition, made of what its FAT says is in
    # use (the reserved area, the FATs, the root directory and the used clusters), which is all it reads.
    copy = scratch / "boot-partition.check"
    try:
        used, _ = fat_used(image, boot)
        with open(image, "rb") as src, open(copy, "wb") as dst:
            for start, length in used:
                copy_range(src.fileno(), dst.fileno(), start, start + length, boot.start)
            dst.truncate(boot.size)
        run(["fsck.vfat", "-n", copy])
    finally:
        copy.unlink(missing_ok=True)


def detect_layout(image: Path) -> Layout:
    """The layout of an image we did not make, from its boot partition's label."""
    boot, _ = boot_and_root(image)
    label = fat_label(image, boot).lower()
    for layout in LAYOUTS.values():
        if layout.boot_label == label:
            return layout
    known = ", ".join(layout.boot_label for layout in LAYOUTS.values())
    raise ValueError(f"{image}: boot partition label {label!r} is none of {known}")
