"""Read a block map (bmaptool's .bmap, format 1.x and 2.x): which blocks of an image hold data.

The ranges' checksums let the flash command verify both what it read from the image and what it
wrote onto the card.
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from imagebuilder.core.errors import ImageBuilderError
from imagebuilder.disk.usage import Usage


class BmapError(ImageBuilderError):
    """A .bmap that cannot be read, or whose own checksum does not match."""


@dataclass(frozen=True)
class BlockRange:
    first: int  # block numbers, inclusive
    last: int
    checksum: str | None


@dataclass(frozen=True)
class Bmap:
    image_size: int
    block_size: int
    mapped_blocks: int
    checksum_type: str | None  # hashlib name: sha256 (format 2), sha1 (format 1), or None
    ranges: tuple[BlockRange, ...]

    @property
    def mapped_bytes(self) -> int:
        return sum(self.range_bytes(r)[1] for r in self.ranges)

    def range_bytes(self, r: BlockRange) -> tuple[int, int]:
        """Offset and length in bytes; the last block may be cut short by the image's end."""
        start = r.first * self.block_size
        end = min((r.last + 1) * self.block_size, self.image_size)
        return start, end - start


def _text(root: ET.Element, tag: str, path: Path) -> str:
    node = root.find(tag)
    if node is None or node.text is None:
        raise BmapError(f"{path}: no <{tag}> element: not a bmap file", "recreate it: bmaptool create IMAGE")
    return node.text.strip()


def _check_file_checksum(path: Path, raw: bytes, expected: str, kind: str) -> None:
    # bmaptool computes it over the file with the checksum's own digits replaced by zeros.
    zeroed = raw.replace(expected.encode(), b"0" * len(expected), 1)
    if hashlib.new(kind, zeroed).hexdigest() != expected:
        raise BmapError(f"{path}: the bmap file's own checksum does not match: it was edited or damaged",
                        "recreate it from the image: bmaptool create IMAGE -o IMAGE.bmap")


def load_bmap(path: Path) -> Bmap:
    raw = path.read_bytes()
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as e:
        raise BmapError(f"{path}: not a bmap file ({e})", "recreate it: bmaptool create IMAGE") from None
    major = int(root.get("version", "1.0").split(".")[0])
    if major not in (1, 2):
        raise BmapError(f"{path}: bmap format {root.get('version')} is not supported (1.x or 2.x)")
    try:
        image_size = int(_text(root, "ImageSize", path))
        block_size = int(_text(root, "BlockSize", path))
        mapped = int(_text(root, "MappedBlocksCount", path))
    except ValueError:
        raise BmapError(f"{path}: a size in it is not a number", "recreate it: bmaptool create IMAGE") from None
    kind: str | None = _text(root, "ChecksumType", path) if major == 2 else "sha1"
    file_checksum = root.find("BmapFileChecksum")
    if kind and file_checksum is not None and file_checksum.text:
        _check_file_checksum(path, raw, file_checksum.text.strip(), kind)
    ranges = []
    for node in root.iterfind("BlockMap/Range"):
        first, _, last = (node.text or "").strip().partition("-")
        try:
            ranges.append(BlockRange(int(first), int(last or first), node.get("chksum") or node.get("sha1")))
        except ValueError:
            raise BmapError(f"{path}: bad range '{node.text}'", "recreate it: bmaptool create IMAGE") from None
    if not any(r.checksum for r in ranges):
        kind = None
    return Bmap(image_size, block_size, mapped, kind, tuple(ranges))


BLOCK = 4096


def block_ranges(usage: Usage, block_size: int = BLOCK) -> list[tuple[int, int]]:
    """The used extents as inclusive block ranges, each widened to whole blocks, touching ones joined."""
    ranges: list[tuple[int, int]] = []
    for start, length in usage.used:
        first, last = start // block_size, (start + length - 1) // block_size
        if ranges and first <= ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], max(ranges[-1][1], last))
        else:
            ranges.append((first, last))
    return ranges


def range_extents(usage: Usage, block_size: int = BLOCK) -> list[tuple[int, int]]:
    """The block ranges as [start, end) byte extents of the image (the last cut at the image's end)."""
    return [(first * block_size, min((last + 1) * block_size, usage.size))
            for first, last in block_ranges(usage, block_size)]


def bmap_document(usage: Usage, digests: list[str], block_size: int = BLOCK) -> bytes:
    """A bmaptool format 2.0 block map mapping exactly the used extents, with each range's sha256.

    Unlike `bmaptool create`, which maps what is not a hole in the file, this maps what the file systems
    use: a used block of zeros is mapped, and written over whatever the card held.
    """
    blocks = (usage.size + block_size - 1) // block_size
    ranges = block_ranges(usage, block_size)
    assert len(ranges) == len(digests)
    lines = [f'        <Range chksum="{digest}"> {first}-{last} </Range>' if last != first
             else f'        <Range chksum="{digest}"> {first} </Range>'
             for (first, last), digest in zip(ranges, digests, strict=True)]
    mapped = sum(last - first + 1 for first, last in ranges)
    zeros = "0" * 64
    document = "\n".join([
        '<?xml version="1.0" ?>',
        "<!-- A block map (bmaptool format 2.0) made by imagebuilder from the image's file systems: a block",
        "     is mapped unless its file system records it as free. -->",
        '<bmap version="2.0">',
        f"    <ImageSize> {usage.size} </ImageSize>",
        f"    <BlockSize> {block_size} </BlockSize>",
        f"    <BlocksCount> {blocks} </BlocksCount>",
        f"    <MappedBlocksCount> {mapped} </MappedBlocksCount>",
        "    <ChecksumType> sha256 </ChecksumType>",
        f"    <BmapFileChecksum> {zeros} </BmapFileChecksum>",
        "    <BlockMap>",
        *lines,
        "    </BlockMap>",
        "</bmap>",
        "",
    ]).encode()
    # The file's own checksum is over the file with that field zeroed (bmaptool's rule, checked by load_bmap).
    return document.replace(zeros.encode(), hashlib.sha256(document).hexdigest().encode(), 1)
