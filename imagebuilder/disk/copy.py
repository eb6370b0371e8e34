"""Copy an image file keeping exactly its holes, and hash it on the way.

Exactly: a hole in the copy is a hole in the source, never a block of zeros found by looking (which is
what `cp --sparse=always` does, and how used blocks of zeros once became holes). The holes of our images
are the free blocks fstrim punched, so the copy's allocation follows its file systems'.

One pass over the data gives the copy, the sha256 of the whole copy and the sha256 of given byte ranges
(the block map's), so that nothing is read twice.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from imagebuilder.core.log import Progress
from imagebuilder.core.resources import disk_full

CHUNK = 1 << 20
_ZEROS = memoryview(bytes(CHUNK))


@dataclass(frozen=True)
class Copied:
    sha256: str  # of the whole copy
    range_sha256: tuple[str, ...]  # of each byte range asked for, in order
    data_bytes: int  # bytes that are not holes


class _Hashes:
    """The whole-file digest and the digests of sorted, disjoint [start, end) ranges, fed in file order."""

    def __init__(self, ranges: Sequence[tuple[int, int]]) -> None:
        self.whole = hashlib.sha256()
        self.ranges = ranges
        self.parts = [hashlib.sha256() for _ in ranges]
        self.index = 0

    def feed(self, offset: int, data: memoryview) -> None:
        self.whole.update(data)
        end = offset + len(data)
        while self.index < len(self.ranges):
            start, stop = self.ranges[self.index]
            if start >= end:
                return
            low, high = max(start, offset), min(stop, end)
            if low < high:
                self.parts[self.index].update(data[low - offset:high - offset])
            if stop > end:
                return
            self.index += 1


def data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """The [start, end) extents of fd that hold data (SEEK_DATA/SEEK_HOLE); all of it where unsupported."""
    extents = []
    offset = 0
    try:
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:  # only a hole is left
                    break
                raise
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            extents.append((start, end))
            offset = end
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
            raise
        return [(0, size)]
    return extents


def copy_image(source: Path, target: Path, ranges: Sequence[tuple[int, int]] = (),
               progress: Progress | None = None) -> Copied:
    """Copy source into target (created or truncated), holes for holes; hash the whole and each range."""
    try:
        return _copy(source, target, ranges, progress)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full(target.parent, f"a copy of {source.name}") from None
        raise


def _copy(source: Path, target: Path, ranges: Sequence[tuple[int, int]], progress: Progress | None) -> Copied:
    hashes = _Hashes(ranges)
    buffer = memoryview(bytearray(CHUNK))
    copied = 0
    with open(source, "rb", buffering=0) as src, open(target, "wb", buffering=0) as dst:
        size = os.fstat(src.fileno()).st_size
        position = 0
        for start, end in data_extents(src.fileno(), size):
            _hash_zeros(hashes, position, start)
            offset = start
            while offset < end:
                n = os.preadv(src.fileno(), [buffer[:min(CHUNK, end - offset)]], offset)
                if n == 0:
                    raise OSError(errno.EIO, f"{source} ended at {offset} while reading it")
                view = buffer[:n]
                written = 0
                while written < n:
                    written += os.pwrite(dst.fileno(), view[written:], offset + written)
                hashes.feed(offset, view)
                offset += n
                copied += n
                if progress is not None:
                    progress.update(n)
            position = end
        _hash_zeros(hashes, position, size)
        os.ftruncate(dst.fileno(), size)
    return Copied(hashes.whole.hexdigest(), tuple(p.hexdigest() for p in hashes.parts), copied)


def _hash_zeros(hashes: _Hashes, start: int, end: int) -> None:
    while start < end:
        n = min(CHUNK, end - start)
        hashes.feed(start, _ZEROS[:n])
        start += n
