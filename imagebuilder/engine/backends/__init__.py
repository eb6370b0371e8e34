"""How a stage gets at an image's files: the `loop` backend (root) or the `guestfs` backend (no root).

A stage opens the image as an `ImageTree` and only talks to that: install packages, write overlay
files, enable units, list packages, tidy. The loop backend mounts the partitions and runs programs in a
qemu-user chroot; the guestfs backend edits the image in libguestfs's appliance, which cannot run the
image's programs, so its stages install no packages (they go to cloud-init's first boot instead).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from imagebuilder.core.errors import ImageBuilderError
from imagebuilder.core.log import log
from imagebuilder.core.run import is_root, run
from imagebuilder.disk.mount import mounted_image
from imagebuilder.engine.backends.chroot import Chroot, chroot_session
from imagebuilder.layers.render import RenderedLayer, append_cmdline, write_layer
from imagebuilder.recipe.catalogue import Layout

if TYPE_CHECKING:
    from imagebuilder.engine.checks import Check

BACKENDS = ("loop", "guestfs")


class ImageTree(Protocol):
    """An open image whose root (with the boot partition at its mount point) can be changed."""

    def install(self, packages: tuple[str, ...], debs: Path) -> None: ...
    def write_layer(self, layer: RenderedLayer) -> list[str]: ...
    def append_cmdline(self, arguments: list[str]) -> None: ...
    def enable_units(self, units: list[str]) -> None: ...
    def run_checks(self, checks: list[Check]) -> None: ...
    def list_packages(self) -> dict[str, str]: ...
    def tidy(self) -> None: ...


class Backend(Protocol):
    name: str
    installs_packages: bool

    def open(self, image: Path, layout: Layout, arch: str, workdir: Path, *,
             grow_fs: bool) -> contextlib.AbstractContextManager[ImageTree]: ...


def choose_backend(name: str | None) -> Backend:
    """The backend asked for, else loop as root and guestfs otherwise."""
    if name is None:
        name = "loop" if is_root() else "guestfs"
    if name == "loop":
        return LoopBackend()
    if name == "guestfs":
        from imagebuilder.engine.backends.guestfs import GuestfsBackend

        return GuestfsBackend()
    raise ImageBuilderError(f"unknown backend {name!r}", f"use one of: {', '.join(BACKENDS)}")


class LoopTree:
    def __init__(self, root: Path, chroot: Chroot, layout: Layout) -> None:
        self.root = root
        self.chroot = chroot
        self.layout = layout

    def install(self, packages: tuple[str, ...], debs: Path) -> None:
        from imagebuilder.engine.stages import install_packages

        install_packages(self.chroot, packages, debs)

    def write_layer(self, layer: RenderedLayer) -> list[str]:
        return write_layer(layer, self.root, self.layout.boot_mount)

    def append_cmdline(self, arguments: list[str]) -> None:
        append_cmdline(self.root / self.layout.boot_mount.lstrip("/") / "cmdline.txt", arguments)

    def enable_units(self, units: list[str]) -> None:
        self.chroot.run(["systemctl", "enable", *units])

    def run_checks(self, checks: list[Check]) -> None:
        from imagebuilder.engine.checks import run_checks

        run_checks(self.chroot, checks)

    def list_packages(self) -> dict[str, str]:
        from imagebuilder.engine.stages import installed_packages

        return installed_packages(self.root)

    def tidy(self) -> None:
        """What a package install leaves that must not ship: lists, host keys; then trim free space."""
        for lists in (self.root / "var/lib/apt/lists").glob("*"):
            if lists.is_file():
                lists.unlink()
        for key in self.root.glob("etc/ssh/ssh_host_*"):
            key.unlink()
        # Free blocks read as zeros afterwards, so the bmap and the compressed images carry only data.
        # A host filesystem without hole punching makes fstrim fail: the image is still right, only larger
        # to compress and flash, so say so rather than stop.
        if run(["fstrim", self.root], check=False).returncode != 0:
            log.warning("fstrim %s failed: free blocks keep old data, so outputs compress less well", self.root)


class LoopBackend:
    name = "loop"
    installs_packages = True

    @contextlib.contextmanager
    def open(self, image: Path, layout: Layout, arch: str, workdir: Path, *, grow_fs: bool) -> Iterator[ImageTree]:
        with mounted_image(image, layout, workdir, grow_fs=grow_fs) as root, \
                chroot_session(root, arch) as chroot:
            yield LoopTree(root, chroot, layout)
