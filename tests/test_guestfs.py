"""The rootless backend: libguestfs writes the same overlay files as the loop backend, installs no packages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from imagebuilder.build.execute import build
from imagebuilder.disk.fat import MTOOLS_ENV
from imagebuilder.disk.partitions import boot_and_root
from imagebuilder.recipe.load import load_recipe
from tests.conftest import ROOT, lacking, require_programs
from tests.images import arm64_base, make_context
from tests.test_build import make_recipe

BOOT = "/boot/firmware/"
# cloud-init's seed differs by design: the guestfs user-data lists the packages for first boot, and the
# instance-id in meta-data is derived from it.
SEED = ("/boot/firmware/user-data", "/boot/firmware/meta-data")
# The node's cloud-config: a rootless build adds the packages cloud-init installs at first boot.
CLOUD_CONFIG = "/etc/cloud/cloud.cfg.d/90-imagebuilder.cfg"


def require_guestfs() -> None:
    try:
        import guestfs  # noqa: F401
    except ImportError:
        lacking("python3-guestfs is not installed")
    if not list(Path("/boot").glob("vmlinuz-*")):
        lacking("no host kernel in /boot for the libguestfs appliance")


def read_file(image: Path, path: str) -> bytes:
    boot, root = boot_and_root(image)
    if path.startswith(BOOT):
        argv = ["mtype", "-i", f"{image}@@{boot.start}", "::/" + path.removeprefix(BOOT)]
        return subprocess.run(argv, capture_output=True, check=True, env={**os.environ, **MTOOLS_ENV}).stdout
    return subprocess.run(["debugfs", "-R", f"cat {path}", f"{image}?offset={root.start}"],
                          capture_output=True, check=True).stdout


def stat_root(image: Path, path: str) -> str:
    _, root = boot_and_root(image)
    text = subprocess.run(["debugfs", "-R", f"stat {path}", f"{image}?offset={root.start}"],
                          capture_output=True, text=True, check=True).stdout
    return " ".join(text.split("Mode:", 1)[1].split()[:1] + text.split("User:", 1)[1].split()[:1])


def list_dir(image: Path, path: str) -> list[tuple[str, bool]]:
    """(name, is a directory) of each entry of a directory in the root filesystem."""
    _, root = boot_and_root(image)
    text = subprocess.run(["debugfs", "-R", f"ls -p {path}", f"{image}?offset={root.start}"],
                          capture_output=True, text=True, check=True).stdout
    entries = []
    for line in text.splitlines():
        fields = line.strip().strip("/").split("/")
        if len(fields) >= 5 and fields[4] not in (".", ".."):
            entries.append((fields[4], fields[1].startswith("4")))
    return entries


def has_unit(image: Path, unit: str) -> bool:
    names = {name for d in ("/etc/systemd/system", "/lib/systemd/system") for name, _ in list_dir(image, d)}
    template = unit.split("@", 1)[0] + "@." + unit.rsplit(".", 1)[1] if "@" in unit else unit
    return unit in names or template in names


def unit_links(image: Path, units: list[str]) -> set[str]:
    """The links systemctl enable makes for `units`, as target.wants/unit."""
    found = set()
    for name, is_dir in list_dir(image, "/etc/systemd/system"):
        if is_dir and name.endswith((".wants", ".requires")):
            found |= {f"{name}/{unit}" for unit, _ in list_dir(image, f"/etc/systemd/system/{name}") if unit in units}
    return found


def build_with(backend: str, recipe_path: Path, out: Path) -> dict[str, object]:
    recipe = load_recipe(recipe_path)
    recipe = recipe.__class__(**{**recipe.__dict__, "output": recipe.output.__class__(
        **{**recipe.output.__dict__, "dir": str(out), "compress": "none"})})
    ctx = make_context()
    with ctx.stack:
        build(ctx, recipe, backend=backend)
    manifest: dict[str, object] = json.loads((recipe.output_dir / "manifest.json").read_text())
    return manifest


@pytest.mark.integration
def test_guestfs_writes_the_same_overlay_files_as_loop(tmp_path: Path) -> None:
    arm64_base()
    require_guestfs()
    require_programs("debugfs", "mtype", "bmaptool")
    recipe = make_recipe(tmp_path, marker="guestfs")
    loop = build_with("loop", recipe, tmp_path / "loop")
    guest = build_with("guestfs", recipe, tmp_path / "guestfs")
    for role in ("master", "worker"):
        loop_image, guest_image = (tmp_path / kind / "buildtest" / f"{role}.img" for kind in ("loop", "guestfs"))
        files = loop["images"][role]["overlay_files"]  # type: ignore[index]
        assert files, role
        assert sorted(guest["images"][role]["overlay_files"]) == sorted(files)  # type: ignore[index]
        for path in files:
            if path in SEED or path == CLOUD_CONFIG:
                continue
            assert read_file(guest_image, path) == read_file(loop_image, path), f"{role}: {path}"
            if not path.startswith(BOOT):
                assert stat_root(guest_image, path) == stat_root(loop_image, path), f"{role}: {path} mode/owner"
        # The same units enabled: the same links under /etc/systemd/system/*.wants.
        units = loop["images"][role]["units"]  # type: ignore[index]
        # Units whose package cloud-init installs at first boot have no unit file to link to yet.
        present = [u for u in units if has_unit(guest_image, u)]
        assert unit_links(guest_image, units) == unit_links(loop_image, present), role
        # No package was installed by the guestfs build: cloud-init installs them at first boot.
    assert "hello" in loop["images"]["worker"]["packages"]  # type: ignore[index]
    rootless = yaml.safe_load(read_file(tmp_path / "guestfs" / "buildtest" / "worker.img", CLOUD_CONFIG))
    assert "hello" in rootless["packages"] and rootless["package_update"] is True
    built = yaml.safe_load(read_file(tmp_path / "loop" / "buildtest" / "worker.img", CLOUD_CONFIG))
    assert "packages" not in built
    assert {k: v for k, v in rootless.items() if k not in ("packages", "package_update", "runcmd")} == built
    assert "hello" not in guest["images"]["worker"]["packages"]  # type: ignore[index]
    # The SBOM's inventory is read through the appliance too: the base's packages with the same licenses.
    loop_packages, guest_packages = (
        {c["name"]: c for c in json.loads((tmp_path / kind / "buildtest" / "worker.cdx.json").read_text())["components"]
         if c.get("purl", "").startswith("pkg:deb/")} for kind in ("loop", "guestfs"))
    assert guest_packages["libc6"] == loop_packages["libc6"] and guest_packages["openssh-server"]["licenses"]
    assert "hello" not in guest_packages


def test_not_root_chooses_guestfs() -> None:
    if os.geteuid() != 0:
        code = "from imagebuilder.engine.backends.interface import choose_backend; print(choose_backend(None).name)"
        assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip() == "guestfs"
        return
    require_programs("setpriv")
    code = "from imagebuilder.engine.backends.interface import choose_backend; print(choose_backend(None).name)"
    result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
                             code], cwd=ROOT, capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.stdout.strip() == "guestfs"
    root = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert root.stdout.strip() == "loop"
