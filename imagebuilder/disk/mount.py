"""Mount an SD-card image's partitions so programs can run inside it.

The root partition goes through a loop device at its offset, which every kernel supports. The boot
partition is mounted where the kernel has vfat; where it has not, its files are copied out with
mtools, bound at the mount point, and written back into a fresh FAT when the block succeeds.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

from imagebuilder.core.log import log
from imagebuilder.core.resources import bind_mount, loop_device, mounted, temporary_directory
from imagebuilder.core.run import output, run
from imagebuilder.disk.image import MTOOLS_ENV, SECTOR, Partition, boot_and_root, make_fat
from imagebuilder.recipe.catalogue import Layout


def kernel_has_vfat() -> bool:
    if "\tvfat\n" in Path("/proc/filesystems").read_text():
        return True
    if Path("/sbin/modprobe").exists():
        run(["modprobe", "vfat"], check=False)
    return "\tvfat\n" in Path("/proc/filesystems").read_text()


@contextlib.contextmanager
def mounted_image(image: Path, layout: Layout, workdir: Path, *, grow_fs: bool = False) -> Iterator[Path]:
    """Mount root and boot partitions of `image` under workdir; yield the root.

    grow_fs: first grow the root filesystem to fill its partition (offline: not every kernel allows
    resizing a mounted ext4).
    """
    boot, root = boot_and_root(image)
    with contextlib.ExitStack() as stack:
        device = stack.enter_context(loop_device(image, offset=root.start, size=root.size))
        if grow_fs:
            run(["e2fsck", "-f", "-p", device])
            run(["resize2fs", device])
        mnt = stack.enter_context(mounted(device, workdir / "root", fstype="ext4"))
        boot_dir = mnt / layout.boot_mount.lstrip("/")
        if kernel_has_vfat():
            boot_device = stack.enter_context(loop_device(image, offset=boot.start, size=boot.size))
            stack.enter_context(mounted(boot_device, boot_dir, fstype="vfat"))
        else:
            stack.enter_context(staged_fat(image, boot, boot_dir, layout.boot_label, workdir))
        yield mnt


@contextlib.contextmanager
def staged_fat(image: Path, part: Partition, target: Path, label: str, workdir: Path) -> Iterator[Path]:
    """The FAT partition's files in a host directory bound at `target`; written back on success."""
    log.debug("no vfat in this kernel: staging the boot partition with mtools")
    with temporary_directory("boot-", workdir) as staging:
        run(["mcopy", "-i", f"{image}@@{part.start}", "-s", "-p", "-m", "-Q", "::/*", staging], env=MTOOLS_ENV)
        serial = _fat_serial(image, part)
        with bind_mount(staging, target):
            yield target
        # Rebuilt rather than patched, so files deleted in the chroot are gone from the FAT too.
        make_fat(image, part, label, staging, serial=serial)


def _fat_serial(image: Path, part: Partition) -> str | None:
    info = output(["minfo", "-i", f"{image}@@{part.start}", "::"], env=MTOOLS_ENV)
    found = re.search(r"serial number:\s*([0-9A-Fa-f]{4})-?([0-9A-Fa-f]{4})", info)
    return f"{found.group(1)}{found.group(2)}" if found else None



def shrink_root(image: Path, headroom: int = 256 * 2**20) -> None:
    """Shrink the root filesystem to what it holds plus `headroom`, and the partition and file with it.

    A stage grows its image before installing packages, by more than they need; what is left over
    would make every later copy, digest and flash of the raw image longer. The card's root partition
    is grown to the whole card at first boot anyway.
    """
    _, root = boot_and_root(image)
    with loop_device(image, offset=root.start, size=root.size) as device:
        run(["e2fsck", "-f", "-p", device])
        text = output(["resize2fs", "-P", device])
        minimum = int(re.search(r"minimum size of the filesystem:\s*(\d+)", text).group(1))  # type: ignore[union-attr]
        block = int(re.search(r"Block size:\s*(\d+)", output(["dumpe2fs", "-h", device])).group(1))  # type: ignore[union-attr]
        target = (minimum * block + headroom + 2**20 - 1) // 2**20 * 2**20
        if target >= root.size - 64 * 2**20:
            return  # not worth it
        run(["resize2fs", device, f"{target // 1024}K"])
    run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", "-N", str(root.number), image],
        input=f",{target // SECTOR}\n".encode())
    with open(image, "r+b") as f:
        f.truncate(root.start + target)
