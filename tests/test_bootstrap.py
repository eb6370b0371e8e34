"""The Debian bootstrap base: Raspberry Pi OS layout, bootable files, clean filesystems."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from imagebuilder.core.binfmt import entry_ready
from imagebuilder.disk.fat import fat_label
from imagebuilder.disk.image import check_filesystems
from imagebuilder.disk.partitions import MIB, boot_and_root, read_partitions
from imagebuilder.sources.aptsources import host_mirrors, source_lines
from imagebuilder.sources.base import BaseImage
from imagebuilder.sources.cloudinit_modules import MODULES_CFG, trim_cloud_init
from tests.images import arm64_base
from tests.readers import fat_list, fat_read


@pytest.fixture(scope="session")
def base() -> BaseImage:
    return arm64_base()


def test_host_mirrors_from_deb822_and_one_line(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.invalid/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\n"
        "# a comment\nTypes: deb deb-src\nURIs: http://security.invalid/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n\n"
        "Types: deb\nEnabled: no\nURIs: http://disabled.invalid/\nSuites: bookworm\n"
    )
    mirrors = host_mirrors(tmp_path)
    assert (mirrors.archive, mirrors.security) == ("http://mirror.invalid/debian",
                                                  "http://security.invalid/debian-security")
    assert source_lines(mirrors, "trixie", "main non-free-firmware") == [
        "deb http://mirror.invalid/debian trixie main non-free-firmware",
        "deb http://mirror.invalid/debian trixie-updates main non-free-firmware",
        "deb http://security.invalid/debian-security trixie-security main non-free-firmware",
    ]
    (tmp_path / "sources.list.d" / "debian.sources").unlink()
    (tmp_path / "sources.list").write_text("deb [arch=amd64] http://one.invalid/debian bookworm main\n")
    assert host_mirrors(tmp_path).archive == "http://one.invalid/debian"


def test_binfmt_entry_needs_enabled_and_f_flag(tmp_path: Path) -> None:
    entry = tmp_path / "qemu-aarch64"
    entry.write_text("enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: POF\noffset 0\n")
    assert entry_ready(entry)
    entry.write_text("enabled\ninterpreter /x\nflags: P\n")
    assert not entry_ready(entry)
    entry.write_text("disabled\ninterpreter /x\nflags: F\n")
    assert not entry_ready(entry)


@pytest.mark.integration
def test_partition_table_and_labels(base: BaseImage) -> None:
    parts = read_partitions(base.path)
    assert [(p.type, p.start) for p in parts] == [("c", 4 * MIB), ("83", 4 * MIB + 512 * MIB)]
    boot, root = boot_and_root(base.path)
    assert fat_label(base.path, boot) == "bootfs"
    out = subprocess.run(["dumpe2fs", "-h", f"{base.path}?offset={root.start}"], capture_output=True, text=True,
                         check=True).stdout
    assert "Filesystem volume name:   rootfs" in out


@pytest.mark.integration
def test_boot_partition_holds_firmware_kernel_and_cmdline(base: BaseImage) -> None:
    boot, _ = boot_and_root(base.path)
    names = fat_list(base.path, boot)
    for expected in ("config.txt", "cmdline.txt", "bootcode.bin", "start4.elf", "bcm2711-rpi-4-b.dtb"):
        assert expected in names, names
    assert any(n.startswith("vmlinuz-") for n in names) and any(n.startswith("initrd.img-") for n in names)
    cmdline = fat_read(base.path, boot, "cmdline.txt")
    assert "root=LABEL=rootfs" in cmdline.split() and "rootwait" in cmdline.split()
    assert len(cmdline.splitlines()) == 1


@pytest.mark.integration
def test_filesystems_are_clean(base: BaseImage, tmp_path: Path) -> None:
    check_filesystems(base.path, tmp_path)  # raises on any complaint of sfdisk, e2fsck or fsck.vfat


@pytest.mark.integration
def test_nothing_identifies_a_machine(base: BaseImage) -> None:
    _, root = boot_and_root(base.path)

    def debugfs(request: str) -> str:
        return subprocess.run(["debugfs", "-R", request, f"{base.path}?offset={root.start}"], capture_output=True,
                              text=True, check=True).stdout

    assert debugfs("cat /etc/machine-id") == ""
    assert "ssh_host_" not in debugfs("ls /etc/ssh")
    assert "resolv.conf" not in debugfs("ls /etc").split()
    assert "NoCloud" in debugfs("cat /etc/cloud/cloud.cfg.d/90-imagebuilder-datasource.cfg")


@pytest.mark.integration
def test_base_has_what_first_boot_needs(base: BaseImage) -> None:
    for package in ("cloud-init", "cloud-guest-utils", "openssh-server", "raspi-firmware", "linux-image-arm64"):
        assert package in base.packages


def test_cloud_init_keeps_what_a_node_uses_in_two_stages_after_the_network(tmp_path: Path) -> None:
    # Debian bookworm's cloud.cfg lists, abridged, in each of the forms cloud.cfg allows.
    debian = {"cloud_init_modules": ["migrator", "bootcmd", "write-files", "growpart", "set_hostname",
                                     "update_etc_hosts", "users-groups", ["ssh", "once-per-instance"]],
              "cloud_config_modules": ["snap", "keyboard", "locale", "set-passwords", "grub-dpkg", "apt-configure",
                                       "ntp", "timezone", "runcmd", "byobu"],
              "cloud_final_modules": ["package-update-upgrade-install", "puppet", {"name": "scripts-user"},
                                      "keys-to-console", "final-message"]}
    (tmp_path / "etc/cloud/cloud.cfg.d").mkdir(parents=True)
    (tmp_path / "etc/systemd/system").mkdir(parents=True)
    (tmp_path / "etc/cloud/cloud.cfg").write_text(yaml.safe_dump(debian))
    trim_cloud_init(tmp_path)
    lists = yaml.safe_load((tmp_path / MODULES_CFG).read_text())
    assert lists == {
        "cloud_init_modules": ["bootcmd", "write-files", "growpart", "users-groups", ["ssh", "once-per-instance"]],
        "cloud_config_modules": [],
        # The config stage's modules first: runcmd writes the script scripts-user runs, apt is set up before
        # packages are installed.
        "cloud_final_modules": ["keyboard", "locale", "set-passwords", "apt-configure", "timezone", "runcmd",
                                "package-update-upgrade-install", {"name": "scripts-user"}, "keys-to-console",
                                "final-message"]}
    assert os.readlink(tmp_path / "etc/systemd/system/cloud-config.service") == "/dev/null"
