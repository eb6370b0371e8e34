"""Overlay layers: directory trees copied into the image, `*.j2` files rendered from the recipe.

A layer is rendered in memory first, so its content (not its source) is what the stage cache hashes:
a recipe change that no template reads does not invalidate a stage.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from imagebuilder.errors import ImageBuilderError

BUILTIN = Path(__file__).resolve().parent.parent / "overlays"
# Per-layer list of systemd units to enable; read by the engine, not copied as is.
ENABLE_UNITS = "etc/imagebuilder/enable-units"


@dataclass(frozen=True)
class OverlayFile:
    path: str  # relative to /, e.g. etc/dnsmasq.d/cluster.conf
    data: bytes
    mode: int
    symlink: bool = False  # data is the link target


@dataclass(frozen=True)
class RenderedLayer:
    name: str
    files: tuple[OverlayFile, ...]
    units: tuple[str, ...]

    def digest(self) -> str:
        h = hashlib.sha256()
        for f in self.files:
            h.update(f"{f.path}\0{f.mode:o}\0{int(f.symlink)}\0{len(f.data)}\0".encode())
            h.update(f.data)
        h.update("\0".join(self.units).encode())
        return h.hexdigest()


def render_layer(name: str, directory: Path, variables: dict[str, Any]) -> RenderedLayer:
    """Read and render every file under `directory`."""
    if not directory.is_dir():
        return RenderedLayer(name, (), ())
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(directory), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=False)
    files: list[OverlayFile] = []
    units: list[str] = []
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory).as_posix()
        if path.is_symlink():
            files.append(OverlayFile(rel, os.readlink(path).encode(), 0o777, symlink=True))
            continue
        if not path.is_file():
            continue
        mode = stat.S_IMODE(path.stat().st_mode)
        if rel == ENABLE_UNITS:
            units += [u.strip() for u in path.read_text().splitlines() if u.strip() and not u.startswith("#")]
            continue
        if rel.endswith(".j2"):
            try:
                data = env.get_template(rel).render(**variables).encode()
            except jinja2.TemplateError as e:
                where = f"{path}:{e.lineno}" if isinstance(e, jinja2.TemplateSyntaxError) else str(path)
                raise ImageBuilderError(f"{where}: template failed: {e}", "fix the template or the recipe") from e
            files.append(OverlayFile(rel.removesuffix(".j2"), data, mode))
        else:
            files.append(OverlayFile(rel, path.read_bytes(), mode))
    return RenderedLayer(name, tuple(files), tuple(units))


def write_layer(layer: RenderedLayer, root: Path) -> list[str]:
    """Write the layer's files into the tree at `root` (owned by root); return the paths written."""
    written = []
    for f in layer.files:
        target = root / f.path
        target.parent.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(target) and (target.is_symlink() or not target.is_dir()):
            target.unlink()
        if f.symlink:
            os.symlink(f.data.decode(), target)
        else:
            target.write_bytes(f.data)
            os.chown(target, 0, 0)
            target.chmod(f.mode)
        written.append("/" + f.path)
    return written
