"""A downloaded image into a sparse raw image in the cache, keyed by the download's sha256.

  raw/<compressed sha256>.img    the raw image; zero blocks are holes, so it takes the space of its data
  raw/<compressed sha256>.json   its sha256, size and format: written last, so its presence means complete

The format is read from the file's first bytes, not its name. xz and zstd go through their programs when
installed (`-T0`: every core for the multi-block files publishers make); Python's modules otherwise.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast

from imagebuilder.core.context import Context
from imagebuilder.core.errors import ImageBuilderError
from imagebuilder.core.log import Progress, step
from imagebuilder.core.resources import atomic_output, file_lock
from imagebuilder.core.run import find_program, output, run, which
from imagebuilder.sources.checksums import sha256_of

_MAGIC = {
    b"\xfd7zXZ\x00": "xz",
    b"\x1f\x8b": "gz",
    b"\x28\xb5\x2f\xfd": "zst",
    b"PK\x03\x04": "zip",
}
_CHUNK = 1 << 20
_BLOCK = 4096  # the filesystems in an image allocate in 4 KiB blocks: smaller holes gain nothing
_ZERO_CHUNK = bytes(_CHUNK)
_ZERO_BLOCK = bytes(_BLOCK)
_DIGEST_NAME = re.compile(r"^([0-9a-f]{64})\.")


class _Readable(Protocol):
    def readinto(self, buffer: memoryview, /) -> int | None: ...


@dataclass(frozen=True)
class RawImage:
    path: Path
    sha256: str
    size: int


def detect_format(path: Path) -> str:
    """xz, gz, zst, zip, or img (anything else is taken to be a raw image)."""
    with path.open("rb") as f:
        head = f.read(8)
    return next((fmt for magic, fmt in _MAGIC.items() if head.startswith(magic)), "img")


def decompress_to_cache(ctx: Context, path: Path, sha256: str | None = None) -> RawImage:
    """The raw image of `path` (a cached download or any file), made once and reused.

    `sha256` is the digest of `path`; a file in the download cache is named by it, others are hashed.
    """
    if sha256 is None:
        m = _DIGEST_NAME.match(path.name)
        sha256 = m.group(1) if m else sha256_of(path)
    raw = ctx.cache("raw")
    image, meta = raw / f"{sha256}.img", raw / f"{sha256}.json"
    if (done := _cached(image, meta)) is not None:
        return done
    with file_lock(raw / f".lock-{sha256}", f"the raw image of {path.name}"):
        if (done := _cached(image, meta)) is not None:
            return done
        fmt = detect_format(path)
        with step(f"decompress {path.name} ({fmt})"):
            # atomic_output outermost: a decompressor failing at the very end must still discard the image.
            with atomic_output(image) as tmp, _opened(fmt, path) as (stream, total), \
                    Progress(f"decompress {path.name}", total) as progress:
                digest, size = write_sparse(stream, tmp, progress)
            with atomic_output(meta) as tmp:
                tmp.write_text(json.dumps({"sha256": digest, "size": size, "format": fmt,
                                           "source": path.name}, indent=2) + "\n")
    return RawImage(image, digest, size)


def cached_raw(cache_dir: Path, path: Path) -> RawImage | None:
    """The raw image of a cached download, if it was decompressed before (reads only)."""
    m = _DIGEST_NAME.match(path.name)
    if m is None:
        return None
    raw = cache_dir / "raw"
    return _cached(raw / f"{m.group(1)}.img", raw / f"{m.group(1)}.json")


def _cached(image: Path, meta: Path) -> RawImage | None:
    try:
        info = json.loads(meta.read_text())
    except (FileNotFoundError, ValueError):
        return None
    if not image.is_file() or image.stat().st_size != info.get("size"):
        return None
    return RawImage(image, str(info["sha256"]), int(info["size"]))


def write_sparse(stream: _Readable, target: Path, progress: Progress) -> tuple[str, int]:
    """Copy `stream` into `target`, leaving zero blocks as holes; return the sha256 and size of all of it."""
    digest = hashlib.sha256()
    buf = bytearray(_CHUNK)
    offset = 0
    with target.open("wb") as out:
        fd = out.fileno()
        while n := _read_full(stream, buf):
            chunk = buf if n == _CHUNK else buf[:n]
            digest.update(chunk)
            if chunk != _ZERO_CHUNK[:n]:  # bytearray == bytes is a memcmp; most chunks of an image differ early
                _write_data_blocks(fd, chunk, offset)
            offset += n
            progress.update(n)
        # The size a trailing hole leaves unwritten.
        os.ftruncate(fd, offset)
    return digest.hexdigest(), offset


def _write_data_blocks(fd: int, chunk: bytearray, offset: int) -> None:
    """pwrite each run of non-zero blocks of `chunk`; zero blocks are skipped and stay holes."""
    start: int | None = None
    for i in range(0, len(chunk), _BLOCK):
        zero = chunk[i:i + _BLOCK] == _ZERO_BLOCK[:min(_BLOCK, len(chunk) - i)]
        if zero and start is not None:
            os.pwrite(fd, chunk[start:i], offset + start)
            start = None
        elif not zero and start is None:
            start = i
    if start is not None:
        os.pwrite(fd, chunk[start:], offset + start)


def _read_full(stream: _Readable, buf: bytearray) -> int:
    """Fill buf unless the stream ends first (pipes and decoders hand out short reads)."""
    view = memoryview(buf)
    filled = 0
    while filled < len(buf):
        n = stream.readinto(view[filled:])
        if not n:
            break
        filled += n
    return filled


@contextlib.contextmanager
def _opened(fmt: str, path: Path) -> Iterator[tuple[_Readable, int | None]]:
    """The decompressed bytes of `path` as a stream, and their size where the format says it cheaply."""
    if fmt == "xz" and which("xz") is not None:
        with _program_output(["xz", "-T0", "-d", "-c", "--", str(path)]) as stream:
            yield stream, _xz_size(path)
    elif fmt == "xz":
        with lzma.open(path, "rb") as stream:
            yield stream, None
    elif fmt == "zst":
        find_program("zstd")  # Python has no zstd module of its own: the program is required
        with _program_output(["zstd", "-T0", "-d", "-c", "--", str(path)]) as stream:
            yield stream, None
    elif fmt == "gz":
        with gzip.open(path, "rb") as stream:
            yield stream, None
    elif fmt == "zip":
        with zipfile.ZipFile(path) as archive:
            member = _only_image(archive, path)
            with archive.open(member) as stream:
                # typeshed says IO[bytes]; it is a ZipExtFile, a BufferedIOBase with readinto.
                yield cast(_Readable, stream), member.file_size
    else:
        with path.open("rb") as stream:
            yield stream, path.stat().st_size


def _only_image(archive: zipfile.ZipFile, path: Path) -> zipfile.ZipInfo:
    files = [m for m in archive.infolist() if not m.is_dir() and not m.filename.startswith("__MACOSX/")]
    if len(files) > 1:
        images = [m for m in files if m.filename.lower().endswith(".img")]
        files = images if len(images) == 1 else files
    if len(files) != 1:
        names = ", ".join(m.filename for m in files[:5]) or "nothing"
        raise ImageBuilderError(f"{path}: a zip must hold exactly one image, this one holds {names}",
                                "unpack it and give the .img (base.url: file:///path/to/image.img)")
    return files[0]


def _xz_size(path: Path) -> int | None:
    """The uncompressed size from the xz index (read from the end of the file, no decompression)."""
    for line in output(["xz", "--robot", "--list", "--", str(path)]).splitlines():
        fields = line.split("\t")
        if fields[0] == "totals" and len(fields) > 4 and fields[4].isdigit():
            return int(fields[4])
    return None


@contextlib.contextmanager
def _program_output(argv: list[str]) -> Iterator[io.BufferedReader[io.FileIO]]:
    """Stream what a program writes to stdout; the program runs through run(), in a thread.

    The write end of the pipe is closed once the program has exited, so the reader sees the end of the
    data only after run() has checked the exit status. Leaving the block early closes the read end: the
    program dies of SIGPIPE instead of blocking forever.
    """
    read_fd, write_fd = os.pipe()
    writer = io.FileIO(write_fd, "w")
    reader = io.BufferedReader(io.FileIO(read_fd, "r"))
    failure: list[BaseException] = []

    def work() -> None:
        try:
            run(argv, stdout=writer)
        except BaseException as e:
            failure.append(e)
        finally:
            writer.close()

    thread = threading.Thread(target=work, name=f"{argv[0]}-pipe", daemon=True)
    thread.start()
    try:
        yield reader
    finally:
        reader.close()
        thread.join()
    if failure:
        raise failure[0]
