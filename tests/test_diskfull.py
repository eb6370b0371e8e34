"""Full disks: a build whose cache or output folder fills up stops with one line naming the folder and what it
needed, and leaves no partial cache entry or output behind. The folders are small tmpfs mounts."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagebuilder.core.errors import DiskFull
from imagebuilder.core.resources import PARTIAL, mounted
from imagebuilder.disk.copy import copy_image
from tests.conftest import ROOT, require_root
from tests.images import arm64_base, seeded_cache, small_recipe


@pytest.fixture
def small(tmp_path: Path) -> Iterator[object]:
    """small(name, MiB): a tmpfs of that size at tmp_path/name, unmounted at the end."""
    require_root()
    with contextlib.ExitStack() as stack:
        def make(name: str, mib: int) -> Path:
            return stack.enter_context(mounted("tmpfs", tmp_path / name, fstype="tmpfs", options=(f"size={mib}m",)))

        yield make


def partials(*folders: Path) -> list[Path]:
    return [p for f in folders if f.exists() for p in f.rglob("*") if PARTIAL in p.name]


def test_a_copy_that_runs_out_of_space_names_the_folder(small, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = small("tiny", 8)
    source = tmp_path / "image"
    source.write_bytes(os.urandom(16 << 20))
    with pytest.raises(DiskFull, match=f"{folder}: no space left on its file system while writing a copy of image"):
        copy_image(source, folder / "copy")


def build(recipe: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "imagebuilder", "--cache-dir", str(cache), "build", str(recipe)],
                          cwd=ROOT, capture_output=True, text=True, check=False)


@pytest.mark.integration
def test_full_cache_stops_with_one_line_and_no_partial_entry(small, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base = arm64_base()
    cache = small("cache", (base.path.stat().st_blocks * 512 >> 20) + 300)  # the base, and not a stage more
    seeded_cache(cache)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(small_recipe("fulltest", tmp_path / "out"))
    result = build(recipe, cache)
    assert result.returncode == 2, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-2]
    assert line.startswith(f"imagebuilder: {cache}/stages: not enough space for the common stage: it needs about ")
    assert "Traceback" not in result.stderr
    assert partials(cache, tmp_path / "out") == []
    assert not list((cache / "stages").glob("*.img"))
    assert not (cache / "tmp").exists() or not any((cache / "tmp").iterdir())


@pytest.mark.integration
def test_full_output_folder_stops_with_one_line_and_no_partial_output(small, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    arm64_base()
    out = small("out", 400)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(small_recipe("fulltest", out))
    from tests.images import make_context

    result = build(recipe, make_context().cache_dir)
    assert result.returncode == 2, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-2]
    # The roles' outputs are written beside each other: either may be the one refused.
    assert re.match(rf"imagebuilder: {re.escape(str(out))}/fulltest: not enough space for (master|worker)\.img: "
                    "it needs about ", line), line
    assert partials(out) == [] and not list((out / "fulltest").glob("*.img"))
