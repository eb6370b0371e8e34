"""Mount an SD-card image's partitions so programs can run inside it.

The root partition goes through a loop device at its offset, which every kernel supports. The boot
partition is mounted where the kernel has vfat; where it has not, its files are copied out with
mtools, bound at the mount point, and written back into a fresh FAT when the block succeeds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from imagebuilder.core.log import log
from imagebuilder.core.resources import bind_mount, loop_device, mounted, temporary_directory
from imagebuilder.core.run import run
from imagebuilder.disk.ext4 import grow_root
from imagebuilder.disk.fat import MTOOLS_ENV, fat_serial, make_fat
from imagebuilder.disk.partitions import Partition, boot_and_root
from imagebuilder.disk.rewrite import clamp_times
from imagebuilder.recipe.catalogue import Layout


def kernel_has_vfat() -> bool:
    if "\tvfat\n" in Path("/proc/filesystems").read_text():
        return True
    if Path("/sbin/modprobe").exists():
        run(["modprobe", "vfat"], check=False)
    return "\tvfat\n" in Path("/proc/filesystems").read_text()


@contextlib.contextmanager
def mounted_partition(image: Path, part: Partition, target: Path, fstype: str) -> Iterator[Path]:
    """A partition of the image mounted at target, through a loop device at its offset (any kernel)."""
    with loop_device(image, offset=part.start, size=part.size) as device, \
            mounted(device, target, fstype=fstype) as mnt:
        yield mnt


@contextlib.contextmanager
def mounted_image(image: Path, layout: Layout, workdir: Path, *, grow_fs: bool = False,
                  epoch: int | None = None) -> Iterator[Path]:
    """Mount root and boot partitions of `image` under workdir; yield the root.

    grow_fs: first grow the root filesystem to fill its partition (offline: not every kernel allows
    resizing a mounted ext4).
    epoch: the boot partition is staged with mtools even where the kernel has vfat, and made again so that
    the same files give the same bytes (disk/fat.make_fat).
    """
    boot, root = boot_and_root(image)
    with contextlib.ExitStack() as stack:
        if grow_fs:
            grow_root(image, root)
        # The loop devices clear themselves, and the mounts live in the build's own mount namespace: a
        # build that dies leaves neither (core/isolation.py, core/loopdev.py).
        mnt = stack.enter_context(mounted_partition(image, root, workdir / "root", "ext4"))
        boot_dir = mnt / layout.boot_mount.lstrip("/")
        if epoch is None and kernel_has_vfat():
            stack.enter_context(mounted_partition(image, boot, boot_dir, "vfat"))
        else:
            stack.enter_context(staged_fat(image, boot, boot_dir, layout.boot_label, workdir, epoch))
        yield mnt


@contextlib.contextmanager
def staged_fat(image: Path, part: Partition, target: Path, label: str, workdir: Path,
               epoch: int | None = None) -> Iterator[Path]:
    """The FAT partition's files in a host directory bound at `target`; written back on success."""
    log.debug("staging the boot partition with mtools")
    with temporary_directory("boot-", workdir) as staging:
        run(["mcopy", "-i", f"{image}@@{part.start}", "-s", "-p", "-m", "-Q", "::/*", staging], env=MTOOLS_ENV)
        serial = fat_serial(image, part)
        with bind_mount(staging, target):
            yield target
        if epoch is not None:
            clamp_times(staging, epoch)
        # Rebuilt rather than patched, so files deleted in the chroot are gone from the FAT too.
        make_fat(image, part, label, staging, serial=serial, epoch=epoch)
