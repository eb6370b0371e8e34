"""What a Raspberry Pi's firmware boots from a card: config.txt read as the firmware reads it, for one board.

Sections: `[all]` resets the filters; a model filter (`[pi3]`, `[pi4]`...) replaces the previous model
filter; other filter types AND with it; `[none]` applies to nothing; `[tryboot]` only on a tryboot reboot
(never on a normal boot). `[board-type=0x..]` is decided by the board's type code; filters that depend on
what is plugged in (EDID, HDMI, GPIO, serial numbers) cannot be decided here and are taken as not
matching, with a note. A filter the firmware does not know is a problem: the firmware would skip its
section, which is rarely what the writer meant.

Then: `arm_64bit` (its default per board), `kernel=` or the default kernel name, `os_prefix` (and
`upstream_kernel=1`, which makes it `upstream/` when that folder holds the kernel, and prefers the mainline
device tree name), `device_tree=`, `initramfs FILE followkernel` (or `auto_initramfs=1`), `cmdline=`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from imagebuilder.boards.models import MODEL_FILTERS, Board

BOARD_TYPES = {"pi2b": 0x04, "pi3b": 0x08, "pi3b+": 0x0D, "pi4b": 0x11, "pi5": 0x17}
UNDECIDABLE = ("EDID=", "HDMI:", "gpio", "0x", "partition=", "boot_partition=")
AUTO_INITRAMFS = {"kernel8.img": "initramfs8", "kernel7l.img": "initramfs7l", "kernel7.img": "initramfs7",
                  "kernel.img": "initramfs", "kernel_2712.img": "initramfs_2712"}


@dataclass(frozen=True)
class Selection:
    """What the firmware of `board` loads from this card."""

    board: Board
    arm_64bit: bool
    kernel: str | None  # path on the boot partition; None when the board cannot run that mode
    initramfs: str | None
    device_tree: str | None  # None: none (device_tree= empty)
    device_tree_names: tuple[str, ...]  # the names the firmware tries, in its order (for the messages)
    cmdline: str
    problems: list[str] = field(default_factory=list)  # what the firmware would stumble on
    notes: list[str] = field(default_factory=list)  # what could not be decided here


def effective_settings(text: str, board: Board) -> tuple[dict[str, str], list[str], list[str]]:
    """The settings of config.txt that apply to `board` (the last one of a key wins); problems; notes."""
    settings: dict[str, str] = {}
    problems: list[str] = []
    notes: list[str] = []
    conditions: dict[str, bool] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            name = line.strip("[]").strip()
            kind, matches = _filter(name, board, notes, number)
            if kind is None:
                problems.append(f"config.txt:{number}: [{name}] is no filter the firmware knows: its section "
                                "would be skipped on every board")
                kind, matches = "unknown", False
            if kind == "all":
                conditions = {}
            else:
                conditions[kind] = matches
            continue
        if not all(conditions.values()):
            continue
        if line.startswith("initramfs ") or line.startswith("initramfs\t"):
            settings["initramfs"] = line.split()[1]
        elif "=" in line:
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    return settings, problems, notes


# Filters whose verdict is the same on every board: [tryboot] holds only on a boot the OS asked to try.
_FIXED_FILTERS = {"all": True, "none": False, "tryboot": False}


def _filter(name: str, board: Board, notes: list[str], number: int) -> tuple[str | None, bool]:
    """(the filter's type, whether it matches this board); type None for a filter the firmware does not know."""
    if name in _FIXED_FILTERS:
        return name, _FIXED_FILTERS[name]
    if name in MODEL_FILTERS:
        return "model", name in board.filters
    if name.startswith("board-type="):
        try:
            return "board-type", int(name.split("=", 1)[1], 0) == BOARD_TYPES.get(board.name)
        except ValueError:
            return None, False
    if name.startswith(UNDECIDABLE):
        notes.append(f"config.txt:{number}: [{name}] depends on the hardware plugged in: taken as not applying")
        return name.split("=", maxsplit=1)[0].split(":", maxsplit=1)[0], False
    return None, False


def select(text: str, board: Board, files: Iterable[str]) -> Selection:
    """Apply the firmware's rules for `board` to config.txt `text`, with `files` on the boot partition."""
    present = set(files)
    settings, problems, notes = effective_settings(text, board)
    arm_64bit = settings["arm_64bit"] not in ("0", "") if "arm_64bit" in settings else board.default_64bit
    default = board.kernel64 if arm_64bit else board.kernel32
    kernel_name = settings.get("kernel") or default
    upstream = settings.get("upstream_kernel", "0") not in ("0", "")
    prefix = settings.get("os_prefix", "upstream/" if upstream else "")
    dtb_name = board.upstream_dtb if upstream and board.upstream_dtb in present else board.dtb
    # The prefix holds only if the kernel and the device tree are found under it (else it is ignored).
    if prefix and not (f"{prefix}{kernel_name}" in present and f"{prefix}{dtb_name}" in present):
        prefix = ""
    kernel = f"{prefix}{kernel_name}" if kernel_name else None
    if kernel_name is None:
        problems.append(f"{board.title} cannot run {'64' if arm_64bit else '32'}-bit kernels (arm_64bit)")
    initramfs_name = settings.get("initramfs")
    if initramfs_name is None and settings.get("auto_initramfs", "0") not in ("0", "") and kernel_name:
        initramfs_name = AUTO_INITRAMFS.get(kernel_name)
    device_tree: str | None = f"{prefix}{dtb_name}"
    tried = tuple(dict.fromkeys([board.upstream_dtb, board.dtb] if upstream else [board.dtb]))
    if "device_tree" in settings:
        device_tree = settings["device_tree"] or None
        tried = (device_tree,) if device_tree else ()
    return Selection(board, arm_64bit, kernel, f"{prefix}{initramfs_name}" if initramfs_name else None,
                     device_tree, tuple(f"{prefix}{n}" for n in tried), settings.get("cmdline", "cmdline.txt"),
                     problems, notes)
