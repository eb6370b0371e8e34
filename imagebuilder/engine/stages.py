"""Stages: a parent image plus packages plus overlay layers, cached under a hash of exactly that.

The common stage (base + common packages + common overlay) is shared by the master and the worker. Each
role then has a packages stage and a files stage (its overlay layers), so a changed overlay file redoes
only the files stage, never the package install. This module defines a stage and its key; its cache entry
is `entry.py`, and making it is `realise.py`, which reaches the image's files through the backend's
ImageTree only.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from imagebuilder import __version__
from imagebuilder.disk.rewrite import rewrite_tools
from imagebuilder.engine.backends.interface import Backend
from imagebuilder.engine.checks import ConfigCheck
from imagebuilder.layers.render import RenderedLayer
from imagebuilder.netboot.populate import NetbootSource
from imagebuilder.recipe.catalogue import Layout

# How a stage is made from its inputs, in the key: a change to it that changes the image changes this,
# so no cache entry made the other way is ever used.
FORMAT = 6


@dataclass(frozen=True)
class Stage:
    name: str
    parent: Path  # the image this stage starts from
    parent_key: str  # the base image's digest (parent_is_base), or the parent stage's key
    packages: tuple[str, ...]
    layers: tuple[RenderedLayer, ...]
    arch: str
    layout: Layout
    backend: Backend  # how its image's files are reached, and what that changes in its key
    size: int | None = None  # the image size asked for (output.image_size), else grown by need
    # SOURCE_DATE_EPOCH: for the programs run in it, and no file time later in a rewritten image (build/epoch.py).
    epoch: int = 0
    # An emitted image of a reproducible build: its file systems are made again from its files (disk/rewrite.py).
    rewrite: bool = False
    clock: int = 0  # a rewritten image's /usr/lib/clock-epoch (build/epoch.py)
    # Role checks run with the image's own tools; they change nothing, so they are not in the key.
    checks: tuple[ConfigCheck, ...] = field(default=(), compare=False)
    netboot: NetbootSource | None = None  # the master's: the worker stage its netboot tree is copied from
    # An image is emitted from it: what each board's firmware needs is checked (boards/verify.py) when it is
    # made, beside its digest. It changes nothing, so it is not in the key.
    verify: bool = field(default=False, compare=False)
    # Its parent is the base image, not a stage: the parent's record is the source's, and parent_key is the
    # digest of its bytes. Implied by parent_key, so not in the key.
    parent_is_base: bool = field(default=False, compare=False)

    def key(self) -> str:
        material: dict[str, object] = {
            "parent": self.parent_key, "packages": sorted(self.packages),
            "layers": [layer.digest() for layer in self.layers], "size": self.size,
            "format": FORMAT, "builder": __version__, "epoch": self.epoch, "rewrite": self.rewrite,
            **self.backend.key_material(),
        }
        if self.rewrite:
            # The same files give the same bytes only from the same mkfs and mtools.
            material["clock"] = self.clock
            material["tools"] = rewrite_tools()
        if self.netboot is not None:
            material["netboot"] = self.netboot.material()
        return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def stage_image(stage_dir: Path, stage: Stage) -> Path:
    """Where the cache keeps the stage's image: named by the stage and its key."""
    return stage_dir / f"{stage.name}-{stage.key()[:24]}.img"
