"""The emitted compressed copy: the cached file itself when it can be linked, a private copy when not; the
roles' compressions one at a time; progress while it runs."""

from __future__ import annotations

import errno
import functools
import io
import logging
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from imagebuilder.core import log as log_module
from imagebuilder.core.beside import run_beside
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


def recording(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, program: str) -> Path:
    """Put a script first on PATH that runs the real `program` and records when each run started and ended."""
    real = shutil.which(program)
    assert real is not None
    record = tmp_path / f"{program}.times"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / program
    script.write_text(f'#!/bin/sh\necho "$$ start $(date +%s.%N)" >> {record}\n{real} "$@"\nstatus=$?\n'
                      f'echo "$$ end $(date +%s.%N)" >> {record}\nexit $status\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return record


def runs_of(record: Path) -> list[tuple[float, float]]:
    """(start, end) of each recorded run, by start."""
    times: dict[str, dict[str, float]] = {}
    for line in record.read_text().splitlines():
        pid, event, when = line.split()
        times.setdefault(pid, {})[event] = float(when)
    return sorted((t["start"], t["end"]) for t in times.values())


def test_compressions_requested_at_once_take_turns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """The roles' images are compressed one at a time, each with every core: two `xz -T0` at once on two
    cores took 17% longer than one after the other."""
    require_programs("xz")
    record = recording(tmp_path, monkeypatch, "xz")
    out = tmp_path / "out"
    out.mkdir()
    images = {role: out / f"{role}.img" for role in ("master", "worker")}
    for image in images.values():
        with image.open("wb") as f:
            f.write(os.urandom(3 << 20))  # about a second of xz: long enough to overlap if nothing stopped it
            f.truncate(8 << 20)
    ctx = Context(cache_dir=tmp_path / "cache")  # one build: one ctx for both roles, as in execute.py
    caplog.set_level(logging.INFO, logger="imagebuilder")
    made = run_beside({role: functools.partial(compress.compress_cached, ctx, image, f"{n}" * 64, "xz")
                       for n, (role, image) in enumerate(images.items())})
    (first_start, first_end), (second_start, second_end) = runs_of(record)
    assert first_end <= second_start, "the two compressors ran at the same time"
    assert "waits for compress" in caplog.text  # they were asked for at once: the second waited for its turn
    for role, (target, _) in made.items():
        assert subprocess.run(["xz", "-dc", target], capture_output=True, check=True).stdout == \
            images[role].read_bytes()


def test_compression_shows_progress_in_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """Not on a TTY: log lines (a tqdm bar is for a terminal), holes counted as they are fed."""
    require_programs("zstd")
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # as in CI or a pipe, whatever runs the test
    monkeypatch.setattr(log_module, "PROGRESS_INTERVAL", 0.0)  # a line at every update, not every 5 s
    raw = tmp_path / "out" / "worker.img"
    raw.parent.mkdir()
    with raw.open("wb") as f:
        f.write(os.urandom(1 << 20))
        f.truncate(6 << 20)  # a hole at the end
    caplog.set_level(logging.INFO, logger="imagebuilder")
    compress.compress_cached(Context(cache_dir=tmp_path / "cache"), raw, "0" * 64, "zstd")
    lines = [r.getMessage() for r in caplog.records if "compress worker.img:" in r.getMessage()]
    assert lines and lines[-1].startswith("  compress worker.img: 6.0 MiB of 6.0 MiB (100%)")
    assert sys.stderr.getvalue() == ""  # no bar drawn
