"""armhf (Raspberry Pi 2) end to end: the bootstrap base with Debian's armmp kernel, master and worker built and
verified, the master on `virt,highmem=off`, node1 on qemu's Raspberry Pi 2 model. Unknown workers are the arm64
cluster's to boot: the name from the MAC is the same Python on either architecture, and a third guest costs
minutes on two cores."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagebuilder.boards.verify import verify_image
from imagebuilder.boottest.plan import BootOptions, BootReport
from imagebuilder.boottest.report import format_report
from imagebuilder.recipe.load import load_recipe
from tests.images import armhf_base, make_context
from tests.test_boot import boot_workdirs, build_cluster, check, namespaces


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
def test_armhf_cluster_with_a_worker_on_the_pi2_model(armhf_cluster: tuple[Path, Path]) -> None:
    from imagebuilder.boottest.boot import boot_test

    recipe_path, key = armhf_cluster
    logs = recipe_path.parent / "logs"
    before = namespaces()
    ctx = make_context()
    with ctx.stack:
        report: BootReport = boot_test(ctx, load_recipe(recipe_path),
                                       BootOptions(workers=1, ssh_key=key, logs=logs, board="pi2b"))
    print(format_report(report))
    assert namespaces() == before and not boot_workdirs()
    (firmware,) = [c for c in report.checks if c.name == "firmware step"]
    assert firmware.node == "node1" and "bcm2836-rpi-2-b.dtb" in firmware.detail, firmware.detail
    assert "root=/dev/mmcblk0p2 boot=/dev/mmcblk0p1" in (logs / "serial-node1.log").read_text()
    for name in ("boots", "boot finished", "root and boot on the card", "memory cgroup", "hostname",
                 "cloud-init once, no errors", "dnsmasq lease", "NFS read", "NAT", "clock",
                 "clock from the master", "dashboard", "k3s agent"):
        check(report, name)
    failed = [f"{c.name} [{c.node}]: {c.detail}" for c in report.checks if not c.ok]
    assert not failed, "\n".join(failed)
