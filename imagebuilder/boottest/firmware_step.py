"""The boot test's firmware step: what a Raspberry Pi's firmware would load from this card, for qemu.

qemu runs no Pi firmware: it is given the kernel, initramfs and device tree the firmware would pick by its
own rules (boards/firmware.py) from the card's config.txt, and the card's cmdline.txt as it is, with only
the console sent to the emulated UART. On `-M virt` the same kernel, initramfs and command line are used
(qemu makes the device tree), so the k3s cgroup arguments and everything else on cmdline.txt are really in
force in every boot test.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from imagebuilder.boards.firmware import Selection, select
from imagebuilder.boards.models import Board
from imagebuilder.core.errors import ImageBuilderError
from imagebuilder.disk.fat import BootPartition
from imagebuilder.disk.partitions import boot_and_root

UART = "ttyAMA0,115200"  # the PL011 that qemu's -serial drives, on virt and on the Pi models


@dataclass(frozen=True)
class BootFiles:
    kernel: Path
    initrd: Path | None
    dtb: Path | None
    append: str
    selection: Selection


def redirect_console(cmdline: str, console: str = UART) -> str:
    """cmdline.txt with its console= arguments replaced by one on the emulated UART, nothing else changed."""
    words = [w for w in cmdline.split() if not w.startswith("console=")]
    return " ".join([*words, f"console={console}"])


def firmware_step(image: Path, board: Board, dest: Path) -> BootFiles:
    """Copy what `board`'s firmware would load off the card into dest; refuse naming what it would miss."""
    boot_part, _ = boot_and_root(image)
    boot = BootPartition(image, boot_part)
    chosen = select(boot.config_txt(), board, boot.files)
    wanted = [n for n in (chosen.kernel, chosen.initramfs, chosen.device_tree, chosen.cmdline) if n]
    missing = [n for n in wanted if n not in boot.files]
    if chosen.problems or missing or chosen.kernel is None:
        what = "; ".join([*chosen.problems, *(f"{n}: not on the boot partition" for n in missing)])
        raise ImageBuilderError(f"{image}: the firmware of a {board.title} would not boot it: {what}",
                                f"imagebuilder verify {image} lists what each board needs")
    dest.mkdir(parents=True, exist_ok=True)
    copied = {name: boot.copy(name, dest / Path(name).name) for name in wanted[:-1]}
    cmdline = boot.read(chosen.cmdline).decode(errors="replace").splitlines()[0]
    return BootFiles(copied[chosen.kernel], copied.get(chosen.initramfs or ""),
                     copied.get(chosen.device_tree or ""), redirect_console(cmdline), chosen)
