"""Every format into the same sparse raw image, with its digest recorded; broken input leaves nothing."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import pytest

from imagebuilder.core.context import Context
from imagebuilder.core.errors import CommandFailed, ImageBuilderError
from imagebuilder.core.run import run
from imagebuilder.sources.decompress import decompress_to_cache, detect_format
from tests.conftest import require_programs

SIZE = 24 << 20


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small ext4 image with real files in it and free space (zeros) after them."""
    require_programs("mkfs.ext4")
    root = tmp_path_factory.mktemp("image")
    tree = root / "tree"
    shutil.copytree(Path(__file__).resolve().parent.parent / "imagebuilder", tree / "src")
    (tree / "random.bin").write_bytes(hashlib.sha256(b"seed").digest() * 8192)
    path = root / "disk.img"
    run(["mkfs.ext4", "-q", "-F", "-d", tree, "-L", "rootfs", path, f"{SIZE >> 10}"])
    return path


@pytest.fixture(scope="module")
def compressed(image: Path) -> dict[str, Path]:
    require_programs("xz", "zstd")
    out = {"img": image}
    run(["xz", "-T0", "-k", "-1", "-c", image], stdout=(image.parent / "disk.img.xz").open("wb"))
    out["xz"] = image.parent / "disk.img.xz"
    run(["zstd", "-q", "-c", image], stdout=(image.parent / "disk.img.zst").open("wb"))
    out["zst"] = image.parent / "disk.img.zst"
    out["gz"] = image.parent / "disk.img.gz"
    with gzip.open(out["gz"], "wb", compresslevel=1) as f:
        f.write(image.read_bytes())
    out["zip"] = image.parent / "disk.zip"
    with zipfile.ZipFile(out["zip"], "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        z.writestr("README.txt", "the image is inside")
        z.write(image, "disk.img")
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("fmt", ["xz", "zst", "gz", "zip", "img"])
def test_each_format_gives_the_same_sparse_image(fmt: str, compressed: dict[str, Path], image: Path,
                                                 tmp_path: Path) -> None:
    ctx = Context(cache_dir=tmp_path / "cache")
    source = compressed[fmt]
    assert detect_format(source) == fmt
    raw = decompress_to_cache(ctx, source)
    assert raw.path == ctx.cache_dir / "raw" / f"{sha256(source)}.img"
    assert raw.size == SIZE == raw.path.stat().st_size
    assert raw.sha256 == sha256(image) == sha256(raw.path)
    # Holes: the free space of the filesystem takes no room on disk.
    assert raw.path.stat().st_blocks * 512 < SIZE // 2
    meta = json.loads(raw.path.with_suffix(".json").read_text())
    assert meta == {"sha256": raw.sha256, "size": SIZE, "format": fmt, "source": source.name}
    assert sorted(p.name for p in raw.path.parent.iterdir() if not p.name.startswith(".lock-")) == [
        raw.path.name, raw.path.with_suffix(".json").name]


def test_second_call_reuses_the_raw_image(compressed: dict[str, Path], tmp_path: Path) -> None:
    ctx = Context(cache_dir=tmp_path / "cache")
    first = decompress_to_cache(ctx, compressed["zst"])
    stamp = first.path.stat().st_mtime_ns
    assert decompress_to_cache(ctx, compressed["zst"]) == first
    assert first.path.stat().st_mtime_ns == stamp


def test_python_fallback_without_xz_program(compressed: dict[str, Path], image: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no xz anywhere on PATH (it lives in /usr/bin)
    raw = decompress_to_cache(Context(cache_dir=tmp_path / "cache"), compressed["xz"])
    assert raw.sha256 == sha256(image)


def test_corrupt_xz_fails_and_leaves_nothing(compressed: dict[str, Path], tmp_path: Path) -> None:
    data = bytearray(compressed["xz"].read_bytes())
    data[len(data) // 2] ^= 0xFF
    broken = tmp_path / "broken.img.xz"
    broken.write_bytes(bytes(data))
    ctx = Context(cache_dir=tmp_path / "cache")
    with pytest.raises(CommandFailed, match=r"command failed \(exit 1\): xz -T0 -d -c"):
        decompress_to_cache(ctx, broken)
    assert [p.name for p in (ctx.cache_dir / "raw").iterdir() if not p.name.startswith(".lock-")] == []


def test_zip_with_several_files_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "two.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("a.bin", b"a")
        z.writestr("b.bin", b"b")
    with pytest.raises(ImageBuilderError, match=r"two.zip: a zip must hold exactly one image, this one holds a.bin"):
        decompress_to_cache(Context(cache_dir=tmp_path / "cache"), archive)
