"""Write the build's outputs: raw images, compressed copies, bmaps, SHA256SUMS, manifest.json.

Every file is written under a temporary name and renamed when complete. Compressed copies are cached
by the raw image's digest: xz takes minutes, and an unchanged image should not pay it twice.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from imagebuilder import __version__
from imagebuilder.context import Context
from imagebuilder.diskimage import check_filesystems, sha256_file
from imagebuilder.imagerepo import write_os_list
from imagebuilder.log import log, step
from imagebuilder.recipe import Recipe
from imagebuilder.resources import atomic_output, copy_sparse, file_lock, temporary_directory
from imagebuilder.run import run

if TYPE_CHECKING:
    from imagebuilder.bootstrap import BaseImage
    from imagebuilder.stages import StageResult

COMPRESSORS = {"xz": ["xz", "-T0", "-6", "-c"], "zstd": ["zstd", "-T0", "-3", "-q", "-c"]}


def emit_outputs(ctx: Context, recipe: Recipe, base: BaseImage, results: dict[str, StageResult]) -> None:
    out = recipe.output_dir
    out.mkdir(parents=True, exist_ok=True)
    images: dict[str, dict[str, object]] = {}
    with step(f"write outputs to {out}"):
        for role, result in results.items():
            images[role] = emit_image(ctx, recipe, role, result.image, out)
            images[role].update(packages=result.packages, overlay_files=result.files, units=result.units)
        write_checksums(out, [Path(str(f)) for info in images.values() for f in info["files"]])  # type: ignore[attr-defined]
        manifest = {
            "builder_version": __version__,
            "built_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "recipe": {"path": str(recipe.source), "sha256": recipe.digest},
            "cluster": recipe.cluster.name, "arch": recipe.arch, "k3s_version": recipe.k3s.version,
            "base": {"sha256": base.sha256, "source": describe_base(recipe), "packages": len(base.packages)},
            "images": images,
        }
        with atomic_output(out / "manifest.json") as tmp:
            tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        write_os_list(out, recipe)


def describe_base(recipe: Recipe) -> str:
    b = recipe.base
    if b.bootstrap is not None:
        return f"bootstrap:{b.bootstrap.suite}:{b.bootstrap.layout}"
    return b.image or b.url or ""


def emit_image(ctx: Context, recipe: Recipe, role: str, stage_image: Path, out: Path) -> dict[str, object]:
    raw = out / f"{role}.img"
    with atomic_output(raw) as tmp:
        copy_sparse(stage_image, tmp)
        with temporary_directory("check-", ctx.cache("tmp")) as scratch:
            check_filesystems(tmp, scratch)
    digest = sha256_file(raw)
    files = [raw.name]
    if recipe.output.bmap:
        bmap = raw.with_name(raw.name + ".bmap")
        with atomic_output(bmap) as tmp:
            run(["bmaptool", "create", "-o", tmp, raw])
        files.append(bmap.name)
    for fmt in COMPRESSORS:
        stale = raw.with_name(f"{raw.name}.{'zst' if fmt == 'zstd' else fmt}")
        if fmt != recipe.output.compress:
            stale.unlink(missing_ok=True)
    if recipe.output.compress != "none":
        compressed = compress_cached(ctx, raw, digest, recipe.output.compress)
        files.append(compressed.name)
    log.info("%s: %d MiB raw, sha256 %s", raw.name, raw.stat().st_size // 2**20, digest[:16])
    return {"file": raw.name, "sha256": digest, "size": raw.stat().st_size, "files": files}


def compress_cached(ctx: Context, raw: Path, digest: str, fmt: str) -> Path:
    ext = "zst" if fmt == "zstd" else fmt
    cached = ctx.cache("compressed") / f"{digest}.img.{ext}"
    with file_lock(cached.with_suffix(".lock"), f"the {fmt} copy of {raw.name}"):
        if not cached.exists():
            with step(f"compress {raw.name} ({fmt}, all cores)"), atomic_output(cached) as tmp, \
                    open(tmp, "wb") as sink:
                run([*COMPRESSORS[fmt], raw], stdout=sink)
    target = raw.with_name(f"{raw.name}.{ext}")
    with atomic_output(target) as tmp:
        try:
            os.link(cached, tmp)
        except OSError:  # another filesystem
            copy_sparse(cached, tmp)
    return target


def write_checksums(out: Path, names: list[Path]) -> None:
    lines = [f"{sha256_file(out / name)}  {name}\n" for name in sorted(names)]
    with atomic_output(out / "SHA256SUMS") as tmp:
        tmp.write_text("".join(lines))
