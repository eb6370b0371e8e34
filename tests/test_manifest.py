"""manifest.json: written and read by one module, and a manifest it cannot read is none at all."""

from __future__ import annotations

import json
from pathlib import Path

from imagebuilder.outputs.manifest import MANIFEST, MANIFEST_VERSION, Manifest, ManifestImage, read_manifest


def manifest(k3s_assets: str | None) -> Manifest:
    worker = ManifestImage("worker.img", "a" * 64, 4096, ("pi3b", "pi4b"), ("worker.img", "worker.img.bmap"),
                           {"hello": "2.10-3"}, ("/etc/cluster-note",), ("imagebuilder-hostname.service",))
    return Manifest("1.0", "2026-12-05T00:00:00+00:00", "/r/lab.yaml", "b" * 64, "lab", "arm64", "v1.31.4+k3s1",
                    k3s_assets, "c" * 64, "bootstrap:bookworm:raspios", 212, {"worker": worker})


def test_what_is_written_is_read_back(tmp_path: Path) -> None:
    for assets in (None, "release v1.31.4+k3s1"):
        (tmp_path / MANIFEST).write_text(manifest(assets).to_json())
        assert read_manifest(tmp_path) == manifest(assets)
        document = json.loads((tmp_path / MANIFEST).read_text())
        # The user's document: what the README says it holds.
        assert document["k3s_binary"] == ("included" if assets else "none")
        assert document["images"]["worker"]["boards"] == ["pi3b", "pi4b"]


def test_a_manifest_of_another_version_or_damaged_is_none(tmp_path: Path) -> None:
    assert read_manifest(tmp_path) is None
    document = json.loads(manifest("release").to_json())
    for text in (json.dumps({**document, "version": MANIFEST_VERSION + 1}), "{", "[]",
                 json.dumps({**document, "images": {"worker": {"file": "worker.img"}}})):
        (tmp_path / MANIFEST).write_text(text)
        assert read_manifest(tmp_path) is None
