"""os_list.json for Raspberry Pi Imager: its sizes and digests must be those of the files beside it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imagebuilder.cli.main import main
from imagebuilder.outputs.imager import write_os_list
from imagebuilder.outputs.manifest import MANIFEST, Manifest, ManifestImage
from imagebuilder.recipe.load import load_recipe
from imagebuilder.recipe.model import Recipe
from tests.conftest import ROOT, VALID, as_another_user, lock_away, require_programs


def _sparse_image(path: Path, size: int = 8 << 20) -> bytes:
    """A sparse image with data at a few places; returns its full contents."""
    with path.open("wb") as f:
        f.truncate(size)
        for offset in (0, 1 << 20, 5 << 20):
            f.seek(offset)
            f.write(os.urandom(64 << 10))
    return path.read_bytes()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def recipe(recipe_file) -> Recipe:  # type: ignore[no-untyped-def]
    return load_recipe(recipe_file(VALID))


def _build_outputs(out: Path, *, keep_raw: bool = True) -> dict[str, bytes]:
    """Raw images, their .img.xz (what Imager downloads) and .bmap stand-ins."""
    require_programs("xz")
    out.mkdir(parents=True, exist_ok=True)
    raws = {}
    for role in ("master", "worker"):
        raw = out / f"{role}.img"
        raws[role] = _sparse_image(raw)
        subprocess.run(["xz", "-k", "-T0", str(raw)], check=True)
        (out / f"{role}.img.bmap").write_text("<bmap/>\n")
        if role == "worker":  # an SBOM stand-in beside one image only
            (out / f"{role}.cdx.json").write_text("{}\n")
        if not keep_raw:
            raw.unlink()
    return raws


def test_entries_match_the_files(recipe: Recipe) -> None:
    out = recipe.output_dir
    raws = _build_outputs(out)
    path = write_os_list(out, recipe)
    assert path == out / "os_list.json"
    doc = json.loads(path.read_text())
    entries = {e["name"].rsplit(": ", 1)[1]: e for e in doc["os_list"]}
    assert set(entries) == {"master", "worker"}
    for role, entry in entries.items():
        download = out / f"{role}.img.xz"
        # Absolute: Imager resolves nothing against the repository file's own place.
        assert entry["url"] == download.resolve().as_uri()
        assert entry["bmap_url"] == (out / f"{role}.img.bmap").resolve().as_uri()
        assert entry.get("sbom_url") == ((out / "worker.cdx.json").resolve().as_uri() if role == "worker" else None)
        assert entry["image_download_size"] == download.stat().st_size
        assert entry["image_download_sha256"] == _sha256(download)
        assert entry["extract_size"] == len(raws[role]) == (out / f"{role}.img").stat().st_size
        assert entry["extract_sha256"] == hashlib.sha256(raws[role]).hexdigest()
        # No manifest here: every board of the architecture (a build lists the ones verify passed).
        assert entry["devices"] == ["pi3-64bit", "pi4-64bit", "pi5-64bit"]
        assert entry["init_format"] == "cloudinit"
        icon = Path(entry["icon"].removeprefix("file://"))
        assert icon.read_bytes().startswith(b"\x89PNG")
        assert len(entry["release_date"]) == 10 and entry["release_date"][4] == "-"
        assert entry["description"]
    assert {t for d in doc["imager"]["devices"] for t in d["tags"]} == {"pi5-64bit", "pi4-64bit", "pi3-64bit"}


def test_the_builds_digests_make_the_same_list(recipe: Recipe) -> None:
    """The build gives the digests it just listed in SHA256SUMS, so no image is read again for the list."""
    out = recipe.output_dir
    _build_outputs(out)
    read = json.loads(write_os_list(out, recipe).read_text())
    known = {path.name: _sha256(path) for path in out.glob("*.img*")}
    for path in out.glob("*.img*"):  # what a list that read them again would show
        with path.open("r+b") as f:
            f.write(b"changed")
    assert json.loads(write_os_list(out, recipe, known=known).read_text()) == read


def test_devices_are_the_boards_verify_passed(recipe: Recipe) -> None:
    out = recipe.output_dir
    _build_outputs(out)
    def image(role: str, boards: tuple[str, ...]) -> ManifestImage:
        return ManifestImage(f"{role}.img", "0" * 64, 1, boards, (f"{role}.img",), {}, (), ())

    (out / MANIFEST).write_text(Manifest(
        "0", "2026-01-01T00:00:00+00:00", "r.yaml", "0" * 64, "c", "arm64", "v1", None, "0" * 64, "bootstrap", 0,
        {"master": image("master", ("pi3b", "pi3b+", "pi4b")), "worker": image("worker", ("pi3b",))}).to_json())
    doc = json.loads(write_os_list(out, recipe).read_text())
    devices = {e["name"].rsplit(": ", 1)[1]: e["devices"] for e in doc["os_list"]}
    assert devices == {"master": ["pi3-64bit", "pi4-64bit"], "worker": ["pi3-64bit"]}
    assert [d["tags"] for d in doc["imager"]["devices"]] == [["pi3-64bit"], ["pi4-64bit"]]


def test_extract_digest_from_compressed_only(recipe: Recipe) -> None:
    out = recipe.output_dir
    raws = _build_outputs(out, keep_raw=False)
    doc = json.loads(write_os_list(out, recipe, base_url="https://lab.example/pi/").read_text())
    for entry in doc["os_list"]:
        role = entry["name"].rsplit(": ", 1)[1]
        assert entry["extract_sha256"] == hashlib.sha256(raws[role]).hexdigest()
        assert entry["extract_size"] == len(raws[role])
        assert entry["url"] == f"https://lab.example/pi/{role}.img.xz"
        assert entry["icon"] == "https://lab.example/pi/imagebuilder-icon.png"


def test_command_makes_the_xz_copy_imager_wants(recipe_file, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    require_programs("xz")
    recipe = load_recipe(recipe_file(VALID.replace("arch: arm64", "arch: armhf")))
    out = recipe.output_dir
    out.mkdir(parents=True)
    raw = _sparse_image(out / "worker.img")  # a zstd build leaves no .img.xz
    assert main(["--cache-dir", str(tmp_path / "cache"), "imager-repo", str(recipe.source),
                 "--base-url", "http://127.0.0.1:8000"]) == 0
    (entry,) = json.loads((out / "os_list.json").read_text())["os_list"]
    assert entry["url"] == "http://127.0.0.1:8000/worker.img.xz"
    assert subprocess.run(["xz", "-dc", out / "worker.img.xz"], capture_output=True, check=True).stdout == raw
    assert entry["extract_sha256"] == hashlib.sha256(raw).hexdigest()
    assert entry["devices"] == ["pi2-32bit", "pi3-32bit", "pi4-32bit"]


def test_no_images_is_one_line_exit_2_and_writes_nothing(recipe: Recipe, capsys: pytest.CaptureFixture[str]) -> None:
    for made in (False, True):  # no output folder; an empty one
        if made:
            recipe.output_dir.mkdir(parents=True)
        assert main(["imager-repo", str(recipe.source)]) == 2
        assert capsys.readouterr().err.splitlines() == [
            f"imagebuilder: {recipe.output_dir}: no image to list (master.img, worker.img or their .img.xz)",
            f"  hint: build first: imagebuilder build {recipe.source}"]
        # Checked before anything is written: no icon, no folder.
        assert (list(recipe.output_dir.iterdir()) == []) if made else not recipe.output_dir.exists()


def test_outputs_of_another_user_are_named_not_a_traceback(shared_tmp: Path) -> None:
    recipe = shared_tmp / "recipe.yaml"
    recipe.write_text(VALID)
    out = shared_tmp / "out/testcluster"
    out.mkdir(parents=True)
    _sparse_image(out / "worker.img")
    lock_away(out)  # as a build run with sudo leaves it
    result = subprocess.run(as_another_user([sys.executable, "-m", "imagebuilder", "imager-repo", str(recipe)]),
                            capture_output=True, text=True, cwd=shared_tmp, check=False,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(shared_tmp)})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[0].startswith(f"imagebuilder: {out}: permission denied (it belongs to ")
