"""Per-cluster secrets, kept in the state directory (0700, files 0600) across rebuilds, never printed."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from imagebuilder.core.context import Context
from imagebuilder.core.resources import sync_path


def k3s_token(ctx: Context, cluster: str) -> str:
    """The cluster's k3s join token: made on the first build, reused by every later one.

    A worker image built next month must still join the master built today.
    """
    return secret(ctx.state_dir(cluster) / "k3s-token", lambda: secrets.token_hex(32))


def read_k3s_token(ctx: Context, cluster: str) -> str | None:
    """The token if the cluster has one already (reads only)."""
    path = ctx.state_root / cluster / "k3s-token"
    return path.read_text().strip() if path.is_file() else None


def secret(path: Path, make: Callable[[], str]) -> str:
    """The secret in `path`, made once: two first builds at once end up with one secret, the same in both.

    The new value is written to a private temporary file and flushed, then linked to its name; a link
    fails if the name exists, so the build that comes second takes the first one's value.
    """
    if not path.exists():
        tmp = path.with_name(f".{path.name}.new-{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(make() + "\n")
                f.flush()
                os.fsync(f.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
            sync_path(path.parent)
        finally:
            tmp.unlink(missing_ok=True)
    return path.read_text().strip()
