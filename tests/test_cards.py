"""Used cards: built images flashed onto cards that held other data, by every path we offer.

A card is a loop device over a file prefilled with random bytes, never zeros: a flash that skips a block
the file systems use leaves garbage there, and the file system checks and the file comparison below see
it. Each path (imagebuilder flash with each output form, bmaptool copy, flash --hostname) must leave a
card whose partitions pass fsck.vfat and e2fsck and whose every file reads back as in the image.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagebuilder.build.execute import build
from imagebuilder.cli.main import main
from imagebuilder.core.resources import loop_device, mounted
from imagebuilder.disk.bmap import load_bmap
from imagebuilder.disk.fat import MTOOLS_ENV
from imagebuilder.disk.partitions import boot_and_root
from imagebuilder.flash import card as flash_card
from imagebuilder.recipe.load import load_recipe
from tests.conftest import require_programs, require_root
from tests.images import arm64_base, make_context, small_recipe
from tests.readers import read_hostname_seed

MiB = 2**20


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cluster's outputs (raw, .zst, .bmap), plus an .xz of the worker image as `compress: xz` makes."""
    arm64_base()
    require_programs("bmaptool", "zstd", "xz", "fsck.vfat", "e2fsck", "mcopy", "diff")
    tmp = tmp_path_factory.mktemp("cards")
    path = tmp / "recipe.yaml"
    path.write_text(small_recipe("cardtest", tmp / "out"))
    recipe = load_recipe(path)
    ctx = make_context()
    with ctx.stack:
        build(ctx, recipe)
    out = recipe.output_dir
    subprocess.run(["xz", "-T0", "-1", "-k", out / "worker.img"], check=True)
    return out


def fill_random(path: Path, size: int) -> None:
    """`size` bytes no block of which is zeros or repeats another (a counter in a random MiB)."""
    block = bytearray(os.urandom(MiB))
    with path.open("wb") as f:
        for n in range(size // MiB):
            block[:8] = n.to_bytes(8, "little")
            f.write(block)


@pytest.fixture
def used_card(tmp_path: Path, outputs: Path) -> Iterator[tuple[Path, Path]]:
    """A card that held something before: (its device, its backing file)."""
    require_root()
    backing = tmp_path / "card.bin"
    fill_random(backing, (outputs / "worker.img").stat().st_size + 64 * MiB)
    with loop_device(backing) as device:
        yield device, backing


def extract_fat(image: Path, offset: int, dest: Path) -> Path:
    dest.mkdir()
    subprocess.run(["mcopy", "-s", "-p", "-n", "-i", f"{image}@@{offset}", "::/*", dest], check=True,
                   env={**os.environ, **MTOOLS_ENV}, capture_output=True)
    return dest


def check_card(card: Path, image: Path, tmp: Path, seed: str | None = None) -> None:
    """Both partitions of the card pass their checks, and every file reads back as in the image."""
    boot, root = boot_and_root(image)
    copy = tmp / "boot.part"
    with open(card, "rb") as src, open(copy, "wb") as dst:
        src.seek(boot.start)
        dst.write(src.read(boot.size))
    fat = subprocess.run(["fsck.vfat", "-n", copy], capture_output=True, text=True, check=False)
    assert fat.returncode == 0 and "differ" not in fat.stdout and "out of range" not in fat.stdout, fat.stdout
    ext = subprocess.run(["e2fsck", "-fn", f"{card}?offset={root.start}"], capture_output=True, text=True,
                         check=False)
    assert ext.returncode == 0, ext.stdout + ext.stderr
    on_card = extract_fat(card, boot.start, tmp / "card-boot")
    in_image = extract_fat(image, boot.start, tmp / "image-boot")
    if seed is not None:
        assert (on_card / "imagebuilder-hostname").read_text() == seed + "\n"
        (on_card / "imagebuilder-hostname").unlink()
    subprocess.run(["diff", "-r", in_image, on_card], check=True, capture_output=True)
    with loop_device(card, offset=root.start, size=root.size, read_only=True) as a, \
            loop_device(image, offset=root.start, size=root.size, read_only=True) as b, \
            mounted(a, tmp / "card-root", fstype="ext4", options=("ro", "noload")) as card_root, \
            mounted(b, tmp / "image-root", fstype="ext4", options=("ro", "noload")) as image_root:
        result = subprocess.run(["diff", "-r", "--no-dereference", image_root, card_root], capture_output=True,
                                text=True, check=False)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


@pytest.mark.integration
@pytest.mark.parametrize("form", ["img", "img.zst", "img.xz"])
def test_flash_onto_a_used_card(outputs: Path, used_card: tuple[Path, Path], form: str, tmp_path: Path) -> None:
    device, backing = used_card
    assert main(["flash", str(outputs / f"worker.{form}"), str(device), "--yes"]) == 0
    check_card(backing, outputs / "worker.img", tmp_path)


@pytest.mark.integration
def test_flash_master_onto_a_used_card(outputs: Path, used_card: tuple[Path, Path], tmp_path: Path) -> None:
    device, backing = used_card
    assert main(["flash", str(outputs / "master.img.zst"), str(device), "--yes"]) == 0
    check_card(backing, outputs / "master.img", tmp_path)


@pytest.mark.integration
@pytest.mark.parametrize("role", ["master", "worker"])
def test_bmaptool_copy_onto_a_used_card(outputs: Path, used_card: tuple[Path, Path], role: str,
                                        tmp_path: Path) -> None:
    device, backing = used_card
    subprocess.run(["bmaptool", "copy", "--bmap", outputs / f"{role}.img.bmap", outputs / f"{role}.img.zst",
                    device], check=True, capture_output=True)
    check_card(backing, outputs / f"{role}.img", tmp_path)


@pytest.mark.integration
def test_flash_with_hostname_onto_a_used_card(outputs: Path, used_card: tuple[Path, Path], tmp_path: Path) -> None:
    device, backing = used_card
    assert main(["flash", str(outputs / "worker.img.zst"), str(device), "--yes", "--hostname", "node7"]) == 0
    assert read_hostname_seed(device) == "node7"
    check_card(backing, outputs / "worker.img", tmp_path, seed="node7")


@pytest.mark.integration
def test_bmap_maps_what_the_file_systems_hold(outputs: Path) -> None:
    """Every block a file system uses is mapped, and not much more: the bmap stays small."""
    for role in ("master", "worker"):
        bmap = load_bmap(outputs / f"{role}.img.bmap")
        size = (outputs / f"{role}.img").stat().st_size
        assert bmap.mapped_bytes < 0.7 * size


@pytest.mark.integration
def test_a_card_that_lies_fails_verification(outputs: Path, used_card: tuple[Path, Path],
                                              capfd: pytest.CaptureFixture[str]) -> None:
    """Bytes changed on the card between the write and the read-back: flash says where, and fails."""
    device, _ = used_card
    bmap = load_bmap(outputs / "worker.img.bmap")
    victim = bmap.ranges[len(bmap.ranges) // 2]
    start, _ = bmap.range_bytes(victim)

    def lie(fd: int) -> None:
        os.pwrite(fd, b"\xa5" * 4096, start)
        os.fsync(fd)

    flash_card.AFTER_WRITE_HOOKS.append(lie)
    try:
        status = main(["flash", str(outputs / "worker.img.zst"), str(device), "--yes"])
    finally:
        flash_card.AFTER_WRITE_HOOKS.clear()
    err = capfd.readouterr().err
    assert status == 3
    assert f"verification failed: the card does not read back blocks {victim.first}-{victim.last}" in err
    assert "incomplete" in err


@pytest.mark.integration
def test_a_card_swapped_after_it_was_shown_is_refused(outputs: Path, used_card: tuple[Path, Path],
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capfd: pytest.CaptureFixture[str]) -> None:
    device, backing = used_card
    before = backing.read_bytes()[:MiB]

    def swap(image: Path, target: object, yes: bool) -> None:
        # While the user reads the question, the device becomes another medium (here: its size changes).
        with backing.open("r+b") as f:
            f.truncate(backing.stat().st_size + 64 * MiB)
        subprocess.run(["losetup", "--set-capacity", str(device)], check=True)

    monkeypatch.setattr(flash_card, "_confirm", swap)
    assert main(["flash", str(outputs / "worker.img.zst"), str(device), "--yes"]) == 2
    assert "changed since it was shown" in capfd.readouterr().err
    assert backing.read_bytes()[:MiB] == before  # nothing written
