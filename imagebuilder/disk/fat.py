"""The FAT boot partition inside an image or on a card, through mtools at its byte offset: no mount, so
no kernel vfat is needed."""

from __future__ import annotations

import re
from pathlib import Path

from imagebuilder.core.run import output, run
from imagebuilder.disk.partitions import SECTOR, Partition

MTOOLS_ENV = {"MTOOLS_SKIP_CHECK": "1"}


def make_fat(image: Path, part: Partition, label: str, content: Path, serial: str | None = None) -> None:
    """Create the FAT32 boot filesystem inside the image and copy `content` into it."""
    volume_id = ["-i", serial] if serial else []
    run(["mkfs.vfat", "-F", "32", "-n", label, *volume_id, "-S", str(SECTOR), "-h", str(part.start // SECTOR),
         "--offset", str(part.start // SECTOR), image, str(part.size // 1024)])
    entries = sorted(content.iterdir())
    if entries:
        run(["mcopy", "-i", f"{image}@@{part.start}", "-s", "-p", "-m", "-Q", *entries, "::/"], env=MTOOLS_ENV)


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
