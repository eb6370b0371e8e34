"""Write a hostname seed onto a flashed card's boot partition, so that card takes that name.

The boot partition is FAT; mtools writes into it at its byte offset, so nothing is mounted (some
kernels, like our CI's, cannot mount vfat at all). The worker's first-boot lookup
(overlays/worker/root/usr/local/lib/imagebuilder/set_hostname.py) reads the seed before the MAC table.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from imagebuilder.core.errors import ImageBuilderError
from imagebuilder.core.resources import temporary_directory
from imagebuilder.core.run import output, run
from imagebuilder.disk.fat import MTOOLS_ENV
from imagebuilder.recipe.fields import check_hostname

SEED_NAME = "imagebuilder-hostname"
# MBR types of FAT partitions, and the GPT "basic data" type.
_FAT_TYPES = {"b", "c", "e", "6", "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7"}


class SeedError(ImageBuilderError):
    """The hostname seed cannot be written."""


def check_seed_hostname(name: str) -> str:
    """Return the name if it is an RFC 1123 label (lower case), else raise SeedError."""
    if check_hostname(name) is not None:
        raise SeedError(f"--hostname '{name}' is not a valid hostname",
                        "use 1-63 of a-z, 0-9 and '-', not starting or ending with '-'")
    return name


def boot_partition_offset(device: Path) -> int:
    """Byte offset of the first partition, which must be FAT (the Pi firmware reads only that one)."""
    table = json.loads(output(["sfdisk", "--json", device])).get("partitiontable", {})
    partitions = table.get("partitions", [])
    if not partitions:
        raise SeedError(f"{device}: no partition table after writing", "was the image a disk image?")
    first = partitions[0]
    if str(first.get("type", "")).lower() not in _FAT_TYPES:
        raise SeedError(f"{device}: the first partition is not FAT (type {first.get('type')})",
                        "--hostname needs a Raspberry Pi image with its boot partition first")
    return int(first["start"]) * int(table.get("sectorsize", 512))


def write_hostname_seed(device: Path, hostname: str) -> None:
    """Put `imagebuilder-hostname` (one line: the name) at the root of the boot partition."""
    check_seed_hostname(hostname)
    target = f"{device}@@{boot_partition_offset(device)}"
    with temporary_directory(prefix="seed-") as tmp:
        seed = tmp / SEED_NAME
        seed.write_text(hostname + "\n")
        # -o: replace a seed from an earlier flash instead of asking.
        run(["mcopy", "-o", "-i", target, seed, f"::/{SEED_NAME}"], env=MTOOLS_ENV)
    fd = os.open(device, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
