"""armhf (Raspberry Pi 2) end to end: the bootstrap base with Debian's armmp kernel, master and worker built and
verified, the master on `virt,highmem=off`, node1 on qemu's Raspberry Pi 2 model. Unknown workers are the arm64
cluster's to boot: the name from the MAC is the same Python on either architecture, and a third guest costs
minutes on two cores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imagebuilder.boards.verify import verify_image
from imagebuilder.recipe.load import load_recipe
from tests.conftest import ROOT
from tests.images import armhf_base
from tests.test_boot import K3S_TIER, boot_workdirs, build_cluster, namespaces
from tests.test_programs import boot_tier_path


@pytest.fixture(scope="module")
def armhf_cluster(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    armhf_base()
    return build_cluster(tmp_path_factory.mktemp("armhf"), "armhf")


@pytest.mark.boot
def test_armhf_images_verify_for_the_pi2(armhf_cluster: tuple[Path, Path]) -> None:
    out = load_recipe(armhf_cluster[0]).output_dir
    for role in ("master", "worker"):
        verdict = verify_image(out / f"{role}.img")
        assert verdict.ok and verdict.arch == "armhf", verdict
        assert sorted(verdict.good_boards) == ["pi2b", "pi3b", "pi3b+"], verdict
        # A Pi 4 would start Debian's armmp kernel in 64-bit mode: raspi-firmware writes no arm_64bit=0.
        assert any("64-bit mode" in p for p in verdict.boards["pi4b"]), verdict.boards["pi4b"]


@pytest.mark.boot
def test_armhf_cluster_with_a_worker_on_the_pi2_model(armhf_cluster: tuple[Path, Path], tmp_path: Path) -> None:
    """Run as a user runs it, `imagebuilder boot-test`, with nothing on PATH but the programs of the tiers
    `make boot-test` installs (build and boot): they are enough for a boot test."""
    recipe_path, key = armhf_cluster
    logs = recipe_path.parent / "logs"
    before = namespaces()
    argv = [sys.executable, "-m", "imagebuilder", "boot-test", recipe_path, "--workers", "1", "--board", "pi2b",
            "--ssh-key", key, "--logs", logs, "--json", logs / "report.json"]
    env = {**os.environ, "PATH": boot_tier_path(tmp_path / "tier")}
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    print(done.stdout)  # the report, shown with -s and in the log of a failure
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert namespaces() == before and not boot_workdirs()
    checks = json.loads((logs / "report.json").read_text())["checks"]
    (firmware,) = [c for c in checks if c["name"] == "firmware step"]
    assert firmware["node"] == "node1" and "bcm2836-rpi-2-b.dtb" in firmware["detail"], firmware["detail"]
    assert "root=/dev/mmcblk0p2 boot=/dev/mmcblk0p1" in (logs / "serial-node1.log").read_text()
    for name in ("boots", "boot finished", "root and boot on the card", "memory cgroup", "hostname",
                 "cloud-init once, no errors", "dnsmasq lease", "NFS read", "NAT", "clock",
                 "clock from the master", "dashboard", "k3s agent", "k3s kernel", "k3s cgroups",
                 "overlay snapshot", "container runs", "VXLAN",
                 *(K3S_TIER if os.environ.get("IMAGEBUILDER_K3S_ASSETS") else ())):
        assert [c for c in checks if c["name"] == name], f"no check {name!r} ran"
    failed = [f"{c['name']} [{c['node']}]: {c['detail']}" for c in checks if not c["ok"]]
    assert not failed, "\n".join(failed)
