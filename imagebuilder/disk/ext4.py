"""The ext4 root partition inside an image: made from a tree without mounting, and shrunk to its content."""

from __future__ import annotations

import re
from pathlib import Path

from imagebuilder.core.run import output, run
from imagebuilder.disk.partitions import SECTOR, Partition, boot_and_root


def make_ext4(image: Path, part: Partition, label: str, content: Path) -> None:
    """Create the ext4 root filesystem inside the image, filled from `content`, without mounting."""
    run(["mkfs.ext4", "-F", "-q", "-L", label, "-d", content, "-E", f"offset={part.start}",
         image, f"{part.size // 1024}k"])


def in_image(image: Path, part: Partition) -> str:
    """The file system in `part` as e2fsprogs name it: the image file and the partition's offset."""
    return f"{image}?offset={part.start}"


def grow_root(image: Path, part: Partition) -> None:
    """Grow the ext4 file system to fill its partition (offline: not every kernel resizes a mounted one).

    The size is always given: resize2fs at an offset would otherwise fill the file, not the partition.
    """
    fs = in_image(image, part)
    run(["e2fsck", "-f", "-p", fs])
    run(["resize2fs", fs, f"{part.size // 1024}K"])


def shrink_root(image: Path, headroom: int = 256 * 2**20) -> None:
    """Shrink the root filesystem to what it holds plus `headroom`, and the partition and file with it.

    A stage grows its image before installing packages, by more than they need; what is left over
    would make every later copy, digest and flash of the raw image longer. The card's root partition
    is grown to the whole card at first boot anyway.
    """
    _, root = boot_and_root(image)
    # e2fsprogs open a file system at an offset inside the image: no loop device to leave behind.
    fs = in_image(image, root)
    run(["e2fsck", "-f", "-p", fs])
    text = output(["resize2fs", "-P", fs])
    minimum = int(re.search(r"minimum size of the filesystem:\s*(\d+)", text).group(1))  # type: ignore[union-attr]
    block = int(re.search(r"Block size:\s*(\d+)", output(["dumpe2fs", "-h", fs])).group(1))  # type: ignore[union-attr]
    target = (minimum * block + headroom + 2**20 - 1) // 2**20 * 2**20
    if target >= root.size - 64 * 2**20:
        return  # not worth it
    run(["resize2fs", fs, f"{target // 1024}K"])
    run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", "-N", str(root.number), image],
        input=f",{target // SECTOR}\n".encode())
    with open(image, "r+b") as f:
        f.truncate(root.start + target)
