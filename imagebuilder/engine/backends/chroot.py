"""Run programs of the image's architecture inside its root tree.

Each piece of the set-up (binds, a working resolv.conf, a policy-rc.d, files moved aside) is its own
context manager, so whatever was done is undone in reverse order and the image keeps no trace of the
build.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from imagebuilder.core.binfmt import ensure_binfmt
from imagebuilder.core.resources import acquired, bind_mount, mounted
from imagebuilder.core.run import run

POLICY_RC_D = "#!/bin/sh\n# Written by imagebuilder for the build: services must not start in a chroot.\nexit 101\n"
# Files that break programs under qemu-user and are put back afterwards (Raspberry Pi OS armhf preloads
# libarmmem, which qemu-user cannot load).
MOVE_ASIDE = ("etc/ld.so.preload",)


@contextlib.contextmanager
def moved_aside(path: Path) -> Iterator[None]:
    """Move a file or symlink out of the way for the block, and back afterwards."""
    if not os.path.lexists(path):
        yield
        return
    aside = path.with_name(f"{path.name}.imagebuilder-aside")
    os.rename(path, aside)
    try:
        acquired(f"{path} moved aside")
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            if os.path.lexists(path) and not path.is_dir():
                path.unlink()
        os.rename(aside, path)


@contextlib.contextmanager
def written_file(path: Path, content: str, mode: int = 0o644) -> Iterator[None]:
    """A file that exists only for the block; whatever was there is put back."""
    with moved_aside(path):
        path.write_text(content)
        path.chmod(mode)
        try:
            acquired(f"build-time {path}")
            yield
        finally:
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def chroot_session(root: Path, arch: str, epoch: int | None = None) -> Iterator[Chroot]:
    """The root ready for its own programs; epoch: SOURCE_DATE_EPOCH for them (dates that tools write into
    files, such as a user's password change day in /etc/shadow or the initramfs's file times)."""
    ensure_binfmt(arch)
    with contextlib.ExitStack() as stack:
        for name in ("proc", "sys", "dev"):
            stack.enter_context(bind_mount(Path("/") / name, root / name))
        if (root / "dev/pts").is_dir():
            stack.enter_context(bind_mount(Path("/dev/pts"), root / "dev/pts"))
        # A private /run: the host's must never be written by package scripts.
        stack.enter_context(mounted("tmpfs", root / "run", fstype="tmpfs", options=("mode=0755",)))
        host_resolv = Path("/etc/resolv.conf").read_text() if Path("/etc/resolv.conf").exists() else ""
        stack.enter_context(written_file(root / "etc/resolv.conf", host_resolv))
        stack.enter_context(written_file(root / "usr/sbin/policy-rc.d", POLICY_RC_D, 0o755))
        for name in MOVE_ASIDE:
            stack.enter_context(moved_aside(root / name))
        yield Chroot(root, epoch)


# The whole environment of a program in the chroot: nothing of the caller's (their PATH, proxy settings,
# locale, TMPDIR pointing at the host) leaks into package scripts.
CHROOT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "USER": "root",
    "LOGNAME": "root", "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8", "TERM": "dumb",
    "DEBIAN_FRONTEND": "noninteractive", "DEBCONF_NONINTERACTIVE_SEEN": "true",
}


class Chroot:
    def __init__(self, root: Path, epoch: int | None = None) -> None:
        self.root = root
        self.env = {**CHROOT_ENV, **({"SOURCE_DATE_EPOCH": str(epoch)} if epoch is not None else {})}

    def run(self, argv: Sequence[str], env: Mapping[str, str] | None = None, **kwargs: object) -> None:
        run(["chroot", self.root, *argv], cancellable=True, env={**self.env, **(env or {})}, inherit_env=False,
            **kwargs)  # type: ignore[arg-type]
