"""One ARM guest under qemu (TCG): its command line, its disk overlay, its kernel, and its serial console.

A guest is a context manager: qemu is started by `resources.spawned`, so it ends with the block, and the
console is read line by line into a log with each line's time since power-on. Waiting for a sentinel is
waiting on that log.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from imagebuilder.core.log import log
from imagebuilder.core.resources import spawned
from imagebuilder.core.run import find_program, run

# The first line the kernel prints; its time is "kernel up".
KERNEL_UP = re.compile(r"Booting Linux on physical CPU|Linux version \d")
SENTINEL = "IMAGEBUILDER: "


@dataclass(frozen=True)
class Machine:
    program: str
    machine: str
    cpu: str
    bus: str  # virtio device suffix: "pci" on arm64 virt, "device" (mmio) for the armhf kernel


MACHINES = {
    "arm64": Machine("qemu-system-aarch64", "virt", "cortex-a72", "pci"),
    # Without highmem=off the armmp kernel finds no PCI bus; mmio devices need none.
    "armhf": Machine("qemu-system-arm", "virt,highmem=off", "cortex-a15", "device"),
}


@dataclass(frozen=True)
class Uplink:
    """qemu user-mode networking as the master's way out, restricted so nothing leaves the machine."""

    hostfwd: dict[int, int]  # guest TCP port -> port on the loopback of the namespace qemu runs in
    udp_hostfwd: dict[int, int] = field(default_factory=dict)  # the same for UDP
    guestfwd: tuple[str, int, Sequence[str]] | None = None  # guest address, port, argv run per connection
    mac: str = "52:54:00:12:34:56"


@dataclass(frozen=True)
class GuestSpec:
    name: str
    arch: str
    disk: Path | None  # a qcow2 overlay (the emitted image stays untouched); None: no card (netboot)
    kernel: Path
    initrd: Path | None
    append: str
    lan_tap: str
    lan_mac: str
    uplink: Uplink | None = None
    memory_mib: int = 1024
    cpus: int = 2
    board: str | None = None  # a qemu Raspberry Pi model (raspi3b, raspi2b) instead of virt
    dtb: Path | None = None  # the device tree the firmware would load (board models only)
    clock: str | None = None  # the real-time clock's start (qemu -rtc base=); None: the host's time


# The Pi models' programs: the SoC's CPUs, memory and devices are the model's own.
BOARD_PROGRAMS = {"raspi3b": "qemu-system-aarch64", "raspi2b": "qemu-system-arm"}


def qemu_argv(spec: GuestSpec) -> list[str]:
    if spec.board is not None:
        return board_argv(spec)
    m = MACHINES[spec.arch]
    argv = [
        m.program, "-M", m.machine, "-cpu", m.cpu, "-m", str(spec.memory_mib), "-smp", str(spec.cpus),
        # tb-size=256: the translation cache, not guest RAM, is most of a TCG guest's memory (1.1 GB -> 0.5).
        "-accel", "tcg,tb-size=256",
        "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
        # A panic ends qemu instead of looping, so a broken guest fails the wait at once.
        "-no-reboot",
        "-kernel", str(spec.kernel), "-append", spec.append,
    ]
    if spec.disk is not None:
        argv += ["-drive", f"if=none,id=disk,format=qcow2,file={spec.disk}",
                 "-device", f"virtio-blk-{m.bus},drive=disk"]
    # The cluster LAN (a tap on the test's bridge) must be eth0 and the uplink eth1, as on a Pi whose
    # second NIC is a USB dongle.
    nics = [["-netdev", f"tap,id=lan,ifname={spec.lan_tap},script=no,downscript=no",
             "-device", f"virtio-net-{m.bus},netdev=lan,mac={spec.lan_mac}"]]
    if spec.uplink is not None:
        nics.append(["-netdev", user_netdev(spec.uplink),
                     "-device", f"virtio-net-{m.bus},netdev=uplink,mac={spec.uplink.mac}"])
    # virt places mmio devices on its transports from the top down and the kernel probes them from the
    # bottom up, so on the mmio bus the device given last is named first.
    for nic in reversed(nics) if m.bus == "device" else nics:
        argv += nic
    if spec.initrd is not None:
        argv += ["-initrd", str(spec.initrd)]
    if spec.clock is not None:
        argv += ["-rtc", f"base={spec.clock}"]
    return argv


def board_argv(spec: GuestSpec) -> list[str]:
    """A Raspberry Pi model: the card on the SoC's own SD controller, the LAN through a USB NIC (the models
    have no Ethernet), the firmware's kernel, initramfs and device tree."""
    argv = [
        BOARD_PROGRAMS[spec.board or ""], "-M", spec.board or "", "-accel", "tcg,tb-size=256",
        "-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot",
        "-kernel", str(spec.kernel), "-append", spec.append,
        "-drive", f"if=sd,format=qcow2,file={spec.disk}",
        "-netdev", f"tap,id=lan,ifname={spec.lan_tap},script=no,downscript=no",
        "-device", f"usb-net,netdev=lan,mac={spec.lan_mac}",
    ]
    if spec.initrd is not None:
        argv += ["-initrd", str(spec.initrd)]
    if spec.dtb is not None:
        argv += ["-dtb", str(spec.dtb)]
    return argv


def user_netdev(uplink: Uplink) -> str:
    # restrict=on: slirp routes nothing out of qemu; only the forwards below connect anywhere.
    parts = ["user", "id=uplink", "restrict=on", "net=10.0.2.0/24"]
    parts += [f"hostfwd=tcp:127.0.0.1:{host}-:{guest}" for guest, host in sorted(uplink.hostfwd.items())]
    parts += [f"hostfwd=udp:127.0.0.1:{host}-:{guest}" for guest, host in sorted(uplink.udp_hostfwd.items())]
    if uplink.guestfwd is not None:
        address, port, argv = uplink.guestfwd
        # libslirp splits `cmd:` with g_shell_parse_argv and execs it (no shell); qemu needs ',' doubled.
        command = " ".join(_shell_word(a) for a in argv).replace(",", ",,")
        parts.append(f"guestfwd=tcp:{address}:{port}-cmd:{command}")
    return ",".join(parts)


def _shell_word(word: str) -> str:
    return word if re.fullmatch(r"[\w@%+=:,./-]+", word) else "'" + word.replace("'", "'\\''") + "'"


def make_overlay(image: Path, overlay: Path, *, power_of_two: bool = False) -> Path:
    """A qcow2 file that takes the guest's writes, backed read-only by the emitted raw image.

    power_of_two: as large as the next power of two (an SD card on the Pi models must be, as real cards are).
    """
    size = image.stat().st_size
    argv: list[str | Path] = ["qemu-img", "create", "-q", "-f", "qcow2", "-b", image.resolve(), "-F", "raw", overlay]
    if power_of_two:
        argv.append(str(1 << (size - 1).bit_length()))
    run(argv)
    return overlay


@dataclass
class SerialLog:
    """A guest's console, each line stamped with seconds since power-on; written to `path` as it comes."""

    path: Path
    started: float
    lines: list[tuple[float, str]] = field(default_factory=list)
    ended: bool = False
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def pump(self, stream: IO[bytes]) -> None:
        with self.path.open("w", buffering=1) as out:
            for raw in iter(stream.readline, b""):
                stamp = time.monotonic() - self.started
                # Consoles end lines with \r\n and may carry colour codes from systemd.
                line = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", raw.decode(errors="replace")).rstrip("\r\n")
                out.write(f"[{stamp:8.3f}] {line}\n")
                with self._cond:
                    self.lines.append((stamp, line))
                    self._cond.notify_all()
        with self._cond:
            self.ended = True
            self._cond.notify_all()

    def first(self, match: Callable[[str], bool]) -> tuple[float, str] | None:
        with self._cond:
            return next(((t, line) for t, line in self.lines if match(line)), None)

    def count(self, match: Callable[[str], bool]) -> int:
        with self._cond:
            return sum(1 for _, line in self.lines if match(line))

    def wait_for(self, match: Callable[[str], bool], deadline: float) -> tuple[float, str] | None:
        """The first matching line, waiting until `deadline` (monotonic); None on timeout or when qemu ended."""
        with self._cond:
            while True:
                found = next(((t, line) for t, line in self.lines if match(line)), None)
                if found is not None or self.ended:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(min(remaining, 1.0))


def sentinel(event: str) -> Callable[[str], bool]:
    """Matches the console line `IMAGEBUILDER: <event> ...` that the roles print."""
    pattern = re.compile(rf"{re.escape(SENTINEL)}{re.escape(event)}(\s|$)")
    return lambda line: pattern.search(line) is not None


def sentinel_detail(line: str, event: str) -> str:
    return line.split(f"{SENTINEL}{event}", 1)[1].strip()


@dataclass
class Guest:
    spec: GuestSpec
    proc: subprocess.Popen[bytes]
    serial: SerialLog

    @property
    def name(self) -> str:
        return self.spec.name

    def exited(self) -> int | None:
        return self.proc.poll()


@contextlib.contextmanager
def running_guest(spec: GuestSpec, serial_log: Path, prefix: Sequence[str] = ()) -> Iterator[Guest]:
    """Power the guest on (`prefix` e.g. runs qemu inside a network namespace); it is stopped when the block ends."""
    find_program(MACHINES[spec.arch].program)
    argv = [*prefix, *qemu_argv(spec)]
    log.debug("guest %s: %s", spec.name, " ".join(argv))
    started = time.monotonic()
    with spawned(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        assert proc.stdout is not None
        serial = SerialLog(serial_log, started)
        reader = threading.Thread(target=serial.pump, args=(proc.stdout,), name=f"serial-{spec.name}", daemon=True)
        reader.start()
        yield Guest(spec, proc, serial)
    # spawned() has stopped qemu: the reader sees the end of its output and closes the log.
    reader.join(timeout=10)
