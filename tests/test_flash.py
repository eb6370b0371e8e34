"""`imagebuilder flash`: loop devices over files stand in for SD cards; no test opens a real disk for writing.

The safety checks are also run against fake mount tables and a fake sysfs (they only stat and read).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagebuilder.cli.main import main
from imagebuilder.core.resources import loop_device, mounted
from imagebuilder.disk.bmap import load_bmap
from imagebuilder.disk.usage import image_usage
from imagebuilder.flash.devices import SystemView, TargetRefused, check_target, parse_mountinfo
from imagebuilder.outputs.emit import write_checksums
from imagebuilder.outputs.signing import sign_checksums
from tests.conftest import ROOT, VALID, require_programs, require_root
from tests.readers import make_bmap, read_hostname_seed

MiB = 1 << 20
PATTERN = (b"\xa5CARD-PATTERN\x5a" * 300)[:4096]  # 4 KiB, so any block of the prefilled card can be compared
BOOT_START, BOOT_SIZE = 1 * MiB, 16 * MiB
ROOT_START, ROOT_SIZE = 17 * MiB, 31 * MiB
IMAGE_SIZE = ROOT_START + ROOT_SIZE  # 48 MiB


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_device(device: Path, length: int, offset: int = 0) -> bytes:
    with device.open("rb") as f:
        f.seek(offset)
        return f.read(length)


# --- the safety checks on fake views (no root needed: they only stat and read) -------------------


def _fake_sysfs(tmp: Path, devno: tuple[int, int], *, removable: str = "1") -> Path:
    """A sysfs where `devno` is a whole disk sdz with one partition sdz1 (259:99)."""
    sysfs = tmp / "sys"
    disk = sysfs / "block/sdz"
    (disk / "device").mkdir(parents=True)
    (disk / "size").write_text(str(64 * MiB // 512))
    (disk / "removable").write_text(removable)
    (disk / "device/model").write_text("FakeCard\n")
    (disk / "sdz1").mkdir()
    (disk / "sdz1/partition").write_text("1")
    (disk / "sdz1/size").write_text(str(16 * MiB // 512))
    (sysfs / "dev/block").mkdir(parents=True)
    (sysfs / f"dev/block/{devno[0]}:{devno[1]}").symlink_to(disk)
    (sysfs / "dev/block/259:99").symlink_to(disk / "sdz1")
    return sysfs


def _mountinfo(*entries: tuple[str, str, str]) -> str:
    return "".join(f"{i} 1 {devno} / {point} rw - ext4 {source} rw\n"
                   for i, (devno, point, source) in enumerate(entries, 20))


@pytest.fixture
def fake_node() -> tuple[Path, tuple[int, int]]:
    # An unattached loop node: statting it is harmless, and it is never opened here.
    node = Path("/dev/loop0")
    if not node.exists():
        pytest.skip("no /dev/loop0 to stand for a disk")
    rdev = node.stat().st_rdev
    return node, (os.major(rdev), os.minor(rdev))


def test_mountinfo_unescapes_spaces() -> None:
    (m,) = parse_mountinfo("36 35 8:1 / /media/my\\040card rw - vfat /dev/sdb1 rw\n")
    assert (m.devno, m.mountpoint, m.source) == ((8, 1), "/media/my card", "/dev/sdb1")


def test_system_disk_from_fake_mount_table_is_never_written(tmp_path: Path, fake_node) -> None:  # type: ignore[no-untyped-def]
    node, devno = fake_node
    sysfs = _fake_sysfs(tmp_path, devno)
    for mountinfo, swaps, holds in (
        (_mountinfo(("259:99", "/", "/dev/sdz1")), "", "holds / "),
        (_mountinfo(("259:99", "/boot", "/dev/sdz1")), "", "holds /boot "),
        ("", f"Filename Type Size Used Priority\n{node} partition 1 0 -2\n", "holds swap"),
    ):
        view = SystemView(mountinfo, swaps, sysfs)
        with pytest.raises(TargetRefused, match=holds):
            check_target(node, image_size=MiB, force=True, view=view)


def test_mounted_partition_in_fake_mount_table_refused(tmp_path: Path, fake_node) -> None:  # type: ignore[no-untyped-def]
    node, devno = fake_node
    view = SystemView(_mountinfo(("259:99", "/mnt/data", "/dev/sdz1")), "", _fake_sysfs(tmp_path, devno))
    with pytest.raises(TargetRefused, match=r"mounted partition \(/mnt/data\)"):
        check_target(node, image_size=MiB, force=True, view=view)


def test_non_removable_disk_needs_force(tmp_path: Path, fake_node) -> None:  # type: ignore[no-untyped-def]
    node, devno = fake_node
    view = SystemView("", "", _fake_sysfs(tmp_path, devno, removable="0"))
    with pytest.raises(TargetRefused, match="not a removable disk"):
        check_target(node, image_size=MiB, view=view)
    target = check_target(node, image_size=MiB, force=True, view=view)
    assert target.size == 64 * MiB and target.model == "FakeCard"
    assert "sdz1 16 MiB" in target.describe()
    with pytest.raises(TargetRefused, match="too small"):
        check_target(node, image_size=65 * MiB, force=True, view=view)


def test_device_of_root_is_refused() -> None:
    # The real machine's view, on the real device of `/`: refused before anything is opened.
    dev = os.stat("/").st_dev
    block = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    if not block.exists():
        pytest.skip("/ is not on a block device here (overlay or tmpfs root)")
    disk = block.resolve()
    disk = disk.parent if (disk / "partition").exists() else disk
    with pytest.raises(TargetRefused, match="holds / of this machine"):
        check_target(Path("/dev") / disk.name, image_size=1, force=True)


# --- real flashes onto loop devices ----------------------------------------------------------------


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """worker.img (MBR, FAT boot, ext4 root with some files), its .bmap, .xz and .zst; master.img."""
    require_programs("sfdisk", "mkfs.vfat", "mkfs.ext4", "xz", "zstd", "mcopy")
    out = tmp_path_factory.mktemp("out")
    tree = out / "tree"
    (tree / "data").mkdir(parents=True)
    (tree / "data/blob").write_bytes(os.urandom(3 * MiB))
    (tree / "etc").mkdir()
    (tree / "etc/hostname").write_text("worker\n")
    image = out / "worker.img"
    with image.open("wb") as f:
        f.truncate(IMAGE_SIZE)
    layout = f"label: dos\nstart={BOOT_START // 512}, size={BOOT_SIZE // 512}, type=c\n" \
             f"start={ROOT_START // 512}, size={ROOT_SIZE // 512}, type=83\n"
    subprocess.run(["sfdisk", "-q", str(image)], input=layout.encode(), check=True)
    subprocess.run(["mkfs.vfat", "-n", "BOOTFS", "--offset", str(BOOT_START // 512), str(image),
                    str(BOOT_SIZE // 1024)], check=True, capture_output=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "rootfs", "-d", str(tree), "-E", f"offset={ROOT_START}",
                    str(image), f"{ROOT_SIZE // 1024}k"], check=True)
    # The block map as the build makes it: from the file systems' allocation.
    Path(f"{image}.bmap").write_bytes(make_bmap(image, image_usage(image)))
    subprocess.run(["xz", "-k", "-T0", "-1", str(image)], check=True)
    subprocess.run(["zstd", "-q", "-k", str(image)], check=True)
    master = out / "master.img"
    subprocess.run(["cp", "--sparse=always", str(image), str(master)], check=True)
    return {"img": image, "xz": out / "worker.img.xz", "zst": out / "worker.img.zst", "master": master}


def _attached_card(tmp_path: Path, fill: bytes | None) -> Iterator[Path]:
    require_root()
    backing = tmp_path / "card.bin"
    if fill is None:
        with backing.open("wb") as f:
            f.truncate(64 * MiB)
    else:
        backing.write_bytes(fill * (64 * MiB // len(fill)))
    with loop_device(backing) as device:
        yield device


@pytest.fixture
def card(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB card prefilled with PATTERN, attached to a loop device."""
    yield from _attached_card(tmp_path, PATTERN)


@pytest.fixture
def blank_card(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB card of zeros, as a new card reads."""
    yield from _attached_card(tmp_path, None)


def _with_holes_kept(image: Path, card_fill: bytes) -> bytes:
    """What a card prefilled with card_fill holds after a bmap flash: mapped blocks from the image."""
    bmap = load_bmap(Path(f"{image}.bmap"))
    raw = image.read_bytes()
    expected = bytearray((card_fill * (len(raw) // len(card_fill) + 1))[:len(raw)])
    for r in bmap.ranges:
        start, length = bmap.range_bytes(r)
        expected[start:start + length] = raw[start:start + length]
    return bytes(expected)


def _hole_offset(image: Path) -> int:
    """The byte offset of a block the bmap leaves out (a hole inside the image)."""
    bmap = load_bmap(Path(f"{image}.bmap"))
    for before, after in zip(bmap.ranges, bmap.ranges[1:], strict=False):
        if after.first > before.last + 1:
            return (before.last + 1) * bmap.block_size
    raise AssertionError("the test image has no hole")


@pytest.mark.integration
@pytest.mark.parametrize("form", ["img", "xz", "zst"])
@pytest.mark.parametrize("bmap", [True, False], ids=["bmap", "nobmap"])
def test_flash_each_form(images: dict[str, Path], card: Path, form: str, bmap: bool,
                         capsys: pytest.CaptureFixture[str]) -> None:
    raw = images["img"].read_bytes()
    argv = ["flash", str(images[form]), str(card), "--yes"] + ([] if bmap else ["--no-bmap"])
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "verified" in out
    assert ("bmap" in out) == bmap
    written = _read_device(card, len(raw))
    assert _sha256(written) == _sha256(_with_holes_kept(images["img"], PATTERN) if bmap else raw)
    hole = _hole_offset(images["img"])
    expected = PATTERN[:4096] if bmap else raw[hole:hole + 4096]
    assert written[hole:hole + 4096] == expected
    # Past the image's end the card is untouched either way.
    assert _read_device(card, 4096, IMAGE_SIZE) == PATTERN[:4096]


@pytest.mark.integration
@pytest.mark.parametrize("form", ["img", "xz", "zst"])
def test_bmap_flash_on_blank_card_reads_back_the_image(images: dict[str, Path], blank_card: Path, form: str) -> None:
    assert main(["flash", str(images[form]), str(blank_card), "--yes"]) == 0
    assert _sha256(_read_device(blank_card, IMAGE_SIZE)) == _sha256(images["img"].read_bytes())


@pytest.mark.integration
def test_flash_role_name_from_recipe(images: dict[str, Path], card: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    # output.dir is relative to the current directory: give it whole.
    output = f"output: {{dir: {tmp_path / 'out'}}}\n"
    recipe.write_text(VALID.replace("cluster: {name: testcluster", output + "cluster: {name: tc"))
    out = tmp_path / "out/tc"
    out.mkdir(parents=True)
    subprocess.run(["cp", "--sparse=always", str(images["img"]), str(out / "worker.img")], check=True)
    assert main(["flash", "worker", str(card), "--recipe", str(recipe), "--yes"]) == 0
    assert _sha256(_read_device(card, IMAGE_SIZE)) == _sha256(images["img"].read_bytes())


@pytest.mark.integration
def test_hostname_seed_reaches_the_first_boot_lookup(images: dict[str, Path], card: Path, tmp_path: Path) -> None:
    assert main(["flash", str(images["zst"]), str(card), "--yes", "--hostname", "edge7"]) == 0
    assert read_hostname_seed(card) == "edge7"
    # The lookup program, on a tree whose boot partition holds what the card holds.
    boot = tmp_path / "root/boot/firmware"
    boot.mkdir(parents=True)
    subprocess.run(["mcopy", "-i", f"{card}@@{BOOT_START}", "::/imagebuilder-hostname", str(boot)],
                   check=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})
    table = {"lan_interface": "eth0", "boot_mount": "/boot/firmware", "unknown_pattern": "node-{mac6}",
             "workers": [{"mac": "b8:27:eb:00:00:01", "hostname": "node1", "ip": "10.0.0.11"}]}
    (tmp_path / "root/etc/imagebuilder").mkdir(parents=True)
    (tmp_path / "root/etc/imagebuilder/cluster-table.json").write_text(json.dumps(table))
    (tmp_path / "root/sys/class/net/eth0").mkdir(parents=True)
    (tmp_path / "root/sys/class/net/eth0/address").write_text("b8:27:eb:00:00:01\n")
    program = ROOT / "overlays/worker/root/usr/local/lib/imagebuilder/set_hostname.py"
    result = subprocess.run([sys.executable, "-I", str(program), "--root", str(tmp_path / "root")],
                            capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "edge7"


def _refused(argv: list[str], target: Path, capsys: pytest.CaptureFixture[str], match: str) -> None:
    before = _sha256(_read_device(target, 64 * MiB))
    assert main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("imagebuilder:")]
    assert len(errors) == 1 and match in errors[0], errors
    assert _sha256(_read_device(target, 64 * MiB)) == before


@pytest.mark.integration
def test_refuses_mounted_partition(images: dict[str, Path], card: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["flash", str(images["img"]), str(card), "--yes"]) == 0
    capsys.readouterr()
    # The card's ext4 partition, reached at its offset and mounted, as a desktop would auto-mount it.
    with loop_device(card, offset=ROOT_START, size=ROOT_SIZE) as part, mounted(part, tmp_path / "mnt"):
        for extra in ([], ["--force"]):
            _refused(["flash", str(images["xz"]), str(card), "--yes", *extra], card, capsys,
                     "has a mounted partition")


@pytest.mark.integration
def test_refuses_too_small(images: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    require_root()
    backing = tmp_path / "small.bin"
    backing.write_bytes(PATTERN * (16 * MiB // len(PATTERN)))
    with loop_device(backing) as small:
        before = _sha256(backing.read_bytes())
        assert main(["flash", str(images["img"]), str(small), "--yes", "--force"]) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("imagebuilder:")]
        assert len(errors) == 1 and "too small" in errors[0]
        assert _sha256(_read_device(small, 16 * MiB)) == before


def test_refuses_regular_file_without_to_file(images: dict[str, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "card.bin"
    target.write_bytes(PATTERN * (64 * MiB // len(PATTERN)))
    _refused(["flash", str(images["img"]), str(target), "--yes"], target, capsys, "is a regular file")
    assert main(["flash", str(images["img"]), str(target), "--yes", "--to-file"]) == 0
    assert _sha256(target.read_bytes()[:IMAGE_SIZE]) == _sha256(_with_holes_kept(images["img"], PATTERN))


def test_hostname_refused_before_writing(images: dict[str, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "card.bin"
    target.write_bytes(PATTERN * (64 * MiB // len(PATTERN)))
    for image, name, match in ((images["master"], "edge7", "for the worker image"),
                               (images["img"], "Bad_Name", "not a valid hostname")):
        _refused(["flash", str(image), str(target), "--yes", "--to-file", "--hostname", name],
                 target, capsys, match)


@pytest.mark.integration
def test_ctrl_c_says_the_card_is_incomplete(tmp_path: Path, card: Path) -> None:
    big = tmp_path / "worker.img"
    with big.open("wb") as f:
        f.truncate(60 * MiB)
    # Slow enough to interrupt: every byte, flushed in steps; the signal goes once writing started.
    proc = subprocess.Popen([sys.executable, "-m", "imagebuilder", "flash", str(big), str(card), "--yes",
                             "--no-bmap"], stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "‣ write" in line:
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.stderr.read()
    code = proc.wait(timeout=60)
    if code == 0:
        pytest.skip("the flash finished before the signal arrived")
    assert code == 130, "".join(seen) + rest
    assert "is incomplete" in rest


def test_image_changed_after_its_bmap_is_caught(images: dict[str, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "worker.img"
    subprocess.run(["cp", "--sparse=always", str(images["img"]), str(image)], check=True)
    subprocess.run(["cp", f"{images['img']}.bmap", f"{image}.bmap"], check=True)
    with image.open("r+b") as f:  # one byte inside the ext4 partition's first mapped blocks
        f.seek(ROOT_START + 1024 + 100)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    # A damaged image is found by the checks (exit 3), not a mistake on the command line (2).
    assert main(["flash", str(image), str(tmp_path / "card.bin"), "--yes", "--to-file"]) == 3
    err = capsys.readouterr().err
    assert "do not match the bmap's checksum" in err and "is incomplete" in err


def test_edited_bmap_is_refused(images: dict[str, Path], tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "worker.img"
    subprocess.run(["cp", "--sparse=always", str(images["img"]), str(image)], check=True)
    text = Path(f"{images['img']}.bmap").read_text()
    Path(f"{image}.bmap").write_text(text.replace("<BlockSize> 4096 </BlockSize>", "<BlockSize> 8192 </BlockSize>"))
    target = tmp_path / "card.bin"
    assert main(["flash", str(image), str(target), "--yes", "--to-file"]) == 2
    assert "own checksum does not match" in capsys.readouterr().err
    assert not target.exists()


# --- signed outputs: SHA256SUMS signed with an OpenSSH key, checked before anything is written --------


def _ssh_key(folder: Path, name: str) -> Path:
    require_programs("ssh-keygen")
    key = folder / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True)
    return key


def _signed_outputs(images: dict[str, Path], out: Path, key: Path) -> Path:
    """worker.img, its bmap and zstd copy in `out`, listed in SHA256SUMS and signed as a build does."""
    out.mkdir()
    for name in ("worker.img", "worker.img.bmap", "worker.img.zst"):
        subprocess.run(["cp", "--sparse=always", str(images["img"].with_name(name)), str(out / name)], check=True)
    write_checksums(out, [Path("worker.img"), Path("worker.img.bmap"), Path("worker.img.zst")])
    sign_checksums(out, key)
    return out


def _refused_before_writing(argv: list[str], target: Path, capsys: pytest.CaptureFixture[str], match: str) -> None:
    assert main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("imagebuilder:")]
    assert len(errors) == 1 and match in errors[0], errors
    assert not target.exists()


def test_a_good_signature_flashes(images: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = _ssh_key(tmp_path, "signer")
    out = _signed_outputs(images, tmp_path / "out", key)
    # The signature is what ssh-keygen itself accepts, with an allowed-signers file of the user's own.
    allowed = tmp_path / "allowed_signers"
    allowed.write_text("me " + Path(f"{key}.pub").read_text())
    subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(allowed), "-I", "me", "-n", "file", "-s",
                    str(out / "SHA256SUMS.sig")], stdin=(out / "SHA256SUMS").open("rb"), check=True,
                   capture_output=True)
    for form in ("worker.img", "worker.img.zst"):
        target = tmp_path / f"card-{form}.bin"
        assert main(["flash", str(out / form), str(target), "--yes", "--to-file",
                     "--verify-key", f"{key}.pub"]) == 0
        assert _sha256(target.read_bytes()) == _sha256(images["img"].read_bytes())
    assert "worker.img.zst: signed by" in capsys.readouterr().err


def test_a_changed_listing_image_or_another_key_is_refused(images: dict[str, Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    key, other = _ssh_key(tmp_path, "signer"), _ssh_key(tmp_path, "other")
    out = _signed_outputs(images, tmp_path / "out", key)
    target = tmp_path / "card.bin"

    def flash(image: str = "worker.img", public: Path = Path(f"{key}.pub")) -> list[str]:
        return ["flash", str(out / image), str(target), "--yes", "--to-file", "--verify-key", str(public)]

    _refused_before_writing(flash(public=Path(f"{other}.pub")), target, capsys, "not a good signature of SHA256SUMS")
    _refused_before_writing(flash(public=key), target, capsys, "not an OpenSSH public key")
    # The image changed after it was listed: one byte inside a mapped block, and one in a hole (only the
    # whole digest sees it; the bmap's would not).
    good = (out / "worker.img").read_bytes()
    for offset in (ROOT_START + 1024 + 100, _hole_offset(images["img"])):
        with (out / "worker.img").open("r+b") as f:
            f.seek(offset)
            f.write(bytes([good[offset] ^ 0xFF]))
        _refused_before_writing(flash(), target, capsys, "its sha256 is not the one the signed SHA256SUMS lists")
        with (out / "worker.img").open("r+b") as f:
            f.seek(offset)
            f.write(good[offset:offset + 1])
    # A listing changed to match a changed image: its signature no longer holds.
    sums = (out / "SHA256SUMS").read_text()
    (out / "SHA256SUMS").write_text(sums.replace(_sha256(good), "0" * 64))
    _refused_before_writing(flash(), target, capsys, "not a good signature of SHA256SUMS")
    (out / "SHA256SUMS").write_text(sums)
    assert main(flash()) == 0  # everything back as signed
    target.unlink()
    # A per-node image is listed through its bmap only.
    subprocess.run(["cp", "--sparse=always", str(out / "worker.img"), str(out / "node1.img")], check=True)
    _refused_before_writing(flash("node1.img"), target, capsys,
                            "node1.img: not listed in the signed SHA256SUMS")
    (out / "SHA256SUMS.sig").unlink()
    _refused_before_writing(flash(), target, capsys, "no SHA256SUMS.sig to check against")


def test_the_recipes_signing_key_is_checked_by_flash_with_its_public_half(
        images: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key, other = _ssh_key(tmp_path, "signer"), _ssh_key(tmp_path, "other")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(VALID.replace("cluster: {name: testcluster", f"output: {{dir: {tmp_path / 'out'}, sign_key: "
                                    "signer}\ncluster: {name: tc"))
    (tmp_path / "out").mkdir()
    out = _signed_outputs(images, tmp_path / "out/tc", key)
    target = tmp_path / "card.bin"
    assert main(["flash", "--recipe", str(recipe), "worker", str(target), "--yes", "--to-file"]) == 0
    target.unlink()
    sign_checksums(out, other)  # signed by a key the recipe does not name
    _refused_before_writing(["flash", "--recipe", str(recipe), "worker", str(target), "--yes", "--to-file"],
                            target, capsys, "not a good signature of SHA256SUMS")
    Path(f"{key}.pub").unlink()
    _refused_before_writing(["flash", "--recipe", str(recipe), "worker", str(target), "--yes", "--to-file"],
                            target, capsys, f"output.sign_key: no {key}.pub to check the images' signature with")


def test_a_new_listing_drops_the_old_signature(images: dict[str, Path], tmp_path: Path) -> None:
    out = _signed_outputs(images, tmp_path / "out", _ssh_key(tmp_path, "signer"))
    write_checksums(out, [Path("worker.img")])
    assert not (out / "SHA256SUMS.sig").exists()
