"""Make sure the kernel runs foreign-architecture binaries through qemu-user-static.

A chroot into an arm64 tree needs a binfmt_misc entry for the arch with the F (fix binary) flag, so the
interpreter is opened once on the host and nothing has to be copied into the image.
"""

from __future__ import annotations

import threading
from pathlib import Path

from imagebuilder.core.errors import ImageBuilderError
from imagebuilder.core.log import log
from imagebuilder.core.run import run

BINFMT = Path("/proc/sys/fs/binfmt_misc")
QEMU_NAME = {"arm64": "qemu-aarch64", "armhf": "qemu-arm"}
# Where qemu-user-static ships its registrations (systemd-binfmt's format, one line each).
_CONF_DIRS = (Path("/usr/lib/binfmt.d"), Path("/etc/binfmt.d"))
# The master's and the worker's stages start their chroots at once (core/beside.py): one registers.
_registering = threading.Lock()


def entry_ready(entry: Path) -> bool:
    if not entry.is_file():
        return False
    text = entry.read_text()
    flags = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("flags:")), "")
    return text.startswith("enabled") and "F" in flags


def ensure_binfmt(arch: str) -> None:
    """Register qemu-user-static for `arch` if it is not; raise with what to install when we cannot."""
    with _registering:
        _register(arch)


def _register(arch: str) -> None:
    name = QEMU_NAME[arch]
    entry = BINFMT / name
    if entry_ready(entry):
        return
    fix = "apt-get install qemu-user-static binfmt-support"
    if not (BINFMT / "register").exists():
        log.info("mounting binfmt_misc so %s binaries run under qemu-user-static", arch)
        run(["mount", "-t", "binfmt_misc", "binfmt_misc", BINFMT])
    if entry.exists() and not entry_ready(entry):
        # Registered without F (or disabled): the interpreter would be looked up inside the chroot.
        (entry).write_text("-1")
    if not entry.exists():
        conf = next((d / f"{name}.conf" for d in _CONF_DIRS if (d / f"{name}.conf").is_file()), None)
        if conf is None:
            raise ImageBuilderError(f"no binfmt registration for {name} on this machine", fix)
        (BINFMT / "register").write_text(conf.read_text().strip())
    if not entry_ready(entry):
        raise ImageBuilderError(f"{entry} is not enabled with the F flag, so {arch} programs cannot run", fix)
