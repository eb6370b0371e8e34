"""An emitted image's root file system made again from its files, so that the same files give the same bytes.

A stage changes its image in place through the kernel, and the kernel's ext4 records when and in which order
that happened: inode change times, where delayed allocation put each block, the journal's last transactions.
None of that is the same in two builds. So the last stage of each role writes its root file system afresh with
`mkfs.ext4 -d` from the tree it made, every time in it clamped to the build's epoch (SOURCE_DATE_EPOCH), the
file system's own times faked to it (E2FSPROGS_FAKE_TIME), its UUID, hash seed, label and features those of
the file system it replaces, and its size a function of what it holds. mkfs copies each file's change time, which
no program can set: debugfs sets them afterwards. The FAT is remade the same way (disk/fat.py, make_fat).
"""

from __future__ import annotations

import functools
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from imagebuilder.core.beside import raise_if_cancelled
from imagebuilder.core.errors import ImageBuilderError
from imagebuilder.core.resources import loop_device, mounted, temporary_directory
from imagebuilder.core.run import output, run
from imagebuilder.disk.copy import copy_range, data_extents
from imagebuilder.disk.ext4 import HEADROOM
from imagebuilder.disk.partitions import MIB, Partition, boot_and_root, resize_partition

BLOCK = 4096
INODE_RATIO = 16384  # bytes per inode: mke2fs.conf's default
JOURNAL = 64 * MIB  # mke2fs's journal for a file system of 1 to 16 GiB
# What the tree's own size does not count: inode tables (one 256-byte inode per 16 KiB), bitmaps, group
# descriptors, the reserved growth of the descriptor table, directories' index blocks.
OVERHEAD = 1.08
# Flags that describe a file system's state, not its make-up: mke2fs refuses them.
STATE_FEATURES = {"needs_recovery", "orphan_present"}


@dataclass(frozen=True)
class Ext4Identity:
    """What a remade root file system keeps of the one it replaces: what the node and its boot find it by
    (UUID, label), and how its directories are hashed and laid out."""

    uuid: str
    hash_seed: str
    label: str
    features: tuple[str, ...]
    block_size: int
    inode_size: int

    def mkfs_options(self) -> list[str]:
        # One -E: mke2fs takes only the last.
        return ["-U", self.uuid, "-L", self.label, "-O", ",".join(("none", *self.features)),
                "-b", str(self.block_size), "-I", str(self.inode_size), "-E", f"hash_seed={self.hash_seed},nodiscard"]


def read_identity(device: Path | str) -> Ext4Identity:
    header = output(["dumpe2fs", "-h", device])

    def field(name: str) -> str:
        found = re.search(rf"^{name}:[ \t]*(.*)$", header, re.M)
        if found is None:
            raise ValueError(f"{device}: dumpe2fs shows no {name}")
        return found.group(1).strip()

    label = field("Filesystem volume name")
    return Ext4Identity(
        uuid=field("Filesystem UUID"), hash_seed=field("Directory Hash Seed"),
        label="" if label == "<none>" else label,
        features=tuple(f for f in field("Filesystem features").split() if f not in STATE_FEATURES),
        block_size=int(field("Block size")), inode_size=int(field("Inode size")))


def walk(tree: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Every path under tree (tree itself last), children before their directory, with its lstat."""
    for folder, dirs, files in os.walk(tree, topdown=False):
        for name in (*files, *dirs):
            path = os.path.join(folder, name)
            yield path, os.lstat(path)
    yield str(tree), os.lstat(tree)


def clamp_times(tree: Path, epoch: int) -> None:
    """No time in the tree later than epoch, and every access time its modification time.

    Children first: changing a file's times does not change its folder's. A time before the epoch (a
    package's file, as its .deb has it) is kept.
    """
    for path, st in walk(tree):
        mtime = min(st.st_mtime_ns, epoch * 10**9)
        if (st.st_mtime_ns, st.st_atime_ns) != (mtime, mtime):
            os.utime(path, ns=(mtime, mtime), follow_symlinks=False)


# systemd's: its time is the earliest a node's clock may show at boot. The epoch is no earlier than the
# cluster's CA (build/epoch.py), so a master with no time server still finds its CA valid.
CLOCK_EPOCH = "usr/lib/clock-epoch"


def touch_epoch(path: Path, epoch: int) -> None:
    """Set a file's times to the epoch itself."""
    if path.is_file():
        os.utime(path, (epoch, epoch))


def fitting_size(tree: Path) -> tuple[int, int]:
    """A root file system's size for the tree, from what it holds alone (the same tree, the same size), and
    how many files it holds. Its files rounded up to blocks, its folders by their entries (an ext4 folder
    never shrinks: its own size says what it once held), the file system's overhead, its journal and headroom."""
    data = files = 0
    for path, st in walk(tree):
        files += 1
        if stat.S_ISDIR(st.st_mode):
            entries = sum(8 + -(-len(os.fsencode(name)) // 4) * 4 for name in (".", "..", *os.listdir(path)))
            data += -(-entries // BLOCK) * BLOCK
        elif not (stat.S_ISLNK(st.st_mode) and st.st_size < 60):  # a short link's target is in its inode
            data += -(-st.st_size // BLOCK) * BLOCK
    return -(-(int(data * OVERHEAD) + JOURNAL + HEADROOM) // MIB) * MIB, files


def inode_count(size: int, files: int) -> int:
    """mke2fs's one inode per 16 KiB, or more for a tree of many small files."""
    return max(size // INODE_RATIO, files * 5 // 4 + 8192)


@functools.cache
def rewrite_tools() -> str:
    """The versions of the programs that lay the file systems out: other versions, other bytes."""
    said: list[str] = []
    run(["mkfs.ext4", "-V"], on_line=said.append)  # on stderr
    # mkfs.vfat says its version only when it makes a file system.
    with temporary_directory("mkfs-version-") as scratch:
        probe = scratch / "probe.img"
        with open(probe, "wb") as f:
            f.truncate(40 * MIB)
        run(["mkfs.vfat", "-v", "--invariant", probe], on_line=said.append)
    versions = [said[0], output(["mcopy", "--version"]).splitlines()[0],
                next(line for line in said if line.startswith("mkfs.fat"))]
    return " | ".join(v.strip() for v in versions)


def rewrite_root(image: Path, epoch: int, clock: int, work: Path, size: int | None = None) -> None:
    """Write the image's root file system afresh from its own files: the same files, the same bytes.

    clock: the time of /usr/lib/clock-epoch. size: of the whole image (output.image_size); without it, the
    root is sized by fitting_size. The new file system is made in `work` and copied back over the old one,
    into the same file: the image is a partial file whose lock a build holds (core/resources.atomic_output),
    which a rename would lose.
    """
    _, root = boot_and_root(image)
    made = work / "root.ext4"
    # The fake time dates the file system itself; no mke2fs.conf: its built-in defaults, not the host's.
    env = {"E2FSPROGS_FAKE_TIME": str(epoch), "MKE2FS_CONFIG": str(work / "no-mke2fs.conf")}
    with loop_device(image, offset=root.start, size=root.size) as device:
        identity = read_identity(device)
        # Read-write: the mount points of the boot partition and the chroot's binds are folders of this file
        # system that the build's mounts hid, and their times are clamped here too. noatime: mkfs reading the
        # files must not date them again.
        with mounted(device, work / "old-root", fstype="ext4", options=("noatime",)) as tree:
            clamp_times(tree, epoch)
            touch_epoch(tree / CLOCK_EPOCH, clock)
            fitting, files = fitting_size(tree)
            target = fitting if size is None else size - root.start
            if target < fitting - HEADROOM:
                raise ImageBuilderError(f"output.image_size: the root file system needs about "
                                        f"{(root.start + fitting - HEADROOM) // MIB} MiB of the image, which is "
                                        f"{size // MIB if size else 0} MiB", "give a larger output.image_size")
            with open(made, "wb") as f:
                f.truncate(target)
            raise_if_cancelled()
            run(["mkfs.ext4", "-F", "-q", *identity.mkfs_options(), "-N", str(inode_count(target, files)),
                 "-d", tree, made], env=env, cancellable=True)
    raise_if_cancelled()
    set_change_times(made, epoch)
    copy_back(made, image, root)
    made.unlink()


def copy_back(made: Path, image: Path, root: Partition) -> None:
    """The file system `made` becomes the image's root partition: its data copied in, the old root's blocks
    gone (holes), and the partition and the file sized to it."""
    size = made.stat().st_size
    with open(made, "rb") as src, open(image, "r+b") as dst:
        dst.truncate(root.start)
        for start, end in data_extents(src.fileno(), size):
            raise_if_cancelled()
            copy_range(src.fileno(), dst.fileno(), start, end, -root.start)
        dst.truncate(root.start + size)
    resize_partition(image, root, size)


def used_inodes(made: Path) -> list[int]:
    """The inode numbers in use, from the group descriptors' lists of free ones (dumpe2fs)."""
    text = output(["dumpe2fs", made])
    count = int(re.search(r"^Inode count:\s*(\d+)", text, re.M).group(1))  # type: ignore[union-attr]
    free: set[int] = set()
    for listed in re.findall(r"^\s*Free inodes: (.*)$", text, re.M):
        for part in filter(None, (p.strip() for p in listed.split(","))):
            first, _, last = part.partition("-")
            free.update(range(int(first), int(last or first) + 1))
    return [n for n in range(1, count + 1) if n not in free]


def set_change_times(made: Path, epoch: int) -> None:
    """Every inode's change time the epoch: mke2fs -d copied the tree's, which are the moments this build
    wrote each file (nothing but the kernel sets a change time)."""
    commands = made.with_name("change-times.debugfs")
    commands.write_text("".join(f"set_inode_field <{n}> ctime {epoch}\n" for n in used_inodes(made)))
    failed: list[str] = []
    try:
        # debugfs exits 0 whatever its commands did; each failure is a line of its own on stderr.
        with open(os.devnull, "wb") as echoed:  # a line per command
            run(["debugfs", "-w", "-f", commands, made], env={"E2FSPROGS_FAKE_TIME": str(epoch)}, stdout=echoed,
                cancellable=True,
                on_line=lambda line: failed.append(line) if line.startswith("set_inode_field") else None)
    finally:
        commands.unlink(missing_ok=True)
    if failed:
        raise ValueError(f"{made}: debugfs could not set every change time: {failed[0]}")
