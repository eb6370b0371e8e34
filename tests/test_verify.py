"""verify: config.txt read as the firmware reads it, per board; and the checks on real built images."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imagebuilder.boards.firmware import effective_settings, select
from imagebuilder.boards.models import BOARDS
from imagebuilder.boards.verify import kernel_arch, verify_image
from imagebuilder.cli.main import main
from imagebuilder.disk.fat import MTOOLS_ENV
from imagebuilder.disk.partitions import boot_and_root
from tests.conftest import ROOT, as_another_user, lock_away, require_programs
from tests.images import arm64_base

DEBIAN_ARM64 = """\
# Do not modify this file!
arm_64bit=1
enable_uart=1
upstream_kernel=1

kernel=vmlinuz-6.1.0-56-arm64
initramfs initrd.img-6.1.0-56-arm64
"""
FILES = {"bootcode.bin", "start.elf", "fixup.dat", "start4.elf", "fixup4.dat", "vmlinuz-6.1.0-56-arm64",
         "initrd.img-6.1.0-56-arm64", "bcm2837-rpi-3-b.dtb", "bcm2711-rpi-4-b.dtb", "cmdline.txt"}


def test_debian_config_picks_its_kernel_and_the_upstream_device_tree() -> None:
    pi3 = select(DEBIAN_ARM64, BOARDS["pi3b"], FILES)
    assert (pi3.kernel, pi3.initramfs, pi3.device_tree, pi3.arm_64bit) == (
        "vmlinuz-6.1.0-56-arm64", "initrd.img-6.1.0-56-arm64", "bcm2837-rpi-3-b.dtb", True)
    assert select(DEBIAN_ARM64, BOARDS["pi4b"], FILES).device_tree == "bcm2711-rpi-4-b.dtb"
    # Without upstream_kernel the firmware wants the Raspberry Pi kernel's name.
    assert select(DEBIAN_ARM64.replace("upstream_kernel=1", ""), BOARDS["pi3b"], FILES).device_tree == \
        "bcm2710-rpi-3-b.dtb"


def test_sections_follow_the_firmwares_rules() -> None:
    text = ("kernel=all.img\n[pi4]\nkernel=four.img\n[pi3]\nkernel=three.img\n[pi3+]\ninitramfs plus.img followkernel\n"
            "[all]\ncmdline=cmd.txt\n[none]\nkernel=never.img\n[tryboot]\nkernel=try.img\n[all]\n"
            "[board-type=0x11]\ndevice_tree=custom.dtb\n")
    assert effective_settings(text, BOARDS["pi4b"])[0] == {"kernel": "four.img", "cmdline": "cmd.txt",
                                                           "device_tree": "custom.dtb"}
    three = effective_settings(text, BOARDS["pi3b"])[0]
    assert three == {"kernel": "three.img", "cmdline": "cmd.txt"}
    plus = select(text, BOARDS["pi3b+"], set())
    assert (plus.kernel, plus.initramfs) == ("three.img", "plus.img")


def test_default_kernels_per_board_and_mode() -> None:
    assert select("", BOARDS["pi2b"], set()).kernel == "kernel7.img"
    assert select("", BOARDS["pi3b"], set()).kernel == "kernel7.img"
    assert select("arm_64bit=1\n", BOARDS["pi3b"], set()).kernel == "kernel8.img"
    assert select("", BOARDS["pi4b"], set()).kernel == "kernel8.img"
    assert select("arm_64bit=0\n", BOARDS["pi4b"], set()).kernel == "kernel7l.img"
    assert select("", BOARDS["pi5"], set()).kernel == "kernel_2712.img"
    assert select("auto_initramfs=1\n", BOARDS["pi5"], set()).initramfs == "initramfs_2712"
    assert select("arm_64bit=1\n", BOARDS["pi2b"], set()).problems  # a Pi 2 has no 64-bit mode


def test_unknown_filters_are_reported_and_hardware_filters_noted() -> None:
    settings, problems, notes = effective_settings("[pi9]\nkernel=x\n[gpio4=1]\nkernel=y\n", BOARDS["pi3b"])
    assert settings == {} and problems == ["config.txt:1: [pi9] is no filter the firmware knows: its section "
                                           "would be skipped on every board"]
    assert notes and "gpio4=1" in notes[0]


def test_os_prefix_is_ignored_when_the_kernel_is_not_there() -> None:
    assert select("os_prefix=new/\n", BOARDS["pi4b"], {"kernel8.img", "bcm2711-rpi-4-b.dtb"}).kernel == "kernel8.img"
    chosen = select("os_prefix=new/\n", BOARDS["pi4b"], {"new/kernel8.img", "new/bcm2711-rpi-4-b.dtb"})
    assert (chosen.kernel, chosen.device_tree) == ("new/kernel8.img", "new/bcm2711-rpi-4-b.dtb")


def test_kernel_architecture_from_its_header() -> None:
    arm64 = bytes(56) + b"ARM\x64" + bytes(100)
    zimage = bytes(0x24) + bytes.fromhex("18286f01") + bytes(100)
    assert kernel_arch(arm64) == "arm64" and kernel_arch(zimage) == "armhf" and kernel_arch(bytes(200)) is None


def fat(image: Path) -> tuple[str, dict[str, str]]:
    boot, _ = boot_and_root(image)
    return f"{image}@@{boot.start}", {**os.environ, **MTOOLS_ENV}


@pytest.mark.integration
def test_the_bootstrap_base_boots_on_pi3_and_pi4_but_claims_no_pi5(tmp_path: Path) -> None:
    require_programs("lsinitramfs", "debugfs", "mdir")
    verdict = verify_image(arm64_base().path)
    assert verdict.ok and verdict.general == [] and verdict.arch == "arm64"
    assert verdict.good_boards == ["pi3b", "pi3b+", "pi4b"]
    assert "the firmware looks for the device tree bcm2712-rpi-5-b.dtb: missing" in verdict.boards["pi5"]


@pytest.mark.integration
def test_broken_cards_are_caught_naming_what_the_firmware_misses(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    require_programs("lsinitramfs", "debugfs", "mdir", "mcopy", "mdel")
    image = tmp_path / "broken.img"
    subprocess.run(["cp", "--sparse=always", arm64_base().path, image], check=True)
    where, env = fat(image)
    subprocess.run(["mdel", "-i", where, "::/bcm2837-rpi-3-b.dtb", "::/bootcode.bin"], check=True, env=env)
    cmdline = tmp_path / "cmdline.txt"
    cmdline.write_text("console=ttyAMA0 root=LABEL=nosuchfs rw\nsecond line\n")
    subprocess.run(["mcopy", "-o", "-i", where, cmdline, "::/cmdline.txt"], check=True, env=env)
    verdict = verify_image(image)
    assert "cmdline.txt: 2 lines; the kernel reads only the first" in verdict.general
    assert "cmdline.txt: root=LABEL=nosuchfs is not the image's root partition (partition 2)" in verdict.general
    assert ("the firmware looks for the device tree bcm2837-rpi-3-b.dtb or bcm2710-rpi-3-b.dtb: missing"
            in verdict.boards["pi3b"])
    assert "the firmware looks for bootcode.bin: missing" in verdict.boards["pi3b"]
    assert verdict.boards["pi4b"] == []  # a Pi 4 needs neither
    assert main(["verify", str(image), "--json"]) == 3
    document = json.loads(capsys.readouterr().out)
    assert document["ok"] is False and document["boots_on"] == ["pi4b"]


def verify_lines(*argv: str, user: bool = False) -> tuple[int, list[str]]:
    command = [sys.executable, "-m", "imagebuilder", "verify", *argv]
    result = subprocess.run(as_another_user(command) if user else command, capture_output=True, text=True,
                            check=False, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "Traceback" not in result.stderr
    return result.returncode, result.stderr.splitlines()


def test_what_is_no_image_is_said_in_one_line(tmp_path: Path) -> None:
    assert verify_lines(str(tmp_path / "nosuch.img")) == (2, [
        f"imagebuilder: {tmp_path / 'nosuch.img'}: no such file",
        "  hint: check the path: a build writes out/<cluster>/master.img and worker.img"])
    text = tmp_path / "notes.txt"
    text.write_text("not a disk\n" * 100)
    empty = tmp_path / "empty.img"
    empty.write_bytes(bytes(4 << 20))  # the size of an image, but no partition table
    for path in (text, empty):
        assert verify_lines(str(path)) == (2, [
            f"imagebuilder: {path}: not a disk image (no partition table)",
            "  hint: give an SD-card image such as out/<cluster>/worker.img, or a netboot folder"])


def test_an_image_of_another_user_is_named_not_a_traceback(shared_tmp: Path) -> None:
    out = shared_tmp / "out"
    out.mkdir()
    (out / "worker.img").write_bytes(bytes(1 << 20))
    lock_away(out)
    status, lines = verify_lines(str(out / "worker.img"), user=True)
    assert status == 2 and lines[0].startswith(f"imagebuilder: {out}: permission denied (it belongs to ")
