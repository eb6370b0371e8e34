"""An image on disk in one of its forms (.img, .img.xz, .img.zst): its sizes, its bmap, its bytes.

Compressed images are decompressed while streaming, by xz or zstd in a child process (both
decompress faster than Python's own modules, and xz uses every core).
"""

from __future__ import annotations

import contextlib
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from imagebuilder.core.errors import ImageBuilderError
from imagebuilder.core.resources import spawned
from imagebuilder.core.run import output

DECOMPRESS = {".xz": ["xz", "--decompress", "--stdout", "--threads=0"], ".zst": ["zstd", "-d", "-c", "-q"]}
FORMS = (".img", ".img.xz", ".img.zst")


class ImageFileError(ImageBuilderError):
    """An image that cannot be read or decompressed."""


def compression_of(image: Path) -> str | None:
    return image.suffix if image.suffix in DECOMPRESS else None


def raw_name(image: Path) -> Path:
    """worker.img.xz -> worker.img; worker.img -> worker.img."""
    return image.with_suffix("") if compression_of(image) else image


def find_bmap(image: Path) -> Path | None:
    """The .bmap beside an image: worker.img.bmap serves worker.img, .img.xz and .img.zst alike."""
    for candidate in (raw_name(image).with_name(raw_name(image).name + ".bmap"),
                      image.with_name(image.name + ".bmap")):
        if candidate.is_file():
            return candidate
    return None


def extract_size(image: Path) -> int | None:
    """Size of the raw image; None when a compressed file does not record it."""
    kind = compression_of(image)
    if kind is None:
        return image.stat().st_size
    if kind == ".xz":
        # --robot: a 'totals' line whose fifth field is the uncompressed size.
        for line in output(["xz", "--robot", "--list", image]).splitlines():
            fields = line.split("\t")
            if fields[0] == "totals":
                return int(fields[4])
        return None
    listing = output(["zstd", "-l", "-v", image])
    match = re.search(r"Decompressed Size:.*\((\d+) B\)", listing)
    return int(match.group(1)) if match else None


class ImageStream:
    """Reads the raw bytes of an image; at the end, a failed decompressor raises ImageFileError."""

    def __init__(self, image: Path, raw: IO[bytes], proc: subprocess.Popen[bytes] | None) -> None:
        self.image = image
        self._raw = raw
        self._proc = proc

    def read(self, size: int) -> bytes:
        data = self._raw.read(size)
        if not data and self._proc is not None:
            self._check_exit()
        return data

    def readinto(self, buffer: memoryview) -> int:
        """Fill `buffer` as far as the stream goes; fewer bytes only at the end."""
        done = 0
        while done < len(buffer):
            n = self._raw.readinto(buffer[done:])  # type: ignore[attr-defined]
            if not n:
                if self._proc is not None:
                    self._check_exit()
                break
            done += n
        return done

    def skip(self, count: int, buffer: memoryview) -> None:
        """Move `count` bytes on: a seek in a raw image (its holes are never read), a read otherwise."""
        if self._proc is None:
            self._raw.seek(count, 1)
            return
        while count:
            n = self.readinto(buffer[:min(count, len(buffer))])
            if not n:
                raise ImageFileError(f"{self.image}: ends {count} bytes early",
                                     "the file is damaged or truncated: copy or build it again")
            count -= n

    def _check_exit(self) -> None:
        assert self._proc is not None
        code = self._proc.wait()
        if code != 0:
            assert self._proc.stderr is not None
            message = self._proc.stderr.read().decode(errors="replace").strip().splitlines()
            raise ImageFileError(f"{self.image}: cannot decompress it (exit {code}): "
                                 f"{message[-1] if message else 'no message'}",
                                 "the file is damaged or truncated: copy or build it again")


@contextlib.contextmanager
def open_image(image: Path) -> Iterator[ImageStream]:
    """Open an image for reading its raw bytes from the start."""
    kind = compression_of(image)
    if kind is None:
        with image.open("rb", buffering=0) as f:
            yield ImageStream(image, f, None)
        return
    argv = [*DECOMPRESS[kind], "--", str(image)]
    with spawned(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        yield ImageStream(image, proc.stdout, proc)
