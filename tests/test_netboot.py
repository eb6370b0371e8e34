"""Network boot: the command line a netbooted worker gets, and the TFTP tree read as the bootloader would."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from imagebuilder.disk.fat import MTOOLS_ENV
from imagebuilder.disk.partitions import boot_and_root
from imagebuilder.netboot.tree import netboot_cmdline, served_at, verify_netboot_tree
from tests.conftest import require_programs
from tests.images import arm64_base

CARD = ("console=serial0,115200 console=tty1 root=LABEL=rootfs rootfstype=ext4 fsck.repair=yes rootwait rw "
        "net.ifnames=0 cgroup_memory=1 cgroup_enable=memory\n")


def test_the_netboot_command_line_swaps_the_card_root_for_the_master() -> None:
    line = netboot_cmdline(CARD, "10.0.0.1", "/srv/netboot")
    assert line.endswith("\n") and line.count("\n") == 1
    args = line.split()
    assert not [a for a in args if a.startswith(("root=LABEL", "rootfstype", "fsck.repair")) or a in ("rw", "rootwait")]
    for kept in ("console=serial0,115200", "console=tty1", "net.ifnames=0", "cgroup_memory=1", "cgroup_enable=memory"):
        assert kept in args
    for wanted in ("boot=nfs4root", "root=/dev/nfs", "nfsroot=10.0.0.1:/srv/netboot/root", "ip=dhcp", "ro",
                   "netboot.overlay", "ds=nocloud;s=file:///boot/firmware/"):
        assert wanted in args


@pytest.mark.integration
def test_a_tree_from_a_card_initramfs_is_refused_for_what_it_lacks(tmp_path: Path) -> None:
    """The card's own boot files, unchanged: its initramfs cannot reach a root on the network, and its
    command line names the card."""
    require_programs("mcopy", "debugfs", "lsinitramfs")
    image = arm64_base().path
    boot, root = boot_and_root(image)
    tftp, tree_root = tmp_path / "tree" / "tftp", tmp_path / "tree" / "root"
    tftp.mkdir(parents=True)
    subprocess.run(["mcopy", "-s", "-n", "-i", f"{image}@@{boot.start}", "::/*", tftp], check=True,
                   env={**os.environ, **MTOOLS_ENV})
    (tree_root / "etc").mkdir(parents=True)
    (tree_root / "var/lib/dpkg").mkdir(parents=True)
    status = subprocess.run(["debugfs", "-R", "cat /var/lib/dpkg/status", f"{image}?offset={root.start}"],
                            capture_output=True, check=True).stdout
    (tree_root / "var/lib/dpkg/status").write_bytes(status)
    verdict = verify_netboot_tree(tmp_path / "tree", "10.0.0.1")
    assert verdict.arch == "arm64"
    assert "cmdline.txt: no boot=nfs4root" in verdict.general
    assert any("lacks nfsv4" in p for p in verdict.boards["pi3b+"]), verdict.lines()
    assert any("lacks lan78xx" in p for p in verdict.boards["pi3b+"])
    assert any("lacks genet" in p for p in verdict.boards["pi4b"])
    assert not verdict.ok
    # With the netboot command line, only the drivers are left.
    (tftp / "cmdline.txt").write_text(netboot_cmdline((tftp / "cmdline.txt").read_text(), "10.0.0.1",
                                                      str(tmp_path / "tree")))
    assert verify_netboot_tree(tmp_path / "tree", "10.0.0.1").general == []
    # `imagebuilder verify DIR` reads the server and the served path from the tree's own cmdline.txt.
    assert served_at(tmp_path / "tree") == ("10.0.0.1", str(tmp_path / "tree"))
    assert served_at(tmp_path / "nothing") == ("", "")


def test_netboot_user_data_keeps_restored_keys_and_grows_no_card() -> None:
    from imagebuilder.netboot.populate import netboot_user_data

    card = "#cloud-config\nusers: [{name: a}]\nssh_deletekeys: true\ngrowpart: {mode: auto}\nresize_rootfs: true\n"
    text = netboot_user_data(card)
    assert text.startswith("#cloud-config\n")
    data = yaml.safe_load(text)
    assert data == {"users": [{"name": "a"}], "ssh_deletekeys": False}


def test_netboot_checks_fail_a_node_that_changed_or_never_came_back() -> None:
    from imagebuilder.boottest.netboot import check_netboot

    seen = {"hostname": "node1", "machine-id": "a" * 32, "host key": "AAAA", "root": "overlay overlay",
            "shared root": "nfs4 10.0.0.1:/srv/netboot/root", "state": "nfs4 10.0.0.1:/srv/netboot/nodes/b8-27"}
    macs = {"node1": "b8:27:eb:00:00:01", "node2": "b8:27:eb:00:00:02", "node3": "b8:27:eb:00:00:03"}
    seen = {**seen, "state": "nfs4 10.0.0.1:/srv/netboot/nodes/b8-27-eb-00-00-01"}
    verdicts = {(c.name, c.node): c.ok for c in check_netboot(
        "/srv/netboot", "10.0.0.1", macs, {"node1": seen, "node2": seen, "node3": seen},
        {"node1": seen, "node2": {**seen, "host key": "BBBB"}})}
    assert verdicts[("root from the master under a RAM layer", "node1")]
    assert verdicts[("own state folder on the master", "node1")]
    assert not verdicts[("own state folder on the master", "node2")]  # node1's folder, not its own
    assert verdicts[("identity kept across a power cycle", "node1")]
    assert not verdicts[("identity kept across a power cycle", "node2")]  # a new host key
    assert not verdicts[("identity kept across a power cycle", "node3")]  # did not come back
    card = {**seen, "root": "/dev/vda2", "shared root": ""}
    assert not all(c.ok for c in check_netboot("/srv/netboot", "10.0.0.1", macs, {"node1": card}, {}))
