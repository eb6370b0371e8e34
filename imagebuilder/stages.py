"""Stages: a parent image plus packages plus overlay layers, cached under a hash of exactly that.

The common stage (base + common packages + common overlay) is shared by the master and the worker; a
rebuild redoes only the stages whose inputs changed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from imagebuilder import __version__
from imagebuilder.catalogue import Layout
from imagebuilder.chroot import Chroot, chroot_session
from imagebuilder.context import Context
from imagebuilder.diskimage import grow_image
from imagebuilder.errors import CommandFailed, ImageBuilderError
from imagebuilder.imagemount import mounted_image
from imagebuilder.log import log, step
from imagebuilder.overlay import RenderedLayer, write_layer
from imagebuilder.resources import atomic_output, bind_mount, copy_sparse, file_lock, temporary_directory
from imagebuilder.run import output, run

FORMAT = 1
GIB = 2**30


@dataclass(frozen=True)
class Stage:
    name: str
    parent: Path  # the image this stage starts from
    parent_key: str  # digest of the base, or the parent stage's key
    packages: tuple[str, ...]
    layers: tuple[RenderedLayer, ...]
    arch: str
    layout: Layout
    size: int | None = None  # the image size asked for (output.image_size), else grown by need

    def key(self) -> str:
        material = json.dumps({
            "parent": self.parent_key, "packages": sorted(self.packages),
            "layers": [layer.digest() for layer in self.layers], "size": self.size,
            "format": FORMAT, "builder": __version__,
        }, sort_keys=True)
        return hashlib.sha256(material.encode()).hexdigest()


@dataclass(frozen=True)
class StageResult:
    image: Path
    key: str
    packages: dict[str, str]
    files: list[str]
    units: list[str]


def realise(ctx: Context, stage: Stage, debs: Path) -> StageResult:
    """Return the stage's image from the cache, building it when it is not there."""
    key = stage.key()
    image = ctx.cache("stages") / f"{stage.name}-{key[:24]}.img"
    record = image.with_suffix(".json")
    with file_lock(image.with_suffix(".lock"), f"the {stage.name} stage"):
        if image.exists() and record.exists():
            log.info("stage %s: cached (%s)", stage.name, key[:12])
        else:
            with step(f"stage {stage.name}"):
                _build(ctx, stage, image, record, debs)
    info = json.loads(record.read_text())
    return StageResult(image, key, info["packages"], info["files"], info["units"])


def _build(ctx: Context, stage: Stage, image: Path, record: Path, debs: Path) -> None:
    with temporary_directory(f"stage-{stage.name}-", ctx.cache("tmp")) as work, atomic_output(image) as tmp:
        copy_sparse(stage.parent, tmp)
        grown = grow_image(tmp, stage.size or tmp.stat().st_size + (GIB if stage.packages else 0))
        with mounted_image(tmp, stage.layout, work, grow_fs=grown) as root, \
                chroot_session(root, stage.arch) as chroot:
            if stage.packages:
                install_packages(chroot, stage.packages, debs)
            files: list[str] = []
            units: list[str] = []
            for layer in stage.layers:
                files += write_layer(layer, root)
                units += layer.units
            if units:
                chroot.run(["systemctl", "enable", *units])
            packages = installed_packages(root)
            _tidy(root)
        # Free blocks read as zeros, so the bmap and the compressed images carry only data.
        with atomic_output(record) as rec:
            rec.write_text(json.dumps({"packages": packages, "files": files, "units": units}, indent=1))


def install_packages(chroot: Chroot, packages: tuple[str, ...], debs: Path) -> None:
    """apt-get install in the chroot, with the .deb files kept on the host between builds."""
    archives = chroot.root / "var/cache/apt/archives"
    with bind_mount(debs, archives), step(f"install {len(packages)} packages"):
        chroot.run(["apt-get", "update", "-q"])
        try:
            chroot.run(["apt-get", "install", "-y", "-q", "--no-install-recommends",
                        "-o", "Dpkg::Options::=--force-confold", *packages],
                       env={"FK_MACHINE": "Raspberry Pi 4 Model B"}, on_line=_log_progress)
        except CommandFailed as e:
            missing = [line.split("Unable to locate package ", 1)[1] for line in e.stderr_tail
                       if "Unable to locate package " in line]
            if missing:
                raise ImageBuilderError(
                    f"package {', '.join(repr(m) for m in missing)} does not exist in the image's apt sources",
                    "check the packages section of the recipe (apt-cache search NAME finds the right name)",
                ) from None
            raise


def _log_progress(line: str) -> None:
    if line.startswith(("Setting up ", "Unpacking ")):
        log.info("  %s", line.split(" (", 1)[0])


def installed_packages(root: Path) -> dict[str, str]:
    text = output(["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", "-f", "${Package}\t${Version}\n"])
    return dict(line.split("\t", 1) for line in text.splitlines() if line)


def _tidy(root: Path) -> None:
    """What a package install leaves that must not ship: lists, host keys, then trim free space."""
    for lists in (root / "var/lib/apt/lists").glob("*"):
        if lists.is_file():
            lists.unlink()
    for key in root.glob("etc/ssh/ssh_host_*"):
        key.unlink()
    run(["fstrim", root], check=False)
