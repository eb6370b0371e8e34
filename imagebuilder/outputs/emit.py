"""Write the build's outputs: raw images, compressed copies, bmaps, SBOMs, SHA256SUMS, manifest.json.

Every file is written under a temporary name and renamed when complete. A raw image is not written again:
it shares its stage's blocks (a reflink), or is the stage's file itself (a hard link, on ext4), or, across
file systems, is a copy by the kernel. Compressed copies are cached
by the raw image's digest: xz takes minutes, and an unchanged image should not pay it twice. What each
output was made from is kept in out/.imagebuilder-emit.json (state.py): when a stage did not change and its outputs
are still there as written (same size, mtime and inode), they are neither copied, digested nor
compressed again, which makes a rebuild without changes take about a second.
"""

from __future__ import annotations

import datetime
import hashlib
from pathlib import Path

from imagebuilder import __version__
from imagebuilder.core.context import Context
from imagebuilder.core.errors import DiskFull
from imagebuilder.core.log import Progress, log, step
from imagebuilder.core.resources import allocated, atomic_output, ensure_space, free_space
from imagebuilder.disk.bmap import bmap_document, range_extents
from imagebuilder.disk.copy import can_reflink, clone_image, range_digests, share_image
from imagebuilder.disk.partitions import Partition, read_partitions
from imagebuilder.disk.seed import write_hostname_seed
from imagebuilder.disk.usage import Usage, fat_used, merge
from imagebuilder.engine.entry import StageResult, share_checked
from imagebuilder.outputs.compress import COMPRESSORS, compress_cached, extension
from imagebuilder.outputs.imager import OS_LIST, write_os_list
from imagebuilder.outputs.manifest import MANIFEST, Manifest, ManifestImage
from imagebuilder.outputs.sbom import SCHEMA, ImageContents, ImageFile, render_sbom, sbom_name, validate_sbom
from imagebuilder.outputs.signing import SUMS_SIG
from imagebuilder.outputs.state import EmitState, ImageOutputs, MadeFrom, OutputFile, read_state, write_state
from imagebuilder.recipe.model import Recipe
from imagebuilder.sources.base import BaseImage
from imagebuilder.sources.checksums import sha256_of

# The images hold the agent token, password hashes and the Wi-Fi passphrase, the master the cluster's CA key
# and server token: the output folder and everything in it are for its owner only.
PRIVATE = 0o600
SHARED = {
    "reflink": "a reflink of the {role} stage (its blocks shared, a file of its own)",
    # ext4 has no reflinks: a copy would write the image a second time. The cache entry is never written
    # again, and an edit through the output's name is found by the next build's check of the stage.
    "hardlink": "the {role} stage's file itself (a hard link: edit a copy of it, not the file)",
    "copy": "a copy of the {role} stage",
}


def open_outputs(recipe: Recipe) -> EmitState:
    """Make the output folder (its owner's only); return what the last build wrote there."""
    out = recipe.output_dir
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    out.chmod(0o700)
    return read_state(out)


def write_index(ctx: Context, recipe: Recipe, base: BaseImage, results: dict[str, StageResult],
                records: dict[str, ImageOutputs], previous: EmitState, *,
                k3s_source: str | None = None) -> list[Path]:
    """What describes the images emitted (emit_image's records): SHA256SUMS, manifest.json, os_list.json
    and the emit state; return the cache entries the images came from (the compressed copies)."""
    out = recipe.output_dir
    state = EmitState(recipe.digest, records)
    images: dict[str, ManifestImage] = {}
    digests: dict[str, str] = {}
    with step(f"write SHA256SUMS and manifest.json to {out}"):
        for role, result in results.items():
            record = records[role]
            digests.update({name: entry.sha256 for name, entry in record.files.items()})
            raw = record.files[f"{role}.img"]
            images[role] = ManifestImage(f"{role}.img", raw.sha256, raw.size, record.boards, tuple(record.files),
                                         result.packages, tuple(result.files), tuple(result.units))
        write_checksums(out, [Path(name) for name in digests], digests)
        manifest = Manifest(__version__, datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                            str(recipe.source), recipe.digest, recipe.cluster.name, recipe.arch, recipe.k3s.version,
                            k3s_source, base.sha256, describe_base(recipe), len(base.packages), images)
        with atomic_output(out / MANIFEST, PRIVATE) as tmp:
            tmp.write_text(manifest.to_json())
        # Imager downloads .img.xz: with that format the build keeps os_list.json current (with the digests
        # just listed in SHA256SUMS: nothing is read again); with another, `imagebuilder imager-repo` makes
        # the .img.xz and the list, and a list left from an xz build would be stale.
        if recipe.output.compress != "xz":
            (out / OS_LIST).unlink(missing_ok=True)
        elif state != previous or not (out / OS_LIST).exists():
            write_os_list(out, recipe, known=digests)
        write_state(out, state, PRIVATE)
    if recipe.output.compress == "none":
        return []
    return [ctx.cache_dir / "compressed" / f"{record.files[f'{role}.img'].sha256}.img."
            f"{extension(recipe.output.compress)}" for role, record in state.images.items()]


def describe_base(recipe: Recipe) -> str:
    b = recipe.base
    if b.bootstrap is not None:
        return f"bootstrap:{b.bootstrap.suite}:{b.bootstrap.layout}"
    return b.image or b.url or ""


def written(path: Path, sha256: str) -> OutputFile:
    """A file just written, with cheap evidence that it is still the one written (OutputFile.signature)."""
    st = path.stat()
    return OutputFile(sha256, (st.st_size, st.st_mtime_ns, st.st_ino))


def still_there(out: Path, outputs: ImageOutputs) -> bool:
    try:
        return all(written(out / name, entry.sha256) == entry for name, entry in outputs.files.items())
    except OSError:
        return False


def emit_image(ctx: Context, recipe: Recipe, role: str, result: StageResult, contents: ImageContents, out: Path,
               previous: ImageOutputs | None) -> ImageOutputs:
    """Write role.img and its bmap, SBOM and compressed copy; return what they were made from and their
    digests."""
    with step(f"write outputs of {role}.img to {out}"):
        return _emit_image(ctx, recipe, role, result, contents, out, previous)


def write_sbom(recipe: Recipe, role: str, contents: ImageContents, raw: Path, digest: str) -> Path:
    """The SBOM of `raw` beside it, validated before it is written."""
    sbom = raw.parent / sbom_name(role)
    text = render_sbom(contents, ImageFile(raw.name, digest, raw.stat().st_size), cluster=recipe.cluster.name,
                       role=role, base=describe_base(recipe), k3s_version=recipe.k3s.version)
    validate_sbom(text)
    with atomic_output(sbom, PRIVATE) as tmp:
        tmp.write_text(text)
    log.info("%s: the SBOM of %s (CycloneDX %s): %d packages", sbom.name, raw.name, SCHEMA,
             len(contents.inventory.packages))
    return sbom


def _emit_image(ctx: Context, recipe: Recipe, role: str, result: StageResult, contents: ImageContents, out: Path,
                previous: ImageOutputs | None) -> ImageOutputs:
    made_from = MadeFrom(result.key, recipe.output.bmap, recipe.output.compress, SCHEMA)
    if previous is not None and previous.made_from == made_from and still_there(out, previous):
        log.info("%s.img: unchanged (stage %s), outputs kept", role, result.key[:12])
        return previous
    raw = out / f"{role}.img"
    ensure_space(out, allocated(result.image), raw.name)
    # What the file systems use, from the stage itself: the bmap maps exactly that, zeros included (a used
    # block of zeros left out of a bmap would keep a used card's old bytes).
    usage = result.usage
    if result.fresh:
        # Made and digested moments ago by this build: the image is the stage's file itself or shares its
        # blocks (a copy by the kernel where neither works), and its digests are the ones just taken.
        with atomic_output(raw, PRIVATE) as tmp:
            how = share_image(result.image, tmp) or clone_image(result.image, tmp)
            tmp.chmod(PRIVATE)  # a hard link is the cache entry's file: the output's mode is set on it
        digest, range_sha256 = result.sha256, result.range_sha256
    else:
        # A stage from an earlier build: shared or copied, and checked against its record on the way,
        # which gives the bmap's range digests.
        extents = range_extents(usage)
        with atomic_output(raw, PRIVATE) as tmp, \
                Progress(f"write {raw.name}", result.image.stat().st_size) as progress:
            copied, how = share_checked(result.image, result.sha256, tmp, extents, progress)
            tmp.chmod(PRIVATE)
        digest, range_sha256 = copied.sha256, copied.range_sha256
    log.info("%s: %s", raw.name, SHARED[how].format(role=role))
    # Verified when its stage was made (entry.usable_record: a stage an image comes from holds the verdict);
    # the image holds exactly the stage's bytes (shared, or checked against its digest).
    assert result.boards is not None
    log.info("%s: verified for %s", raw.name, ", ".join(result.boards))
    files = {raw.name: written(raw, digest)}
    if recipe.output.bmap:
        bmap = raw.with_name(raw.name + ".bmap")
        document = bmap_document(usage, list(range_sha256))
        with atomic_output(bmap, PRIVATE) as tmp:
            tmp.write_bytes(document)
        files[bmap.name] = written(bmap, hashlib.sha256(document).hexdigest())
        log.info("%s: maps %d MiB of %d MiB (%.1f%%); its file systems hold %d MiB", bmap.name,
                 usage.used_bytes // 2**20, usage.size // 2**20, 100 * usage.used_bytes / usage.size,
                 usage.data // 2**20)
    sbom = write_sbom(recipe, role, contents, raw, digest)
    files[sbom.name] = written(sbom, sha256_of(sbom))
    for fmt in COMPRESSORS:
        stale = raw.with_name(f"{raw.name}.{extension(fmt)}")
        if fmt != recipe.output.compress:
            stale.unlink(missing_ok=True)
    if recipe.output.compress != "none":
        # Compressed copies take well under half of the data (zstd about a quarter, xz less).
        ensure_space(ctx.cache("compressed"), allocated(raw) // 2, f"the {recipe.output.compress} copy of {raw.name}")
        compressed, compressed_sha256 = compress_cached(ctx, raw, digest, recipe.output.compress)
        # The digest of the emitted file itself (taken from it just now when it was just made), never a
        # record of where it came from.
        files[compressed.name] = written(compressed, compressed_sha256 or sha256_of(compressed))
    log.info("%s: %d MiB raw, sha256 %s", raw.name, raw.stat().st_size // 2**20, digest[:16])
    return ImageOutputs(made_from, files, result.boards)


def write_checksums(out: Path, names: list[Path], known: dict[str, str] | None = None) -> None:
    """SHA256SUMS for `names` (relative to out); digests in `known` are not computed again."""
    known = known or {}
    lines = [f"{known.get(str(name)) or sha256_of(out / name)}  {name}\n" for name in sorted(names)]
    # A signature never stays beside a listing it was not made for (the build signs the new one at its end).
    (out / SUMS_SIG).unlink(missing_ok=True)
    with atomic_output(out / "SHA256SUMS", PRIVATE) as tmp:
        tmp.write_text("".join(lines))


def emit_per_node(ctx: Context, recipe: Recipe, worker: StageResult) -> list[Path]:
    """node1.img ...: the worker image with a hostname seed on the boot partition, for labelled cards.

    They differ from worker.img only inside the boot partition, where the seed file is, so each costs what
    differs: a reflink of worker.img where the file system shares blocks (btrfs, XFS), the seed written into
    it, and a bmap whose range digests are worker.img's but for the boot partition's. Where there are no
    reflinks each image is a full copy: the disk that takes is said, and checked, before the first one.
    SHA256SUMS lists each node's bmap, not the image: a whole-image digest would read every image in full,
    and the bmap, which `imagebuilder flash` and bmaptool check while writing, holds a digest of every
    block the card receives.
    """
    out = recipe.output_dir
    source = out / "worker.img"
    usage, digests = worker.usage, worker.range_sha256
    boot = read_partitions(source)[0]
    written = []
    with step(f"write {len(recipe.workers)} per-node images"):
        shared = plan_per_node(source, out, len(recipe.workers))
        for node in recipe.workers:
            image = out / f"{node.hostname}.img"
            with atomic_output(image, PRIVATE) as tmp:
                clone_image(source, tmp)
                write_hostname_seed(tmp, node.hostname)
            if recipe.output.bmap:
                with atomic_output(image.with_name(image.name + ".bmap"), PRIVATE) as tmp:
                    tmp.write_bytes(node_bmap(image, usage, digests, boot))
            written.append(image)
        log.info("%d per-node images (%s)", len(written), "reflinks of worker.img" if shared else "full copies")
    # SHA256SUMS as write_index wrote it (master and worker), with the new bmaps (or images) added.
    known = {name: digest for digest, name in
             (line.split("  ", 1) for line in (out / "SHA256SUMS").read_text().splitlines())}
    names = [Path(name) for name in known]
    added = [(image.with_name(image.name + ".bmap") if recipe.output.bmap else image).relative_to(out)
             for image in written]
    write_checksums(out, sorted({*names, *added}), {n: d for n, d in known.items() if Path(n) not in added})
    return written


def plan_per_node(source: Path, out: Path, count: int) -> bool:
    """Whether per-node images can share worker.img's blocks here; without, stop now when the disk cannot
    hold them, and say what they take."""
    shared = can_reflink(source, out)
    if shared:
        return True
    needed = allocated(source) * count
    free = free_space(out)
    alternative = (f"or flash worker.img to every card with `imagebuilder flash --hostname NAME {source} "
                   "DEVICE`, which writes the same seed with no image per node")
    if needed > free:
        raise DiskFull(f"{out}: {count} per-node images take {needed / 2**30:.1f} GiB here (this file system has "
                       f"no reflinks: each is a full copy of worker.img), {free / 2**30:.1f} GiB are free",
                       "build them on btrfs or XFS, where each takes only what differs, " + alternative)
    log.warning("%d per-node images take %.1f GiB in %s: this file system has no reflinks, so each is a full "
                "copy of worker.img (on btrfs or XFS each takes a few MiB); %s", count, needed / 2**30, out,
                alternative)
    return False


def node_bmap(image: Path, worker_usage: Usage, worker_digests: tuple[str, ...], boot: Partition) -> bytes:
    """The bmap of a per-node image: worker.img's, with the boot partition's allocation and digests read
    again (the seed added a file there); nothing outside it is read."""
    fat, _ = fat_used(image, boot)
    # worker.img's used extents with the boot partition cut out (one may run from the gap before it on).
    outside = [(low, high - low) for start, length in worker_usage.used
               for low, high in ((start, min(start + length, boot.start)), (max(start, boot.end), start + length))
               if low < high]
    usage = Usage(worker_usage.size, tuple(merge([*outside, *fat])), worker_usage.data)
    known = dict(zip(range_extents(worker_usage), worker_digests, strict=True))
    ranges = range_extents(usage)
    fresh = [r for r in ranges if r not in known or not (r[1] <= boot.start or r[0] >= boot.end)]
    digests = dict(zip(fresh, range_digests(image, fresh, threads=1), strict=True))
    return bmap_document(usage, [digests.get(r) or known[r] for r in ranges])
