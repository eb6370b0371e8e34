"""Copy an image onto a card (all of it, or only the blocks its bmap lists) and verify what was written.

The card is written through the page cache, flushed every `FLUSH_EVERY` bytes so the progress rate is
the card's, not the memory's; verification drops the cached pages first so it reads the card itself.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from imagebuilder.core.errors import ChecksFailed
from imagebuilder.core.log import Progress
from imagebuilder.disk.bmap import Bmap
from imagebuilder.disk.imagefile import ImageStream

CHUNK = 1 << 20
FLUSH_EVERY = 64 << 20


class VerifyFailed(ChecksFailed):
    """What the card holds is not what the image says (exit 3: the card or the image, not a mistake)."""


@dataclass(frozen=True)
class Written:
    """What a copy wrote: the bytes, and a digest of the whole range when the copy was a full one."""

    nbytes: int
    sha256: str | None


def _write_all(fd: int, offset: int, data: memoryview) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data = data[n:]
        offset += n


class _Flusher:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pending = 0

    def wrote(self, n: int) -> None:
        self.pending += n
        if self.pending >= FLUSH_EVERY:
            os.fdatasync(self.fd)
            self.pending = 0


def write_whole(stream: ImageStream, fd: int, size: int | None, progress: Progress) -> Written:
    """Copy every byte of the stream to the start of fd."""
    buffer = memoryview(bytearray(CHUNK))
    digest = hashlib.sha256()
    flusher = _Flusher(fd)
    offset = 0
    while True:
        n = stream.readinto(buffer)
        if not n:
            break
        _write_all(fd, offset, buffer[:n])
        digest.update(buffer[:n])
        offset += n
        flusher.wrote(n)
        progress.update(n)
    if size is not None and offset != size:
        raise VerifyFailed(f"{stream.image}: gave {offset} bytes, expected {size}",
                           "the file is damaged or truncated: copy or build it again")
    os.fsync(fd)
    return Written(offset, digest.hexdigest())


def write_mapped(stream: ImageStream, fd: int, bmap: Bmap, progress: Progress) -> Written:
    """Copy only the bmap's ranges, checking each range read from the image against its checksum."""
    buffer = memoryview(bytearray(CHUNK))
    flusher = _Flusher(fd)
    position = 0  # how far the stream has been read
    written = 0
    for r in bmap.ranges:
        start, length = bmap.range_bytes(r)
        if start < position:
            raise VerifyFailed(f"{stream.image}: its bmap lists ranges out of order",
                               "recreate it with bmaptool create")
        stream.skip(start - position, buffer)
        digest = hashlib.new(bmap.checksum_type) if bmap.checksum_type else None
        offset, end = start, start + length
        while offset < end:
            n = stream.readinto(buffer[:min(CHUNK, end - offset)])
            if not n:
                raise VerifyFailed(f"{stream.image}: ends before the blocks its bmap lists",
                                   "the bmap belongs to another image: recreate it with bmaptool create")
            _write_all(fd, offset, buffer[:n])
            if digest:
                digest.update(buffer[:n])
            offset += n
            flusher.wrote(n)
            progress.update(n)
        position = end
        written += length
        if digest and digest.hexdigest() != r.checksum:
            raise VerifyFailed(f"{stream.image}: blocks {r.first}-{r.last} do not match the bmap's checksum",
                               "the image changed after its bmap was made: recreate the bmap or rebuild")
    os.fsync(fd)
    return Written(written, None)


def _drop_cache(fd: int) -> None:
    # Clean pages for the device go, so the reads below come from the card and not from memory.
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def read_digest(fd: int, offset: int, length: int, kind: str, progress: Progress) -> str:
    buffer = memoryview(bytearray(CHUNK))
    digest = hashlib.new(kind)
    end = offset + length
    while offset < end:
        n = os.preadv(fd, [buffer[:min(CHUNK, end - offset)]], offset)
        if not n:
            break
        digest.update(buffer[:n])
        offset += n
        progress.update(n)
    return digest.hexdigest()


def verify_whole(fd: int, written: Written, progress: Progress) -> None:
    assert written.sha256 is not None
    _drop_cache(fd)
    if read_digest(fd, 0, written.nbytes, "sha256", progress) != written.sha256:
        raise VerifyFailed(f"verification failed: the card does not read back the {written.nbytes} bytes written "
                           "(sha256 differs)",
                           "the card or the reader may be failing: try another card")


def verify_mapped(fd: int, bmap: Bmap, progress: Progress) -> None:
    if bmap.checksum_type is None:
        raise VerifyFailed("the bmap has no checksums, so the card cannot be verified",
                           "recreate it with bmaptool create (format 2 has sha256 checksums)")
    _drop_cache(fd)
    for r in bmap.ranges:
        start, length = bmap.range_bytes(r)
        if read_digest(fd, start, length, bmap.checksum_type, progress) != r.checksum:
            raise VerifyFailed(f"verification failed: the card does not read back blocks {r.first}-{r.last} "
                               f"(bytes {start}-{start + length - 1}) as written",
                               "the card or the reader may be failing: try another card")
