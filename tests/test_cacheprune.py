"""The cache keeps the newest few entries per kind, and never one another build holds."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from imagebuilder.core.cache import prune_compressed, prune_stages, touch


def make_stage(stages: Path, name: str, n: int, when: float) -> Path:
    image = stages / f"{name}-{n:024x}.img"
    image.write_bytes(b"x")
    image.with_suffix(".json").write_text("{}")
    os.utime(image, (when, when))
    return image


def test_keeps_newest_per_stage_name(tmp_path: Path) -> None:
    made = {name: [make_stage(tmp_path, name, n, 1000 + n) for n in range(5)] for name in ("common", "worker")}
    touch(made["worker"][0])  # the oldest, just used again
    assert prune_stages(tmp_path, keep=2) == 3 + 3
    left = sorted(p.name for p in tmp_path.glob("*.img"))
    assert left == sorted(p.name for p in (made["common"][3], made["common"][4], made["worker"][0],
                                          made["worker"][4]))
    assert not (tmp_path / made["common"][0].with_suffix(".json").name).exists()


def test_entry_in_use_is_kept(tmp_path: Path) -> None:
    old = make_stage(tmp_path, "master", 1, 1000)
    make_stage(tmp_path, "master", 2, 2000)
    with open(old.with_suffix(".lock"), "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        assert prune_stages(tmp_path, keep=1) == 0
    assert prune_stages(tmp_path, keep=1) == 1 and not old.exists()


def test_compressed_copies(tmp_path: Path) -> None:
    for n in range(4):
        path = tmp_path / f"{n:064x}.img.zst"
        path.write_bytes(b"z")
        path.with_name(path.name + ".sha256").write_text("0\n")
        os.utime(path, (1000 + n, 1000 + n))
    assert prune_compressed(tmp_path, keep=1) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{3:064x}.img.zst", f"{3:064x}.img.zst.sha256"]
