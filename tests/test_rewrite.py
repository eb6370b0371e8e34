"""The same files give the same image bytes: an emitted image's file systems made again from its files
(disk/rewrite.py, disk/fat.make_fat with an epoch), and the build's epoch (build/epoch.py).

The whole path, two builds of one recipe on empty stage caches minutes apart, is test_kill's
test_a_second_build_from_the_base_gives_the_same_images."""

from __future__ import annotations

import dataclasses
import os
import shutil
import stat
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
from tests.imagediff import differing_files, differing_ranges, image_trees

LAYOUT = LAYOUTS["raspios"]
EPOCH = 1_700_000_000  # 2023-11-14: earlier than every file the tests write now
CLOCK = EPOCH + 86400  # the cluster's CA, a day later


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
    # What a root file system holds beside plain files: an owner that is not root, a capability (ping's), a
    # FIFO, a device node, a sparse file, and a file under the boot mount point that the boot partition hides.
    (root / "home/pi").mkdir(parents=True)
    os.chown(root / "home/pi", 1000, 1000)
    (root / "usr/bin").mkdir()
    (root / "usr/bin/ping").write_bytes(b"\x7fELF")
    os.setxattr(root / "usr/bin/ping", "security.capability",
                bytes.fromhex("0000000220000000000000000000000000000000"))
    os.mkfifo(root / "etc/initctl")
    os.mknod(root / "etc/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    with open(root / "etc/sparse", "wb") as f:
        f.seek(64 * 2**20)
        f.write(b"end")
    (root / "boot/firmware").mkdir(parents=True)
    (root / "boot/firmware/hidden").write_text("under the mount point\n")
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


def rewrite(image: Path, work: Path, size: int | None = None) -> None:
    """What the final stage does, from its open tree to its closed image (engine/backends/loop.py)."""
    with mounted_image(image, LAYOUT, work, epoch=EPOCH):
        pass
    rewrite_root(image, EPOCH, CLOCK, work, size)


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

    for name in ("/etc/hostname", "/etc/long-link", "/", "/lost+found", "/boot/firmware"):
        shown = stat_of(name)
        for field in ("ctime", "atime", "mtime", "crtime"):
            assert f"{field}: 0x{EPOCH:08x}:00000000" in shown, (name, field, shown)
    assert f"mtime: 0x{CLOCK:08x}" in stat_of("/usr/lib/clock-epoch")  # the CA's start, not the epoch
    assert "Links: 2" in stat_of("/etc/hostname")  # a hard link stays one
    with image_trees(image, tmp_path / "trees") as (tree, _):
        assert (tree / "home/pi").stat().st_uid == 1000
        assert os.getxattr(tree / "usr/bin/ping", "security.capability") == bytes.fromhex(
            "0000000220000000000000000000000000000000")
        assert stat.S_ISFIFO((tree / "etc/initctl").lstat().st_mode)
        assert (tree / "etc/null").lstat().st_rdev == os.makedev(1, 3)
        sparse = (tree / "etc/sparse").stat()
        assert sparse.st_size == 64 * 2**20 + 3 and sparse.st_blocks * 512 < 2**20
        assert (tree / "boot/firmware/hidden").read_text() == "under the mount point\n"
        assert not (tree / "boot/firmware/config.txt").exists()  # the boot partition's files stay on it
    listed = subprocess.run(["mdir", "-i", f"{image}@@{BOOT_START}", "::/"], capture_output=True, text=True,
                            check=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"}).stdout
    assert "config" in listed and "2023-11-14" in listed  # the FAT's entries carry the epoch too
    assert boot_and_root(image)[0].size == BOOT_SIZE


def make_ca(folder: Path, name: str) -> str:
    """A self-signed certificate made now, as the cluster's CAs are (roles/secrets.py)."""
    require_programs("openssl")
    key, cert = folder / f"{name}.key", folder / f"{name}.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-subj", f"/CN={name}", "-days", "1", "-out", cert],
                   check=True, capture_output=True)
    return cert.read_text()


def cluster_secrets(folder: Path) -> K3sSecrets:
    """The server CA, then the client CA a second later (as a build killed between the two would leave
    them, only later)."""
    server = make_ca(folder, "server-ca")
    time.sleep(1.1)
    return dataclasses.replace(K3sSecrets(*(["unused"] * 6)), ca_cert=server,
                               client_ca_cert=make_ca(folder, "client-ca"))


def test_source_date_epoch_from_the_environment_wins_but_not_over_the_cas_for_the_clock(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "1234567890")
    assert build_epochs(None, None) == Epochs(1234567890, 1234567890, 1234567890)
    secrets = cluster_secrets(tmp_path)
    # A CI's SOURCE_DATE_EPOCH (its last commit) may be older than the CAs: the nodes' clocks start no
    # earlier than the CAs all the same, or an offline master would serve a CA not valid yet.
    client = ca_start(secrets.client_ca_cert)
    assert build_epochs(None, secrets) == Epochs(1234567890, 1234567890, client)
    monkeypatch.setenv(ENV, "yesterday")
    with pytest.raises(ImageBuilderError, match="SOURCE_DATE_EPOCH='yesterday' is not a whole number"):
        build_epochs(None, None)


def test_the_images_epoch_is_the_later_of_the_base_and_the_clusters_cas(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    image = small_image(tmp_path)
    made = filesystem_created(image)
    assert abs(made - time.time()) < 300  # assembled just now
    base = BaseImage(image, "0" * 64, LAYOUT, {})
    assert build_epochs(base, None) == Epochs(made, made, made)
    time.sleep(1.1)
    secrets = cluster_secrets(tmp_path)
    server, client = ca_start(secrets.ca_cert), ca_start(secrets.client_ca_cert)
    assert made < server < client <= int(time.time())
    # The stages before the final ones do not wait for the CAs (build --plan knows their keys before them).
    assert build_epochs(base, secrets) == Epochs(made, client, client)


def test_a_base_that_is_not_ext4_has_no_epoch_of_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    image = small_image(tmp_path)
    with open(image, "r+b") as f:  # the ext4 magic number gone
        f.seek(boot_and_root(image)[1].start + 1024 + 0x38)
        f.write(b"\0\0")
    with pytest.raises(ImageBuilderError, match="not ext4.*cannot tell when the base was made"):
        build_epochs(BaseImage(image, "0" * 64, LAYOUT, {}), None)


@pytest.mark.integration
def test_a_rewritten_image_of_a_given_size_has_the_inodes_of_that_size(tmp_path: Path) -> None:
    require_root()
    image = small_image(tmp_path)
    rewrite(image, tmp_path / "w", size=1024 * 2**20)
    _, root = boot_and_root(image)
    assert image.stat().st_size == 1024 * 2**20 == root.end
    shown = subprocess.run(["dumpe2fs", "-h", f"{image}?offset={root.start}"], capture_output=True, text=True,
                           check=True).stdout
    inodes = int(next(line for line in shown.splitlines() if line.startswith("Inode count:")).split()[-1])
    # mke2fs rounds the count to its groups; the tree alone (about 320 MiB) would get some 20000
    assert inodes >= root.size // 16384 * 0.95
    with pytest.raises(ImageBuilderError, match="output.image_size"):
        rewrite(image, tmp_path / "w2", size=BOOT_START + BOOT_SIZE + 8 * 2**20)
