"""Workers without cards, booted under qemu: the master (built with a netboot tree) boots from its card as
always; node1 and node2 have no disk at all: the test fetches what their boot ROM would (config.txt, then the
kernel and initramfs it names, and cmdline.txt) from the master's TFTP server and gives it to qemu, and their
root comes from the master over NFS. An unknown worker boots from its card in the same cluster."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagebuilder.boottest.plan import BootOptions, BootReport
from imagebuilder.boottest.report import format_report, write_json
from imagebuilder.disk.partitions import boot_and_root
from imagebuilder.recipe.load import load_recipe
from tests.images import arm64_base, make_context
from tests.test_boot import boot_workdirs, build_cluster, check, namespaces

NETBOOT = "netboot: {workers: [node1, node2]}\n"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The netboot cluster, built: (recipe, private key)."""
    arm64_base()
    return build_cluster(tmp_path_factory.mktemp("netboot"), variant="netboot", extra=NETBOOT)


@pytest.fixture(scope="module")
def netbooted(built: tuple[Path, Path]) -> Iterator[tuple[BootReport, Path]]:
    from imagebuilder.boottest.boot import boot_test

    recipe_path, key = built
    logs = recipe_path.parent / "logs"
    before = namespaces()
    ctx = make_context()
    # Four guests, then two of them again: 725 s here on an idle machine, close to the default 900.
    with ctx.stack:
        report = boot_test(ctx, load_recipe(recipe_path), BootOptions(workers=2, unknown=1, ssh_key=key, logs=logs,
                                                                     timeout=1800))
    print(format_report(report))
    write_json(report, logs / "report.json")
    assert namespaces() == before, "a namespace outlived the boot test"
    assert not boot_workdirs(), "a temporary directory outlived the boot test"
    assert all(r.guest.proc.poll() is not None for r in report.nodes), "a guest outlived the boot test"
    yield report, logs


@pytest.mark.boot
def test_diskless_workers_boot_from_the_master_and_a_card_worker_beside_them(
        netbooted: tuple[BootReport, Path]) -> None:
    report, logs = netbooted
    assert [(r.node.name, r.node.netboot) for r in report.nodes] == [
        ("master", False), ("node1", True), ("node2", True), ("node-b00701", False)]
    for name in ("boots", "hostname", "boot finished", "cloud-init once, no errors", "ssh login"):
        check(report, name)
    # qemu had no disk for them: nothing but the LAN.
    assert [r.guest.spec.disk is None for r in report.nodes] == [False, True, True, False]


@pytest.mark.boot
def test_diskless_root_is_the_masters_shared_root_under_ram(netbooted: tuple[BootReport, Path]) -> None:
    report, _ = netbooted
    check(report, "no card: root in RAM over the network")
    check(report, "root from the master under a RAM layer")
    check(report, "own state folder on the master")
    check(report, "root and boot on the card")  # the card worker's, as before


@pytest.mark.boot
def test_diskless_workers_have_their_own_identity_and_keep_it(netbooted: tuple[BootReport, Path]) -> None:
    report, _ = netbooted
    check(report, "own identity")  # machine-ids and host keys all differ, across the four nodes
    check(report, "identity kept across a power cycle")


@pytest.mark.boot
def test_diskless_workers_share_jobs_and_report_to_the_dashboard(netbooted: tuple[BootReport, Path]) -> None:
    report, _ = netbooted
    for name in ("dnsmasq lease", "DNS", "NFS write", "NFS read", "dashboard", "clock from the master"):
        check(report, name)
    failed = [f"{c.name} [{c.node}]: {c.detail}" for c in report.checks if not c.ok]
    assert not failed, "\n".join(failed)


@pytest.mark.boot
def test_verify_reads_the_tree_in_the_master_image(built: tuple[Path, Path], tmp_path: Path) -> None:
    """`imagebuilder verify DIR` on the tree as the master serves it (its root mounted read-only here)."""
    recipe = load_recipe(built[0])
    master = recipe.output_dir / "master.img"
    _, root = boot_and_root(master)
    mnt = tmp_path / "root"
    mnt.mkdir()
    subprocess.run(["mount", "-o", f"ro,noload,offset={root.start},sizelimit={root.size}", master, mnt], check=True)
    try:
        out = subprocess.run([sys.executable, "-m", "imagebuilder", "verify", mnt / "srv/netboot"],
                             capture_output=True, text=True, check=False)
        listed = sorted(p.name for p in (mnt / "srv/netboot/nodes").iterdir())
        tftp = {p.name for p in (mnt / "srv/netboot/tftp").iterdir()}
    finally:
        subprocess.run(["umount", mnt], check=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "boots on: pi3b, pi3b+, pi4b" in out.stdout
    assert listed == ["b8-27-eb-00-00-01", "b8-27-eb-00-00-02"]
    # The seed (password hashes, keys) is not served over TFTP.
    assert not tftp & {"user-data", "meta-data", "network-config"} and "cmdline.txt" in tftp


def test_curl_speaks_tftp() -> None:
    """The test's TFTP client: curl built with TFTP (Debian's is)."""
    protocols = subprocess.run(["curl", "--version"], capture_output=True, text=True, check=True).stdout
    assert "tftp" in protocols.split("Protocols:")[1].split("\n")[0]
