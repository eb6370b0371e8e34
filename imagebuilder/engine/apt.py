"""Install Debian packages into an image's tree, through its own apt-get in the chroot."""

from __future__ import annotations

from pathlib import Path

from imagebuilder.core.errors import CommandFailed, ImageBuilderError
from imagebuilder.core.log import log, step
from imagebuilder.core.resources import bind_mount, file_lock
from imagebuilder.engine.backends.chroot import Chroot


def install_packages(chroot: Chroot, packages: tuple[str, ...], debs: Path) -> None:
    """apt-get install in the chroot, with the .deb files kept on the host between builds."""
    archives = chroot.root / "var/cache/apt/archives"
    # One apt at a time in the shared .deb folder: apt-get stops at once on its lock instead of waiting, and
    # the master's and the worker's packages stages run beside each other (as two builds may).
    with file_lock(debs.with_name(f"{debs.name}.lock"), f"the .deb cache {debs.name}", "the other apt-get using"), \
            bind_mount(debs, archives), step(f"install {len(packages)} packages"):
        chroot.run(["apt-get", "update", "-q"])
        try:
            chroot.run(["apt-get", "install", "-y", "-q", "--no-install-recommends",
                        "-o", "Dpkg::Options::=--force-confold", *packages],
                       env={"FK_MACHINE": "Raspberry Pi 4 Model B"}, on_line=_log_progress)
        except CommandFailed as e:
            missing = [line.split("Unable to locate package ", 1)[1] for line in e.stderr_tail
                       if "Unable to locate package " in line]
            if missing:
                raise ImageBuilderError(
                    f"package {', '.join(repr(m) for m in missing)} does not exist in the image's apt sources",
                    "check the packages section of the recipe (apt-cache search NAME finds the right name)",
                ) from None
            raise


def _log_progress(line: str) -> None:
    if line.startswith(("Setting up ", "Unpacking ")):
        log.info("  %s", line.split(" (", 1)[0])
