"""Write a rendered layer into an image's tree, and the kernel arguments it asks for where they last.

Every path is resolved inside the image: a symbolic link on the way (the base's var/run -> /run, or
etc/x -> /etc made by an earlier layer) is followed as the image itself would follow it, from the image's
root, never the host's. So no overlay file can land outside the image, whatever links the base or the
layers hold; we run as root, and the host's /etc or /run would otherwise be one link away.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from imagebuilder.core.errors import ImageBuilderError
from imagebuilder.layers.render import RenderedLayer

MAX_LINKS = 40  # as the kernel's ELOOP limit
# File systems a node mounts over these at boot: a file written there in the image never reaches a card.
NOT_IN_IMAGE = ("run", "proc", "sys", "dev")


class OutsideImage(ImageBuilderError):
    """An overlay path that resolves where nothing written reaches the card."""


def resolve_in_root(root: Path, path: str, *, make_dirs: bool = False) -> Path:
    """The place of `path` (as in the running system) inside the tree at `root`, links resolved within it.

    The last component is not followed (a file written there replaces a link). make_dirs: create missing
    directories on the way (mode 0755, owned as the writer).
    """
    pending = [p for p in path.split("/") if p not in ("", ".")]
    done: list[str] = []
    links = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        here = root.joinpath(*done, part)
        if pending and here.is_symlink():
            links += 1
            if links > MAX_LINKS:
                raise ImageBuilderError(f"{path}: too many symbolic links in the image on the way")
            target = os.readlink(here)
            if target.startswith("/"):
                done = []
            pending = [p for p in target.split("/") if p not in ("", ".")] + pending
            continue
        if pending:
            if not os.path.lexists(here) and make_dirs:
                here.mkdir(mode=0o755)
            elif os.path.lexists(here) and not here.is_dir():
                raise ImageBuilderError(f"{path}: /{'/'.join([*done, part])} in the image is not a directory")
        done.append(part)
    return root.joinpath(*done)


def read_in_root(root: Path, path: str) -> bytes | None:
    """The content of the file at `path` in the tree at `root`, every link on the way and at its end followed
    within the tree; None when there is no such file."""
    for _ in range(MAX_LINKS):
        try:
            place = resolve_in_root(root, path)
        except ImageBuilderError:  # a file where a directory should be: no such file either
            return None
        if not place.is_symlink():
            return place.read_bytes() if place.is_file() else None
        target = os.readlink(place)
        path = target if target.startswith("/") else f"/{place.parent.relative_to(root)}/{target}"
    raise ImageBuilderError(f"{path}: too many symbolic links in the image on the way")


def write_layer(layer: RenderedLayer, root: Path, boot_mount: str = "/boot/firmware") -> list[str]:
    """Write the layer's files into the tree at `root`; return the paths written (as in the running system)."""
    written = []
    root.mkdir(parents=True, exist_ok=True)
    for f in layer.files:
        shown = f.system_path(boot_mount)
        target = resolve_in_root(root, shown, make_dirs=True)
        inside = target.relative_to(root).parts
        if inside and inside[0] in NOT_IN_IMAGE:
            raise OutsideImage(f"{layer.name}: {f.tree_path} is /{'/'.join(inside)} in the image, a file system "
                               "the node mounts at boot: nothing written there reaches the card",
                               "put the file somewhere that persists (for /run: a tmpfiles.d entry)")
        if os.path.lexists(target) and (target.is_symlink() or not target.is_dir()):
            target.unlink()
        if f.symlink:
            os.symlink(f.data.decode(), target)
        else:
            # O_NOFOLLOW|O_EXCL: the name was just cleared; nothing may have put a link there since.
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(f.data)
                if os.geteuid() == 0:
                    os.fchown(out.fileno(), 0, 0)
                os.fchmod(out.fileno(), f.mode)
        written.append(shown)
    return written


# Debian's raspi-firmware hook rewrites cmdline.txt from scratch at every kernel install or removal,
# update-initramfs and firmware upgrade, keeping only what raspi-extra-cmdline holds. Where the image's hook
# does that, the arguments go there as well, or the first kernel update on a node drops them (and k3s its
# memory cgroup). Raspberry Pi OS and Ubuntu never rewrite cmdline.txt, so there it is enough.
FIRMWARE_HOOK = "/etc/kernel/postinst.d/z50-raspi-firmware"
EXTRA_CMDLINE = "/etc/default/raspi-extra-cmdline"


def with_arguments(line: str, arguments: list[str]) -> str:
    """The one-line argument list `line` plus the arguments it lacks."""
    words = line.split()
    words += [a for a in arguments if a not in words]
    return " ".join(words) + "\n"


def add_kernel_arguments(read: Callable[[str], str | None], write: Callable[[str, str], None],
                         boot_mount: str, arguments: list[str]) -> list[str]:
    """Put the arguments on cmdline.txt, and where a kernel update keeps them; returns the files written.

    read(path) gives a file's text in the image (None when absent), write(path, text) replaces it; paths
    are as on the running system.
    """
    cmdline = f"{boot_mount.rstrip('/')}/cmdline.txt"
    write(cmdline, with_arguments(read(cmdline) or "", arguments))
    written = [cmdline]
    if "raspi-extra-cmdline" in (read(FIRMWARE_HOOK) or ""):
        write(EXTRA_CMDLINE, with_arguments(read(EXTRA_CMDLINE) or "", arguments))
        written.append(EXTRA_CMDLINE)
    return written


def add_kernel_arguments_in_tree(root: Path, boot_mount: str, arguments: list[str]) -> list[str]:
    """add_kernel_arguments on a mounted tree, every path resolved inside it."""
    def read(path: str) -> str | None:
        data = read_in_root(root, path)
        return data.decode() if data is not None else None

    def write(path: str, text: str) -> None:
        resolve_in_root(root, path, make_dirs=True).write_text(text)

    return add_kernel_arguments(read, write, boot_mount, arguments)
