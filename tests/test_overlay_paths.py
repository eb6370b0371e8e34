"""Overlays never write outside the image: links in the base or in a layer are followed inside the image."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

from imagebuilder.build.execute import build
from imagebuilder.core.errors import ImageBuilderError
from imagebuilder.layers.render import OverlayFile, RenderedLayer
from imagebuilder.layers.write import OutsideImage, resolve_in_root, write_layer
from imagebuilder.recipe.load import load_recipe
from tests.images import arm64_base, make_context, small_recipe
from tests.test_build import read_root_file


def layer(*files: OverlayFile) -> RenderedLayer:
    return RenderedLayer("test", files)


@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    """A tree like a Debian root: var/run is the absolute link /run, as on every base."""
    root = tmp_path / "root"
    for d in ("etc", "run", "var", "boot/firmware"):
        (root / d).mkdir(parents=True)
    (root / "var/run").symlink_to("/run")
    return root


def test_absolute_link_in_the_base_stays_in_the_image(image_root: Path) -> None:
    name = f"imagebuilder-test-{secrets.token_hex(4)}"
    with pytest.raises(OutsideImage, match=f"root/var/run/{name} is /run/{name} in the image"):
        write_layer(layer(OverlayFile(f"var/run/{name}", b"x", 0o644)), image_root)
    assert not Path(f"/run/{name}").exists()  # the host's /run was never touched


def test_a_link_made_by_one_layer_is_followed_inside_the_image_by_the_next(image_root: Path) -> None:
    name = f"imagebuilder-test-{secrets.token_hex(4)}"
    write_layer(layer(OverlayFile("etc/x", b"/etc", 0o777, symlink=True)), image_root)
    write_layer(layer(OverlayFile(f"etc/x/{name}", b"hello\n", 0o640)), image_root)
    assert (image_root / "etc" / name).read_bytes() == b"hello\n"
    assert (image_root / "etc" / name).stat().st_mode & 0o777 == 0o640
    assert not Path(f"/etc/{name}").exists()


def test_relative_links_and_dotdot_cannot_climb_out(image_root: Path) -> None:
    (image_root / "etc/up").symlink_to("../../../../..")
    target = resolve_in_root(image_root, "/etc/up/etc/passwd")
    assert target == image_root / "etc/passwd"
    assert resolve_in_root(image_root, "/../../etc/../etc/hostname") == image_root / "etc/hostname"


def test_a_file_replaces_a_link_instead_of_writing_through_it(image_root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_text("keep\n")
    (image_root / "etc/motd").symlink_to(outside)
    write_layer(layer(OverlayFile("etc/motd", b"hi\n", 0o644)), image_root)
    assert outside.read_text() == "keep\n" and not (image_root / "etc/motd").is_symlink()


def test_link_loops_are_reported(image_root: Path) -> None:
    (image_root / "etc/a").symlink_to("b")
    (image_root / "etc/b").symlink_to("a")
    with pytest.raises(ImageBuilderError, match="too many symbolic links"):
        resolve_in_root(image_root, "/etc/a/file")



@pytest.mark.integration
def test_build_with_hostile_overlays(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same through a real build on the bootstrap base, whose var/run links to /run."""
    arm64_base()
    monkeypatch.chdir(tmp_path)
    name = f"imagebuilder-test-{secrets.token_hex(4)}"
    (tmp_path / "a/root").mkdir(parents=True)
    os.symlink("/etc", tmp_path / "a/root/etcx")
    (tmp_path / "b/root/etcx").mkdir(parents=True)
    (tmp_path / "b/root/etcx" / name).write_text("from layer b\n")
    (tmp_path / "c/root/var/run").mkdir(parents=True)
    (tmp_path / "c/root/var/run" / name).write_text("x\n")

    recipe = tmp_path / "bad.yaml"
    recipe.write_text(small_recipe("pathtest", tmp_path / "out", compress="none", bmap=False, extra="overlays: [c]\n"))
    ctx = make_context()
    with pytest.raises(OutsideImage, match=f"root/var/run/{name} is /run/{name} in the image"), ctx.stack:
        build(ctx, load_recipe(recipe))
    assert not Path(f"/run/{name}").exists()

    recipe = tmp_path / "good.yaml"
    recipe.write_text(small_recipe("pathtest", tmp_path / "out", compress="none", bmap=False,
                                   extra="overlays: [a, b]\n"))
    ctx = make_context()
    with ctx.stack:
        build(ctx, load_recipe(recipe))
    assert read_root_file(tmp_path / "out/pathtest/worker.img", f"/etc/{name}") == "from layer b\n"
    assert not Path(f"/etc/{name}").exists()
