"""A layer's description file (`layer.yaml` beside its `root/` and `boot/` trees): what the layer needs
besides its files. Read with the recipe's own schema code, so it is checked the same way: unknown and
duplicate keys are errors naming the file, the key and the line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from imagebuilder.core.errors import RecipeError
from imagebuilder.recipe.fields import check_one_of, check_package
from imagebuilder.recipe.schema import Loader, setting
from imagebuilder.recipe.yamlfile import load_document

DESCRIPTION = "layer.yaml"
TREES = ("root", "boot")  # root/: the running system; boot/: the boot partition, wherever the base mounts it
# The checkers the engine runs on a generated file (engine/checks.py maps each name to the image's tool).
CHECK_TOOLS = ("cloud-init-schema", "dnsmasq", "nft", "exports", "chrony")

_UNIT = re.compile(r"^[A-Za-z0-9:_.\\@-]+\.(service|socket|mount|automount|timer|path|target|swap)$")
_KERNEL_ARGUMENT = re.compile(r"^[A-Za-z0-9_.,:/=+@-]+$")


def check_unit(value: str) -> str | None:
    return None if _UNIT.match(value) else f"'{value}' is not a systemd unit name, e.g. foo.service"


def check_kernel_argument(value: str) -> str | None:
    if _KERNEL_ARGUMENT.match(value):
        return None
    return f"'{value}' is not one kernel argument: no spaces, quotes or shell characters"


def check_tree_path(value: str) -> str | None:
    parts = value.split("/")
    if parts[0] in TREES and len(parts) > 1 and all(p not in ("", ".", "..") for p in parts[1:]):
        return None
    return f"'{value}' is not a path in the layer's trees: write root/etc/... or boot/..."


def check_modes(value: dict[str, object]) -> str | None:
    for path, mode in value.items():
        if (msg := check_tree_path(str(path))) is not None:
            return msg
        if not isinstance(mode, str) or not re.fullmatch(r"0?[0-7]{3,4}", mode):
            return f"{path}: the mode must be an octal string in quotes, e.g. \"0600\""
    return None


@dataclass(frozen=True, kw_only=True)
class FileCheck:
    file: str = setting(help="a generated file of the layer: root/etc/... or boot/...", check=check_tree_path)
    tool: str = setting(help=f"the checker: {', '.join(CHECK_TOOLS)}", check=check_one_of(*CHECK_TOOLS))


@dataclass(frozen=True, kw_only=True)
class LayerDescription:
    packages: tuple[str, ...] = setting(default=[], help="Debian packages the layer's files need")
    units: tuple[str, ...] = setting(default=[], help="systemd units to enable")
    kernel_arguments: tuple[str, ...] = setting(
        default=[], help="arguments the kernel command line must carry (kept across kernel updates)")
    modes: dict[str, str] = setting(default={}, check=check_modes,
                                    help="file modes git cannot keep, e.g. {root/etc/secret: \"0600\"}")
    checks: tuple[FileCheck, ...] = setting(default=[], help="generated files to check with the image's tools")
    initramfs: bool = setting(default=False,
                              help="the layer's files change the initramfs (hooks, scripts, modules): the stage "
                                   "regenerates it after writing them")

    def mode_of(self, tree_path: str) -> int | None:
        mode = self.modes.get(tree_path)
        return int(mode, 8) if mode is not None else None


def load_description(directory: Path) -> LayerDescription:
    """The layer's layer.yaml, or an empty description when it has none."""
    path = directory / DESCRIPTION
    if not path.is_file():
        return LayerDescription()
    try:
        doc = load_document(path)
    except yaml.YAMLError as e:
        raise RecipeError([f"{path}: YAML does not parse: {e}"]) from None
    loader = Loader(doc)
    description = loader.load(LayerDescription, doc.data)
    for field, checker in (("packages", check_package), ("units", check_unit),
                           ("kernel_arguments", check_kernel_argument)):
        for i, value in enumerate(getattr(description, field, ()) if description else ()):
            if (msg := checker(value)) is not None:
                loader.problem(f"{field}[{i}]", msg)
    if loader.problems:
        raise RecipeError([f"{path}: {key}: {message}" + (f" (line {doc.lines[key]})" if key in doc.lines else "")
                           for key, message in loader.problems])
    assert isinstance(description, LayerDescription)
    return description
