"""`imagebuilder flash IMAGE DEVICE`: check the device, write the image (only its mapped blocks when a
.bmap is beside it), flush, verify what the card holds, and optionally seed the card's hostname.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from imagebuilder.core.confirm import confirm
from imagebuilder.core.context import Context
from imagebuilder.core.errors import ImageBuilderError, Interrupted
from imagebuilder.core.log import Progress, log, step
from imagebuilder.disk import seed as cardseed
from imagebuilder.disk.bmap import Bmap, load_bmap
from imagebuilder.disk.imagefile import FORMS, extract_size, find_bmap, open_image, raw_name
from imagebuilder.flash import blockcopy
from imagebuilder.flash.devices import Target, TargetRefused, check_same_device, check_target
from imagebuilder.flash.signed import check_signed, trusted_key
from imagebuilder.recipe.load import load_recipe
from imagebuilder.roles.table import ROLES

# Called with the card's descriptor between writing and reading back. Tests put a card that lies here
# (bytes changed behind the write) to prove the read-back catches it.
AFTER_WRITE_HOOKS: list[Callable[[int], None]] = []


class FlashError(ImageBuilderError):
    """The image or the options do not allow a flash."""


@dataclass(frozen=True)
class FlashOptions:
    image: str
    device: Path
    recipe: Path | None = None
    force: bool = False
    yes: bool = False
    to_file: bool = False
    hostname: str | None = None
    use_bmap: bool = True
    verify_key: Path | None = None  # an OpenSSH public key SHA256SUMS.sig must be made with


def resolve_image(image: str, recipe: Path | None) -> Path:
    """The image file: a path, or a role name looked up in the recipe's output folder."""
    if image in ROLES:
        if recipe is None:
            raise FlashError(f"'{image}' names a role: say which cluster with --recipe RECIPE",
                             f"imagebuilder flash --recipe recipes/cluster.yaml {image} /dev/sdX")
        out_dir = load_recipe(recipe).output_dir
        # The raw image first: it is read by seeking over its holes, with nothing to decompress.
        for form in FORMS:
            candidate = out_dir / f"{image}{form}"
            if candidate.is_file():
                return candidate
        raise FlashError(f"{out_dir}: no {image} image ({', '.join(image + f for f in FORMS)})",
                         f"build it first: imagebuilder build {recipe}")
    path = Path(image)
    if not path.is_file():
        raise FlashError(f"{image}: no such image file", "give a .img, .img.xz or .img.zst, or master/worker")
    if not any(path.name.endswith(form) for form in FORMS):
        raise FlashError(f"{image}: not an image this command reads", "give a .img, .img.xz or .img.zst file")
    return path


def _image_size(image: Path, bmap: Bmap | None) -> int:
    if bmap is not None:
        return bmap.image_size
    size = extract_size(image)
    if size is None:
        raise FlashError(f"{image}: the compressed file does not record its size, so the card cannot be "
                         "checked for room", f"decompress it first (zstd -d {image}) or put its .bmap beside it")
    return size


def _confirm(image: Path, target: Target, yes: bool) -> None:
    print(f"target: {target.describe()}", file=sys.stderr)
    confirm(f"write {image.name} onto {target.path}, destroying everything on it?", yes=yes,
            undone="nothing was written", error=FlashError)


def _open_target(target: Target) -> BinaryIO:
    """Open for writing; a block device exclusively, so a mount made meanwhile cannot share it."""
    flags = os.O_EXCL if not target.is_file else os.O_CREAT
    try:
        return open(target.path, "r+b", buffering=0,  # noqa: SIM115 (the caller's ExitStack closes it)
                    opener=lambda path, mode: os.open(path, (mode & ~os.O_TRUNC) | flags, 0o644))
    except OSError as e:
        if e.errno == errno.EBUSY:
            raise TargetRefused(f"{target.path} is in use (mounted, or held by another program)",
                                "unmount it and close what uses it") from None
        hint = "run it as root, or as a member of the disk group" if e.errno == errno.EACCES else None
        raise TargetRefused(f"{target.path}: cannot open it for writing: {e.strerror}", hint) from None


def _write(ctx: Context, image: Path, bmap: Bmap | None, size: int, fd: int) -> blockcopy.Written:
    stream = ctx.stack.enter_context(open_image(image))
    total = bmap.mapped_bytes if bmap else size
    with step(f"write {image.name}" + (f" ({total / 2**20:.0f} MiB mapped by its bmap)" if bmap else "")), \
            Progress("write", total) as progress:
        if bmap is not None:
            return blockcopy.write_mapped(stream, fd, bmap, progress)
        return blockcopy.write_whole(stream, fd, size, progress)


def _verify(bmap: Bmap | None, written: blockcopy.Written, fd: int) -> str:
    total = bmap.mapped_bytes if bmap else written.nbytes
    with step("verify what the card holds"), Progress("verify", total) as progress:
        if bmap is not None:
            blockcopy.verify_mapped(fd, bmap, progress)
            return f"{len(bmap.ranges)} mapped ranges match the bmap's {bmap.checksum_type} checksums"
        blockcopy.verify_whole(fd, written, progress)
        return f"sha256 of the {written.nbytes} bytes written reads back unchanged"


def flash(ctx: Context, options: FlashOptions) -> int:
    image = resolve_image(options.image, options.recipe)
    if options.hostname is not None:
        cardseed.check_seed_hostname(options.hostname)
        if not raw_name(image).name.startswith("worker"):
            raise FlashError(f"--hostname is for the worker image, not {image.name}",
                             "the master always takes the recipe's master.hostname")
    bmap_path = find_bmap(image) if options.use_bmap else None
    bmap = load_bmap(bmap_path) if bmap_path else None
    if bmap_path and bmap is not None and bmap.checksum_type is None:
        # An old bmap without checksums could not verify the card: every byte it is, then.
        log.warning("%s has no checksums; writing the whole image so it can be verified", bmap_path)
        bmap_path, bmap = None, None
    public_key = trusted_key(options.verify_key, options.recipe)
    if public_key is not None:
        check_signed(image, bmap_path, public_key)
    size = _image_size(image, bmap)
    target = check_target(options.device, image_size=size, force=options.force, to_file=options.to_file)
    # Opened (exclusively) before the question, and checked after it to be the device that was shown.
    card = ctx.stack.enter_context(_open_target(target))
    _confirm(image, target, options.yes)
    check_same_device(target, card.fileno())
    if target.is_file and target.size < size:
        # A file stands in for a card of the image's size; the bmap's holes then read as zeros.
        os.ftruncate(card.fileno(), size)
    log.info("writing %s (%s) onto %s", image, f"bmap {bmap_path.name}" if bmap_path else "no bmap: every byte",
             target.path)
    try:
        written = _write(ctx, image, bmap, size, card.fileno())
        for hook in AFTER_WRITE_HOOKS:
            hook(card.fileno())
        how = _verify(bmap, written, card.fileno())
        if options.hostname is not None:
            with step(f"seed hostname {options.hostname}"):
                cardseed.write_hostname_seed(target.path, options.hostname)
    except (Interrupted, KeyboardInterrupt):
        print(f"imagebuilder: interrupted: {target.path} is incomplete; flash it again before using it",
              file=sys.stderr)
        raise
    except ImageBuilderError:
        print(f"imagebuilder: {target.path} is incomplete; flash it again before using it", file=sys.stderr)
        raise
    seeded = f"; hostname seed {options.hostname}" if options.hostname else ""
    print(f"{target.path}: wrote {image.name}, verified: {how}{seeded}")
    return 0
