"""What the last build wrote in the output folder, kept in out/.imagebuilder-emit.json.

An image's outputs are written again only when what they are made from changed or a file is no longer as
written (its size, mtime and inode); the state is how the next build knows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagebuilder.core.log import log
from imagebuilder.core.resources import atomic_output

STATE = ".imagebuilder-emit.json"
# The shape of the state. A state of another version is not read: every output is written again.
STATE_VERSION = 1


@dataclass(frozen=True)
class MadeFrom:
    """What an image's outputs follow from: a change to any makes them again."""

    stage: str  # the key of the stage the image is
    bmap: bool
    compress: str
    sbom: str  # the SBOM's schema version: its format may change with the stage unchanged


@dataclass(frozen=True)
class OutputFile:
    sha256: str
    signature: tuple[int, int, int]  # size, mtime (ns), inode: anything that rewrites the file changes one

    @property
    def size(self) -> int:
        return self.signature[0]


@dataclass(frozen=True)
class ImageOutputs:
    """The files written for one image (role.img, its bmap, SBOM and compressed copy)."""

    made_from: MadeFrom
    files: dict[str, OutputFile]  # by name in the output folder
    boards: tuple[str, ...]  # those verify found it boots on


@dataclass(frozen=True)
class EmitState:
    recipe: str | None  # the digest of the recipe the outputs were written for
    images: dict[str, ImageOutputs] = field(default_factory=dict)  # by role

    def to_json(self) -> str:
        document = {"version": STATE_VERSION, "recipe": self.recipe, "images": {
            role: {"made_from": vars(image.made_from), "boards": list(image.boards),
                   "files": {name: {"sha256": f.sha256, "signature": list(f.signature), "size": f.size}
                             for name, f in image.files.items()}}
            for role, image in self.images.items()}}
        return json.dumps(document, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> EmitState:
        return cls(document["recipe"], {
            role: ImageOutputs(MadeFrom(**image["made_from"]),
                               {name: read_file_entry(f) for name, f in image["files"].items()}, tuple(image["boards"]))
            for role, image in document["images"].items()})


def read_file_entry(entry: dict[str, Any]) -> OutputFile:
    size, mtime, inode = entry["signature"]
    return OutputFile(str(entry["sha256"]), (int(size), int(mtime), int(inode)))


def read_state(out: Path) -> EmitState:
    """The state the last build left in `out`; an empty one, said once, when it is not readable."""
    try:
        document = json.loads((out / STATE).read_text())
    except FileNotFoundError:
        return EmitState(None)
    except (OSError, ValueError) as e:
        log.info("%s: not readable (%s): every output is written again", out / STATE, e)
        return EmitState(None)
    version = document.get("version") if isinstance(document, dict) else None
    if version != STATE_VERSION:
        log.info("%s: of another version (%s; this imagebuilder reads %d): every output is written again",
                 out / STATE, version, STATE_VERSION)
        return EmitState(None)
    try:
        return EmitState.from_json(document)
    except (KeyError, TypeError, ValueError) as e:
        log.info("%s: incomplete (%s): every output is written again", out / STATE, e)
        return EmitState(None)


def write_state(out: Path, state: EmitState, mode: int) -> None:
    with atomic_output(out / STATE, mode) as tmp:
        tmp.write_text(state.to_json())
