"""The k3s release assets for an air-gapped install: the binary and the images tarball.

Fetched with the base-image fetcher and verified against the release's own sha256sum file. A build that
cannot get them fails, naming where it looked: images without the binary come only from `k3s.assets:
none` (their k3s units then wait for /usr/local/bin/k3s instead of failing), and the plan and the
manifest say which kind a build makes.
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
    layer: RenderedLayer | None  # None: no binary in the images, or (a plan) not in the cache yet
    source: str | None  # where the binary comes from; None: k3s.assets is none

    @property
    def included(self) -> bool:
        return self.source is not None


def asset_base(setting: str, version: str) -> str | None:
    """Where the assets are: $IMAGEBUILDER_K3S_ASSETS, else the recipe's k3s.assets; None for none."""
    chosen = os.environ.get(ASSETS_ENV) or setting
    if chosen == "none":
        return None
    if chosen == "release":
        return f"{RELEASES}/{urllib.parse.quote(version, safe='')}"
    return chosen if "://" in chosen else Path(chosen).expanduser().resolve().as_uri()


def fetch_k3s(ctx: Context, k3s: K3s, arch: str, *, offline: bool = False, allow_http: bool = False) -> K3sAssets:
    """The assets as a layer; offline (for the plan): from the cache only, without a layer when not there."""
    binary, images, sums = NAMES[arch]
    base = asset_base(k3s.assets, k3s.version)
    if base is None:
        if not offline:
            log.info("k3s.assets is none: the images get the k3s configuration and units, not the binary")
        return K3sAssets(None, None)
    base = base.rstrip("/")
    # From the public release an unreachable host is likely (offline build machines): give up quickly.
    explicit = os.environ.get(ASSETS_ENV) or k3s.assets != "release"
    policy = Policy() if explicit else Policy(attempts=2, connect_timeout=10)
    try:
        paths = {name: fetch_url(ctx, f"{base}/{name}", checksum_url=f"{base}/{sums}", policy=policy,
                                 offline=offline, allow_http=allow_http)
                 for name in (binary, images)}
    except ImageBuilderError as e:
        if offline:
            return K3sAssets(None, base)
        env = os.environ.get(ASSETS_ENV)
        setting = f"{ASSETS_ENV}={env}" if env else f"k3s.assets: {k3s.assets}"
        raise ImageBuilderError(
            f"cannot get k3s {k3s.version} for {arch} ({setting}): tried {base}/ for {binary}, {images} and "
            f"{sums}: {e.message}",
            f"set k3s.assets in the recipe (or {ASSETS_ENV}) to a folder or URL holding those files, or "
            "k3s.assets: none to build images without k3s") from None
    files = (
        OverlayFile("usr/local/bin/k3s", paths[binary].read_bytes(), 0o755),
        OverlayFile(f"{IMAGES_DIR}/{images}", paths[images].read_bytes(), 0o644),
    )
    return K3sAssets(RenderedLayer(f"k3s {k3s.version} {arch}", files), base)
