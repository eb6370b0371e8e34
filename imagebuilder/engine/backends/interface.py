"""How a stage gets at an image's files: the `loop` backend (root) or the `guestfs` backend (no root).

A stage opens the image as an `ImageTree` and only talks to that: install packages, write overlay
files, enable units, list packages, read a file, tidy. The loop backend mounts the partitions and runs programs in a
qemu-user chroot; the guestfs backend edits the image in libguestfs's appliance, which cannot run the
image's programs, so its stages install no packages (they go to cloud-init's first boot instead).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Protocol

from imagebuilder.core.errors import ImageBuilderError
from imagebuilder.core.run import is_root
from imagebuilder.engine.backends.guestfs import GuestfsBackend
from imagebuilder.engine.backends.loop import LoopBackend
from imagebuilder.engine.checks import ConfigCheck
from imagebuilder.layers.render import RenderedLayer
from imagebuilder.netboot.populate import NetbootSource
from imagebuilder.recipe.catalogue import Layout
from imagebuilder.sources.dpkg import DebPackage

BACKENDS = ("loop", "guestfs")


class ImageTree(Protocol):
    """An open image whose root (with the boot partition at its mount point) can be changed."""

    def install(self, packages: tuple[str, ...], debs: Path) -> None: ...
    def write_layer(self, layer: RenderedLayer) -> list[str]: ...
    def add_kernel_arguments(self, arguments: list[str]) -> list[str]: ...
    def enable_units(self, units: list[str]) -> None: ...
    def run_checks(self, checks: list[ConfigCheck]) -> None: ...
    def update_initramfs(self) -> None: ...
    def add_netboot_tree(self, source: NetbootSource, work: Path) -> None: ...
    def list_packages(self) -> tuple[DebPackage, ...]: ...
    def read_file(self, path: str) -> bytes | None: ...
    def tidy(self) -> None: ...


class Backend(Protocol):
    """What a stage needs of a backend beside its tree: each difference between backends is decided here."""

    @property
    def name(self) -> str: ...
    @property
    def installs_packages(self) -> bool: ...  # False: cloud-init installs them at first boot
    @property
    def runs_checks(self) -> bool: ...  # False: the checks of generated files are skipped, with a warning
    @property
    def mounts(self) -> bool: ...  # True: it mounts on this host, so it needs root and a mount namespace
    @property
    def rewrites(self) -> bool: ...  # True: it can make an image's file systems again (reproducible builds)

    def key_material(self) -> dict[str, str]:
        """What a stage's cache key adds to its inputs for this backend."""
        ...

    def open(self, image: Path, layout: Layout, arch: str, workdir: Path, *,
             grow_fs: bool, epoch: int, rewrite: bool) -> contextlib.AbstractContextManager[ImageTree]:
        """The image's files. epoch: SOURCE_DATE_EPOCH for what runs in it; rewrite: the stage makes the image
        again from its files afterwards (Backend.rewrite), so its boot partition is made again too."""
        ...

    def shrink(self, image: Path) -> None:
        """Shrink a grown image, closed, to what its root file system holds."""
        ...

    def rewrite(self, image: Path, epoch: int, clock: int, size: int | None, work: Path) -> None:
        """Make the image's file systems again from their files once its stage closed its tree, so that the
        same files give the same bytes (disk/rewrite.py), sized to what they hold or to `size` (where
        `rewrites`); clock: the time of /usr/lib/clock-epoch."""
        ...


def choose_backend(name: str | None) -> Backend:
    """The backend asked for, else loop as root and guestfs otherwise."""
    if name is None:
        name = "loop" if is_root() else "guestfs"
    if name == "loop":
        return LoopBackend()
    if name == "guestfs":
        return GuestfsBackend()
    raise ImageBuilderError(f"unknown backend {name!r}", f"use one of: {', '.join(BACKENDS)}")
