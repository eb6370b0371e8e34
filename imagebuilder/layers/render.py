"""Overlay layers: directory trees copied into the image, `*.j2` files rendered from the recipe.

A layer is rendered in memory first, so its content (not its source) is what the stage cache hashes:
a recipe change that no template reads does not invalidate a stage.

Paths are those of the running system, with one addition: `@boot/...` goes onto the boot partition,
wherever the base mounts it. A few files under etc/imagebuilder/ are instructions to the engine
rather than content (see SPECIAL); they may be templates too.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import yaml

from imagebuilder.core.errors import ImageBuilderError

BUILTIN = Path(__file__).resolve().parents[2] / "overlays"
BOOT_PREFIX = "@boot/"
ENABLE_UNITS = "etc/imagebuilder/enable-units"  # systemd units to enable, one a line
CMDLINE_APPEND = "etc/imagebuilder/cmdline-append"  # kernel arguments the boot cmdline.txt must have
FILE_MODES = "etc/imagebuilder/file-modes"  # "0600 etc/rancher/k3s/config.yaml": git keeps no such modes
SPECIAL = (ENABLE_UNITS, CMDLINE_APPEND, FILE_MODES)


@dataclass(frozen=True)
class OverlayFile:
    path: str  # relative to /, e.g. etc/dnsmasq.d/cluster.conf, or @boot/user-data
    data: bytes
    mode: int
    symlink: bool = False  # data is the link target


@dataclass(frozen=True)
class RenderedLayer:
    name: str
    files: tuple[OverlayFile, ...]
    units: tuple[str, ...] = ()
    cmdline: tuple[str, ...] = ()
    modes: dict[str, int] = field(default_factory=dict)

    def digest(self) -> str:
        h = hashlib.sha256()
        for f in self.files:
            h.update(f"{f.path}\0{self.modes.get(f.path, f.mode):o}\0{int(f.symlink)}\0{len(f.data)}\0".encode())
            h.update(f.data)
        h.update("\0".join([*self.units, "|", *self.cmdline]).encode())
        return h.hexdigest()


def _to_yaml(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=False, sort_keys=False, width=1000)


def _lines(data: bytes) -> list[str]:
    text = data.decode()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def render_layer(name: str, directory: Path, variables: dict[str, Any]) -> RenderedLayer:
    """Read and render every file under `directory`."""
    if not directory.is_dir():
        return RenderedLayer(name, ())
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(directory), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=False)
    env.filters["to_yaml"] = _to_yaml
    files: list[OverlayFile] = []
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory).as_posix()
        if path.is_symlink():
            files.append(OverlayFile(rel, os.readlink(path).encode(), 0o777, symlink=True))
        elif not path.is_file():
            continue
        elif rel.endswith(".j2"):
            try:
                data = env.get_template(rel).render(**variables).encode()
            except jinja2.TemplateError as e:
                where = f"{path}:{e.lineno}" if isinstance(e, jinja2.TemplateSyntaxError) else str(path)
                raise ImageBuilderError(f"{where}: template failed: {e}", "fix the template or the recipe") from e
            files.append(OverlayFile(rel.removesuffix(".j2"), data, stat.S_IMODE(path.stat().st_mode)))
        else:
            files.append(OverlayFile(rel, path.read_bytes(), stat.S_IMODE(path.stat().st_mode)))
    special = {f.path: f.data for f in files if f.path in SPECIAL}
    modes = {}
    for line in _lines(special.get(FILE_MODES, b"")):
        mode, _, target = line.partition(" ")
        modes[target.strip()] = int(mode, 8)
    return RenderedLayer(
        name,
        tuple(f for f in files if f.path not in SPECIAL),
        units=tuple(_lines(special.get(ENABLE_UNITS, b""))),
        cmdline=tuple(" ".join(_lines(special.get(CMDLINE_APPEND, b""))).split()),
        modes=modes,
    )
