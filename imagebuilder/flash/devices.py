"""Is it safe to write an image onto this device? The checks `imagebuilder flash` makes first.

Everything is read from a `SystemView` (the mount table, the swap list and a sysfs root), so tests can
hand in a fake mount table and a fake sysfs and never open a real disk. Nothing here writes anything.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from imagebuilder.core.errors import ImageBuilderError
from imagebuilder.core.mountinfo import DevNo, Mount, parse_mountinfo, unescape

# Mount points whose disk we never write, whatever --force says.
SYSTEM_MOUNTS = ("/", "/boot", "/boot/firmware", "/boot/efi", "/usr")



class TargetRefused(ImageBuilderError):
    """The device must not be written: mounted, the system disk, too small, not a disk."""


@dataclass(frozen=True)
class SystemView:
    """What the checks look at; `current()` is the running machine."""

    mountinfo: str
    swaps: str = ""
    sysfs: Path = Path("/sys")

    @classmethod
    def current(cls) -> SystemView:
        swaps = Path("/proc/swaps")
        return cls(Path("/proc/self/mountinfo").read_text(), swaps.read_text() if swaps.exists() else "")


@dataclass(frozen=True)
class CardPartition:
    name: str
    size: int


@dataclass(frozen=True)
class Target:
    """A device (or, with --to-file, a regular file) that passed the checks."""

    path: Path
    is_file: bool
    size: int
    model: str = ""
    partitions: list[CardPartition] = field(default_factory=list)
    # Which device this is, to tell after the question whether it is still the one shown: its device
    # number, and the disk sequence number the kernel gives every new medium (Linux 5.15 and later).
    rdev: int | None = None
    diskseq: str = ""
    sysfs: Path | None = None

    def describe(self) -> str:
        if self.is_file:
            return f"{self.path}: regular file, {self.size / 2**30:.2f} GiB"
        parts = ", ".join(f"{p.name} {p.size / 2**20:.0f} MiB" for p in self.partitions) or "no partitions"
        return f"{self.path}: {self.model or 'unknown model'}, {self.size / 2**30:.2f} GiB; {parts}"


def parse_swaps(text: str) -> list[str]:
    return [unescape(line.split()[0]) for line in text.splitlines()[1:] if line.strip()]


def _read(path: Path, default: str = "") -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return default


def _block_dir(devno: DevNo, view: SystemView) -> Path | None:
    link = view.sysfs / "dev" / "block" / f"{devno[0]}:{devno[1]}"
    return link.resolve() if link.exists() else None


def _devno_of_node(path: str) -> DevNo | None:
    """The device number a path stands for: a block node's own, or a file's filesystem's."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    dev = st.st_rdev if stat.S_ISBLK(st.st_mode) else st.st_dev
    return os.major(dev), os.minor(dev)


def disks_under(devno: DevNo, view: SystemView, _seen: set[DevNo] | None = None) -> set[str]:
    """Names of the whole disks a device number ultimately lives on.

    Follows partitions to their disk, device-mapper and md devices to their slaves, and loop devices
    to the device (or the filesystem of the file) behind them.
    """
    seen = _seen if _seen is not None else set()
    if devno in seen:
        return set()
    seen.add(devno)
    block = _block_dir(devno, view)
    if block is None:
        return set()
    disk = block.parent if (block / "partition").exists() else block
    found = {disk.name}
    slaves = disk / "slaves"
    if slaves.is_dir():
        for slave in slaves.iterdir():
            slave_devno = _parse_devno(_read(slave / "dev"))
            if slave_devno:
                found |= disks_under(slave_devno, view, seen)
    backing = _read(disk / "loop" / "backing_file")
    if backing:
        backing_devno = _devno_of_node(backing)
        if backing_devno:
            found |= disks_under(backing_devno, view, seen)
    return found


def _parse_devno(text: str) -> DevNo | None:
    if ":" not in text:
        return None
    major, minor = text.split(":", 1)
    return int(major), int(minor)


def _mount_devno(mount: Mount) -> DevNo:
    # btrfs and some others report an anonymous 0:N; the source node then says which device it is.
    if mount.devno[0] == 0 and mount.source.startswith("/dev/"):
        return _devno_of_node(mount.source) or mount.devno
    return mount.devno


def system_disks(view: SystemView) -> dict[str, str]:
    """Disks that hold /, /boot (and the like) or swap, each with what it holds."""
    found: dict[str, str] = {}
    for mount in parse_mountinfo(view.mountinfo):
        if mount.mountpoint in SYSTEM_MOUNTS:
            for disk in disks_under(_mount_devno(mount), view):
                found.setdefault(disk, mount.mountpoint)
    for swap in parse_swaps(view.swaps):
        devno = _devno_of_node(swap)
        if devno:
            for disk in disks_under(devno, view):
                found.setdefault(disk, f"swap ({swap})")
    return found


def mounts_on(disk: str, view: SystemView) -> list[str]:
    """Mount points of filesystems that live (partly) on `disk`."""
    return [m.mountpoint for m in parse_mountinfo(view.mountinfo) if disk in disks_under(_mount_devno(m), view)]


# The largest SD card (SDXC) holds 2 TB; a bigger device is a disk.
CARD_MAX = 2 * 10**12


def transport(disk_dir: Path) -> str:
    """The bus the disk hangs on, from its place in sysfs: usb, mmc, nvme, ata, virtual or unknown."""
    path = str(disk_dir.resolve())
    for bus in ("usb", "mmc", "nvme", "ata", "virtual"):
        if f"/{bus}" in path:
            return bus
    return "unknown"


def card_verdict(disk_dir: Path) -> str | None:
    """None when the device looks like an SD card (so flash needs no --force), else why it does not.

    A card is: on an SD host controller (mmcblk: built-in readers), or removable media of at most 2 TB
    (a USB card reader says removable=1; a USB disk or stick enclosure that says removable=0 is an
    external drive), or a loop device over a plain file (a stand-in card: writing it touches no disk).
    A USB card reader that hides its removable flag needs --force.
    """
    size = int(_read(disk_dir / "size", "0")) * 512
    if disk_dir.name.startswith("mmcblk"):
        return None
    backing = _read(disk_dir / "loop" / "backing_file")
    if backing:
        return None if Path(backing).is_file() else f"a loop device over {backing}, not over an image file"
    if _read(disk_dir / "removable") != "1":
        bus = transport(disk_dir)
        return (f"a fixed {bus.upper() if bus in ('usb', 'ata', 'nvme') else bus} disk (it does not say it holds "
                "removable media, as card readers do)")
    if size > CARD_MAX:
        return f"removable, but {size / 10**12:.1f} TB: larger than any SD card"
    return None


def _model(disk_dir: Path) -> str:
    backing = _read(disk_dir / "loop" / "backing_file")
    if backing:
        return f"loop device backed by {backing}"
    words = [_read(disk_dir / "device" / "vendor"), _read(disk_dir / "device" / "model")]
    return " ".join(w for w in words if w)


def _partitions(disk_dir: Path) -> list[CardPartition]:
    parts = [p for p in disk_dir.iterdir() if (p / "partition").exists()]
    return [CardPartition(p.name, int(_read(p / "size", "0")) * 512) for p in sorted(parts)]


def check_target(
    device: Path, *, image_size: int, force: bool = False, to_file: bool = False, view: SystemView | None = None,
) -> Target:
    """Return the target if writing `image_size` bytes onto `device` is safe; raise TargetRefused if not."""
    view = view or SystemView.current()
    shown = str(device)
    real = Path(os.path.realpath(device))
    try:
        st = real.stat()
    except FileNotFoundError:
        if to_file:
            return Target(real, is_file=True, size=0)
        raise TargetRefused(f"{shown}: no such device", "check the name with lsblk") from None
    if stat.S_ISREG(st.st_mode):
        if not to_file:
            raise TargetRefused(f"{shown} is a regular file, not a block device",
                                "pass --to-file to write an image into a file")
        return Target(real, is_file=True, size=st.st_size)
    if not stat.S_ISBLK(st.st_mode):
        raise TargetRefused(f"{shown} is not a block device", "name the card's device, e.g. /dev/sdb (see lsblk)")
    block = _block_dir((os.major(st.st_rdev), os.minor(st.st_rdev)), view)
    if block is None:
        raise TargetRefused(f"{shown}: not found in {view.sysfs}/dev/block", "is sysfs mounted?")
    if (block / "partition").exists():
        raise TargetRefused(f"{shown} is a partition of /dev/{block.parent.name}",
                            f"flash the whole card: /dev/{block.parent.name}")
    holding = system_disks(view).get(block.name)
    if holding:
        raise TargetRefused(f"{shown} holds {holding} of this machine; it is never written",
                            "name the SD card's device (lsblk shows which is which)")
    mounted = mounts_on(block.name, view)
    if mounted:
        raise TargetRefused(f"{shown} has a mounted partition ({', '.join(mounted)})",
                            f"unmount it first: umount {' '.join(mounted)}")
    size = int(_read(block / "size", "0")) * 512
    if size < image_size:
        raise TargetRefused(f"{shown} is too small: {size} bytes, the image needs {image_size}",
                            "use a larger card")
    verdict = card_verdict(block)
    if not force and verdict is not None:
        raise TargetRefused(f"{shown} is not a removable disk: {verdict}",
                            "if it really is the card (some readers hide it), add --force")
    return Target(real, is_file=False, size=size, model=_model(block), partitions=_partitions(block),
                  rdev=st.st_rdev, diskseq=_read(block / "diskseq"), sysfs=block)


def check_same_device(target: Target, fd: int) -> None:
    """Refuse if the open device is not the one that was shown (a card swapped while the user read)."""
    if target.is_file or target.sysfs is None:
        return
    now = os.fstat(fd).st_rdev
    size = int(_read(target.sysfs / "size", "0")) * 512
    diskseq = _read(target.sysfs / "diskseq")
    if now != target.rdev or size != target.size or diskseq != target.diskseq:
        raise TargetRefused(f"{target.path} changed since it was shown (size {size} was {target.size}, disk "
                            f"sequence {diskseq or '?'} was {target.diskseq or '?'}): another card?",
                            "run the command again and check the device it shows")
