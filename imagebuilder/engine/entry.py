"""A stage's cache entry: its image and, beside it, the record of what the image holds and its digests.

Both are written once, under the stage's lock, when the stage is made; the entry is whole when both are
there and the image has the size the record gives. The record is read by every build that uses the stage,
and its digests are checked whenever the image is read: a cache entry may be damaged on disk, or written
through an output that is the same file (a hard link).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from imagebuilder.core.errors import ImageBuilderError
from imagebuilder.core.log import Progress
from imagebuilder.core.resources import atomic_output
from imagebuilder.disk.bmap import range_extents
from imagebuilder.disk.copy import Copied, copy_image, digest_image, range_digests, share_image
from imagebuilder.disk.usage import Usage
from imagebuilder.engine.stages import Stage, stage_image
from imagebuilder.sources.inventory import Inventory

# The shape of the record. A record of another version is not read: its stage is made again.
RECORD_VERSION = 1


@dataclass(frozen=True)
class StageRecord:
    packages: dict[str, str]  # name -> version, as manifest.json lists them
    files: tuple[str, ...]  # the overlay files its layers wrote
    units: tuple[str, ...]  # the units its layers enabled
    sha256: str  # of the image
    size: int  # of the image: a smaller file is an entry not whole
    usage: Usage  # what its file systems use
    range_sha256: tuple[str, ...]  # of each block-map range of usage (disk.bmap's block size)
    checks_passed: tuple[str, ...] = ()  # the keys of the checks it passed (checkmemo.py)
    boards: tuple[str, ...] | None = None  # those verify found it boots on; None: not verified
    inventory: Inventory | None = None  # what its SBOM lists; None: no image is emitted from it

    def to_json(self) -> str:
        document: dict[str, Any] = {
            "version": RECORD_VERSION, "packages": self.packages, "files": list(self.files),
            "units": list(self.units), "sha256": self.sha256, "size": self.size, "usage": self.usage.to_record(),
            "range_sha256": list(self.range_sha256), "checks_passed": list(self.checks_passed)}
        if self.boards is not None:
            document["boards"] = list(self.boards)
        if self.inventory is not None:
            document["inventory"] = self.inventory.to_record()
        return json.dumps(document, indent=1)

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> StageRecord:
        boards, inventory = document.get("boards"), document.get("inventory")
        return cls(
            dict(document["packages"]), tuple(document["files"]), tuple(document["units"]),
            str(document["sha256"]), int(document["size"]), Usage.from_record(document["usage"]),
            tuple(document["range_sha256"]), tuple(document["checks_passed"]),
            tuple(boards) if boards is not None else None,
            Inventory.from_record(inventory) if inventory is not None else None)


@dataclass(frozen=True)
class Unusable:
    """A cache entry that is there but is not used (its stage is made again): why, in words."""

    reason: str


@dataclass(frozen=True)
class StageResult:
    """A stage's image, as a build uses it: where it is and what its record says."""

    image: Path
    key: str
    packages: dict[str, str]
    files: list[str]
    units: list[str]
    sha256: str
    usage: Usage
    range_sha256: tuple[str, ...]
    fresh: bool = False  # made by this build, which just took its digests: reading it needs no check
    boards: tuple[str, ...] | None = None
    inventory: Inventory | None = None

    @classmethod
    def of(cls, image: Path, key: str, record: StageRecord, *, fresh: bool) -> StageResult:
        return cls(image, key, record.packages, list(record.files), list(record.units), record.sha256,
                   record.usage, record.range_sha256, fresh, record.boards, record.inventory)


def record_path(image: Path) -> Path:
    return image.with_suffix(".json")


def write_record(image: Path, record: StageRecord) -> None:
    with atomic_output(record_path(image)) as tmp:
        tmp.write_text(record.to_json())


def parse_record(path: Path) -> StageRecord | Unusable | None:
    """The record in `path`; None when there is none."""
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        return Unusable(f"its record cannot be read: {e}")
    version = document.get("version") if isinstance(document, dict) else None
    if version != RECORD_VERSION:
        return Unusable(f"its record is of another version ({version}; this imagebuilder reads {RECORD_VERSION})")
    try:
        return StageRecord.from_json(document)
    except (KeyError, TypeError, ValueError) as e:
        return Unusable(f"its record lacks {e}")


def read_record(image: Path) -> StageRecord | Unusable | None:
    """The record of a cache entry, when the entry is whole: the image has the size the record gives."""
    record = parse_record(record_path(image))
    if not isinstance(record, StageRecord):
        return record
    try:
        size = image.stat().st_size
    except FileNotFoundError:
        return Unusable("its image is missing")
    return record if size == record.size else Unusable(f"its image has {size} bytes, its record says {record.size}")


def usable_record(image: Path, stage: Stage) -> StageRecord | Unusable | None:
    """The stage's cache entry, when whole and holding all a build reads of it: a stage an image is emitted
    from must hold its boards verdict and its SBOM's inventory."""
    record = read_record(image)
    if isinstance(record, StageRecord) and stage.verify and (record.inventory is None or record.boards is None):
        return Unusable("it holds no boards verdict or SBOM inventory, which an image emitted from it needs")
    return record


def is_cached(stage_dir: Path, stage: Stage) -> bool:
    return isinstance(usable_record(stage_image(stage_dir, stage), stage), StageRecord)


def copy_checked(source: Path, expected: str, target: Path, extents: Sequence[tuple[int, int]] = (),
                 progress: Progress | None = None) -> Copied:
    """Copy a cache entry whose digest is `expected`, checking on the way that it still has it (one pass)."""
    copied = copy_image(source, target, extents, progress)
    if copied.sha256 != expected:
        damaged(source)
    return copied


def share_checked(source: Path, expected: str, target: Path, extents: Sequence[tuple[int, int]] = (),
                  progress: Progress | None = None) -> tuple[Copied, str]:
    """Give target a cache entry's bytes, as copy_checked does, but by sharing them where the file systems
    allow (see share_image); then one read of the shared bytes checks them. Returns how: "reflink",
    "hardlink" or "copy"."""
    how = share_image(source, target)
    if how is None:
        return copy_checked(source, expected, target, extents, progress), "copy"
    copied = digest_image(target, extents)
    if copied.sha256 != expected:
        damaged(source)
    return copied, how


def check_parent(stage: Stage) -> None:
    """Check that the image a stage starts from still is what its record says, before the stage is made.

    A parent stage: the digest of each range its file systems use (split between the cores), the bytes the
    stage takes on. The base image: its whole digest, which is the stage's parent_key.
    """
    if stage.parent_is_base:
        good = digest_image(stage.parent).sha256 == stage.parent_key
    else:
        record = read_record(stage.parent)
        if not isinstance(record, StageRecord):
            # Realised moments ago by this build: only something else removing it gets here.
            why = record.reason if record is not None else "it is gone"
            raise ImageBuilderError(f"{stage.parent}: the cache entry the {stage.name} stage starts from is not "
                                    f"usable: {why}", "build again: it is made anew")
        good = range_digests(stage.parent, range_extents(record.usage)) == record.range_sha256
    if not good:
        damaged(stage.parent)


def damaged(image: Path) -> NoReturn:
    record_path(image).unlink(missing_ok=True)
    image.unlink(missing_ok=True)
    raise ImageBuilderError(f"{image}: the cached image does not match its record (damaged on disk, or written "
                            "through an output that is this file); it was removed", "build again: it is made anew")
