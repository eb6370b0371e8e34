"""A permission error as the user can act on it: the folder or file that refuses, and whose it is."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from imagebuilder.core.errors import AccessDenied


def _owner(path: Path) -> str:
    try:
        uid = path.stat().st_uid
    except OSError:
        return "someone else"
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def refusing(path: Path) -> Path:
    """Where access to `path` stops: the first folder on the way this user may not enter, else the folder a
    file that is not there yet would be made in, else the file itself."""
    path = Path(os.path.abspath(path))
    blocked = next((p for p in reversed(path.parents) if p.exists() and not os.access(p, os.X_OK)), None)
    if blocked is not None:
        return blocked
    return path if path.exists() else path.parent


def access_denied(path: Path | str, hint: str) -> AccessDenied:
    """The error for a PermissionError on `path` (its filename), naming what refuses and its owner."""
    where = refusing(Path(path))
    return AccessDenied(f"{where}: permission denied (it belongs to {_owner(where)})", hint)
