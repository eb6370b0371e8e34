"""Stages: a parent image plus packages plus overlay layers, cached under a hash of exactly that.

The common stage (base + common packages + common overlay) is shared by the master and the worker. Each
role then has a packages stage and a files stage (its overlay layers), so a changed overlay file redoes
only the files stage, never the package install. How a stage reaches the image's files is the backend's
business (backend.py): the stage code only talks to an ImageTree.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from imagebuilder import __version__
from imagebuilder.boards.verify import bootable_boards, verify_image
from imagebuilder.core.beside import raise_if_cancelled
from imagebuilder.core.cache import touch
from imagebuilder.core.context import Context
from imagebuilder.core.errors import ImageBuilderError
from imagebuilder.core.log import Progress, log, step
from imagebuilder.core.resources import allocated, atomic_output, ensure_space, file_lock, temporary_directory
from imagebuilder.disk.bmap import range_extents
from imagebuilder.disk.copy import Copied, clone_image, copy_image, digest_image, range_digests, share_image
from imagebuilder.disk.ext4 import shrink_root
from imagebuilder.disk.image import check_filesystems
from imagebuilder.disk.partitions import grow_image
from imagebuilder.disk.usage import Usage, image_usage
from imagebuilder.engine.backends.interface import ImageTree, choose_backend
from imagebuilder.engine.checks import ConfigCheck, check_rendered
from imagebuilder.layers.render import RenderedLayer
from imagebuilder.netboot.populate import NetbootSource
from imagebuilder.recipe.catalogue import Layout
from imagebuilder.sources.dpkg import versions
from imagebuilder.sources.inventory import Inventory, read_inventory

FORMAT = 5  # 2: stages shrink to what they hold; 3: copied hole for hole; 4: trimmed after the chroot;
# 5: kernel arguments also where a kernel update keeps them
GIB = 2**30


@dataclass(frozen=True)
class Stage:
    name: str
    parent: Path  # the image this stage starts from
    parent_key: str  # digest of the base, or the parent stage's key
    packages: tuple[str, ...]
    layers: tuple[RenderedLayer, ...]
    arch: str
    layout: Layout
    size: int | None = None  # the image size asked for (output.image_size), else grown by need
    # Role checks run with the image's own tools; they change nothing, so they are not in the key.
    checks: tuple[ConfigCheck, ...] = field(default=(), compare=False)
    backend: str = "loop"  # backend.BACKENDS
    netboot: NetbootSource | None = None  # the master's: the worker stage its netboot tree is copied from
    # An image is emitted from it: what each board's firmware needs is checked (boards/verify.py) when it is
    # made, beside its digest. It changes nothing, so it is not in the key.
    verify: bool = field(default=False, compare=False)

    def key(self) -> str:
        material: dict[str, object] = {
            "parent": self.parent_key, "packages": sorted(self.packages),
            "layers": [layer.digest() for layer in self.layers], "size": self.size,
            "format": FORMAT, "builder": __version__,
        }
        if self.backend != "loop":
            # Same inputs, another image (no package installed, nothing run): never share a cache
            # entry. Loop keys stay as they were, so existing caches remain valid.
            material["backend"] = self.backend
        if self.netboot is not None:
            material["netboot"] = self.netboot.material()
        return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class StageResult:
    image: Path
    key: str
    packages: dict[str, str]
    files: list[str]
    units: list[str]
    sha256: str | None = None  # of the stage image, taken when it was made and checked (None: older record)
    usage: Usage | None = None  # what its file systems use, read when it was made
    range_sha256: tuple[str, ...] = ()  # of each block-map range of usage (disk.bmap's block size)
    fresh: bool = False  # made by this build, which just took its digests: reading it needs no check
    boards: tuple[str, ...] | None = None  # the boards verify found it boots on when it was made (None: not run)
    inventory: Inventory | None = None  # what its SBOM lists, read when it was made (stages emitted as images)


def stage_image(stage_dir: Path, stage: Stage) -> Path:
    """Where the cache keeps the stage's image: named by the stage and its key."""
    return stage_dir / f"{stage.name}-{stage.key()[:24]}.img"


def is_cached(stage_dir: Path, stage: Stage) -> bool:
    return usable_record(stage_image(stage_dir, stage), stage) is not None


def usable_record(image: Path, stage: Stage) -> dict[str, Any] | None:
    """The stage's cache entry, when whole and holding all a build reads of it: a stage an image is emitted
    from must hold its SBOM's inventory, and an entry without one is made again."""
    record = cached_record(image)
    if record is None or (stage.verify and "inventory" not in record):
        return None
    return record


def cached_record(image: Path) -> dict[str, Any] | None:
    """The record of a cache entry (a stage or a base image), if the entry is whole: the record exists and
    the image has the size it gives. Its digest is checked whenever the image is read (see copy_checked)."""
    try:
        record: dict[str, Any] = json.loads(image.with_suffix(".json").read_text())
        if image.stat().st_size != record.get("size", image.stat().st_size):
            return None
    except (OSError, ValueError):
        return None
    return record


def copy_checked(source: Path, target: Path, extents: Sequence[tuple[int, int]] = (),
                 progress: Progress | None = None) -> Copied:
    """Copy a cache entry, checking on the way that it still is what its record says (one pass)."""
    copied = copy_image(source, target, extents, progress)
    expected = (cached_record(source) or {}).get("sha256")
    if expected and copied.sha256 != expected:
        damaged(source)
    return copied


def share_checked(source: Path, target: Path, extents: Sequence[tuple[int, int]] = (),
                  progress: Progress | None = None) -> tuple[Copied, str]:
    """Give target a cache entry's bytes, as copy_checked does, but by sharing them where the file systems
    allow (see share_image); then one read of the shared bytes checks them. Returns how: "reflink",
    "hardlink" or "copy"."""
    how = share_image(source, target)
    if how is None:
        return copy_checked(source, target, extents, progress), "copy"
    copied = digest_image(target, extents)
    expected = (cached_record(source) or {}).get("sha256")
    if expected and copied.sha256 != expected:
        damaged(source)
    return copied, how


def check_entry(image: Path) -> None:
    """Check that a cache entry still is what its record says, before a stage is made from it.

    Where the record has the digest of each range its file systems use, those are checked (split between
    the cores): the bytes a stage made from it takes on. Elsewhere (a base image) its whole digest.
    """
    record = cached_record(image) or {}
    usage, expected = record.get("usage"), record.get("range_sha256")
    if usage and expected:
        good = range_digests(image, range_extents(Usage.from_record(usage))) == tuple(expected)
    else:
        good = not record.get("sha256") or digest_image(image).sha256 == record["sha256"]
    if not good:
        damaged(image)


def damaged(image: Path) -> NoReturn:
    image.with_suffix(".json").unlink(missing_ok=True)
    image.unlink(missing_ok=True)
    raise ImageBuilderError(f"{image}: the cached image does not match its record (damaged on disk, or written "
                            "through an output that is this file); it was removed", "build again: it is made anew")


def realise(ctx: Context, stage: Stage, debs: Path) -> StageResult:
    """Return the stage's image from the cache, building it when it is not there."""
    key = stage.key()
    image = stage_image(ctx.cache("stages"), stage)
    record = image.with_suffix(".json")
    with file_lock(image.with_suffix(".lock"), f"the {stage.name} stage"):
        fresh = usable_record(image, stage) is None
        if not fresh:
            log.info("stage %s: cached (%s)", stage.name, key[:12])
            touch(record)  # not the image: it may be an output too (emit.py), whose mtime says it is unchanged
        else:
            with step(f"stage {stage.name}"):
                _build(ctx, stage, image, record, debs)
    info = json.loads(record.read_text())
    usage = info.get("usage")
    boards = info.get("boards")
    inventory = info.get("inventory")
    return StageResult(image, key, info["packages"], info["files"], info["units"], info.get("sha256"),
                       Usage.from_record(usage) if usage else None,
                       tuple(info.get("range_sha256", ())), fresh, tuple(boards) if boards is not None else None,
                       Inventory.from_record(inventory) if inventory else None)


def _build(ctx: Context, stage: Stage, image: Path, record: Path, debs: Path) -> None:
    backend = choose_backend(stage.backend)
    check_rendered(stage.layers, stage.layout.boot_mount)
    # The copy of the parent, what apt may add, and some room for the file system's own growth.
    # A netboot tree holds a copy of the worker's root and boot files.
    extra = allocated(stage.netboot.worker_image) if stage.netboot else 0
    ensure_space(image.parent, allocated(stage.parent) + (GIB if stage.packages else 0) + extra + 64 * 2**20,
                 f"the {stage.name} stage")
    # Not flushed to the disk (about 0.5 s): its digests are checked whenever it is read.
    with temporary_directory(f"stage-{stage.name}-", ctx.cache("tmp")) as work, \
            atomic_output(image, 0o600, durable=False) as tmp, \
            ThreadPoolExecutor(1, thread_name_prefix="check-parent") as checker:
        # The kernel copies the parent (a reflink where it can); its digest is checked beside the stage's
        # work, which mostly waits on programs, and before the stage is kept.
        parent_checked = checker.submit(check_entry, stage.parent)
        clone_image(stage.parent, tmp)
        grown = grow_image(tmp, stage.size or tmp.stat().st_size + (GIB if stage.packages else 0) + extra)
        with backend.open(tmp, stage.layout, stage.arch, work, grow_fs=grown) as tree:
            if stage.packages:
                tree.install(stage.packages, debs)
            files: list[str] = []
            units: list[str] = []
            cmdline: list[str] = []
            for layer in stage.layers:
                # Between its steps a stage stops when the other role's failed (the guestfs backend's
                # operations run in this process: no program to stop).
                raise_if_cancelled()
                files += tree.write_layer(layer)
                units += layer.units
                cmdline += layer.kernel_arguments
            if cmdline:
                tree.add_kernel_arguments(cmdline)
            if stage.netboot is not None:
                tree.add_netboot_tree(stage.netboot, work)
            if any(layer.description.initramfs for layer in stage.layers):
                tree.update_initramfs()
            raise_if_cancelled()
            if units:
                tree.enable_units(units)
            passed = run_new_checks(tree, stage, image.parent) if backend.name == "loop" else []
            if stage.checks and backend.name != "loop":
                tree.run_checks(list(stage.checks))
            listed = tree.list_packages()
            packages = versions(listed)
            # An image is emitted from it: what its SBOM lists is read now, while the tree is open.
            inventory = read_inventory(listed, tree.read_file) if stage.verify else None
            # Lists, host keys; then free blocks read as zeros, so bmaps and compressed copies carry only data.
            tree.tidy()
        if grown and stage.size is None and backend.name == "loop":
            shrink_root(tmp)
        raise_if_cancelled()
        # Checked and digested once, when the stage is made, with what its file systems use and the digest
        # of each block-map range: emitting it needs none of that again.
        check_filesystems(tmp, work)
        usage = image_usage(tmp)
        # verify mostly waits on mtools and lsinitramfs: beside the digest, which keeps a core busy.
        with ThreadPoolExecutor(1, thread_name_prefix="verify") as verifier:
            verifying = verifier.submit(verify_image, tmp) if stage.verify else None
            digested = digest_image(tmp, range_extents(usage))
            boards = bootable_boards(verifying.result(), f"the {stage.name} image") if verifying else None
        parent_checked.result()
        with atomic_output(record) as rec:
            rec.write_text(json.dumps({
                "packages": packages, "files": files, "units": units, "sha256": digested.sha256,
                "size": tmp.stat().st_size, "range_sha256": digested.range_sha256, "checks_passed": passed,
                "usage": usage.to_record(), **({"boards": boards} if boards is not None else {}),
                **({"inventory": inventory.to_record()} if inventory is not None else {})}, indent=1))


def check_key(stage: Stage, check: ConfigCheck) -> str:
    """What a check's verdict depends on: the image's tools (the parent), the command, the checked file and
    the rest of its layer (a file it includes), and where every other file is and how it may be run (what
    `systemd-analyze verify` looks for)."""
    boot = stage.layout.boot_mount
    own = next((layer for layer in stage.layers if any(f.system_path(boot) == check.path for f in layer.files)),
               None)
    material = {
        "parent": stage.parent_key, "argv": check.argv, "tool": check.tool, "on_host": check.on_host,
        "layer": sorted((f.system_path(boot), hashlib.sha256(f.data).hexdigest(), f.mode, f.symlink)
                        for f in (own.files if own else ())),
        "files": sorted((f.system_path(boot), f.mode, f.symlink, f.data.decode(errors="replace") if f.symlink
                         else "") for layer in stage.layers for f in layer.files),
        "units": sorted(unit for layer in stage.layers for unit in layer.units),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def passed_before(stage_dir: Path, name: str) -> set[str]:
    """The checks the cached stages of this name passed (their records keep the keys)."""
    passed: set[str] = set()
    for record in stage_dir.glob(f"{name}-*.json"):
        if not re.fullmatch(rf"{re.escape(name)}-[0-9a-f]{{24}}\.json", record.name):  # master-packages-...
            continue
        try:
            passed.update(json.loads(record.read_text()).get("checks_passed", ()))
        except (OSError, ValueError, TypeError):
            continue
    return passed


def run_new_checks(tree: ImageTree, stage: Stage, stage_dir: Path) -> list[str]:
    """Run the stage's checks but those that passed before on exactly the same inputs; return every key.

    An overlay edit changes one file: the checks of the others (cloud-init schema and systemd-analyze verify
    under emulation, about a second each) would only repeat their verdict.
    """
    keys = {check: check_key(stage, check) for check in stage.checks}
    known = passed_before(stage_dir, stage.name)
    todo = [check for check in stage.checks if keys[check] not in known]
    if len(todo) < len(keys):
        log.info("stage %s: %d of %d checks passed before on the same files and tools: not run again",
                 stage.name, len(keys) - len(todo), len(keys))
    if todo:
        tree.run_checks(todo)
    return sorted(set(keys.values()))
