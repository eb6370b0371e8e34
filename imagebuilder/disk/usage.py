"""Which bytes of an SD-card image matter: what its file systems record as in use.

A flash that writes only some blocks leaves the card's old bytes in the others, so a block may be left out
only where its file system says it is free. Zeros prove nothing: a free FAT entry, an empty bitmap or a
page of zeros inside a file are data the card must receive. So this reads the allocation itself: the
block bitmaps of ext4 (through dumpe2fs) and the FAT of the boot partition (parsed here); everything
outside the partitions' free space (the partition table and the gap before the first partition, a
partition of a kind we cannot read) counts as used.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagebuilder.core.errors import ImageBuilderError
from imagebuilder.core.run import output
from imagebuilder.disk.partitions import Partition, read_partitions

FAT_TYPES = {"b", "c", "e", "6", "4", "1"}
LINUX_TYPES = {"83"}

Extent = tuple[int, int]  # start, length in bytes


@dataclass(frozen=True)
class Usage:
    size: int  # of the image
    used: tuple[Extent, ...]  # sorted, disjoint
    data: int  # bytes the file systems hold (files and metadata), for the report

    def to_record(self) -> dict[str, Any]:
        return {"size": self.size, "used": self.used, "data": self.data}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Usage:
        return cls(record["size"], tuple((start, length) for start, length in record["used"]), record["data"])

    @property
    def used_bytes(self) -> int:
        return sum(length for _, length in self.used)


def merge(extents: list[Extent]) -> list[Extent]:
    out: list[Extent] = []
    for start, length in sorted(e for e in extents if e[1] > 0):
        if out and start <= out[-1][0] + out[-1][1]:
            last_start, last_length = out[-1]
            out[-1] = (last_start, max(last_length, start + length - last_start))
        else:
            out.append((start, length))
    return out


def ext4_used(image: Path, part: Partition) -> tuple[list[Extent], int]:
    """In-use blocks of the ext4 file system in `part`, from its block bitmaps; and its data bytes."""
    text = output(["dumpe2fs", f"{image}?offset={part.start}"])
    block = int(_field(text, "Block size"))
    count = int(_field(text, "Block count"))
    free: list[Extent] = []
    for line in re.findall(r"^\s+Free blocks: (.*)$", text, re.M):
        for item in filter(None, (s.strip() for s in line.split(","))):
            first, _, last = item.partition("-")
            free.append((int(first), int(last or first) - int(first) + 1))
    used: list[Extent] = []
    position = 0
    for first, length in sorted(free):
        if first > position:
            used.append((position, first - position))
        position = first + length
    if position < count:
        used.append((position, count - position))
    free_blocks = sum(length for _, length in free)
    return [(part.start + b * block, n * block) for b, n in used], (count - free_blocks) * block


def _field(text: str, name: str) -> str:
    found = re.search(rf"^{re.escape(name)}:\s*(\d+)", text, re.M)
    if found is None:
        raise ImageBuilderError(f"dumpe2fs printed no '{name}': not an ext4 file system?")
    return found.group(1)


def fat_used(image: Path, part: Partition) -> tuple[list[Extent], int]:
    """Reserved area, FATs and root directory, plus every cluster the FAT marks as in use."""
    with open(image, "rb") as f:
        f.seek(part.start)
        boot = f.read(512)
        sector, per_cluster, reserved, fats, root_entries, total16, fat16 = struct.unpack_from("<HBHBHHxH", boot, 11)
        total32, fat32 = struct.unpack_from("<II", boot, 32)
        if boot[510:512] != b"\x55\xaa" or sector not in (512, 1024, 2048, 4096) or not per_cluster or not fats:
            raise ImageBuilderError(f"{image}: partition {part.number} has no FAT boot sector")
        fat_sectors = fat16 or fat32
        total = total16 or total32
        root_sectors = (root_entries * 32 + sector - 1) // sector
        data_start = reserved + fats * fat_sectors + root_sectors
        clusters = (total - data_start) // per_cluster
        bits = 12 if clusters < 4085 else 16 if clusters < 65525 else 32
        f.seek(part.start + reserved * sector)
        table = f.read(fat_sectors * sector)
    cluster_bytes = per_cluster * sector
    used: list[Extent] = [(part.start, data_start * sector)]
    in_use = 0
    for n in range(2, clusters + 2):
        if _fat_entry(table, n, bits):
            used.append((part.start + data_start * sector + (n - 2) * cluster_bytes, cluster_bytes))
            in_use += 1
    return merge(used), data_start * sector + in_use * cluster_bytes


def _fat_entry(table: bytes, n: int, bits: int) -> int:
    if bits == 32:
        return int(struct.unpack_from("<I", table, n * 4)[0]) & 0x0FFFFFFF
    if bits == 16:
        return int(struct.unpack_from("<H", table, n * 2)[0])
    pair = int(struct.unpack_from("<H", table, n * 3 // 2)[0])
    return pair >> 4 if n & 1 else pair & 0xFFF


def image_usage(image: Path) -> Usage:
    """The bytes of `image` a card must receive; the rest its file systems record as free."""
    size = image.stat().st_size
    parts = read_partitions(image)
    used: list[Extent] = []
    data = 0
    position = 0
    for part in sorted(parts, key=lambda p: p.start):
        # The partition table, the gap before the first partition and any gap between them.
        used.append((position, part.start - position))
        kind = part.type.lower()
        if kind in FAT_TYPES:
            extents, held = fat_used(image, part)
        elif kind in LINUX_TYPES:
            extents, held = ext4_used(image, part)
        else:  # a file system we do not read: all of it
            extents, held = [(part.start, part.size)], part.size
        used += extents
        data += held
        position = part.end
    if not parts:
        used.append((0, size))
    clipped = [(s, min(length, size - s)) for s, length in merge(used) if s < size]
    return Usage(size, tuple(clipped), data)
