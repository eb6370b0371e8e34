"""Reading back what the build and the flash write, for the tests' checks: the package writes these and
never reads them again."""

from __future__ import annotations

from pathlib import Path

from imagebuilder.core.run import output
from imagebuilder.disk.bmap import bmap_document, range_extents
from imagebuilder.disk.copy import range_digests
from imagebuilder.disk.fat import MTOOLS_ENV
from imagebuilder.disk.partitions import Partition
from imagebuilder.disk.seed import SEED_NAME, boot_partition_offset
from imagebuilder.disk.usage import Usage


def fat_read(image: Path, part: Partition, name: str) -> str:
    """A file of the FAT partition `part` of `image`."""
    return output(["mtype", "-i", f"{image}@@{part.start}", f"::/{name}"], env=MTOOLS_ENV)


def fat_list(image: Path, part: Partition) -> list[str]:
    """The names in the root folder of the FAT partition `part` of `image`."""
    text = output(["mdir", "-b", "-i", f"{image}@@{part.start}", "::/"], env=MTOOLS_ENV)
    return sorted(line.removeprefix("::/") for line in text.splitlines() if line)


def read_hostname_seed(device: Path) -> str | None:
    """The hostname seed on a card's boot partition, or None when it has none."""
    target = f"{device}@@{boot_partition_offset(device)}"
    if SEED_NAME not in output(["mdir", "-b", "-i", target, "::/"], env=MTOOLS_ENV):
        return None
    return output(["mtype", "-i", target, f"::/{SEED_NAME}"], env=MTOOLS_ENV)


def make_bmap(image: Path, usage: Usage) -> bytes:
    """A block map of `image` mapping exactly the used extents, its checksums read from the image: what the
    build's own bmap (made from the digests taken while copying) must be."""
    return bmap_document(usage, list(range_digests(image, range_extents(usage))))
