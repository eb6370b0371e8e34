"""The k3s release assets for an air-gapped install: the binary and the images tarball.

Fetched with the base-image fetcher and verified against the release's own sha256sum file. Where they
cannot be had (no route to the release, as on an offline build machine), the images are built without
them and say so: the k3s units then wait for /usr/local/bin/k3s instead of failing.
"""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from imagebuilder.core.context import Context
from imagebuilder.core.errors import ImageBuilderError
from imagebuilder.core.log import log
from imagebuilder.layers.render import OverlayFile, RenderedLayer
from imagebuilder.recipe.model import K3s
from imagebuilder.sources.download import Policy
from imagebuilder.sources.fetch import fetch_url

RELEASES = "https://github.com/k3s-io/k3s/releases/download"
ASSETS_ENV = "IMAGEBUILDER_K3S_ASSETS"
# Release asset names per Debian architecture.
NAMES = {
    "arm64": ("k3s-arm64", "k3s-airgap-images-arm64.tar.zst", "sha256sum-arm64.txt"),
    "armhf": ("k3s-armhf", "k3s-airgap-images-arm.tar.zst", "sha256sum-arm.txt"),
}
IMAGES_DIR = "var/lib/rancher/k3s/agent/images"


@dataclass(frozen=True)
class K3sAssets:
    layer: RenderedLayer | None
    missing: str | None  # why the binary is not in the images


def asset_base(setting: str, version: str) -> str | None:
    """Where the assets are: $IMAGEBUILDER_K3S_ASSETS, else the recipe's k3s.assets; None for none."""
    chosen = os.environ.get(ASSETS_ENV) or setting
    if chosen == "none":
        return None
    if chosen == "release":
        return f"{RELEASES}/{urllib.parse.quote(version, safe='')}"
    return chosen if "://" in chosen else Path(chosen).expanduser().resolve().as_uri()


def fetch_k3s(ctx: Context, k3s: K3s, arch: str, *, offline: bool = False, allow_http: bool = False) -> K3sAssets:
    """The assets as a layer; offline: from the cache only, and missing (not an error) when not there."""
    binary, images, sums = NAMES[arch]
    base = asset_base(k3s.assets, k3s.version)
    if base is None:
        if not offline:
            log.info("k3s.assets is none: the images get the k3s configuration and units, not the binary")
        return K3sAssets(None, "k3s.assets is none")
    base = base.rstrip("/")
    # From the public release an unreachable host is expected (offline build machines): give up quickly.
    explicit = os.environ.get(ASSETS_ENV) or k3s.assets != "release"
    policy = Policy() if explicit else Policy(attempts=2, connect_timeout=10)
    try:
        paths = {name: fetch_url(ctx, f"{base}/{name}", checksum_url=f"{base}/{sums}", policy=policy,
                                 offline=offline, allow_http=allow_http)
                 for name in (binary, images)}
    except ImageBuilderError as e:
        if offline:
            return K3sAssets(None, f"the k3s {k3s.version} assets are not in the cache yet")
        if explicit:
            raise
        reason = f"the k3s {k3s.version} release assets could not be fetched ({e.message})"
        log.warning("WARNING: %s; building without the k3s binary. Set k3s.assets in the recipe (or %s) to "
                    "a folder with %s, %s and %s to include them.", reason, ASSETS_ENV, binary, images, sums)
        return K3sAssets(None, reason)
    files = (
        OverlayFile("usr/local/bin/k3s", paths[binary].read_bytes(), 0o755),
        OverlayFile(f"{IMAGES_DIR}/{images}", paths[images].read_bytes(), 0o644),
    )
    return K3sAssets(RenderedLayer(f"k3s {k3s.version} {arch}", files), None)
