"""Workers without cards, booted under qemu: the master (built with a netboot tree) boots from its card as
always; node1 and node2 have no disk at all: the test fetches what their boot ROM would (config.txt, then the
kernel and initramfs it names, and cmdline.txt) from the master's TFTP server and gives it to qemu, and their
root comes from the master over NFS. An unknown worker boots from its card in the same cluster, a card that
Raspberry Pi Imager customised after it was flashed (one boot carries both: a cluster boot costs minutes)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagebuilder.boottest.plan import BootOptions, BootReport
from imagebuilder.boottest.report import format_report, write_json
from imagebuilder.disk.fat import MTOOLS_ENV as MTOOLS
from imagebuilder.disk.partitions import boot_and_root
from imagebuilder.recipe.load import load_recipe
from tests.images import arm64_base, make_context
from tests.readers import fat_read
from tests.test_boot import boot_workdirs, build_cluster, check, check_k3s_tier, namespaces

NETBOOT = "netboot: {workers: [node1, node2]}\n"


# What Raspberry Pi Imager 2.0 writes on a card it customises (init_format cloudinit): its generator's
# user-data for a user with an SSH key, Wi-Fi, a time zone and a keyboard (without the avahi-daemon package
# it also asks for: the test's network reaches no mirror), its network-config, a meta-data with a fresh
# instance-id, and its cmdline.txt additions appended to the trimmed line, with no newline.
IMAGER_USER_DATA = """#cloud-config
manage_resolv_conf: false

hostname: "node7"
manage_etc_hosts: true
apt:
  preserve_sources_list: true
  conf: |
    Acquire {{
      Check-Date "false";
    }};
timezone: "Europe/London"
keyboard:
  model: pc105
  layout: "gb"
user:
  name: "pi"
  shell: /bin/bash
  lock_passwd: false
  passwd: "$y$j9T$abcdefghijklmnopqrstu.$0123456789abcdefghijklmnopqrstuvwxyzABCDE"
  ssh_authorized_keys:
    - "{key}"
  sudo: null
ssh_pwauth: false
runcmd:
  - [ systemctl, enable, --now, ssh ]
"""
IMAGER_NETWORK_CONFIG = """network:
  version: 2
  ethernets:
    eth0:
      dhcp4: true
      dhcp6: true
      optional: true
  wifis:
    wlan0:
      dhcp4: true
      regulatory-domain: "GB"
      access-points:
        "lab":
          password: "1dcd29e19408b4f788e0befab0c29585dc83ca14d12a80a8cdfef9e38189833f"
      optional: true
"""
IMAGER_INSTANCE = "rpi-imager-1767225600000"


def customise_like_imager(image: Path, key: str, work: Path) -> None:
    boot, _ = boot_and_root(image)
    where, env = f"{image}@@{boot.start}", {**os.environ, **MTOOLS}
    for name, text in (("user-data", IMAGER_USER_DATA.format(key=key)), ("network-config", IMAGER_NETWORK_CONFIG),
                       ("meta-data", f"instance-id: {IMAGER_INSTANCE}\n")):
        (work / name).write_text(text)
        subprocess.run(["mcopy", "-o", "-i", where, work / name, f"::/{name}"], check=True, env=env)
    cmdline = fat_read(image, boot, "cmdline.txt").strip()
    (work / "cmdline.txt").write_text(f"{cmdline} cfg80211.ieee80211_regdom=GB ds=nocloud;i={IMAGER_INSTANCE}")
    subprocess.run(["mcopy", "-o", "-i", where, work / "cmdline.txt", "::/cmdline.txt"], check=True, env=env)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The netboot cluster, built: (recipe, private key)."""
    arm64_base()
    recipe_path, key = build_cluster(tmp_path_factory.mktemp("netboot"), variant="netboot", extra=NETBOOT)
    # The card workers of this cluster (the unknown one) boot from a worker card Imager customised.
    customise_like_imager(load_recipe(recipe_path).output_dir / "worker.img",
                          Path(f"{key}.pub").read_text().strip(), recipe_path.parent)
    return recipe_path, key


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
    # containerd's snapshots on a RAM root over NFS: the tmpfs the initramfs mounts for them takes overlays.
    for name in ("overlay snapshot", "container runs", "k3s kernel", "k3s cgroups", "VXLAN"):
        check(report, name)
    ran = {c.node for c in report.checks if c.name == "container runs" and c.ok and not c.skipped}
    assert {"node1", "node2"} <= ran, ran
    check_k3s_tier(report)


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
def test_a_card_customised_by_imager_still_joins_with_imagers_user_added(
        netbooted: tuple[BootReport, Path]) -> None:
    report, logs = netbooted
    # The cluster's own: the name from the MAC (not Imager's node7), the LAN, the share, cloud-init clean.
    card = [c for c in report.checks if c.node == "node-b00701"]
    for name in ("boots", "hostname", "cloud-init once, no errors", "dnsmasq lease", "NFS read", "ssh login"):
        assert [c for c in card if c.name == name and c.ok], f"{name}: {[c for c in card if c.name == name]}"
    console = (logs / "serial-node-b00701.log").read_text(errors="replace")
    assert "seed /boot/firmware/network-config replaced by the recipe's" in console
    # Imager's user was made with its key (cloud-init lists each user's keys on the console).
    assert re.search(r"Authorized keys from /home/pi/\.ssh/authorized_keys for user pi", console), console[-3000:]


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
