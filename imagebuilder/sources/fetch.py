"""Base images into the download cache: resolve where an image and its digest are, fetch it once, verify it.

Cache layout (under the cache directory):
  downloads/<sha256><ext>        verified images, named by their digest (ext as published: .img.xz, ...)
  downloads/.partial-<sha256>    an unfinished download (+ .json with the server's validator), resumed later
  downloads/.lock-<sha256>       flock held while one process downloads that image
  downloads/index/<key>.json     what a source (URL + checksum spec) resolved to, so a second fetch of an
                                 image whose digest comes from a listing needs no network at all;
                                 `refresh=True` (`--refresh`) asks the publisher again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit, urlunsplit

import requests

from imagebuilder.core.context import Context
from imagebuilder.core.errors import ChecksumMismatch, DownloadError, ImageBuilderError
from imagebuilder.core.log import log, step
from imagebuilder.core.resources import atomic_output, file_lock
from imagebuilder.disk.image import detect_layout
from imagebuilder.recipe.catalogue import Layout, load_catalogue
from imagebuilder.recipe.model import Recipe
from imagebuilder.sources.base import BaseImage
from imagebuilder.sources.checksums import digest_for, newest_matching, parse_listing
from imagebuilder.sources.decompress import cached_raw, decompress_to_cache
from imagebuilder.sources.download import DEFAULT_POLICY, Policy, download, file_name, final_url, read_text

MIRROR_ENV = "IMAGEBUILDER_MIRROR"
_SUFFIXES = (".img.xz", ".img.gz", ".img.zst", ".img.zip", ".zip", ".img", ".xz", ".gz", ".zst", ".raw")


@dataclass(frozen=True)
class Spec:
    """Where an image comes from, as the user or the catalogue wrote it (before any mirror)."""

    url: str  # the image; with `pick`, the directory it is in
    sha256: str | None = None  # the digest, when known upfront
    checksum_url: str | None = None  # a sha256sum listing holding the digest
    sibling: bool = False  # the digest is in <url after redirects>.sha256
    pick: str | None = None  # the newest name in the listing matching this pattern is the image
    allow_http: bool = False  # a checksum listing over plain http is accepted (the user said so)

    def key(self) -> str:
        text = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class _Target:
    url: str  # what to download (mirror applied)
    sha256: str
    source: str  # where the digest came from, for the mismatch message


def fetch_base(ctx: Context, recipe: Recipe, *, offline: bool = False, refresh: bool = False,
               policy: Policy = DEFAULT_POLICY) -> Path:
    """The verified (still compressed) base image of a recipe, from the cache or downloaded into it."""
    if recipe.base.bootstrap is not None:
        raise ImageBuilderError(f"{recipe.source}: base.bootstrap: a bootstrapped base is built from packages, "
                                "there is no image to fetch", "use `imagebuilder build`, which bootstraps it")
    return fetch_spec(ctx, spec_for_base(recipe), mirror=recipe.base.mirror, offline=offline, refresh=refresh,
                      policy=policy)


def prepare_base(ctx: Context, recipe: Recipe, *, offline: bool = False) -> BaseImage:
    """The recipe's published base as a raw image in the cache, for the build."""
    download = fetch_base(ctx, recipe, offline=offline)
    raw = decompress_to_cache(ctx, download)
    return BaseImage(raw.path, raw.sha256, _layout(recipe, raw.path), {}, origin=(download,))


def cached_base(cache_dir: Path, recipe: Recipe) -> BaseImage | None:
    """The recipe's published base if it is in the cache, downloaded and decompressed; None otherwise.

    Reads only: no network, nothing written.
    """
    download = _lookup(cache_dir / "downloads", spec_for_base(recipe))
    raw = cached_raw(cache_dir, download) if download is not None else None
    if raw is None or download is None:
        return None
    return BaseImage(raw.path, raw.sha256, _layout(recipe, raw.path), {}, origin=(download,))


def _layout(recipe: Recipe, raw: Path) -> Layout:
    if recipe.base.image:
        return load_catalogue()[recipe.base.image].layout
    # A base given by URL says nothing about its layout: its boot partition's label does.
    try:
        return detect_layout(raw)
    except ValueError as e:
        raise ImageBuilderError(str(e), "base.url must be a Raspberry Pi OS or Ubuntu style image") from None


def fetch_url(ctx: Context, url: str, *, sha256: str | None = None, checksum_url: str | None = None,
              mirror: str | None = None, offline: bool = False, refresh: bool = False,
              policy: Policy = DEFAULT_POLICY, allow_http: bool = False) -> Path:
    """A verified file from a URL (http, https, file:// or a local path) and its sha256 or listing."""
    if (sha256 is None) == (checksum_url is None):
        raise ImageBuilderError(f"{url}: give exactly one of a sha256 or a checksum URL",
                                "the download is only kept if it can be verified")
    spec = Spec(url=url, sha256=sha256.lower() if sha256 else None, checksum_url=checksum_url, allow_http=allow_http)
    return fetch_spec(ctx, spec, mirror=mirror, offline=offline, refresh=refresh, policy=policy)


def spec_for_base(recipe: Recipe) -> Spec:
    base = recipe.base
    if base.url is not None:
        return Spec(url=base.url, sha256=base.sha256, checksum_url=base.checksum_url,
                    allow_http=base.allow_http_checksums)
    assert base.image is not None
    source = load_catalogue()[base.image].arches[recipe.arch]
    checksum = base.checksum_url or (None if source.checksum == "sibling" else source.checksum)
    # A pinned `pick` image still needs the listing: it says which file name has the pinned digest.
    keep_listing = source.pick is not None or base.sha256 is None
    return Spec(url=source.url, sha256=base.sha256, checksum_url=checksum if keep_listing else None,
                sibling=source.checksum == "sibling" and not base.checksum_url and not base.sha256,
                pick=source.pick, allow_http=base.allow_http_checksums)


def apply_mirror(url: str, mirror: str | None) -> str:
    """Send an http(s) URL to the mirror instead: the mirror's scheme, host and path prefix + the URL's path.

    `http://mirror.lab/pi` turns `https://downloads.example.org/images/a.img.xz` into
    `http://mirror.lab/pi/images/a.img.xz`.
    """
    if not mirror:
        return url
    parts, base = urlsplit(url), urlsplit(mirror)
    if parts.scheme not in ("http", "https"):
        return url
    return urlunsplit((base.scheme, base.netloc, base.path.rstrip("/") + parts.path, parts.query, ""))


def fetch_spec(ctx: Context, spec: Spec, *, mirror: str | None = None, offline: bool = False,
               refresh: bool = False, policy: Policy = DEFAULT_POLICY) -> Path:
    # Offline is a lookup: it must not even make the cache's folders.
    downloads = ctx.cache_dir / "downloads" if offline else ctx.cache("downloads")
    if not refresh or offline:
        cached = _lookup(downloads, spec)
        if cached is not None:
            log.info("cached: %s", cached.name)
            return cached
    if offline:
        raise DownloadError(f"{spec.url}: not in the cache ({downloads}) and --offline was given",
                            "fetch it once with network, or seed the cache from a file: "
                            "imagebuilder fetch --url /path/to/image --sha256 HEX")
    mirror = mirror or os.environ.get(MIRROR_ENV) or None
    with requests.Session() as session, step(f"fetch {file_name(spec.url) or spec.url}"):
        target = _resolve(session, spec, mirror, policy)
        path = _cached(downloads, target.sha256) or _download(session, downloads, target, policy)
    _record(downloads, spec, target, path)
    return path


def _lookup(downloads: Path, spec: Spec) -> Path | None:
    """The cached file for a spec, found without any network I/O."""
    if spec.sha256 is not None:
        return _cached(downloads, spec.sha256)
    try:
        entry = json.loads((downloads / "index" / f"{spec.key()}.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
    return _cached(downloads, str(entry.get("sha256", "")))


def _cached(downloads: Path, sha256: str) -> Path | None:
    if len(sha256) != 64:
        return None
    return next(iter(sorted(downloads.glob(f"{sha256}.*"))), None)


def _record(downloads: Path, spec: Spec, target: _Target, path: Path) -> None:
    if spec.sha256 is not None:
        return  # the digest is the key already
    entry = {"spec": dataclasses.asdict(spec), "sha256": target.sha256, "url": target.url, "file": path.name}
    with atomic_output(downloads / "index" / f"{spec.key()}.json") as tmp:
        tmp.write_text(json.dumps(entry, indent=2) + "\n")


def _resolve(session: requests.Session, spec: Spec, mirror: str | None, policy: Policy) -> _Target:
    """Find the image URL and its expected digest, reading the publisher's checksums where needed.

    A mirror serves the image, never its digest: that is the pinned sha256, or read from the publisher's
    own listing, or from a checksum URL the user named. A hostile or broken mirror could otherwise serve
    any image with a listing to match.
    """
    url = apply_mirror(spec.url, mirror)
    if spec.pick is not None:
        listing_url = spec.checksum_url or urljoin(spec.url, "SHA256SUMS")
        listing = _read_listing(session, listing_url, spec, mirror, policy)
        if spec.sha256 is not None:
            # A pinned image: the listing's entry with that digest, even when newer releases sit beside it.
            names = [n for n, d in listing.items() if d == spec.sha256]
            if not names:
                raise ChecksumMismatch(f"{listing_url}: lists no image with the pinned sha256 {spec.sha256}",
                                       "the image was replaced upstream: update or remove base.sha256")
            name = names[0]
        else:
            name = newest_matching(listing, spec.pick, listing_url)
        return _Target(urljoin(url.rstrip("/") + "/", name), listing[name], listing_url)
    if spec.sha256 is not None:
        return _Target(url, spec.sha256, "the given sha256")
    if spec.sibling:
        # Which release `latest` is, and its digest, from the publisher; the bytes from the mirror.
        try:
            final = final_url(session, spec.url, policy)
        except DownloadError as e:
            raise _no_publisher(spec.url, e, mirror) from None
        listing_url, url = final + ".sha256", apply_mirror(final, mirror)
    else:
        assert spec.checksum_url is not None
        listing_url = spec.checksum_url
    listing = _read_listing(session, listing_url, spec, mirror, policy)
    return _Target(url, digest_for(listing, file_name(url), listing_url), listing_url)


def _read_listing(session: requests.Session, listing_url: str, spec: Spec, mirror: str | None,
                  policy: Policy) -> dict[str, str]:
    if urlsplit(listing_url).scheme == "http" and not spec.allow_http:
        raise ImageBuilderError(
            f"{listing_url}: a checksum read over plain http can be changed on the way, and then any image "
            "passes", "use https, pin the digest (base.sha256), or say you trust this network: "
                      "base.allow_http_checksums: true (fetch --allow-http-checksums)")
    try:
        return parse_listing(read_text(session, listing_url, policy))
    except DownloadError as e:
        raise _no_publisher(listing_url, e, mirror) from None


def _no_publisher(url: str, error: DownloadError, mirror: str | None) -> ImageBuilderError:
    if mirror is None:
        return error
    return ImageBuilderError(f"{url}: cannot read the publisher's checksum ({error.message}); the mirror "
                             f"{mirror} serves the image but does not vouch for it",
                             "pin the image's digest in the recipe, base.sha256 (README: offline labs)")


def _download(session: requests.Session, downloads: Path, target: _Target, policy: Policy) -> Path:
    name = file_name(target.url) or target.sha256
    partial = downloads / f".partial-{target.sha256}"
    with file_lock(downloads / f".lock-{target.sha256}", name):
        # Another process may have finished it while we waited for the lock.
        if (done := _cached(downloads, target.sha256)) is not None:
            return done
        transfer = download(session, target.url, partial, name, policy)
        if transfer.sha256 != target.sha256:
            _discard(partial)
            raise ChecksumMismatch(
                f"{name}: sha256 is {transfer.sha256} but {target.source} says {target.sha256}",
                "the download was deleted; check the digest (base.sha256, --sha256) or the mirror",
            )
        final = downloads / (target.sha256 + _suffix(file_name(transfer.url) or name))
        os.replace(partial, final)
        _discard(partial)
    log.info("verified sha256 %s", target.sha256)
    return final


def _discard(partial: Path) -> None:
    for path in (partial, partial.with_name(partial.name + ".json")):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _suffix(name: str) -> str:
    lowered = name.lower()
    return next((s for s in _SUFFIXES if lowered.endswith(s)), ".bin")
