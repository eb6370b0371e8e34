"""The loop backend (root): the image's partitions mounted through loop devices, its programs run in a
qemu-user chroot."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from imagebuilder.core.log import log, step
from imagebuilder.core.run import run
from imagebuilder.disk.ext4 import shrink_root
from imagebuilder.disk.mount import mounted_image
from imagebuilder.disk.rewrite import rewrite_root
from imagebuilder.engine.apt import install_packages
from imagebuilder.engine.backends.chroot import Chroot, chroot_session
from imagebuilder.engine.checks import ConfigCheck, run_checks
from imagebuilder.layers.nevership import forget_identity
from imagebuilder.layers.render import RenderedLayer
from imagebuilder.layers.write import add_kernel_arguments_in_tree, read_in_root, write_layer
from imagebuilder.netboot.populate import NetbootSource, populate_tree
from imagebuilder.recipe.catalogue import Layout
from imagebuilder.sources.dpkg import DebPackage, read_packages


class LoopTree:
    def __init__(self, root: Path, chroot: Chroot, layout: Layout) -> None:
        self.root = root
        self.chroot = chroot
        self.layout = layout

    def install(self, packages: tuple[str, ...], debs: Path) -> None:
        install_packages(self.chroot, packages, debs)

    def write_layer(self, layer: RenderedLayer) -> list[str]:
        return write_layer(layer, self.root, self.layout.boot_mount)

    def add_kernel_arguments(self, arguments: list[str]) -> list[str]:
        return add_kernel_arguments_in_tree(self.root, self.layout.boot_mount, arguments)

    def enable_units(self, units: list[str]) -> None:
        self.chroot.run(["systemctl", "enable", *units])

    def run_checks(self, checks: list[ConfigCheck]) -> None:
        run_checks(self.chroot, checks)

    def update_initramfs(self) -> None:
        # The kernel's own hooks run too (raspi-firmware copies the new initrd onto the boot partition).
        with step("update-initramfs"):
            self.chroot.run(["update-initramfs", "-u", "-k", "all"])

    def add_netboot_tree(self, source: NetbootSource, work: Path) -> None:
        populate_tree(self.root, source, self.layout, work)

    def list_packages(self) -> tuple[DebPackage, ...]:
        return read_packages(self.root)

    def read_file(self, path: str) -> bytes | None:
        return read_in_root(self.root, path)

    def tidy(self) -> None:
        """Nothing that identifies a machine or the build may ship (layers/nevership.py)."""
        forget_identity(self.root, self.layout.machine_id)


def trim(root: Path) -> None:
    """Discard the free blocks, so they read as zeros: no old content (the build's resolv.conf, package
    lists) stays in them, and compressed images carry only data.

    Blocks freed in the journal's running transaction are not free for fstrim until it commits: sync
    first. A host file system without hole punching makes fstrim fail: the image is still right, only
    larger to compress, so say so rather than stop.
    """
    run(["sync", "--file-system", root])
    if run(["fstrim", root], check=False).returncode != 0:
        log.warning("fstrim %s failed: free blocks keep old data, so outputs compress less well", root)


@dataclass(frozen=True)
class LoopBackend:
    name = "loop"
    installs_packages = True
    runs_checks = True
    mounts = True
    rewrites = True

    def key_material(self) -> dict[str, str]:
        # The image as the nodes run it, made from its inputs alone: nothing to add.
        return {}

    def shrink(self, image: Path) -> None:
        shrink_root(image)

    def rewrite(self, image: Path, epoch: int, clock: int, size: int | None, work: Path) -> None:
        rewrite_root(image, epoch, clock, work, size)

    @contextlib.contextmanager
    def open(self, image: Path, layout: Layout, arch: str, workdir: Path, *,
             grow_fs: bool, epoch: int, rewrite: bool) -> Iterator[LoopTree]:
        with mounted_image(image, layout, workdir, grow_fs=grow_fs, epoch=epoch if rewrite else None) as root:
            with chroot_session(root, arch, epoch) as chroot:
                yield LoopTree(root, chroot, layout)
            # After the chroot's own build-time files (resolv.conf, policy-rc.d) are gone. A rewritten image
            # keeps no free block anyway.
            if not rewrite:
                trim(root)
