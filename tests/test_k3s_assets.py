"""The k3s release assets: from a folder or URL (k3s.assets, or IMAGEBUILDER_K3S_ASSETS over it), from the
release, or none. A build that asks for them and cannot get them fails, naming what it tried; the only
images without the binary are those whose recipe says `k3s.assets: none`. The servers are on 127.0.0.1."""

from __future__ import annotations

import hashlib
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagebuilder.core.context import Context
from imagebuilder.core.errors import ImageBuilderError
from imagebuilder.recipe.model import K3s
from imagebuilder.sources import k3s_assets
from imagebuilder.sources.k3s_assets import ASSETS_ENV, fetch_k3s
from tests.test_fetch import Server, running_server

VERSION = "v1.31.4+k3s1"
BINARY, IMAGES, SUMS = k3s_assets.NAMES["arm64"]
FILES = {BINARY: b"\x7fELF stand-in for the k3s binary\n", IMAGES: bytes(range(256)) * 64}
LISTING = "".join(f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in FILES.items()).encode()


@pytest.fixture
def server() -> Iterator[Server]:
    yield from running_server()


@pytest.fixture
def ctx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Context:
    monkeypatch.delenv(ASSETS_ENV, raising=False)
    return Context(cache_dir=tmp_path / "cache")


def assets_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "assets"
    folder.mkdir()
    for name, data in {**FILES, SUMS: LISTING}.items():
        (folder / name).write_bytes(data)
    return folder


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_assets_from_a_folder_are_the_binary_layer(ctx: Context, tmp_path: Path) -> None:
    folder = assets_folder(tmp_path)
    got = fetch_k3s(ctx, K3s(version=VERSION, assets=str(folder)), "arm64")
    assert got.included and got.source == folder.as_uri()
    assert got.layer is not None
    files = {f.path: f for f in got.layer.files}
    assert files["usr/local/bin/k3s"].data == FILES[BINARY] and files["usr/local/bin/k3s"].mode == 0o755
    assert files[f"{k3s_assets.IMAGES_DIR}/{IMAGES}"].data == FILES[IMAGES]


def test_the_environment_names_the_folder_over_the_recipe(ctx: Context, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    folder = assets_folder(tmp_path)
    monkeypatch.setenv(ASSETS_ENV, str(folder))
    for assets in ("release", "none"):
        got = fetch_k3s(ctx, K3s(version=VERSION, assets=assets), "arm64")
        assert got.layer is not None and got.source == folder.as_uri()


def test_none_means_no_binary(ctx: Context) -> None:
    got = fetch_k3s(ctx, K3s(version=VERSION, assets="none"), "arm64")
    assert got.layer is None and got.source is None and not got.included


@pytest.mark.parametrize("what", ["missing-binary", "closed-port"])
def test_release_that_cannot_be_fetched_fails_naming_what_it_tried(ctx: Context, server: Server, what: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # The release's host, moved to 127.0.0.1: its listing is there, the binary not (or nothing answers).
    releases = server.url("/releases") if what == "missing-binary" else f"http://127.0.0.1:{closed_port()}/releases"
    server.behaviour.files["/releases/v1.31.4%2Bk3s1/" + SUMS] = LISTING
    monkeypatch.setattr(k3s_assets, "RELEASES", releases)
    with pytest.raises(ImageBuilderError) as excinfo:
        fetch_k3s(ctx, K3s(version=VERSION, assets="release"), "arm64", allow_http=True)
    error = excinfo.value
    tried = f"{releases}/v1.31.4%2Bk3s1"
    assert error.message.startswith(f"cannot get k3s {VERSION} for arm64 (k3s.assets: release): tried {tried}/ "
                                    f"for {BINARY}, {IMAGES} and {SUMS}: {tried}/")  # and why, from the fetcher
    assert error.hint is not None and "k3s.assets: none" in error.hint
    # The plan reads the cache only: it says the assets are still to be fetched, and fetches nothing.
    requests = len(server.behaviour.log)
    planned = fetch_k3s(ctx, K3s(version=VERSION, assets="release"), "arm64", offline=True, allow_http=True)
    assert planned.included and planned.layer is None and planned.source == tried
    assert len(server.behaviour.log) == requests


def test_a_url_given_in_the_recipe_that_fails_names_it(ctx: Context, server: Server) -> None:
    base = server.url("/lab/k3s")
    with pytest.raises(ImageBuilderError, match=re.escape(f"(k3s.assets: {base}): tried {base}/ for {BINARY}")):
        fetch_k3s(ctx, K3s(version=VERSION, assets=base), "arm64", allow_http=True)
    for name, data in {**FILES, SUMS: LISTING}.items():
        server.behaviour.files[f"/lab/k3s/{name}"] = data
    got = fetch_k3s(ctx, K3s(version=VERSION, assets=base), "arm64", allow_http=True)
    assert got.layer is not None and got.source == base
