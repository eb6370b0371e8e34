"""Copy an image file keeping exactly its holes, and hash it on the way.

Exactly: a hole in the copy is a hole in the source, never a block of zeros found by looking (which is
what `cp --sparse=always` does, and how used blocks of zeros once became holes). The holes of our images
are the free blocks fstrim punched, so the copy's allocation follows its file systems'.

One pass over the data gives the copy, the sha256 of the whole copy and the sha256 of given byte ranges
(the block map's), so that nothing is read twice. The two digests are taken on their own threads
(hashlib lets go of the GIL), beside the reads and writes: sha256 is the slowest part of a copy here.
Where nothing needs hashing, the kernel copies (a reflink where the file system shares blocks, else
copy_file_range), and no byte passes through this process.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from imagebuilder.core.beside import raise_if_cancelled
from imagebuilder.core.log import Progress
from imagebuilder.core.resources import disk_full

CHUNK = 4 << 20
_ZEROS = memoryview(bytes(CHUNK))
BUFFERS = 4  # in flight between the reader and the two hashing threads
FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)
F_SETPIPE_SZ = 1031  # linux/fcntl.h


@dataclass(frozen=True)
class Copied:
    sha256: str  # of the whole copy
    range_sha256: tuple[str, ...]  # of each byte range asked for, in order
    data_bytes: int  # bytes that are not holes


class _Hashes:
    """The whole-file digest and the digests of sorted, disjoint [start, end) ranges, fed in file order.

    Each of the two has a thread of its own, which takes its feeds in order. `feed` returns at once, with
    what to wait for before `data`'s buffer may be filled again.
    """

    def __init__(self, ranges: Sequence[tuple[int, int]], whole: ThreadPoolExecutor,
                 parts: ThreadPoolExecutor) -> None:
        self.whole = hashlib.sha256()
        self.ranges = ranges
        self.parts = [hashlib.sha256() for _ in ranges]
        self.index = 0
        self.threads = (whole, parts)
        self.last: list[Future[None]] = []

    def feed(self, offset: int, data: memoryview) -> list[Future[None]]:
        self.last = [self.threads[0].submit(self.whole.update, data)]
        if self.index < len(self.ranges):
            self.last.append(self.threads[1].submit(self._feed_parts, offset, data))
        return self.last

    def _feed_parts(self, offset: int, data: memoryview) -> None:
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

    def finish(self) -> tuple[str, tuple[str, ...]]:
        for future in self.last:
            future.result()
        return self.whole.hexdigest(), tuple(p.hexdigest() for p in self.parts)


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


def copy_image(source: Path, target: Path | None, ranges: Sequence[tuple[int, int]] = (),
               progress: Progress | None = None) -> Copied:
    """Copy source into target (created or truncated), holes for holes; hash the whole and each range.

    target None: only hash (one read of the data, holes hashed as zeros without reading them).
    """
    try:
        return _copy(source, target, ranges, progress)
    except OSError as e:
        if target is not None and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full(target.parent, f"a copy of {source.name}") from None
        raise


def digest_image(path: Path, ranges: Sequence[tuple[int, int]] = ()) -> Copied:
    return copy_image(path, None, ranges)


def _copy(source: Path, target: Path | None, ranges: Sequence[tuple[int, int]],
          progress: Progress | None) -> Copied:
    buffers = [memoryview(bytearray(CHUNK)) for _ in range(BUFFERS)]
    busy: list[list[Future[None]]] = [[] for _ in range(BUFFERS)]
    turn = 0
    copied = 0
    with ThreadPoolExecutor(1, thread_name_prefix="sha256") as whole, \
            ThreadPoolExecutor(1, thread_name_prefix="sha256-ranges") as parts, \
            open(source, "rb", buffering=0) as src, \
            (open(target, "wb", buffering=0) if target is not None else open(os.devnull, "wb")) as dst:
        hashes = _Hashes(ranges, whole, parts)
        size = os.fstat(src.fileno()).st_size
        position = 0
        for start, end in data_extents(src.fileno(), size):
            _hash_zeros(hashes, position, start)
            offset = start
            while offset < end:
                raise_if_cancelled()
                for future in busy[turn]:  # the hashing threads are done with this buffer
                    future.result()
                buffer = buffers[turn]
                n = os.preadv(src.fileno(), [buffer[:min(CHUNK, end - offset)]], offset)
                if n == 0:
                    raise OSError(errno.EIO, f"{source} ended at {offset} while reading it")
                view = buffer[:n]
                if target is not None:
                    _write_all(dst.fileno(), view, offset)
                busy[turn] = hashes.feed(offset, view)
                turn = (turn + 1) % BUFFERS
                offset += n
                copied += n
                if progress is not None:
                    progress.update(n)
            position = end
        _hash_zeros(hashes, position, size)
        if target is not None:
            os.ftruncate(dst.fileno(), size)
        digest, range_digests = hashes.finish()
    return Copied(digest, range_digests, copied)


def _hash_zeros(hashes: _Hashes, start: int, end: int) -> None:
    while start < end:
        n = min(CHUNK, end - start)
        hashes.feed(start, _ZEROS[:n])
        start += n


def stream_image(source: Path, pipe: int, progress: Progress | None = None) -> None:
    """Write the whole of source into a pipe: its data by the kernel (sendfile), its holes as zeros from
    memory. A compressor reading the file itself would read the holes (about 1 GiB in our images) through
    the page cache, which first fills it with pages of zeros: 3 s of system time per image, measured,
    against 1.4 s this way. progress: counts the bytes the pipe took (what the reader has, less the pipe's
    1 MiB and what the reader holds unfinished)."""
    counted = progress.update if progress is not None else _uncounted
    with contextlib.suppress(OSError):  # a larger pipe: fewer wake-ups (1 MiB is what anyone may ask)
        fcntl.fcntl(pipe, F_SETPIPE_SZ, 1 << 20)
    with open(source, "rb", buffering=0) as src:
        size = os.fstat(src.fileno()).st_size
        position = 0
        for start, end in data_extents(src.fileno(), size):
            _write_zeros(pipe, start - position, counted)
            offset = start
            while offset < end:
                sent = os.sendfile(pipe, src.fileno(), offset, end - offset)
                if sent == 0:
                    raise OSError(errno.EIO, f"{source} ended at {offset} while reading it")
                offset += sent
                counted(sent)
            position = end
        _write_zeros(pipe, size - position, counted)


def _uncounted(n: int) -> None:
    pass


def _write_zeros(fd: int, count: int, counted: Callable[[int], None]) -> None:
    while count > 0:
        written = os.write(fd, _ZEROS[:min(count, CHUNK)])
        count -= written
        counted(written)


def clone_image(source: Path, target: Path) -> str:
    """Copy source into target by the kernel, holes for holes, unhashed; return how: "reflink" or "copy".

    A reflink shares the blocks until either file is written (btrfs, XFS); elsewhere copy_file_range copies
    each data extent inside the kernel.
    """
    try:
        with open(source, "rb", buffering=0) as src, open(target, "wb", buffering=0) as dst:
            if _reflink(src.fileno(), dst.fileno()):
                return "reflink"
            size = os.fstat(src.fileno()).st_size
            for start, end in data_extents(src.fileno(), size):
                raise_if_cancelled()
                copy_range(src.fileno(), dst.fileno(), start, end)
            os.ftruncate(dst.fileno(), size)
            return "copy"
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full(target.parent, f"a copy of {source.name}") from None
        raise


def share_image(source: Path, target: Path) -> str | None:
    """Make target (an existing file, replaced) hold source's bytes without copying them; return how, or
    None where neither way works here (target then is left as it was).

    "reflink": target shares source's blocks and is a file of its own (btrfs, XFS).
    "hardlink": target is source itself, the only way without a copy elsewhere (ext4). Only for a source
    nobody writes again (a finished cache entry): a write through either name changes both.
    """
    with open(source, "rb", buffering=0) as src, open(target, "wb", buffering=0) as dst:
        if _reflink(src.fileno(), dst.fileno()):
            return "reflink"
    # The file atomic_output made (its lock, its mode) is set aside until the link exists, and is back
    # when there is none.
    spare = target.with_name(target.name + ".spare")
    os.replace(target, spare)
    try:
        os.link(source, target)
    except OSError as e:
        os.replace(spare, target)
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
        return None
    spare.unlink()
    return "hardlink"


def _reflink(src: int, dst: int) -> bool:
    try:
        fcntl.ioctl(dst, FICLONE, src)
        return True
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS):
            raise
        return False


def can_reflink(source: Path, folder: Path) -> bool:
    """Whether a file in `folder` can share source's blocks (tried on a scratch file, removed at once)."""
    probe = folder / f".imagebuilder-reflink-probe-{os.getpid()}"
    try:
        with open(source, "rb", buffering=0) as src, open(probe, "wb", buffering=0) as dst:
            return _reflink(src.fileno(), dst.fileno())
    finally:
        probe.unlink(missing_ok=True)


def copy_range(src: int, dst: int, start: int, end: int, shift: int = 0) -> None:
    """Copy source bytes [start, end) to start - shift in dst, inside the kernel where it can."""
    offset = start
    while offset < end:
        try:
            n = os.copy_file_range(src, dst, end - offset, offset, offset - shift)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            n = _copy_by_hand(src, dst, offset, min(end, offset + CHUNK), shift)
        if n == 0:
            raise OSError(errno.EIO, f"the source ended at {offset} while copying it")
        offset += n


def _copy_by_hand(src: int, dst: int, start: int, end: int, shift: int) -> int:
    data = os.pread(src, end - start, start)
    _write_all(dst, memoryview(data), start - shift)
    return len(data)


def _write_all(fd: int, data: memoryview, offset: int) -> None:
    written = 0
    while written < len(data):
        written += os.pwrite(fd, data[written:], offset + written)


def range_digests(path: Path, ranges: Sequence[tuple[int, int]], threads: int = 2) -> tuple[str, ...]:
    """The sha256 of each [start, end) byte range of path, the ranges shared out between threads."""
    total = sum(end - start for start, end in ranges) or 1
    shares: list[list[int]] = [[] for _ in range(threads)]
    done = 0
    for index, (start, end) in enumerate(ranges):  # consecutive runs of about equal bytes
        shares[min(threads - 1, done * threads // total)].append(index)
        done += end - start
    digests = [""] * len(ranges)

    def hash_share(indexes: list[int]) -> None:
        with open(path, "rb", buffering=0) as f:
            buffer = memoryview(bytearray(CHUNK))
            for index in indexes:
                digest = hashlib.sha256()
                start, end = ranges[index]
                while start < end:
                    raise_if_cancelled()
                    n = os.preadv(f.fileno(), [buffer[:min(CHUNK, end - start)]], start)
                    if n == 0:
                        raise OSError(errno.EIO, f"{path} ended at {start} while reading it")
                    digest.update(buffer[:n])
                    start += n
                digests[index] = digest.hexdigest()

    with ThreadPoolExecutor(threads, thread_name_prefix="sha256-ranges") as pool:
        for future in [pool.submit(hash_share, share) for share in shares]:
            future.result()
    return tuple(digests)


FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02  # linux/falloc.h


def clear_range(path: Path, start: int, end: int) -> None:
    """Make bytes [start, end) of the file read as zeros: a hole where the file system can punch one,
    written zeros elsewhere. (mkfs.vfat leaves the old data clusters as they were.)"""
    libc = ctypes.CDLL(None, use_errno=True)
    fallocate = libc.fallocate64  # 64-bit offsets on 32-bit hosts too (armhf workstations)
    fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    with open(path, "r+b", buffering=0) as f:
        if fallocate(f.fileno(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, start, end - start) == 0:
            return
        for offset in range(start, end, CHUNK):
            _write_all(f.fileno(), _ZEROS[:min(CHUNK, end - offset)], offset)
