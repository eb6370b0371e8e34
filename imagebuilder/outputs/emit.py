"""Write the build's outputs: raw images, compressed copies, bmaps, SHA256SUMS, manifest.json.

Every file is written under a temporary name and renamed when complete. Compressed copies are cached
by the raw image's digest: xz takes minutes, and an unchanged image should not pay it twice. What each
output was made from is kept in out/.imagebuilder-emit.json: when a stage did not change and its outputs
are still there as written (same size, mtime and inode), they are neither copied, digested nor
compressed again, which makes a rebuild without changes take about a second.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path
from typing import Any

from imagebuilder import __version__
from imagebuilder.boards.verify import verify_image
from imagebuilder.core.context import Context
from imagebuilder.core.errors import ChecksFailed
from imagebuilder.core.log import Progress, log, step
from imagebuilder.core.resources import allocated, atomic_output, ensure_space
from imagebuilder.disk.bmap import bmap_document, make_bmap, range_extents
from imagebuilder.disk.copy import copy_image
from imagebuilder.disk.seed import write_hostname_seed
from imagebuilder.disk.usage import image_usage
from imagebuilder.engine.stages import StageResult, copy_checked
from imagebuilder.outputs.compress import COMPRESSORS, compress_cached, extension
from imagebuilder.outputs.imager import OS_LIST, write_os_list
from imagebuilder.recipe.catalogue import Layout
from imagebuilder.recipe.model import Recipe
from imagebuilder.sources.base import BaseImage
from imagebuilder.sources.checksums import sha256_of

STATE = ".imagebuilder-emit.json"
# The images hold the agent token, password hashes and the Wi-Fi passphrase, the master the cluster's CA key
# and server token: the output folder and everything in it are for its owner only.
PRIVATE = 0o600


def emit_outputs(ctx: Context, recipe: Recipe, base: BaseImage, results: dict[str, StageResult], *,
                 k3s_missing: str | None = None) -> list[Path]:
    """Write every output; return the cache entries they came from (the compressed copies)."""
    out = recipe.output_dir
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    out.chmod(0o700)
    previous = read_state(out)
    state: dict[str, Any] = {"recipe": recipe.digest, "images": {}}
    images: dict[str, dict[str, object]] = {}
    digests: dict[str, str] = {}
    with step(f"write outputs to {out}"):
        for role, result in results.items():
            record = emit_image(ctx, recipe, role, result, out, previous["images"].get(role))
            state["images"][role] = record
            digests.update({name: entry["sha256"] for name, entry in record["files"].items()})
            raw = record["files"][f"{role}.img"]
            images[role] = {"file": f"{role}.img", "sha256": raw["sha256"], "size": raw["size"],
                            "boards": record.get("boards", []),
                            "files": list(record["files"]), "packages": result.packages,
                            "overlay_files": result.files, "units": result.units}
        write_checksums(out, [Path(name) for name in digests], digests)
        manifest = {
            "builder_version": __version__,
            "built_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "recipe": {"path": str(recipe.source), "sha256": recipe.digest},
            "cluster": recipe.cluster.name, "arch": recipe.arch, "k3s_version": recipe.k3s.version,
            "k3s_binary": "missing: " + k3s_missing if k3s_missing else "included",
            "base": {"sha256": base.sha256, "source": describe_base(recipe), "packages": len(base.packages)},
            "images": images,
        }
        with atomic_output(out / "manifest.json", PRIVATE) as tmp:
            tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        # Imager downloads .img.xz: with that format the build keeps os_list.json current (it digests every
        # image again, so only when an image or the recipe changed); with another, `imagebuilder
        # imager-repo` makes the .img.xz and the list, and a list left from an xz build would be stale.
        if recipe.output.compress != "xz":
            (out / OS_LIST).unlink(missing_ok=True)
        elif state != previous or not (out / OS_LIST).exists():
            write_os_list(out, recipe)
        with atomic_output(out / STATE, PRIVATE) as tmp:
            tmp.write_text(json.dumps(state, indent=1, sort_keys=True) + "\n")
    if recipe.output.compress == "none":
        return []
    return [ctx.cache_dir / "compressed" / f"{record['files'][f'{role}.img']['sha256']}.img."
            f"{extension(recipe.output.compress)}" for role, record in state["images"].items()]


def describe_base(recipe: Recipe) -> str:
    b = recipe.base
    if b.bootstrap is not None:
        return f"bootstrap:{b.bootstrap.suite}:{b.bootstrap.layout}"
    return b.image or b.url or ""


def read_state(out: Path) -> dict[str, Any]:
    try:
        state = json.loads((out / STATE).read_text())
    except (OSError, ValueError):
        return {"recipe": None, "images": {}}
    return state if isinstance(state, dict) and isinstance(state.get("images"), dict) else \
        {"recipe": None, "images": {}}


def signature(path: Path) -> list[int]:
    """Cheap evidence that a file is the one we wrote: anything that rewrites it changes one of these."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def still_there(out: Path, record: dict[str, Any]) -> bool:
    try:
        return all(signature(out / name) == entry["signature"] for name, entry in record["files"].items())
    except (OSError, KeyError, TypeError):
        return False


def emit_image(ctx: Context, recipe: Recipe, role: str, result: StageResult, out: Path,
               previous: dict[str, Any] | None) -> dict[str, Any]:
    """Write role.img and its bmap and compressed copy; return what they were made from and their digests."""
    made_from = {"stage": result.key, "bmap": recipe.output.bmap, "compress": recipe.output.compress}
    if previous is not None and previous.get("made_from") == made_from and still_there(out, previous):
        log.info("%s.img: unchanged (stage %s), outputs kept", role, result.key[:12])
        return previous
    raw = out / f"{role}.img"
    ensure_space(out, allocated(result.image), raw.name)
    # What the file systems use, from the stage itself: the bmap maps exactly that (issue: used blocks of
    # zeros left out of a bmap kept a used card's old bytes).
    usage = image_usage(result.image)
    extents = range_extents(usage) if recipe.output.bmap else []
    # One pass: the copy (holes only where the stage has them), its digest and the bmap's range digests.
    with atomic_output(raw, PRIVATE) as tmp, Progress(f"write {raw.name}", result.image.stat().st_size) as progress:
        copied = copy_checked(result.image, tmp, extents, progress)
    digest = copied.sha256
    verdict = verify_image(raw)
    if not verdict.ok:
        raw.unlink()
        raise ChecksFailed(f"{raw}: verify: " + "; ".join(verdict.lines()[1:] or ["no board would boot it"]),
                           "the firmware or the early boot would fail with this image: fix what is named")
    log.info("%s: verified for %s", raw.name, ", ".join(verdict.good_boards))
    files: dict[str, dict[str, Any]] = {raw.name: {"sha256": digest, "signature": signature(raw)}}
    if recipe.output.bmap:
        bmap = raw.with_name(raw.name + ".bmap")
        document = bmap_document(usage, list(copied.range_sha256))
        with atomic_output(bmap, PRIVATE) as tmp:
            tmp.write_bytes(document)
        files[bmap.name] = {"sha256": hashlib.sha256(document).hexdigest(), "signature": signature(bmap)}
        log.info("%s: maps %d MiB of %d MiB (%.1f%%); its file systems hold %d MiB", bmap.name,
                 usage.used_bytes // 2**20, usage.size // 2**20, 100 * usage.used_bytes / usage.size,
                 usage.data // 2**20)
    for fmt in COMPRESSORS:
        stale = raw.with_name(f"{raw.name}.{extension(fmt)}")
        if fmt != recipe.output.compress:
            stale.unlink(missing_ok=True)
    if recipe.output.compress != "none":
        # Compressed copies take well under half of the data (zstd about a quarter, xz less).
        ensure_space(ctx.cache("compressed"), allocated(raw) // 2, f"the {recipe.output.compress} copy of {raw.name}")
        compressed, _ = compress_cached(ctx, raw, digest, recipe.output.compress)
        # The digest of the emitted file itself, never a record of where it came from.
        files[compressed.name] = {"sha256": sha256_of(compressed), "signature": signature(compressed)}
    log.info("%s: %d MiB raw, sha256 %s", raw.name, raw.stat().st_size // 2**20, digest[:16])
    for entry in files.values():
        entry["size"] = entry["signature"][0]
    return {"made_from": made_from, "files": files, "boards": verdict.good_boards}


def write_checksums(out: Path, names: list[Path], known: dict[str, str] | None = None) -> None:
    """SHA256SUMS for `names` (relative to out); digests in `known` are not computed again."""
    known = known or {}
    lines = [f"{known.get(str(name)) or sha256_of(out / name)}  {name}\n" for name in sorted(names)]
    with atomic_output(out / "SHA256SUMS", PRIVATE) as tmp:
        tmp.write_text("".join(lines))


def emit_per_node(ctx: Context, recipe: Recipe, layout: Layout) -> list[Path]:
    """node1.img ...: the worker image with a hostname seed on the boot partition, for labelled cards.

    They differ from worker.img only inside the boot partition, where the seed file is.
    """
    out = recipe.output_dir
    written = []
    with step(f"write {len(recipe.workers)} per-node images"):
        for worker in recipe.workers:
            image = out / f"{worker.hostname}.img"
            with atomic_output(image, PRIVATE) as tmp:
                copy_image(out / "worker.img", tmp)
                write_hostname_seed(tmp, worker.hostname)
            if recipe.output.bmap:
                with atomic_output(image.with_name(image.name + ".bmap"), PRIVATE) as tmp:
                    tmp.write_bytes(make_bmap(image, image_usage(image)))
            written.append(image)
    names = [Path(line.split("  ", 1)[1]) for line in (out / "SHA256SUMS").read_text().splitlines()]
    names += [p.relative_to(out) for image in written for p in (image, image.with_name(image.name + ".bmap"))
              if p.exists()]
    write_checksums(out, sorted(set(names)))
    return written
