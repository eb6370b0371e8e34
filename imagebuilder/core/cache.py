"""The cache: what is in it, what each recipe's builds use, and pruning that keeps exactly that.

  bases/       bootstrapped base images        downloads/  published images as downloaded
  raw/         downloads decompressed          stages/     stage images (a few GiB each)
  compressed/  .img.xz / .img.zst copies       debs/       .deb files kept per base
  recipes/     per recipe: the entries its last two builds used, and when
  tmp/         work trees of running builds (and of killed ones, until the next build sweeps them)

Every build records what it used (its base, download, stages, compressed copies, .deb folder). Pruning
keeps what a recipe built in the last KEEP_DAYS used in one of its last two builds, and whatever was
used in the last GRACE seconds (a build running now); everything else goes, unless a running build
holds its lock. So one recipe's entries are never evicted by another's, and raw/, downloads/ and debs/
are bounded like the stages. A recipe whose file is gone keeps nothing: recipes written to temporary
folders (a test suite, a script trying variants) would otherwise hold GiBs of stages for KEEP_DAYS.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from imagebuilder.core.log import log
from imagebuilder.core.resources import atomic_output, remove_tree, sweep_partials

KINDS = ("bases", "downloads", "raw", "stages", "compressed", "debs")
# The cache's folders that hold entries written through atomic_output or temporary directories.
SWEPT = ("tmp", "stages", "bases", "raw", "compressed", "downloads")
KEEP_DAYS = 30
BUILDS_KEPT = 2  # per recipe: an edit undone finds the previous build's stages still there
GRACE = 3600.0


@dataclass
class Entry:
    kind: str
    path: Path  # the entry itself: an image, a compressed copy, a folder of .debs
    companions: list[Path] = field(default_factory=list)  # its record, checksum, lock
    size: int = 0  # bytes on disk, companions included
    last_used: float = 0.0
    users: list[str] = field(default_factory=list)  # clusters whose recorded builds use it

    @property
    def name(self) -> str:
        return f"{self.kind}/{self.path.name}"


def sweep(cache_dir: Path, *others: Path, grace: float = 0.0) -> int:
    """Remove what killed builds left (partial files, temporary trees) in the cache, in `others` and in the
    system's temporary folder; grace: see sweep_partials."""
    removed = sweep_partials([*(cache_dir / name for name in SWEPT), *others], grace,
                             temporary=Path(tempfile.gettempdir()))
    for path in removed:
        log.info("removed %s, left by a build that did not finish", path)
    return len(removed)


def touch(path: Path) -> None:
    """Mark a cache entry as just used (through its record where it has one: see _entry)."""
    with contextlib.suppress(FileNotFoundError):
        os.utime(path)


def _allocated(path: Path) -> int:
    if path.is_dir() and not path.is_symlink():
        return sum(_allocated(p) for p in path.iterdir())
    try:
        return path.lstat().st_blocks * 512
    except FileNotFoundError:
        return 0


def _entry(kind: str, path: Path, companions: list[Path]) -> Entry:
    present = [c for c in companions if c.exists()]
    # A stage is marked used through its record, not its image: an emitted image may be the stage's file
    # itself (a hard link), and the outputs' unchanged-check reads its mtime.
    used = 0.0
    for path_or_companion in (path, *present):
        with contextlib.suppress(FileNotFoundError):
            used = max(used, path_or_companion.stat().st_mtime)
    return Entry(kind, path, present, _allocated(path) + sum(_allocated(c) for c in present), used)


def list_entries(cache_dir: Path) -> list[Entry]:
    """Every entry of the cache, with what belongs to it."""
    found: list[Entry] = []
    for kind in KINDS:
        folder = cache_dir / kind
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            name = path.name
            if kind == "debs" and path.is_dir():
                found.append(_entry(kind, path, [path.with_name(f"{name}.lock")]))
            elif kind in ("bases", "stages") and name.endswith(".img") and not name.startswith("."):
                found.append(_entry(kind, path, [path.with_suffix(".json"), path.with_suffix(".lock")]))
            elif kind == "raw" and name.endswith(".img") and not name.startswith("."):
                digest = name.removesuffix(".img")
                found.append(_entry(kind, path, [path.with_suffix(".json"), folder / f".lock-{digest}"]))
            elif kind == "compressed" and name.endswith((".img.xz", ".img.zst")):
                found.append(_entry(kind, path, [path.with_name(name + ".sha256")]))
            elif kind == "downloads" and path.is_file() and not name.endswith((".json", ".lock")):
                # A published image, or an interrupted download kept for resuming (.partial-<sha256>).
                found.append(_entry(kind, path, [path.with_name(name + ".json"), path.with_name(name + ".lock")]))
    return found


def recipe_id(recipe_path: Path) -> str:
    return hashlib.sha256(str(recipe_path.resolve()).encode()).hexdigest()[:16]


# The version of the recipe records below; a record of another version keeps nothing, and the recipe's
# next build writes it again.
RECIPE_RECORD_VERSION = 1


@dataclass(frozen=True)
class BuildUse:
    at: float  # when the build ended (time.time())
    uses: tuple[str, ...]  # entry names, kind/file


@dataclass(frozen=True)
class RecipeUse:
    """What the last builds of one recipe used: recipes/<recipe id>.json."""
    file: Path  # the record itself
    recipe: Path
    cluster: str
    builds: tuple[BuildUse, ...]  # the newest first, BUILDS_KEPT at most

    def to_json(self) -> str:
        return json.dumps({"version": RECIPE_RECORD_VERSION, "recipe": str(self.recipe), "cluster": self.cluster,
                           "builds": [{"at": b.at, "uses": list(b.uses)} for b in self.builds]}, indent=1) + "\n"

    def is_current(self, now: float, keep_days: float) -> bool:
        """Whether it still keeps its entries: the recipe's file exists and it was built lately."""
        return bool(self.builds) and self.recipe.is_file() and now - self.builds[0].at <= keep_days * 86400


def read_recipe_use(path: Path) -> RecipeUse | None:
    """The record at `path`, or None where it is missing, damaged or of another version."""
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("version") != RECIPE_RECORD_VERSION:
            return None
        builds = tuple(BuildUse(float(b["at"]), tuple(str(u) for u in b["uses"])) for b in data["builds"])
        return RecipeUse(path, Path(str(data["recipe"])), str(data["cluster"]), builds)
    except (OSError, ValueError, TypeError, KeyError):
        return None


def record_use(cache_dir: Path, recipe_path: Path, cluster: str, used: list[Path]) -> None:
    """Remember what a build of this recipe used (the entries it must keep), beside its previous builds."""
    path = cache_dir / "recipes" / f"{recipe_id(recipe_path)}.json"
    previous = read_recipe_use(path)
    names = tuple(sorted({str(p.relative_to(cache_dir)) for p in used if p.is_relative_to(cache_dir)}))
    builds = (BuildUse(time.time(), names), *(previous.builds if previous else ()))[:BUILDS_KEPT]
    record = RecipeUse(path, recipe_path.resolve(), cluster, builds)
    with atomic_output(path) as tmp:
        tmp.write_text(record.to_json())


def _record_files(cache_dir: Path) -> list[Path]:
    return sorted((cache_dir / "recipes").glob("*.json"))


def recipe_records(cache_dir: Path) -> list[RecipeUse]:
    """The readable records; a file that is not one is left for prune to remove."""
    found = (read_recipe_use(path) for path in _record_files(cache_dir))
    return [record for record in found if record is not None]


def in_use(cache_dir: Path, now: float, keep_days: float = KEEP_DAYS) -> dict[str, list[str]]:
    """Entry name (kind/file) -> clusters whose builds of the last keep_days use it."""
    users: dict[str, list[str]] = {}
    for record in recipe_records(cache_dir):
        if record.is_current(now, keep_days):
            for build in record.builds:
                for name in build.uses:
                    users.setdefault(name, []).append(record.cluster)
    return users


def prune(cache_dir: Path, *, keep_days: float = KEEP_DAYS, everything: bool = False,
          now: float | None = None) -> list[Entry]:
    """Remove the entries no recent build of any recipe uses (everything: all of them); never one whose
    lock a running build holds, nor one used in the last GRACE seconds unless `everything`."""
    now = time.time() if now is None else now
    users = {} if everything else in_use(cache_dir, now, keep_days)
    removed = []
    for entry in list_entries(cache_dir):
        if entry.name in users or (not everything and now - entry.last_used < GRACE):
            continue
        if _remove(entry):
            removed.append(entry)
    for path in _record_files(cache_dir):
        record = read_recipe_use(path)
        if everything or record is None or not record.is_current(now, keep_days):
            path.unlink(missing_ok=True)
    return removed


def _remove(entry: Entry) -> bool:
    """Remove an entry unless a build holds its lock (then it is in use: keep it)."""
    lock = next((c for c in entry.companions if ".lock" in c.name), None)
    handle = None
    try:
        if lock is not None:
            handle = os.open(lock, os.O_RDONLY)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
        for path in (entry.path, *entry.companions):
            if path.is_dir() and not path.is_symlink():
                remove_tree(path)
            else:
                path.unlink(missing_ok=True)
    finally:
        if handle is not None:
            os.close(handle)
    log.debug("pruned %s from the cache", entry.name)
    return True
