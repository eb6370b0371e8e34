"""Shared, cached test images: the arm64 bootstrap base is built once per machine and reused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imagebuilder.core.context import Context
from imagebuilder.core.log import setup_logging
from imagebuilder.recipe.model import Bootstrap
from imagebuilder.sources.base import BaseImage
from imagebuilder.sources.bootstrap import bootstrap_base
from tests.conftest import require_programs, require_root


def make_context() -> Context:
    """A context whose cache is the machine's imagebuilder cache, so slow bases survive between runs."""
    ctx = Context()
    if "IMAGEBUILDER_TEST_CACHE" in os.environ:
        ctx.cache_dir = Path(os.environ["IMAGEBUILDER_TEST_CACHE"])
    return ctx


QEMU_USER = {"arm64": "qemu-aarch64-static", "armhf": "qemu-arm-static"}


# This machine's Debian mirror serves a bookworm-security armhf index that does not match its Release file
# ("File has unexpected size"), so the armhf test base is made without the security suite.
SECURITY = {"arm64": True, "armhf": False}


def bootstrap_test_base(arch: str) -> BaseImage:
    """The bookworm bootstrap base for arch, from the machine's cache (built on first use: minutes)."""
    require_root()
    require_programs("mmdebstrap", QEMU_USER[arch], "mkfs.vfat", "mcopy", "sfdisk")
    setup_logging(verbose=True, debug=False)
    ctx = make_context()
    try:
        with ctx.stack:
            return bootstrap_base(ctx, Bootstrap(suite="bookworm", layout="raspios",
                                                       security=SECURITY[arch]), arch)
    except Exception as e:  # pragma: no cover - reported, not hidden
        pytest.fail(f"bootstrap failed: {e}")


def arm64_base() -> BaseImage:
    return bootstrap_test_base("arm64")


def armhf_base() -> BaseImage:
    return bootstrap_test_base("armhf")
