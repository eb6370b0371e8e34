"""Keep the cache from growing without end: the newest few entries of each kind stay, older ones go.

Stage images are a few GiB apiece; every recipe change makes new ones. Entries are ranked by when
they were last used (realise and compress touch them), and an entry another build holds locked
right now is never removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections import defaultdict
from pathlib import Path

from imagebuilder.core.log import log
from imagebuilder.core.resources import sweep_partials

KEEP_STAGES = 2  # per stage name (common, master-packages, master, ...)
KEEP_COMPRESSED = 6


# The cache's folders that hold entries written through atomic_output or temporary directories.
SWEPT = ("tmp", "stages", "bases", "raw", "compressed", "downloads")


def sweep(cache_dir: Path, *others: Path) -> int:
    """Remove what killed builds left (partial files, temporary trees) in the cache and in `others`."""
    removed = [p for d in (*(cache_dir / name for name in SWEPT), *others) for p in sweep_partials(d)]
    for path in removed:
        log.info("removed %s, left by a build that did not finish", path)
    return len(removed)


def touch(path: Path) -> None:
    """Mark a cache entry as just used."""
    with contextlib.suppress(FileNotFoundError):
        os.utime(path)


def prune_stages(stages: Path, keep: int = KEEP_STAGES) -> int:
    groups: dict[str, list[Path]] = defaultdict(list)
    for image in stages.glob("*.img"):
        name = re.sub(r"-[0-9a-f]{24}\.img$", "", image.name)
        groups[name].append(image)
    removed = 0
    for images in groups.values():
        for image in sorted(images, key=_last_used, reverse=True)[keep:]:
            removed += _remove_entry(image, (image.with_suffix(".json"),))
    return removed


def prune_compressed(compressed: Path, keep: int = KEEP_COMPRESSED) -> int:
    files = [p for p in compressed.iterdir() if p.name.endswith((".img.xz", ".img.zst"))]
    removed = 0
    for path in sorted(files, key=_last_used, reverse=True)[keep:]:
        removed += _remove_entry(path, (path.with_name(path.name + ".sha256"),))
    return removed


def _last_used(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _remove_entry(main: Path, companions: tuple[Path, ...]) -> int:
    lock = main.with_suffix(".lock")
    with open(lock, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # in use by another build
        for path in (main, *companions):
            path.unlink(missing_ok=True)
        lock.unlink(missing_ok=True)
    log.debug("pruned %s from the cache", main.name)
    return 1
