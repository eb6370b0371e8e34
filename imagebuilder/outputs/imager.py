"""A Raspberry Pi Imager repository for the built images: out/<cluster>/os_list.json.

`rpi-imager --repo out/<cluster>/os_list.json` then lists the master and the worker image. The
format is Imager's own (the `os_list` of its published manifest): sizes and sha256 digests of the
download and of the extracted image, a release date, and the device tags the architecture suits.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path
from typing import Any

from imagebuilder.core.errors import ImageBuilderError
from imagebuilder.core.resources import atomic_output
from imagebuilder.disk.imagefile import open_image
from imagebuilder.recipe.load import summary
from imagebuilder.recipe.model import Recipe
from imagebuilder.roles.table import ROLES
from imagebuilder.sources.checksums import sha256_of

OS_LIST = "os_list.json"
# Preferred download form first: Imager streams .xz and .zst itself; the raw image is the fallback.
DOWNLOAD_FORMS = (".img.xz", ".img.zst", ".img")
# Imager's device tags (the `devices` of its manifest) and the boards behind them.
DEVICES = {
    "arm64": [("Raspberry Pi 5", "pi5-64bit"), ("Raspberry Pi 4", "pi4-64bit"), ("Raspberry Pi 3", "pi3-64bit")],
    "armhf": [("Raspberry Pi 2", "pi2-32bit")],
}
DESCRIPTIONS = {
    "master": "the gateway: DHCP/DNS, NAT, NFS and the k3s server. Flash one card.",
    "worker": "flash every worker card with it; each names itself from its MAC at first boot.",
}


class ImagerRepoError(ImageBuilderError):
    """The images the repository should list are not there."""


def _extracted(image: Path) -> tuple[int, str]:
    """Size and sha256 of the raw image, decompressing on the fly when that is all there is."""
    digest = hashlib.sha256()
    size = 0
    buffer = memoryview(bytearray(1 << 20))
    with open_image(image) as stream:
        while n := stream.readinto(buffer):
            digest.update(buffer[:n])
            size += n
    return size, digest.hexdigest()


def _url(name: str, base_url: str | None) -> str:
    return f"{base_url.rstrip('/')}/{name}" if base_url else name


def describe_image(out_dir: Path, role: str, recipe: Recipe, base_url: str | None) -> dict[str, Any] | None:
    """One os_list entry, or None when no image of that role was built."""
    download = next((out_dir / f"{role}{form}" for form in DOWNLOAD_FORMS if (out_dir / f"{role}{form}").is_file()),
                    None)
    if download is None:
        return None
    raw = out_dir / f"{role}.img"
    extract_size, extract_sha256 = _extracted(raw if raw.is_file() else download)
    mtime = datetime.datetime.fromtimestamp(download.stat().st_mtime, datetime.UTC)
    return {
        "name": f"{recipe.cluster.name}: {role}",
        "description": f"{role.capitalize()} of cluster {recipe.cluster.name} ({summary(recipe)}): "
                       f"{DESCRIPTIONS[role]}",
        "url": _url(download.name, base_url),
        "extract_size": extract_size,
        "extract_sha256": extract_sha256,
        "image_download_size": download.stat().st_size,
        "image_download_sha256": sha256_of(download),
        "release_date": mtime.date().isoformat(),
        "devices": [tag for _, tag in DEVICES[recipe.arch]],
    }


def render_os_list(out_dir: Path, recipe: Recipe, base_url: str | None = None) -> dict[str, Any]:
    entries = [e for role in ROLES if (e := describe_image(out_dir, role, recipe, base_url)) is not None]
    if not entries:
        raise ImagerRepoError(f"{out_dir}: no master or worker image to list",
                              f"build them first: imagebuilder build {recipe.source}")
    # A repository given with --repo replaces Imager's device list too; without one its device
    # picker is empty and entries filtered by device never show.
    devices = [{"name": name, "tags": [tag], "description": "", "default": False}
               for name, tag in DEVICES[recipe.arch]]
    return {"imager": {"devices": devices}, "os_list": entries}


def write_os_list(out_dir: Path, recipe: Recipe, base_url: str | None = None) -> Path:
    """Write out_dir/os_list.json for the images in out_dir; URLs relative to it unless base_url."""
    document = render_os_list(out_dir, recipe, base_url)
    final = out_dir / OS_LIST
    with atomic_output(final) as tmp:
        tmp.write_text(json.dumps(document, indent=2) + "\n")
    return final
