"""Shared, cached test images: the arm64 bootstrap base is built once per machine and reused."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from imagebuilder.core.binfmt import ensure_binfmt
from imagebuilder.core.cache import recipe_records, record_use
from imagebuilder.core.context import Context
from imagebuilder.core.log import setup_logging
from imagebuilder.disk.copy import copy_image
from imagebuilder.recipe.model import Bootstrap
from imagebuilder.sources.base import BaseImage
from imagebuilder.sources.bootstrap import bootstrap_base, cached_bootstrap
from tests.conftest import ROOT, require_programs, require_root


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


def base_spec(arch: str) -> Bootstrap:
    return Bootstrap(suite="bookworm", layout="raspios", security=SECURITY[arch])


def bootstrap_test_base(arch: str) -> BaseImage:
    """The bookworm bootstrap base for arch, from the machine's cache (built on first use: minutes)."""
    require_root()
    require_programs("mmdebstrap", QEMU_USER[arch], "mkfs.vfat", "mcopy", "sfdisk")
    setup_logging(verbose=True, debug=False)
    ctx = make_context()
    try:
        with ctx.stack:
            base = bootstrap_base(ctx, base_spec(arch), arch)
    except Exception as e:  # pragma: no cover - reported, not hidden
        pytest.fail(f"bootstrap failed: {e}")
    keep_in_cache(ctx.cache_dir, arch, [base.path, *base.origin])
    return base


def bootstrap_both_bases_at_once() -> None:
    """On a machine that has neither test base, bootstrap the armhf one in a second process while this one
    bootstraps arm64, before any test runs (so no test sees the other's loop devices and processes). Each
    is one emulated dpkg at a time for most of its minutes, and the machine has two cores. Where the
    second process fails, armhf_base() tries again when a test asks for it, and reports."""
    if os.geteuid() != 0 or not all(shutil.which(p) for p in ("mmdebstrap", *QEMU_USER.values())):
        return  # the tests that need a base say what is missing
    cache_dir = make_context().cache_dir
    if any(cached_bootstrap(cache_dir, base_spec(arch), arch) for arch in QEMU_USER):
        return
    for arch in QEMU_USER:  # registered here once, not by two processes at the same moment
        ensure_binfmt(arch)
    second = subprocess.Popen([sys.executable, "-c", "from tests.images import armhf_base; armhf_base()"],
                              cwd=ROOT)
    try:
        arm64_base()
    except BaseException:
        second.terminate()  # it unwinds: no mount, loop device or partial base left
        raise
    finally:
        second.wait()


def keep_in_cache(cache_dir: Path, arch: str, used: list[Path]) -> None:
    """Record this file as the recipe that uses the test bases, one per arch.

    The tests write their recipes into temporary folders, and a recipe whose file is gone keeps nothing in
    the cache, so without this every run would bootstrap the bases again (minutes each)."""
    me = Path(__file__).resolve()
    previous = [r for r in recipe_records(cache_dir) if r.recipe == me and r.builds]
    others = [cache_dir / name for name in (previous[0].builds[0].uses if previous else ()) if f"-{arch}-" not in name]
    record_use(cache_dir, me, "imagebuilder test suite", [*used, *others])


def small_recipe(name: str, out: Path, *, compress: str = "zstd", bmap: bool = True, extra: str = "",
                 sign_key: Path | None = None, reproducible: bool = False) -> str:
    """The text of the smallest test cluster on the bootstrap base: the master and node1, writing to `out`.

    It downloads no k3s release (tests reach nothing outside this machine); `extra` adds whole lines."""
    signed = f", sign_key: {sign_key}" if sign_key else ""
    signed += ", reproducible: true" if reproducible else ""
    return (f"cluster: {{name: {name}}}\n"
            "base: {bootstrap: {suite: bookworm}}\n"
            "k3s: {assets: none}\n"
            "workers:\n"
            '  - {hostname: node1, mac: "b8:27:eb:00:00:01"}\n'
            f"{extra}"
            f"output: {{dir: {out}, compress: {compress}, bmap: {str(bmap).lower()}{signed}}}\n")


def arm64_base() -> BaseImage:
    return bootstrap_test_base("arm64")


def seeded_cache(cache: Path) -> None:
    """A cache holding only the arm64 bootstrap base (copied from the machine's, holes kept): a build on it
    makes every stage."""
    base = arm64_base()
    (cache / "bases").mkdir(parents=True)
    copy_image(base.path, cache / "bases" / base.path.name)
    shutil.copy(base.path.with_suffix(".json"), cache / "bases")


def armhf_base() -> BaseImage:
    return bootstrap_test_base("armhf")
