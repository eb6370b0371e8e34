"""Making a stage: its image from its parent's, through the backend's ImageTree, with its record."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from imagebuilder.boards.verify import bootable_boards, verify_image
from imagebuilder.core.beside import raise_if_cancelled
from imagebuilder.core.cache import touch
from imagebuilder.core.context import Context
from imagebuilder.core.log import log, step
from imagebuilder.core.resources import allocated, atomic_output, ensure_space, file_lock, temporary_directory
from imagebuilder.disk.bmap import range_extents
from imagebuilder.disk.copy import clone_image, digest_image
from imagebuilder.disk.image import check_filesystems
from imagebuilder.disk.partitions import grow_image
from imagebuilder.disk.usage import image_usage
from imagebuilder.engine.checkmemo import run_stage_checks
from imagebuilder.engine.checks import check_rendered
from imagebuilder.engine.entry import (
    StageRecord,
    StageResult,
    Unusable,
    check_parent,
    record_path,
    usable_record,
    write_record,
)
from imagebuilder.engine.stages import Stage, stage_image
from imagebuilder.sources.dpkg import versions
from imagebuilder.sources.inventory import read_inventory

GIB = 2**30


def realise(ctx: Context, stage: Stage, debs: Path) -> StageResult:
    """Return the stage's image from the cache, building it when it is not there."""
    key = stage.key()
    image = stage_image(ctx.cache("stages"), stage)
    with file_lock(image.with_suffix(".lock"), f"the {stage.name} stage"):
        record = usable_record(image, stage)
        fresh = not isinstance(record, StageRecord)
        if isinstance(record, StageRecord):
            log.info("stage %s: cached (%s)", stage.name, key[:12])
            # Not the image: it may be an output too (outputs/emit.py), whose mtime says it is unchanged.
            touch(record_path(image))
        else:
            if isinstance(record, Unusable):
                log.info("stage %s: its cache entry (%s) is not used, %s: made again", stage.name, key[:12],
                         record.reason)
            with step(f"stage {stage.name}"):
                record = _build(ctx, stage, image, debs)
    return StageResult.of(image, key, record, fresh=fresh)


def _build(ctx: Context, stage: Stage, image: Path, debs: Path) -> StageRecord:
    backend = stage.backend
    check_rendered(stage.layers, stage.layout.boot_mount)
    # The copy of the parent, what apt may add, and some room for the file system's own growth.
    # A netboot tree holds a copy of the worker's root and boot files.
    extra = allocated(stage.netboot.worker_image) if stage.netboot else 0
    # A rewrite makes the new root beside the old one before it copies it back.
    extra += allocated(stage.parent) if stage.rewrite and backend.rewrites else 0
    ensure_space(image.parent, allocated(stage.parent) + (GIB if stage.packages else 0) + extra + 64 * 2**20,
                 f"the {stage.name} stage")
    # Not flushed to the disk (about 0.5 s): its digests are checked whenever it is read.
    with temporary_directory(f"stage-{stage.name}-", ctx.cache("tmp")) as work, \
            atomic_output(image, 0o600, durable=False) as tmp, \
            ThreadPoolExecutor(1, thread_name_prefix="check-parent") as checker:
        # The kernel copies the parent (a reflink where it can); its digest is checked beside the stage's
        # work, which mostly waits on programs, and before the stage is kept.
        parent_checked = checker.submit(check_parent, stage)
        clone_image(stage.parent, tmp)
        grown = grow_image(tmp, stage.size or tmp.stat().st_size + (GIB if stage.packages else 0) + extra)
        with backend.open(tmp, stage.layout, stage.arch, work, grow_fs=grown, epoch=stage.epoch,
                          rewrite=stage.rewrite) as tree:
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
            passed = run_stage_checks(tree, stage, backend, image.parent)
            listed = tree.list_packages()
            # An image is emitted from it: what its SBOM lists is read now, while the tree is open.
            inventory = read_inventory(listed, tree.read_file) if stage.verify else None
            # Lists, host keys; then free blocks read as zeros, so bmaps and compressed copies carry only data.
            tree.tidy()
        # A reproducible build's emitted image is made again from its files (the same files, the same
        # bytes), sized to them; the other stages are shrunk in place.
        if stage.rewrite and backend.rewrites:
            with step("file systems made again from their files"):
                backend.rewrite(tmp, stage.epoch, stage.clock, stage.size, work)
        elif grown and stage.size is None:
            backend.shrink(tmp)
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
        record = StageRecord(versions(listed), tuple(files), tuple(units), digested.sha256, tmp.stat().st_size,
                             usage, digested.range_sha256, passed, tuple(boards) if boards is not None else None,
                             inventory)
        write_record(image, record)
    return record

