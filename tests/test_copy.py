"""Image copies: holes for holes, the digests taken on the way, and reflinks where the file system has them."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import threading
from pathlib import Path

import pytest

from imagebuilder.core.log import Progress
from imagebuilder.core.resources import atomic_output, loop_device, mounted
from imagebuilder.disk.copy import (
    CHUNK,
    can_reflink,
    clone_image,
    copy_image,
    copy_range,
    data_extents,
    digest_image,
    range_digests,
    share_image,
    stream_image,
)
from tests.conftest import require_programs, require_root

MIB = 2**20


def sparse_file(path: Path) -> bytes:
    """A file with data, a used block of zeros, holes, and data across chunk borders; return its bytes."""
    size = 3 * CHUNK + 12345
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in ((0, os.urandom(MIB)), (CHUNK - 100, os.urandom(300)), (2 * CHUNK, bytes(MIB)),
                             (3 * CHUNK, os.urandom(12345))):
            f.seek(offset)
            f.write(data)
    return path.read_bytes()


RANGES = [(0, 4096), (CHUNK - 200, CHUNK + 200), (2 * CHUNK, 2 * CHUNK + 4096), (3 * CHUNK, 3 * CHUNK + 12345)]


def test_copy_keeps_holes_and_hashes_whole_and_ranges(tmp_path: Path) -> None:
    source, target = tmp_path / "a.img", tmp_path / "b.img"
    data = sparse_file(source)
    copied = copy_image(source, target, RANGES)
    assert target.read_bytes() == data
    assert copied.sha256 == hashlib.sha256(data).hexdigest() == digest_image(source).sha256
    expected = tuple(hashlib.sha256(data[a:b]).hexdigest() for a, b in RANGES)
    assert copied.range_sha256 == expected == digest_image(source, RANGES).range_sha256
    assert range_digests(source, RANGES) == expected == range_digests(source, RANGES, threads=3)
    fd = os.open(target, os.O_RDONLY)
    try:  # the used block of zeros is data in the copy too, the holes stay holes
        assert data_extents(fd, len(data)) == data_extents(os.open(source, os.O_RDONLY), len(data))
    finally:
        os.close(fd)


def test_clone_copies_by_the_kernel_holes_for_holes(tmp_path: Path) -> None:
    source, target = tmp_path / "a.img", tmp_path / "b.img"
    data = sparse_file(source)
    target.write_bytes(b"old content, longer than nothing" * 1000)
    how = clone_image(source, target)
    assert how == ("reflink" if can_reflink(source, tmp_path) else "copy")
    assert target.read_bytes() == data
    assert target.stat().st_blocks <= source.stat().st_blocks + 8
    assert not list(tmp_path.glob(".imagebuilder-reflink-probe-*"))


def test_share_gives_the_file_itself_where_there_are_no_reflinks(tmp_path: Path) -> None:
    source = tmp_path / "stage.img"
    data = sparse_file(source)
    with atomic_output(tmp_path / "out.img", 0o600) as tmp:
        how = share_image(source, tmp)
    target = tmp_path / "out.img"
    assert target.read_bytes() == data
    if how == "hardlink":
        assert target.stat().st_ino == source.stat().st_ino and source.stat().st_nlink == 2
    else:
        assert how == "reflink" and can_reflink(source, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.img", "stage.img"]  # no spare, no partial


def test_share_leaves_the_target_as_it_was_when_it_cannot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Across file systems (no reflink, no hard link) nothing is shared: the caller copies into the very file
    it made (its mode, its lock)."""
    source, target = tmp_path / "stage.img", tmp_path / "out.img"
    sparse_file(source)
    target.write_bytes(b"mine")
    inode = target.stat().st_ino

    def cross_device(src: object, dst: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")
    monkeypatch.setattr(os, "link", cross_device)
    monkeypatch.setattr("imagebuilder.disk.copy._reflink", lambda src, dst: False)
    assert share_image(source, target) is None
    assert target.stat().st_ino == inode and source.stat().st_nlink == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.img", "stage.img"]


def test_stream_gives_every_byte_holes_as_zeros(tmp_path: Path) -> None:
    """What a compressor reads from the pipe is the file, byte for byte, holes and all; its progress counts
    every byte fed."""
    source = tmp_path / "a.img"
    data = sparse_file(source)
    progress = Progress("stream", len(data))
    reader, writer = os.pipe()
    received: list[bytes] = []

    def drain() -> None:
        while chunk := os.read(reader, 1 << 20):
            received.append(chunk)

    thread = threading.Thread(target=drain)
    thread.start()
    try:
        stream_image(source, writer, progress)
    finally:
        os.close(writer)
        thread.join()
        os.close(reader)
    assert b"".join(received) == data
    assert progress.done == len(data)


def test_copy_range_moves_bytes_to_an_offset(tmp_path: Path) -> None:
    source, target = tmp_path / "a", tmp_path / "b"
    source.write_bytes(os.urandom(3 * MIB))
    with open(source, "rb") as src, open(target, "wb") as dst:
        copy_range(src.fileno(), dst.fileno(), MIB, 3 * MIB, MIB)
    assert target.read_bytes() == source.read_bytes()[MIB:]


@pytest.mark.integration
def test_clone_is_a_reflink_on_btrfs(tmp_path: Path) -> None:
    """Where the file system shares blocks, a clone of a large image takes no data blocks of its own."""
    require_root()
    require_programs("mkfs.btrfs")
    backing = tmp_path / "btrfs.img"
    with open(backing, "wb") as f:
        f.truncate(512 * MIB)
    subprocess.run(["mkfs.btrfs", "-q", backing], check=True)
    with loop_device(backing) as device, mounted(device, tmp_path / "mnt", fstype="btrfs") as fs:
        source = fs / "a.img"
        data = sparse_file(source)
        with open(source, "ab") as f:
            f.write(os.urandom(64 * MIB))
        os.sync()
        before = os.statvfs(fs)
        assert can_reflink(source, fs)
        assert clone_image(source, fs / "b.img") == "reflink"
        os.sync()
        after = os.statvfs(fs)
        taken = (before.f_bfree - after.f_bfree) * before.f_frsize
        assert taken < 4 * MIB, taken
        assert (fs / "b.img").read_bytes()[:len(data)] == data
