"""The Raspberry Pi boards the images are for, and what each board's firmware looks for on the card.

From the firmware's documentation (config.txt, boot folder): the filters a board answers to, its default
kernel names, its device tree (the Raspberry Pi kernel's name and the upstream one Debian ships), the
firmware files it loads from the card, and the drivers its SD card needs in the initramfs.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Board:
    name: str  # our name, also the boot test's --board
    title: str
    filters: frozenset[str]  # the config.txt section filters this board applies ([all] aside)
    arches: tuple[str, ...]  # Debian architectures its CPU runs
    kernel32: str | None  # the firmware's default kernel with arm_64bit=0 (None: no 32-bit mode)
    kernel64: str | None  # ... with arm_64bit=1
    default_64bit: bool  # arm_64bit's default
    dtb: str  # the Raspberry Pi kernel's device tree
    upstream_dtb: str  # the mainline name, preferred with upstream_kernel=1
    firmware: tuple[str, ...]  # files the boot ROM / EEPROM loads from the card before the kernel
    sd_modules: tuple[str, ...]  # kernel modules (or built-ins) that find the SD card
    imager_tags: tuple[str, ...]  # Raspberry Pi Imager's device tags, by architecture below
    qemu: str | None = None  # the qemu machine model of it, where there is one
    # Network boot: the Ethernet driver (and what it needs) the initramfs must hold, and how the board is
    # set to boot from the network; no driver: its boot ROM cannot boot from the network.
    net_modules: tuple[str, ...] = ()
    netboot: str = ""


BOARDS = {
    "pi2b": Board("pi2b", "Raspberry Pi 2 Model B", frozenset({"pi2"}), ("armhf",), "kernel7.img", None, False,
                  "bcm2709-rpi-2-b.dtb", "bcm2836-rpi-2-b.dtb", ("bootcode.bin", "start.elf", "fixup.dat"),
                  ("mmc_block", "sdhci_iproc|bcm2835"), ("pi2-32bit",), qemu="raspi2b"),
    "pi3b": Board("pi3b", "Raspberry Pi 3 Model B", frozenset({"pi3"}), ("arm64", "armhf"), "kernel7.img",
                  "kernel8.img", False, "bcm2710-rpi-3-b.dtb", "bcm2837-rpi-3-b.dtb",
                  ("bootcode.bin", "start.elf", "fixup.dat"), ("mmc_block", "sdhci_iproc|bcm2835"),
                  ("pi3-64bit", "pi3-32bit"), qemu="raspi3b", net_modules=("dwc2", "smsc95xx"),
                  netboot="once: a card with program_usb_boot_mode=1 in config.txt sets the OTP bit"),
    "pi3b+": Board("pi3b+", "Raspberry Pi 3 Model B+", frozenset({"pi3", "pi3+"}), ("arm64", "armhf"),
                   "kernel7.img", "kernel8.img", False, "bcm2710-rpi-3-b-plus.dtb", "bcm2837-rpi-3-b-plus.dtb",
                   ("bootcode.bin", "start.elf", "fixup.dat"), ("mmc_block", "sdhci_iproc|bcm2835"),
                   ("pi3-64bit", "pi3-32bit"), net_modules=("lan78xx",), netboot="from its boot ROM, as shipped"),
    "pi4b": Board("pi4b", "Raspberry Pi 4 Model B", frozenset({"pi4"}), ("arm64", "armhf"), "kernel7l.img",
                  "kernel8.img", True, "bcm2711-rpi-4-b.dtb", "bcm2711-rpi-4-b.dtb", ("start4.elf", "fixup4.dat"),
                  ("mmc_block", "sdhci_iproc"), ("pi4-64bit", "pi4-32bit"), net_modules=("genet",),
                  netboot="when the EEPROM's BOOT_ORDER has network boot (2), e.g. 0xf21"),
    "pi5": Board("pi5", "Raspberry Pi 5", frozenset({"pi5"}), ("arm64",), None, "kernel_2712.img", True,
                 "bcm2712-rpi-5-b.dtb", "bcm2712-rpi-5-b.dtb", (), ("mmc_block", "sdhci_brcmstb"), ("pi5-64bit",),
                 net_modules=("macb",), netboot="when the EEPROM's BOOT_ORDER has network boot (2), e.g. 0xf21"),
}
# Every model filter the firmware knows (a model filter replaces the one before it).
MODEL_FILTERS = frozenset({"pi1", "pi2", "pi3", "pi3+", "pi4", "pi400", "cm4", "cm4s", "pi5", "cm5", "pi500", "pi0",
                           "pi0w", "pi02"})


def boards_for(arch: str) -> list[Board]:
    return [b for b in BOARDS.values() if arch in b.arches]


def imager_tag(board: Board, arch: str) -> str:
    """The Imager device tag of this board running this architecture."""
    wanted = "64bit" if arch == "arm64" else "32bit"
    return next(t for t in board.imager_tags if t.endswith(wanted))
