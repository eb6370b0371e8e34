"""The ext4 root partition inside an image: made from a tree without mounting, and shrunk to its content."""

from __future__ import annotations

import re
from pathlib import Path

from imagebuilder.core.resources import loop_device
from imagebuilder.core.run import output, run
from imagebuilder.disk.partitions import Partition, boot_and_root, resize_partition

HEADROOM = 256 * 2**20  # left free in a root file system: room for a first boot before the root is grown


def make_ext4(image: Path, part: Partition, label: str, content: Path) -> None:
    """Create the ext4 root filesystem inside the image, filled from `content`, without mounting."""
    run(["mkfs.ext4", "-F", "-q", "-L", label, "-d", content, "-E", f"offset={part.start}",
         image, f"{part.size // 1024}k"])


def grow_root(image: Path, part: Partition) -> None:
    """Grow the ext4 file system to fill its partition (offline: not every kernel resizes a mounted one).

    Through a loop device: resize2fs given `image?offset=` resizes the image file to the file system's
    size, without the offset, cutting the partition short.
    """
    with loop_device(image, offset=part.start, size=part.size) as device:
        run(["e2fsck", "-f", "-p", device])
        run(["resize2fs", device])


def shrink_root(image: Path, headroom: int = HEADROOM) -> None:
    """Shrink the root filesystem to what it holds plus `headroom`, and the partition and file with it.

    A stage grows its image before installing packages, by more than they need; what is left over
    would make every later copy, digest and flash of the raw image longer. The card's root partition
    is grown to the whole card at first boot anyway.
    """
    _, root = boot_and_root(image)
    with loop_device(image, offset=root.start, size=root.size) as device:
        run(["e2fsck", "-f", "-p", device])
        text = output(["resize2fs", "-P", device])
        minimum = int(re.search(r"minimum size of the filesystem:\s*(\d+)", text).group(1))  # type: ignore[union-attr]
        block = int(re.search(r"Block size:\s*(\d+)", output(["dumpe2fs", "-h", device])).group(1))  # type: ignore[union-attr]
        target = (minimum * block + headroom + 2**20 - 1) // 2**20 * 2**20
        if target >= root.size - 64 * 2**20:
            return  # not worth it
        run(["resize2fs", device, f"{target // 1024}K"])
    resize_partition(image, root, target)
    with open(image, "r+b") as f:
        f.truncate(root.start + target)
