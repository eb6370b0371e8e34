"""The same files give the same image bytes: an emitted image's file systems made again from its files
(disk/rewrite.py, disk/fat.make_fat with an epoch), and the build's epoch (build/epoch.py).

The whole path, two builds of one recipe on empty stage caches minutes apart, is test_kill's
test_a_second_build_from_the_base_gives_the_same_images."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from imagebuilder.build.epoch import ENV, Epochs, build_epochs, ca_start, filesystem_created
from imagebuilder.core.errors import ImageBuilderError
from imagebuilder.disk.image import assemble, check_filesystems
from imagebuilder.disk.mount import mounted_image
from imagebuilder.disk.partitions import BOOT_SIZE, BOOT_START, boot_and_root
from imagebuilder.disk.rewrite import read_identity, rewrite_root
from imagebuilder.recipe.catalogue import LAYOUTS
from imagebuilder.roles.secrets import K3sSecrets
from imagebuilder.sources.base import BaseImage
from imagebuilder.sources.checksums import sha256_of
from tests.conftest import require_programs, require_root
from tests.imagediff import differing_files, differing_ranges

LAYOUT = LAYOUTS["raspios"]
EPOCH = 1_700_000_000  # 2023-11-14: earlier than every file the tests write now


def small_image(folder: Path) -> Path:
    """An image of the Raspberry Pi layout with a few files of each kind (made by assemble, as the bootstrap
    base is)."""
    require_programs("mkfs.ext4", "mkfs.vfat", "mcopy", "sfdisk", "debugfs")
    root, boot = folder / "root-tree", folder / "boot-tree"
    (root / "usr/lib").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "usr/lib/clock-epoch").touch()
    (root / "etc/hostname").write_text("node\n")
    (root / "etc/long-link").symlink_to("/" + "x" * 100)  # a target too long for the inode
    (root / "etc/short-link").symlink_to("hostname")
    os.link(root / "etc/hostname", root / "etc/hostname-again")
    (boot / "overlays").mkdir(parents=True)
    (boot / "config.txt").write_text("arm_64bit=1\n")
    (boot / "overlays/a.dtbo").write_bytes(b"\0" * 5000)
    image = folder / "image.img"
    assemble(image, root, boot, LAYOUT, 64 * 2**20, "1234abcd")
    return image


def change_the_same_way_at_another_time(image: Path, work: Path, order: list[str]) -> None:
    """Write files into the image in `order`, a second apart: the same content, other times and another
    order of creation."""
    with mounted_image(image, LAYOUT, work) as root:
        for name in order:
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(f"{name}\n")
            time.sleep(1.1)
        (root / "etc/hostname").unlink()  # removed and written again: a new inode, a new change time
        (root / "etc/hostname").write_text("node\n")


def rewrite(image: Path, work: Path) -> None:
    """What the final stage does, from its open tree to its closed image (engine/backends/loop.py)."""
    with mounted_image(image, LAYOUT, work, epoch=EPOCH):
        pass
    rewrite_root(image, EPOCH, work)


@pytest.mark.integration
def test_the_same_files_written_at_other_times_give_the_same_bytes(tmp_path: Path) -> None:
    require_root()
    original = small_image(tmp_path)
    one, two = tmp_path / "one.img", tmp_path / "two.img"
    shutil.copy(original, one)
    shutil.copy(original, two)
    names = ["etc/a", "etc/b", "srv/jobs/c", "boot/firmware/cmdline.txt", "boot/firmware/overlays/b.dtbo"]
    change_the_same_way_at_another_time(one, tmp_path / "w1", names)
    change_the_same_way_at_another_time(two, tmp_path / "w2", list(reversed(names)))
    assert sha256_of(one) != sha256_of(two)  # the kernel recorded when and in which order
    rewrite(one, tmp_path / "w3")
    rewrite(two, tmp_path / "w4")
    assert differing_files(one, two, tmp_path / "diff") == []
    assert sha256_of(one) == sha256_of(two), differing_ranges(one, two)
    check_filesystems(one, tmp_path)


@pytest.mark.integration
def test_a_rewritten_image_keeps_its_identity_files_and_times(tmp_path: Path) -> None:
    require_root()
    image = small_image(tmp_path)
    _, root = boot_and_root(image)
    before = read_identity(f"{image}?offset={root.start}")
    rewrite(image, tmp_path / "w")
    _, root = boot_and_root(image)
    assert read_identity(f"{image}?offset={root.start}") == before  # the node finds its root by UUID and label
    assert image.stat().st_size == root.end  # the file ends with its root partition
    assert root.size % 2**20 == 0 and root.size >= 256 * 2**20  # sized to what it holds plus headroom
    assert filesystem_created(image) == EPOCH

    def stat_of(name: str) -> str:
        return subprocess.run(["debugfs", "-R", f"stat {name}", f"{image}?offset={root.start}"],
                              capture_output=True, text=True, check=True).stdout

    for name in ("/etc/hostname", "/etc/long-link", "/", "/lost+found"):
        shown = stat_of(name)
        for field in ("ctime", "atime", "mtime", "crtime"):
            assert f"{field}: 0x{EPOCH:08x}:00000000" in shown, (name, field, shown)
    assert "Links: 2" in stat_of("/etc/hostname")  # a hard link stays one
    listed = subprocess.run(["mdir", "-i", f"{image}@@{BOOT_START}", "::/"], capture_output=True, text=True,
                            check=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"}).stdout
    assert "config" in listed and "2023-11-14" in listed  # the FAT's entries carry the epoch too
    assert boot_and_root(image)[0].size == BOOT_SIZE


def test_source_date_epoch_from_the_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "1234567890")
    assert build_epochs(None, None) == Epochs(1234567890, 1234567890)
    monkeypatch.setenv(ENV, "yesterday")
    with pytest.raises(ImageBuilderError, match="SOURCE_DATE_EPOCH='yesterday' is not a whole number"):
        build_epochs(None, None)


def test_the_images_epoch_is_the_later_of_the_base_and_the_clusters_ca(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    require_programs("openssl")
    monkeypatch.delenv(ENV, raising=False)
    image = small_image(tmp_path)
    made = filesystem_created(image)
    assert abs(made - time.time()) < 300  # assembled just now
    base = BaseImage(image, "0" * 64, LAYOUT, {})
    assert build_epochs(base, None) == Epochs(made, made)
    time.sleep(1.1)
    key, cert = tmp_path / "ca.key", tmp_path / "ca.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-subj", "/CN=test-ca", "-days", "1", "-out", cert],
                   check=True, capture_output=True)
    started = ca_start(cert.read_text())
    assert made < started <= int(time.time())
    secrets = K3sSecrets(*(["unused"] * 6))
    # The stages before the final ones do not wait for the CA (build --plan knows their keys before it).
    assert build_epochs(base, dataclasses.replace(secrets, ca_cert=cert.read_text())) == Epochs(made, started)
