"""Compressed copies of the images (all cores; xz one image at a time), cached by the raw image's digest: xz
takes minutes, and an unchanged image must not pay it twice."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from imagebuilder.core.cache import touch
from imagebuilder.core.context import Context
from imagebuilder.core.log import Progress, step
from imagebuilder.core.resources import atomic_output, file_lock
from imagebuilder.core.run import run
from imagebuilder.disk.copy import share_image, stream_image
from imagebuilder.sources.checksums import sha256_of

COMPRESSORS = {"xz": ["xz", "-T0", "-6", "-c"], "zstd": ["zstd", "-T0", "-3", "-q", "-c"]}
# Those whose runs side by side cost more than one after the other, so the roles' images take turns (each
# with every core). Measured on two cores, the two images of the bench: the build's xz 341.4 s at once
# against 316.3 s in turn; zstd 4.96 s at once, 5.17 s in turn (the fastest of seven): zstd shares the
# cores without loss, and a turn would only make the other image wait.
TAKE_TURNS = frozenset({"xz"})


def extension(fmt: str) -> str:
    return "zst" if fmt == "zstd" else fmt


def compress_cached(ctx: Context, raw: Path, digest: str, fmt: str) -> tuple[Path, str | None]:
    """The compressed copy of raw (all cores), from the cache when this digest was compressed before; with
    its digest when it was made just now (read from the file itself), else None: the cache's record of it
    is not evidence of what the emitted file holds."""
    cached = ctx.cache("compressed") / f"{digest}.img.{extension(fmt)}"
    with file_lock(cached.with_suffix(".lock"), f"the {fmt} copy of {raw.name}"):
        made = not cached.exists()
        if made:
            what = f"compress {raw.name} ({fmt}, all cores)"
            with ctx.cores.turn(what) if fmt in TAKE_TURNS else contextlib.nullcontext(), step(what), \
                    atomic_output(cached, 0o600) as tmp, open(tmp, "wb") as sink, \
                    Progress(f"compress {raw.name}", raw.stat().st_size) as progress:
                run(COMPRESSORS[fmt], stdout=sink, feed=lambda pipe: stream_image(raw, pipe, progress),
                    feed_from=raw, cancellable=True)
        touch(cached)
        cached.chmod(0o600)  # an image holds the cluster's secrets (and the emitted copy is this file)
        # Read while it is in the page cache: the emitted file is this one (shared below).
        compressed_digest = sha256_of(cached) if made else None
    target = raw.with_name(f"{raw.name}.{extension(fmt)}")
    with atomic_output(target, 0o600) as tmp:
        # The cached copy itself (or its blocks), linked: no second copy of hundreds of MB.
        if share_image(cached, tmp) is None:  # another file system: a file of its own, as private
            shutil.copyfile(cached, tmp)
            compressed_digest = None
        tmp.chmod(0o600)
    return target, compressed_digest
