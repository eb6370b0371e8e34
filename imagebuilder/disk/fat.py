"""The FAT boot partition inside an image or on a card, through mtools at its byte offset: no mount, so
no kernel vfat is needed."""

from __future__ import annotations

import os
import re
from pathlib import Path

from imagebuilder.core.errors import ImageBuilderError
from imagebuilder.core.run import output, run
from imagebuilder.disk.copy import clear_range
from imagebuilder.disk.partitions import SECTOR, Partition

# FAT keeps local times: one zone for every read and write, so a file's time and a reproducible image's bytes
# do not depend on where the build runs.
MTOOLS_ENV = {"MTOOLS_SKIP_CHECK": "1", "TZ": "UTC0"}


def make_fat(image: Path, part: Partition, label: str, content: Path, serial: str | None = None,
             epoch: int | None = None) -> None:
    """Create the FAT32 boot filesystem inside the image and copy `content` into it.

    epoch: the same content gives the same bytes: mkfs.vfat's time-based fields are constants, the files'
    times are theirs (clamp them first: disk/rewrite.clamp_times), what mtools makes is dated at the epoch
    (SOURCE_DATE_EPOCH), and folder by folder the entries are written in name order.
    """
    volume_id = ["-i", serial] if serial else []
    invariant = ["--invariant"] if epoch is not None else []
    if epoch is not None:
        clear_range(image, part.start, part.end)  # what mkfs.vfat does not overwrite: the old files' clusters
    run(["mkfs.vfat", "-F", "32", "-n", label, *volume_id, *invariant, "-S", str(SECTOR),
         "-h", str(part.start // SECTOR), "--offset", str(part.start // SECTOR), image, str(part.size // 1024)])
    where = f"{image}@@{part.start}"
    if epoch is None:
        entries = sorted(content.iterdir())
        if entries:
            run(["mcopy", "-i", where, "-s", "-p", "-m", "-Q", *entries, "::/"], env=MTOOLS_ENV)
        return
    env = {**MTOOLS_ENV, "SOURCE_DATE_EPOCH": str(epoch)}
    refuse_what_fat_cannot_hold(content)
    for folder, dirs, files in os.walk(content):
        dirs.sort()
        inside = Path(folder).relative_to(content).as_posix()
        target = "::/" if inside == "." else f"::/{inside}/"
        if dirs:
            run(["mmd", "-i", where, *(f"{target}{d}" for d in dirs)], env=env)
        if files:
            run(["mcopy", "-i", where, "-p", "-m", "-Q", *(Path(folder) / f for f in sorted(files)), target], env=env)


def refuse_what_fat_cannot_hold(content: Path) -> None:
    """A FAT holds folders and regular files only: mtools would follow a symbolic link (to a path of the
    host, for an absolute one) and skip a linked folder's files; a kernel vfat mount refuses both."""
    for folder, dirs, files in os.walk(content):
        for name in (*dirs, *files):
            path = Path(folder) / name
            if path.is_symlink() or not (path.is_dir() or path.is_file()):
                raise ImageBuilderError(f"{path.relative_to(content)}: the boot partition (FAT) cannot hold a "
                                        "symbolic link or special file",
                                        "write a regular file there instead (in the overlay, or the package "
                                        "hook that made it)")


def fat_label(image: Path, part: Partition) -> str:
    return output(["mlabel", "-s", "-i", f"{image}@@{part.start}", "::"], env=MTOOLS_ENV).split()[-1]


def fat_serial(image: Path, part: Partition) -> str | None:
    info = output(["minfo", "-i", f"{image}@@{part.start}", "::"], env=MTOOLS_ENV)
    found = re.search(r"serial number:\s*([0-9A-Fa-f]{4})-?([0-9A-Fa-f]{4})", info)
    return f"{found.group(1)}{found.group(2)}" if found else None


class BootPartition:
    """The FAT partition's files, read with mtools."""

    def __init__(self, image: Path, part: Partition) -> None:
        self.where = f"{image}@@{part.start}"
        text = output(["mdir", "-/", "-b", "-i", self.where, "::/"], env=MTOOLS_ENV)
        self.files = {line.removeprefix("::/") for line in text.splitlines() if line and not line.endswith("/")}

    def read(self, name: str) -> bytes:
        return run(["mtype", "-i", self.where, f"::/{name}"], capture=True, env=MTOOLS_ENV).stdout

    def config_txt(self) -> str:
        """config.txt as the firmware reads it; empty when there is none."""
        return self.read("config.txt").decode(errors="replace") if "config.txt" in self.files else ""

    def copy(self, name: str, target: Path) -> Path:
        run(["mcopy", "-n", "-i", self.where, f"::/{name}", target], env=MTOOLS_ENV)
        return target
