"""The MBR of an SD-card image: read it, write the Raspberry Pi layout, grow the last partition.

sfdisk works on the image file itself, so no kernel partition parsing is needed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from imagebuilder.core.run import output, run

SECTOR = 512
MIB = 2**20
BOOT_START = 4 * MIB  # the alignment the Raspberry Pi images use
BOOT_SIZE = 512 * MIB


@dataclass(frozen=True)
class Partition:
    number: int
    start: int  # bytes
    size: int  # bytes
    type: str

    @property
    def end(self) -> int:
        return self.start + self.size


def has_partition_table(image: Path) -> bool:
    """Whether the file starts as a partitioned disk does: the boot signature ending its first sector (an MBR,
    or the protective MBR before a GPT)."""
    with image.open("rb") as f:
        first = f.read(SECTOR)
    return len(first) == SECTOR and first[-2:] == b"\x55\xaa"


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


def resize_partition(image: Path, part: Partition, size: int) -> None:
    """Give the partition `size` bytes in the table, from where it starts (its file system is sized apart)."""
    run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", "-N", str(part.number), image],
        input=f",{size // SECTOR}\n".encode())


def grow_image(image: Path, size: int) -> bool:
    """Enlarge the image file to `size` bytes and its last (root) partition to fill it.

    The file stays sparse; the filesystem is grown when it is mounted (disk.mount.mounted_image).
    Returns whether anything grew.
    """
    if size <= image.stat().st_size:
        return False
    with open(image, "r+b") as f:
        f.truncate(size)
    run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", "-N", "2", image], input=b", +\n")
    return True
