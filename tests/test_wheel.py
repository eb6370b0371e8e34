"""imagebuilder as users install it: a wheel in a fresh virtual environment, run from outside the checkout.

The built-in overlays must come from the installed package, not from a git checkout next to it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from imagebuilder.disk.partitions import boot_and_root
from tests.conftest import ROOT, require_programs
from tests.images import arm64_base, make_context, small_recipe


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from this checkout, installed into a new venv; its bin/ directory."""
    work = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", work / "dist", ROOT],
                   check=True, cwd=work)
    (wheel,) = (work / "dist").glob("imagebuilder-*.whl")
    subprocess.run([sys.executable, "-m", "venv", work / "venv"], check=True)
    subprocess.run([work / "venv/bin/pip", "install", "-q", wheel], check=True, cwd=work)
    return work / "venv/bin"


def clean_env() -> dict[str, str]:
    # Nothing may lead the installed program back to the checkout.
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def test_wheel_carries_the_overlays(installed: Path, tmp_path: Path) -> None:
    probe = ("import imagebuilder, imagebuilder.layers.render as r; "
             "print(imagebuilder.__file__); print(r.BUILTIN); print(sorted(p.name for p in r.BUILTIN.iterdir()))")
    out = subprocess.run([installed / "python", "-c", probe], capture_output=True, text=True, check=True,
                         cwd=tmp_path, env=clean_env()).stdout.splitlines()
    assert not out[0].startswith(str(ROOT)) and not out[1].startswith(str(ROOT)), out
    assert "'common'" in out[2] and "'master'" in out[2] and "'worker'" in out[2]
    beacon = Path(out[1]) / "common/root/usr/local/lib/imagebuilder/beacon.py"
    assert beacon.is_file() and (Path(out[1]) / "master/layer.yaml").is_file()


@pytest.mark.integration
def test_installed_wheel_builds_images_with_the_builtin_overlays(installed: Path, tmp_path: Path) -> None:
    arm64_base()
    require_programs("debugfs")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(small_recipe("wheeltest", tmp_path / "out", compress="none", bmap=False))
    env = clean_env()
    cache = ["--cache-dir", str(make_context().cache_dir)]
    subprocess.run([installed / "imagebuilder", "validate", recipe], check=True, cwd=tmp_path, env=env)
    subprocess.run([installed / "imagebuilder", *cache, "--state-dir", str(tmp_path / "state"), "build", recipe],
                   check=True, cwd=tmp_path, env=env)
    for role, path, mode in (("worker", "/usr/local/lib/imagebuilder/set_hostname.py", "0100755"),
                             ("worker", "/usr/local/lib/imagebuilder/beacon.py", "0100755"),
                             ("master", "/etc/dnsmasq.d/cluster.conf", "0100644"),
                             ("master", "/etc/rancher/k3s/config.yaml", "0100600")):
        image = tmp_path / "out/wheeltest" / f"{role}.img"
        _, root = boot_and_root(image)
        stat = subprocess.run(["debugfs", "-R", f"stat {path}", f"{image}?offset={root.start}"],
                              capture_output=True, text=True, check=True).stdout
        assert f"Mode:  {mode[-4:]}" in stat or f"Mode: {mode[-4:]}" in stat, (role, path, stat[:300])
