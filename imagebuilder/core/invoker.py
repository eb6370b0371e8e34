"""The person behind sudo: whose home holds the cache and the clusters' state, and who owns the outputs.

Run with sudo, imagebuilder works as root (loop devices, mounts, chroots) for the person who ran it: the
cache and the secrets stay in their home, so a later run without sudo (build --plan, a rootless build)
finds the same cluster state and k3s token, and what a command writes in their folders is theirs, so
Raspberry Pi Imager or Etcher run by them opens the images.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Invoker:
    uid: int
    gid: int
    home: Path


def invoking_user() -> Invoker | None:
    """The user who ran `sudo imagebuilder`; None when not under sudo (or sudo from root)."""
    if os.geteuid() != 0:
        return None
    uid, gid = os.environ.get("SUDO_UID", ""), os.environ.get("SUDO_GID", "")
    if not (uid.isdigit() and gid.isdigit()) or int(uid) == 0:
        return None
    try:
        home = Path(pwd.getpwuid(int(uid)).pw_dir)
    except KeyError:
        return None
    return Invoker(int(uid), int(gid), home)


def home() -> Path:
    """The home of the person who ran the command, through sudo too."""
    invoker = invoking_user()
    return invoker.home if invoker is not None else Path.home()


def hand_over(path: Path, invoker: Invoker) -> None:
    """Give `path` and everything below it to the invoker, with the folders made for it on the way up to
    the first one that is theirs. Outside any folder of theirs (a system folder) only the tree itself."""
    if not path.exists():
        return
    made: list[Path] = []
    for parent in path.parents:
        owner = parent.lstat().st_uid
        if owner == invoker.uid:
            break
        if owner != 0:
            made = []
            break
        made.append(parent)
    else:
        made = []
    for folder in made:
        os.lchown(folder, invoker.uid, invoker.gid)
    device = path.lstat().st_dev
    os.lchown(path, invoker.uid, invoker.gid)
    if not path.is_dir() or path.is_symlink():
        return
    for top, dirs, files in os.walk(path):
        # Never into another file system (a mount left below it), never through a link.
        dirs[:] = [d for d in dirs if os.lstat(os.path.join(top, d)).st_dev == device]
        for name in (*dirs, *files):
            os.lchown(os.path.join(top, name), invoker.uid, invoker.gid)
