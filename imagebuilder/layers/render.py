"""Overlay layers: a `root/` tree (the running system) and a `boot/` tree (the boot partition) copied into
the image, `*.j2` files rendered from the recipe, and `layer.yaml` saying what else the layer needs.

A layer is rendered in memory first, so its content (not its source) is what the stage cache hashes:
a recipe change that no template reads does not invalidate a stage.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import yaml

from imagebuilder.core.errors import ImageBuilderError
from imagebuilder.layers.description import DESCRIPTION, TREES, LayerDescription, load_description


def builtin_overlays() -> Path:
    """The built-in layers, shipped in the package as imagebuilder.overlays (overlays/ in the repository)."""
    root = resources.files("imagebuilder.overlays")
    if not isinstance(root, Path):  # a zipped install: the templates need a real directory
        raise ImageBuilderError("imagebuilder's overlays are not on the file system (installed zipped?)",
                                "install it with pip or pipx, which unpack it")
    return root


BUILTIN = builtin_overlays()


@dataclass(frozen=True)
class OverlayFile:
    path: str  # relative to its partition: etc/dnsmasq.d/cluster.conf, or user-data on the boot partition
    data: bytes
    mode: int
    symlink: bool = False  # data is the link target
    boot: bool = False  # on the boot partition, wherever the base mounts it

    def system_path(self, boot_mount: str) -> str:
        """The file's path in the running system."""
        return f"{boot_mount.rstrip('/')}/{self.path}" if self.boot else f"/{self.path}"

    @property
    def tree_path(self) -> str:
        """The file's path in its layer: root/... or boot/..."""
        return f"{'boot' if self.boot else 'root'}/{self.path}"


@dataclass(frozen=True)
class RenderedLayer:
    name: str
    files: tuple[OverlayFile, ...]
    description: LayerDescription = field(default_factory=LayerDescription)

    @property
    def units(self) -> tuple[str, ...]:
        return self.description.units

    @property
    def kernel_arguments(self) -> tuple[str, ...]:
        return self.description.kernel_arguments

    @property
    def packages(self) -> tuple[str, ...]:
        return self.description.packages

    def digest(self) -> str:
        h = hashlib.sha256()
        for f in self.files:
            h.update(f"{f.tree_path}\0{f.mode:o}\0{int(f.symlink)}\0{len(f.data)}\0".encode())
            h.update(f.data)
        h.update(json.dumps(dataclasses.asdict(self.description), sort_keys=True).encode())
        return h.hexdigest()


def _to_yaml(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=False, sort_keys=False, width=1000)


def systemd_escape(value: str, path: bool = False) -> str:
    """A string as systemd writes it inside a unit name (what `systemd-escape [--path]` prints).

    An interface `br-lan` has the device unit sys-subsystem-net-devices-br\\x2dlan.device: a plain '-'
    there would mean a '/'.
    """
    if path:
        value = "/".join(part for part in value.split("/") if part) or "-"
        if value == "-":
            return value
    out = []
    for i, char in enumerate(value):
        if char == "/":
            out.append("-")
        elif (char.isascii() and (char.isalnum() or char in ":_.")) and not (char == "." and i == 0):
            out.append(char)
        else:
            out.append("".join(f"\\x{byte:02x}" for byte in char.encode()))
    return "".join(out)


def _tree_paths(top: Path) -> list[Path]:
    """What a layer's tree holds, in order, but the bytecode Python leaves beside the layer's programs when a
    checkout runs them (tests do): the node compiles its own, and the stage digest stays that of the sources."""
    return sorted(p for p in top.rglob("*") if "__pycache__" not in p.relative_to(top).parts)


def render_layer(name: str, directory: Path, variables: dict[str, Any]) -> RenderedLayer:
    """Read and render the layer at `directory`: its root/ and boot/ trees and its layer.yaml."""
    if not directory.is_dir():
        return RenderedLayer(name, ())
    strays = sorted(p.name for p in directory.iterdir() if p.name not in (*TREES, DESCRIPTION))
    if strays:
        raise ImageBuilderError(f"{directory}: {', '.join(strays)}: a layer holds only root/, boot/ and {DESCRIPTION}",
                                "put files of the running system under root/ (root/etc/motd is /etc/motd) and "
                                "files of the boot partition under boot/")
    description = load_description(directory)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(directory), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=False)
    env.filters["to_yaml"] = _to_yaml
    env.filters["systemd_escape"] = systemd_escape
    files: list[OverlayFile] = []
    for tree in TREES:
        top = directory / tree
        if not top.is_dir():
            continue
        for path in _tree_paths(top):
            rel = path.relative_to(top).as_posix()
            boot = tree == "boot"
            if path.is_symlink():
                files.append(OverlayFile(rel, os.readlink(path).encode(), 0o777, symlink=True, boot=boot))
                continue
            if not path.is_file():
                continue
            if rel.endswith(".j2"):
                try:
                    data = env.get_template(f"{tree}/{rel}").render(**variables).encode()
                except jinja2.TemplateError as e:
                    where = f"{path}:{e.lineno}" if isinstance(e, jinja2.TemplateSyntaxError) else str(path)
                    raise ImageBuilderError(f"{where}: template failed: {e}",
                                            "fix the template or the recipe") from e
                rel = rel.removesuffix(".j2")
            else:
                data = path.read_bytes()
            mode = description.mode_of(f"{tree}/{rel}")
            files.append(OverlayFile(rel, data, stat.S_IMODE(path.stat().st_mode) if mode is None else mode,
                                     boot=boot))
    shipped = {f.tree_path for f in files}
    for name_, what in [*((m, "modes") for m in description.modes), *((c.file, "checks") for c in description.checks)]:
        if name_ not in shipped:
            raise ImageBuilderError(f"{directory / DESCRIPTION}: {what}: {name_} is not a file of this layer",
                                    "name a file under the layer's root/ or boot/ (without .j2)")
    return RenderedLayer(name, tuple(files), description)
