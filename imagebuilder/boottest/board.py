"""`imagebuilder boot-test --board pi3b|pi2b`: the table's first worker on qemu's model of that Raspberry Pi.

The rest of the cluster boots on virt as usual; this card boots the way the board's firmware boots it: the
firmware step picks the kernel, initramfs and device tree by the firmware's rules from the card's own
config.txt and passes its cmdline.txt, and the card is the SoC's SD card. So the worker on the model meets
the master over the LAN like any other, and every cluster check runs on it too.

Two things the model differs in, both outside the image: its console is the PL011 UART, and its only network
is qemu's USB NIC (a real Pi 3 has an on-board one, eth0), which two kernel drivers claim. cdc_ether names it
eth0 with the MAC qemu gives; cdc_subset, if it wins the race, names it usb0 with a random MAC. The model's
command line therefore keeps cdc_subset out, as it does the console: neither is a change to the card.
"""

from __future__ import annotations

from pathlib import Path

from imagebuilder.boards.models import BOARDS, Board
from imagebuilder.boottest.firmware_step import BootFiles
from imagebuilder.boottest.plan import CheckResult, Node
from imagebuilder.core.errors import ImageBuilderError
from imagebuilder.recipe.model import Recipe

MODEL_ONLY_ARGUMENTS = "module_blacklist=cdc_subset"


def board_for(recipe: Recipe, name: str) -> Board:
    """The board a --board name means, if the recipe's images run on it and qemu has a model of it."""
    board = BOARDS[name]
    if board.qemu is None:
        raise ImageBuilderError(f"--board {name}: qemu has no model of the {board.title}",
                                "boot arm64 images with --board pi3b, armhf ones with --board pi2b")
    if recipe.arch not in board.arches:
        raise ImageBuilderError(f"--board {name}: a {board.title} does not run {recipe.arch} images",
                                "boot arm64 images with --board pi3b, armhf ones with --board pi2b")
    return board


def model_append(files: BootFiles) -> str:
    return f"{files.append} {MODEL_ONLY_ARGUMENTS}"


def firmware_result(node: Node, board: Board, files: BootFiles, image: Path) -> CheckResult:
    chosen = files.selection
    return CheckResult("firmware step", node.name, True,
                       f"{board.title} from {image.name}: kernel {chosen.kernel}, initramfs {chosen.initramfs}, "
                       f"device tree {chosen.device_tree}, command line from {chosen.cmdline}: {files.append}")
