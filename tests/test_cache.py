"""The cache: each recipe's recent builds keep what they use; the rest goes, but never under a running build."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imagebuilder.cli.main import main
from imagebuilder.core.cache import GRACE, RECIPE_RECORD_VERSION, list_entries, prune, recipe_records, record_use, touch
from tests.conftest import ROOT

DAY = 86400.0


def entry(cache: Path, name: str, age: float, companions: tuple[str, ...] = ()) -> Path:
    path = cache / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if name.startswith("debs/"):
        path.mkdir()
        (path / "hello.deb").write_bytes(b"x" * 4096)
    else:
        path.write_bytes(b"x" * 4096)
    stamp = time.time() - age
    for suffix in companions:  # written with the entry: as old
        companion = path.with_name(path.name.removesuffix(".img") + suffix if suffix.startswith(".") else suffix)
        companion.write_text("")
        os.utime(companion, (stamp, stamp))
    os.utime(path, (stamp, stamp))
    return path


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    c = tmp_path / "cache"
    # Two recipes' stages share names (common, master...): a count per name would evict one for the other.
    for name in ("common-a", "master-a", "common-b", "master-b", "common-old", "master-older"):
        entry(c, f"stages/{name}.img", 3 * DAY, (".json", ".lock"))
    entry(c, "bases/bootstrap-x.img", 3 * DAY, (".json", ".lock"))
    entry(c, "raw/" + "ab" * 32 + ".img", 3 * DAY, (".json",))
    entry(c, "downloads/" + "ab" * 32 + ".img.xz", 3 * DAY)
    entry(c, "downloads/" + "cd" * 32 + ".img.xz", 3 * DAY)  # nobody's
    entry(c, "debs/arm64-aaaa", 3 * DAY)
    entry(c, "debs/arm64-old", 3 * DAY)
    entry(c, "compressed/" + "ef" * 32 + ".img.zst", 3 * DAY, ("ef" * 32 + ".img.zst.sha256",))
    for recipe in ("a", "b"):
        (tmp_path / f"{recipe}.yaml").write_text("cluster: {}\n")
    record_use(c, tmp_path / "a.yaml", "alpha", [c / "stages/common-a.img", c / "stages/master-a.img",
                                                      c / "bases/bootstrap-x.img", c / "debs/arm64-aaaa"])
    record_use(c, tmp_path / "b.yaml", "beta", [c / "stages/common-b.img", c / "stages/master-b.img",
                                                     c / "raw" / ("ab" * 32 + ".img"),
                                                     c / "downloads" / ("ab" * 32 + ".img.xz"),
                                                     c / "compressed" / ("ef" * 32 + ".img.zst")])
    return c


def names(cache: Path) -> set[str]:
    return {e.name for e in list_entries(cache)}


def test_prune_keeps_what_each_recipe_uses_and_bounds_every_kind(cache: Path) -> None:
    removed = {e.name for e in prune(cache)}
    assert removed == {"stages/common-old.img", "stages/master-older.img", "downloads/" + "cd" * 32 + ".img.xz",
                       "debs/arm64-old"}
    assert not (cache / "stages/common-old.json").exists() and not (cache / "stages/common-old.lock").exists()
    assert {"stages/common-a.img", "stages/common-b.img", "bases/bootstrap-x.img", "debs/arm64-aaaa",
            "raw/" + "ab" * 32 + ".img", "compressed/" + "ef" * 32 + ".img.zst"} <= names(cache)


def test_the_previous_build_is_kept_too(cache: Path) -> None:
    record_use(cache, cache.parent / "a.yaml", "alpha", [cache / "stages/common-old.img"])
    assert "stages/common-a.img" not in {e.name for e in prune(cache)}  # one build back
    record_use(cache, cache.parent / "a.yaml", "alpha", [cache / "stages/common-old.img"])
    assert "stages/common-a.img" in {e.name for e in prune(cache)}  # two builds back


def test_recent_and_locked_entries_stay(cache: Path) -> None:
    entry(cache, "stages/worker-new.img", GRACE / 2, (".json", ".lock"))
    with open(cache / "stages/common-old.lock") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # a build is making or reading it right now
        removed = {e.name for e in prune(cache)}
    assert "stages/worker-new.img" not in removed and "stages/common-old.img" not in removed
    assert "stages/master-older.img" in removed


def test_recipes_not_built_for_long_are_forgotten(cache: Path) -> None:
    removed = {e.name for e in prune(cache, now=time.time() + 40 * DAY)}
    assert "stages/common-a.img" in removed and "bases/bootstrap-x.img" in removed
    assert list((cache / "recipes").glob("*.json")) == []


def test_a_deleted_recipe_keeps_nothing(cache: Path) -> None:
    (cache.parent / "b.yaml").unlink()
    removed = {e.name for e in prune(cache)}
    assert "stages/common-b.img" in removed and "compressed/" + "ef" * 32 + ".img.zst" in removed
    assert "stages/common-a.img" not in removed
    assert len(list((cache / "recipes").glob("*.json"))) == 1


def test_a_record_of_another_version_keeps_nothing_and_the_next_build_writes_it_again(cache: Path) -> None:
    record = next((cache / "recipes").glob("*.json"))
    data = json.loads(record.read_text())
    assert data["version"] == RECIPE_RECORD_VERSION
    record.write_text(json.dumps({**data, "version": RECIPE_RECORD_VERSION + 1}))
    kept = {r.cluster for r in recipe_records(cache)}
    assert len(kept) == 1  # the other recipe's record is still read
    removed = {e.name for e in prune(cache)}
    lost = "alpha" if "alpha" not in kept else "beta"
    assert ("stages/common-a.img" if lost == "alpha" else "stages/common-b.img") in removed
    assert not record.exists()
    record_use(cache, Path(data["recipe"]), lost, [cache / "stages/master-older.img"])
    assert [r.builds[0].uses for r in recipe_records(cache) if r.cluster == lost] == [("stages/master-older.img",)]


def test_clear_removes_all_but_what_is_held(cache: Path) -> None:
    with open(cache / "stages/common-a.lock") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        prune(cache, everything=True)
    assert names(cache) == {"stages/common-a.img"}


def test_cache_command_lists_sizes_and_users(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--cache-dir", str(cache), "cache", "--json"]) == 0
    listed = {e["name"]: e for e in json.loads(capsys.readouterr().out)}
    assert listed["stages/common-a.img"]["used_by"] == ["alpha"]
    assert listed["stages/common-old.img"]["used_by"] == []
    assert all(e["bytes"] > 0 for e in listed.values())
    assert main(["--cache-dir", str(cache), "cache", "prune"]) == 0
    assert "removed 4 entries" in capsys.readouterr().out


def test_a_stage_marked_used_through_its_record_is_kept_and_its_image_untouched(cache: Path) -> None:
    """An emitted image may be the stage's file itself (a hard link): its mtime says the output is unchanged,
    so a cache hit marks the stage used through its record."""
    image = cache / "stages/master-older.img"
    before = image.stat().st_mtime_ns
    touch(image.with_suffix(".json"))
    prune(cache)
    assert "stages/master-older.img" in names(cache)
    assert image.stat().st_mtime_ns == before


def clear(cache: Path, *extra: str, stdin: int | None = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "imagebuilder", "--cache-dir", str(cache), "cache", "clear",
                           *extra], stdin=stdin, capture_output=True, text=True, cwd=ROOT, check=False)


def test_clear_without_a_terminal_needs_yes(cache: Path) -> None:
    before = names(cache)
    refused = clear(cache)
    assert refused.returncode == 2 and names(cache) == before
    assert refused.stderr.splitlines() == [
        "imagebuilder: not confirmed: stdin is not a terminal; nothing was removed",
        "  hint: add --yes to go ahead without asking"]
    done = clear(cache, "--yes")
    assert done.returncode == 0 and names(cache) == set()
    assert done.stdout.splitlines()[-1] == f"{cache}: removed {len(before)} entries, 0.00 GiB"


def test_clear_on_a_terminal_asks_first(cache: Path) -> None:
    count = len(names(cache))
    for answer, status, left in (("n", 2, count), ("", 2, count), ("y", 0, 0)):
        controller, terminal = os.openpty()
        try:
            os.write(controller, f"{answer}\n".encode())
            result = clear(cache, stdin=terminal)
        finally:
            os.close(terminal)
            os.close(controller)
        assert result.stdout.startswith(f"remove {count} entries, 0.00 GiB from {cache}? [y/N] ")
        assert result.returncode == status and len(names(cache)) == left, result.stderr
        if status:
            assert result.stderr == "imagebuilder: not confirmed: nothing was removed\n"
