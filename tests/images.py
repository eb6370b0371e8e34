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


def arm64_base() -> BaseImage:
    require_root()
    require_programs("mmdebstrap", "qemu-aarch64-static", "mkfs.vfat", "mcopy", "sfdisk")
    setup_logging(verbose=True, debug=False)
    ctx = make_context()
    try:
        with ctx.stack:
            return bootstrap_base(ctx, Bootstrap(suite="bookworm", layout="raspios"), "arm64")
    except Exception as e:  # pragma: no cover - reported, not hidden
        pytest.fail(f"bootstrap failed: {e}")
