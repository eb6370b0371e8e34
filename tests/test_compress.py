"""The emitted compressed copy: the cached file itself when it can be linked, a private copy when not."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from imagebuilder.core.context import Context
from imagebuilder.outputs import compress
from imagebuilder.sources.checksums import sha256_of
from tests.conftest import require_programs


@pytest.mark.parametrize("linkable", [True, False])
def test_the_emitted_copy_is_private_whether_linked_or_copied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               linkable: bool) -> None:
    require_programs("zstd")
    os.umask(0o022)
    raw = tmp_path / "out" / "worker.img"
    raw.parent.mkdir()
    raw.write_bytes(os.urandom(1 << 16))
    if not linkable:  # the output folder on another file system than the cache
        def cross_device(src: object, dst: object) -> None:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        monkeypatch.setattr(os, "link", cross_device)
    target, digest = compress.compress_cached(Context(cache_dir=tmp_path / "cache"), raw, "0" * 64, "zstd")
    assert target == raw.with_name("worker.img.zst")
    # Made just now: its digest, taken from the emitted file itself, where that is the cached file.
    assert digest == (sha256_of(target) if linkable else None)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert (target.stat().st_nlink == 2) is linkable
