"""manifest.json: what a build put in out/<cluster>, for the user and for the commands that come after it.

One writer (the build's index) and one reader: `imager-repo` takes the boards `verify` passed from it, and
`status --wait` and `boot-test` whether the images carry the k3s binary.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "manifest.json"
# The version of the document below; a manifest of another version is read as none (the next build writes it).
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class ManifestImage:
    file: str
    sha256: str
    size: int
    boards: tuple[str, ...]  # the boards `verify` passed the image for
    files: tuple[str, ...]  # the files written for it in the output folder
    packages: dict[str, str]  # name -> version
    overlay_files: tuple[str, ...]
    units: tuple[str, ...]


@dataclass(frozen=True)
class Manifest:
    builder_version: str
    built_at: str  # ISO 8601, UTC
    recipe_path: str
    recipe_sha256: str
    cluster: str
    arch: str
    k3s_version: str
    k3s_assets: str | None  # where the k3s binary came from; None: the images carry none
    base_sha256: str
    base_source: str
    base_packages: int
    images: dict[str, ManifestImage]  # by role

    @property
    def carries_k3s(self) -> bool:
        return self.k3s_assets is not None

    def to_json(self) -> str:
        images = {role: {"file": i.file, "sha256": i.sha256, "size": i.size, "boards": list(i.boards),
                         "files": list(i.files), "packages": i.packages, "overlay_files": list(i.overlay_files),
                         "units": list(i.units)} for role, i in self.images.items()}
        return json.dumps({
            "version": MANIFEST_VERSION, "builder_version": self.builder_version, "built_at": self.built_at,
            "recipe": {"path": self.recipe_path, "sha256": self.recipe_sha256},
            "cluster": self.cluster, "arch": self.arch, "k3s_version": self.k3s_version,
            # Which kind of images these are: with the k3s binary (and where it came from), or without.
            "k3s_binary": "included" if self.carries_k3s else "none", "k3s_assets": self.k3s_assets or "none",
            "base": {"sha256": self.base_sha256, "source": self.base_source, "packages": self.base_packages},
            "images": images,
        }, indent=1, sort_keys=True) + "\n"


def read_manifest(out_dir: Path) -> Manifest | None:
    """The manifest of the last build into `out_dir`; None when there is none, it is damaged, or another
    version of imagebuilder wrote it."""
    try:
        data = json.loads((out_dir / MANIFEST).read_text())
        if not isinstance(data, dict) or data.get("version") != MANIFEST_VERSION:
            return None
        images = {role: ManifestImage(str(i["file"]), str(i["sha256"]), int(i["size"]), _names(i["boards"]),
                                      _names(i["files"]), {str(k): str(v) for k, v in i["packages"].items()},
                                      _names(i["overlay_files"]), _names(i["units"]))
                  for role, i in data["images"].items()}
        included = data["k3s_binary"] == "included"
        return Manifest(str(data["builder_version"]), str(data["built_at"]), str(data["recipe"]["path"]),
                        str(data["recipe"]["sha256"]), str(data["cluster"]), str(data["arch"]),
                        str(data["k3s_version"]), str(data["k3s_assets"]) if included else None,
                        str(data["base"]["sha256"]), str(data["base"]["source"]), int(data["base"]["packages"]),
                        images)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _names(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise TypeError("not a list")
    return tuple(str(v) for v in value)
