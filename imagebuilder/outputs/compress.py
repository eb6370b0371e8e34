"""Compressed copies of the images (all cores), cached by the raw image's digest: xz takes minutes, and an
unchanged image must not pay it twice."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from imagebuilder.core.cache import touch
from imagebuilder.core.context import Context
from imagebuilder.core.log import step
from imagebuilder.core.resources import atomic_output, file_lock
from imagebuilder.core.run import run
from imagebuilder.sources.checksums import sha256_of

COMPRESSORS = {"xz": ["xz", "-T0", "-6", "-c"], "zstd": ["zstd", "-T0", "-3", "-q", "-c"]}


def extension(fmt: str) -> str:
    return "zst" if fmt == "zstd" else fmt


def compress_cached(ctx: Context, raw: Path, digest: str, fmt: str) -> tuple[Path, str]:
    """The compressed copy of raw (all cores), from the cache when this digest was compressed before."""
    cached = ctx.cache("compressed") / f"{digest}.img.{extension(fmt)}"
    # The copy's own digest beside it, so SHA256SUMS does not read hundreds of MB again.
    cached_sum = cached.with_name(cached.name + ".sha256")
    with file_lock(cached.with_suffix(".lock"), f"the {fmt} copy of {raw.name}"):
        if not cached.exists():
            with step(f"compress {raw.name} ({fmt}, all cores)"), atomic_output(cached, 0o600) as tmp, \
                    open(tmp, "wb") as sink:
                run([*COMPRESSORS[fmt], raw], stdout=sink)
        touch(cached)
        cached.chmod(0o600)  # an image holds the cluster's secrets (and the emitted copy is this file)
        if not cached_sum.exists():
            with atomic_output(cached_sum) as tmp:
                tmp.write_text(sha256_of(cached) + "\n")
        compressed_digest = cached_sum.read_text().strip()
    target = raw.with_name(f"{raw.name}.{extension(fmt)}")
    with atomic_output(target, 0o600) as tmp:
        try:
            # The cached copy itself, linked: no second copy of hundreds of MB.
            tmp.unlink()
            os.link(cached, tmp)
        except OSError:  # another filesystem: a new file, which must be as private as the cached one
            shutil.copyfile(cached, tmp)
            tmp.chmod(0o600)
    return target, compressed_digest
