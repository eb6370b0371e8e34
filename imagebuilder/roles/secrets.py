"""Per-cluster secrets, kept in the state directory (0700, files 0600) across rebuilds, never printed."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from imagebuilder.core.context import Context


def k3s_token(ctx: Context, cluster: str) -> str:
    """The cluster's k3s join token: made on the first build, reused by every later one.

    A worker image built next month must still join the master built today.
    """
    path = ctx.state_dir(cluster) / "k3s-token"
    if not path.exists():
        _write_private(path, secrets.token_hex(32) + "\n")
    return path.read_text().strip()


def read_k3s_token(ctx: Context, cluster: str) -> str | None:
    """The token if the cluster has one already (reads only)."""
    path = ctx.state_root / cluster / "k3s-token"
    return path.read_text().strip() if path.is_file() else None


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
