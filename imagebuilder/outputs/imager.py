"""A Raspberry Pi Imager repository for the built images: out/<cluster>/os_list.json.

`rpi-imager --repo out/<cluster>/os_list.json` then lists the master and the worker image. The format is
Imager's own (the `os_list` of its published manifest). Imager wants, per entry: an `.img.xz` download
(it reads zstd only in newer versions), absolute URLs (it resolves nothing against the repository's own
location), an icon, the size and sha256 of the extracted image (a wrong digest makes it leave the first MiB
unwritten), and `init_format`, which decides whether it offers its OS customisation.

We declare `cloudinit`: Imager then replaces the seed's user-data, network-config and meta-data and
appends to cmdline.txt. Nothing a node needs to join is in those files: its cloud-config is installed in
/etc/cloud/cloud.cfg.d (Imager's user-data is applied on top), and imagebuilder-seed.service puts the
recipe's network-config back before cloud-init reads it.
"""

from __future__ import annotations

import datetime
import errno
import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from imagebuilder.boards.models import BOARDS, boards_for, imager_tag
from imagebuilder.core.access import access_denied
from imagebuilder.core.context import Context
from imagebuilder.core.errors import ImageBuilderError
from imagebuilder.core.resources import atomic_output
from imagebuilder.disk.imagefile import open_image
from imagebuilder.outputs.compress import compress_cached
from imagebuilder.outputs.manifest import read_manifest
from imagebuilder.outputs.sbom import sbom_name
from imagebuilder.recipe.load import summary
from imagebuilder.recipe.model import Recipe
from imagebuilder.roles.table import ROLES
from imagebuilder.sources.checksums import sha256_of

OS_LIST = "os_list.json"
ICON = "imagebuilder-icon.png"
INIT_FORMAT = "cloudinit"
# Imager's devices (its board picker) for a tag: an entry shows only for a board whose tags it lists.
TAG_NAMES = {"pi5-64bit": "Raspberry Pi 5", "pi4-64bit": "Raspberry Pi 4", "pi4-32bit": "Raspberry Pi 4 (32-bit)",
             "pi3-64bit": "Raspberry Pi 3", "pi3-32bit": "Raspberry Pi 3 (32-bit)", "pi2-32bit": "Raspberry Pi 2"}


def verified_tags(out_dir: Path, recipe: Recipe, role: str) -> list[str]:
    """The Imager tags of the boards `verify` passed for this image at build time (manifest.json); without
    a manifest, every board of the architecture."""
    manifest = read_manifest(out_dir)
    image = manifest.images.get(role) if manifest else None
    boards = image.boards if image else tuple(b.name for b in boards_for(recipe.arch))
    return list(dict.fromkeys(imager_tag(BOARDS[b], recipe.arch) for b in boards if b in BOARDS))


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


def _url(path: Path, base_url: str | None) -> str:
    """Absolute, as Imager needs: under base_url, or the file itself."""
    return f"{base_url.rstrip('/')}/{path.name}" if base_url else path.resolve().as_uri()


def describe_image(out_dir: Path, role: str, recipe: Recipe, base_url: str | None,
                   devices: list[str], known: Mapping[str, str]) -> dict[str, Any] | None:
    """One os_list entry (for role.img.xz), or None when no such image was made. known: the sha256 of files
    in out_dir by name, where the caller has it (the build, which just wrote them: not read again)."""
    download = out_dir / f"{role}.img.xz"
    if not download.is_file():
        return None
    raw = out_dir / f"{role}.img"
    if raw.is_file() and raw.name in known:
        extract_size, extract_sha256 = raw.stat().st_size, known[raw.name]
    else:
        extract_size, extract_sha256 = _extracted(raw if raw.is_file() else download)
    mtime = datetime.datetime.fromtimestamp(download.stat().st_mtime, datetime.UTC)
    entry = {
        "name": f"{recipe.cluster.name}: {role}",
        "description": f"{role.capitalize()} of cluster {recipe.cluster.name} ({summary(recipe)}): "
                       f"{DESCRIPTIONS[role]}",
        "url": _url(download, base_url),
        "icon": _url(out_dir / ICON, base_url),
        "extract_size": extract_size,
        "extract_sha256": extract_sha256,
        "image_download_size": download.stat().st_size,
        "image_download_sha256": known.get(download.name) or sha256_of(download),
        "release_date": mtime.date().isoformat(),
        "init_format": INIT_FORMAT,
        "devices": devices,
    }
    bmap = out_dir / f"{role}.img.bmap"
    if bmap.is_file():
        entry["bmap_url"] = _url(bmap, base_url)
    # Not a key Imager reads: where to find what the image holds, beside it.
    sbom = out_dir / sbom_name(role)
    if sbom.is_file():
        entry["sbom_url"] = _url(sbom, base_url)
    return entry


def render_os_list(out_dir: Path, recipe: Recipe, base_url: str | None = None,
                   known: Mapping[str, str] | None = None) -> dict[str, Any]:
    entries = [e for role in ROLES
               if (e := describe_image(out_dir, role, recipe, base_url, verified_tags(out_dir, recipe, role),
                                       known or {}))]
    if not entries:
        raise ImagerRepoError(f"{out_dir}: no master.img.xz or worker.img.xz to list",
                              f"build first (imagebuilder build {recipe.source}), then imagebuilder imager-repo")
    # A repository given with --repo replaces Imager's device list too; without one its device
    # picker is empty and entries filtered by device never show.
    tags = list(dict.fromkeys(tag for e in entries for tag in e["devices"]))
    devices = [{"name": TAG_NAMES.get(tag, tag), "tags": [tag], "description": "", "default": False} for tag in tags]
    return {"imager": {"devices": devices}, "os_list": entries}


def write_os_list(out_dir: Path, recipe: Recipe, base_url: str | None = None,
                  known: Mapping[str, str] | None = None) -> Path:
    """Write out_dir/os_list.json (and its icon) for the .img.xz images in out_dir; known: digests by file
    name, as for describe_image."""
    document = render_os_list(out_dir, recipe, base_url, known)  # first: no icon beside nothing to list
    icon = out_dir / ICON
    if not icon.is_file():
        with atomic_output(icon) as tmp, resources.as_file(resources.files("imagebuilder") / "data/icon.png") as src:
            shutil.copyfile(src, tmp)
    final = out_dir / OS_LIST
    with atomic_output(final) as tmp:
        tmp.write_text(json.dumps(document, indent=2) + "\n")
    return final


def check_built(out_dir: Path, recipe: Recipe) -> None:
    """Before anything is written: the build's images are there, and this user may add files beside them."""
    if not any((out_dir / f"{role}{suffix}").is_file() for role in ROLES for suffix in (".img", ".img.xz")):
        raise ImagerRepoError(f"{out_dir}: no image to list (master.img, worker.img or their .img.xz)",
                              f"build first: imagebuilder build {recipe.source}")
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(out_dir))


def make_imager_repo(ctx: Context, out_dir: Path, recipe: Recipe, base_url: str | None = None) -> Path:
    """`imagebuilder imager-repo`: the .img.xz copies Imager downloads (made from the raw images when the
    build wrote another format, cached by digest), then os_list.json."""
    try:
        check_built(out_dir, recipe)
        return _write_repo(ctx, out_dir, recipe, base_url)
    except PermissionError as e:
        # A build run with sudo leaves out/<cluster>/ to root, for its owner only (the images hold secrets).
        raise access_denied(e.filename or out_dir, "run it as the user who built the images: "
                            f"sudo imagebuilder imager-repo {recipe.source}") from None


def _write_repo(ctx: Context, out_dir: Path, recipe: Recipe, base_url: str | None) -> Path:
    for role in ROLES:
        raw = out_dir / f"{role}.img"
        if raw.is_file() and not (out_dir / f"{role}.img.xz").is_file():
            compress_cached(ctx, raw, sha256_of(raw), "xz")
    return write_os_list(out_dir, recipe, base_url)
