"""Write a rendered layer into an image's tree, and the kernel arguments it asks for into cmdline.txt."""

from __future__ import annotations

import os
from pathlib import Path

from imagebuilder.layers.render import RenderedLayer


def write_layer(layer: RenderedLayer, root: Path, boot_mount: str = "/boot/firmware") -> list[str]:
    """Write the layer's files into the tree at `root`; return the paths written (as in the running system)."""
    written = []
    for f in layer.files:
        shown = f.system_path(boot_mount)
        target = root / shown.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(target) and (target.is_symlink() or not target.is_dir()):
            target.unlink()
        if f.symlink:
            os.symlink(f.data.decode(), target)
        else:
            target.write_bytes(f.data)
            if os.geteuid() == 0:
                os.chown(target, 0, 0)
            target.chmod(f.mode)
        written.append(shown)
    return written


def append_cmdline(cmdline: Path, arguments: list[str]) -> None:
    """Add the kernel arguments cmdline.txt lacks, keeping it one line."""
    words = cmdline.read_text().split()
    words += [a for a in arguments if a not in words]
    cmdline.write_text(" ".join(words) + "\n")
