"""What differs between two images, file by file: the reproducibility test's report when their digests differ.

Each image's root file system is mounted read-only at its offset and walked; the boot partition's files are
copied out with mtools. A file differs in its kind, mode, owner, size, modification time, content (sha256),
link target or extended attributes. When no file differs, the report names the byte ranges that do and the
partition each falls in (file system metadata: inode tables, superblocks, the journal).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

from imagebuilder.core.resources import loop_device, mounted
from imagebuilder.disk.fat import MTOOLS_ENV
from imagebuilder.disk.partitions import boot_and_root

CHUNK = 2**20


def describe(path: Path) -> tuple[object, ...]:
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        content: str = "-> " + os.readlink(path)
    elif stat.S_ISREG(st.st_mode):
        content = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    else:
        content = ""
    try:
        xattrs = tuple(sorted((name, os.getxattr(path, name, follow_symlinks=False))
                              for name in os.listxattr(path, follow_symlinks=False)))
    except OSError:
        xattrs = ()
    return (stat.filemode(st.st_mode), st.st_uid, st.st_gid, st.st_size, int(st.st_mtime), content, xattrs)


def tree_listing(root: Path) -> dict[str, tuple[object, ...]]:
    listing = {}
    for folder, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            path = Path(folder) / name
            listing[str(path.relative_to(root))] = describe(path)
    return listing


@contextlib.contextmanager
def image_trees(image: Path, work: Path) -> Iterator[tuple[Path, Path]]:
    """(root, boot): the root file system mounted read-only, the boot partition's files copied out."""
    boot, root = boot_and_root(image)
    boot_copy = work / "boot"
    boot_copy.mkdir(parents=True)
    subprocess.run(["mcopy", "-s", "-p", "-m", "-Q", "-i", f"{image}@@{boot.start}", "::/*", boot_copy],
                   check=True, env={**os.environ, **MTOOLS_ENV})
    with loop_device(image, offset=root.start, size=root.size, read_only=True) as device, \
            mounted(device, work / "root", fstype="ext4", options=("ro",)) as tree:
        yield tree, boot_copy


def differing_files(a: Path, b: Path, work: Path) -> list[str]:
    """One line per file that differs between the images a and b (empty when every file is the same)."""
    lines = []
    with image_trees(a, work / "a") as (root_a, boot_a), image_trees(b, work / "b") as (root_b, boot_b):
        for name, (left, right) in {"root": (root_a, root_b), "boot": (boot_a, boot_b)}.items():
            first, second = tree_listing(left), tree_listing(right)
            for path in sorted(first.keys() | second.keys()):
                if first.get(path) != second.get(path):
                    lines.append(f"{name}:/{path}: {first.get(path)} != {second.get(path)}")
    return lines


def differing_ranges(a: Path, b: Path, limit: int = 20) -> list[str]:
    """The first MiB-sized ranges in which the two files differ, with the partition each falls in."""
    boot, root = boot_and_root(a)
    found = []
    with open(a, "rb") as fa, open(b, "rb") as fb:
        offset = 0
        while len(found) < limit:
            one, two = fa.read(CHUNK), fb.read(CHUNK)
            if not one and not two:
                break
            if one != two:
                at = next(i for i in range(max(len(one), len(two))) if one[i:i + 1] != two[i:i + 1]) + offset
                where = ("boot" if boot.start <= at < boot.end else
                         "root" if root.start <= at < root.end else "outside the partitions")
                found.append(f"byte {at} ({where}, {at - (root.start if where == 'root' else boot.start)} into it)")
            offset += CHUNK
    return found
