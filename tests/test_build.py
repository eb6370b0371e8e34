"""`imagebuilder build` on the cached arm64 bootstrap base: outputs, checks, caching, failure unwinding."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from imagebuilder.boards.verify import verify_image
from imagebuilder.build.execute import build
from imagebuilder.core import resources
from imagebuilder.core.errors import ChecksFailed, ImageBuilderError
from imagebuilder.disk.copy import can_reflink
from imagebuilder.disk.fat import MTOOLS_ENV
from imagebuilder.disk.image import check_filesystems
from imagebuilder.disk.mount import mounted_image
from imagebuilder.disk.partitions import boot_and_root
from imagebuilder.disk.usage import image_usage
from imagebuilder.engine.backends.chroot import chroot_session
from imagebuilder.layers import nevership
from imagebuilder.recipe.catalogue import LAYOUTS
from imagebuilder.recipe.load import load_recipe
from imagebuilder.roles.secrets import read_k3s_secrets
from imagebuilder.sources.checksums import sha256_of
from imagebuilder.sources.k3s_assets import ASSETS_ENV, asset_base
from tests.conftest import ROOT, build_mounts, leftovers, require_programs
from tests.images import arm64_base, make_context, small_recipe
from tests.readers import fat_read, make_bmap, read_hostname_seed


def make_recipe(tmp_path: Path, marker: str = "one", *, checked: bool = False, sign_key: Path | None = None) -> Path:
    extra = tmp_path / "extra" / "root" / "etc"
    extra.mkdir(parents=True, exist_ok=True)
    # The marker reaches the worker only: the master stage stays cached while a test rebuilds the worker.
    (extra / "cluster-note.j2").write_text(
        "{{ recipe.cluster.name }} {{ role }}{% if role == 'worker' %} " + marker + "{% endif %}\n")
    if checked:
        # A file the stage checks in its chroot, new with each marker: checks that passed before are not
        # run again, and without one the worker stage would be in its chroot for a fraction of a second.
        cloud = extra / "cloud" / "cloud.cfg.d"
        cloud.mkdir(parents=True, exist_ok=True)
        (cloud / "99-test-marker.cfg.j2").write_text(
            "#cloud-config\nfinal_message: \"{% if role == 'worker' %}" + marker + "{% endif %}\"\n")
        (tmp_path / "extra" / "layer.yaml").write_text(
            "checks: [{file: root/etc/cloud/cloud.cfg.d/99-test-marker.cfg, tool: cloud-init-schema}]\n")
    path = tmp_path / "recipe.yaml"
    path.write_text(small_recipe("buildtest", tmp_path / "out",
                                 extra="packages: {worker: [hello]}\noverlays: [extra]\n", sign_key=sign_key))
    return path


def read_root_file(image: Path, name: str) -> str:
    return read_image_file(image, name).decode()


def read_image_file(image: Path, name: str, boot_mount: str = LAYOUTS["raspios"].boot_mount) -> bytes:
    """A file of the image as the running system has it: from the boot partition below boot_mount."""
    boot, root = boot_and_root(image)
    if name.startswith(boot_mount + "/"):
        return subprocess.run(["mcopy", "-i", f"{image}@@{boot.start}", f"::/{name.removeprefix(boot_mount + '/')}",
                               "-"], capture_output=True, check=True, env={**os.environ, **MTOOLS_ENV}).stdout
    return subprocess.run(["debugfs", "-R", f"cat {name}", f"{image}?offset={root.start}"], capture_output=True,
                          check=True).stdout


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    arm64_base()
    require_programs("bmaptool", "zstd")
    tmp = tmp_path_factory.mktemp("build")
    require_programs("ssh-keygen")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "buildtest", "-f", tmp / "signer"], check=True)
    recipe = load_recipe(make_recipe(tmp, sign_key=tmp / "signer"))
    ctx = make_context()
    with ctx.stack:
        build(ctx, recipe, per_node=True)
    return recipe.output_dir


@pytest.mark.integration
def test_outputs_exist_and_sums_match(built: Path) -> None:
    names = sorted(p.name for p in built.iterdir() if not p.name.startswith("."))
    assert names == sorted(["master.img", "master.img.bmap", "master.img.zst", "master.cdx.json", "worker.img",
                            "worker.img.bmap", "worker.img.zst", "worker.cdx.json", "SHA256SUMS", "SHA256SUMS.sig",
                            "manifest.json", "kubeconfig", "node1.img", "node1.img.bmap"])
    subprocess.run(["sha256sum", "--check", "--quiet", "SHA256SUMS"], cwd=built, check=True)
    # A per-node image is checked through its bmap (read in full it would cost each node a whole image).
    listed = [line.split("  ", 1)[1] for line in (built / "SHA256SUMS").read_text().splitlines()]
    assert "node1.img.bmap" in listed and "node1.img" not in listed
    assert "master.cdx.json" in listed and "worker.cdx.json" in listed
    # Signed at the end (after the per-node images were added): ssh-keygen itself accepts the signature.
    allowed = built.parent.parent / "allowed_signers"
    allowed.write_text("me " + (built.parent.parent / "signer.pub").read_text())
    with (built / "SHA256SUMS").open("rb") as sums:
        subprocess.run(["ssh-keygen", "-Y", "verify", "-f", allowed, "-I", "me", "-n", "file", "-s",
                        built / "SHA256SUMS.sig"], stdin=sums, check=True, capture_output=True)


@pytest.mark.integration
def test_images_pass_filesystem_checks(built: Path, tmp_path: Path) -> None:
    for role in ("master", "worker"):
        check_filesystems(built / f"{role}.img", tmp_path)


@pytest.mark.integration
def test_manifest_records_packages_and_overlay_files(built: Path) -> None:
    manifest = json.loads((built / "manifest.json").read_text())
    worker, master = manifest["images"]["worker"], manifest["images"]["master"]
    assert "hello" in worker["packages"] and "hello" not in master["packages"]
    assert "dnsmasq" in master["packages"] and "nfs-common" in worker["packages"]
    assert "/etc/cluster-note" in worker["overlay_files"]
    assert manifest["base"]["source"] == "bootstrap:bookworm:raspios"
    assert worker["sha256"] == sha256_of(built / "worker.img")


def installed(status: str) -> dict[str, str]:
    """name -> version of the installed packages in a dpkg status file's text."""
    found = {}
    for paragraph in status.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in paragraph.splitlines() if ": " in line and line[0] != " ")
        if fields.get("Status") == "install ok installed":
            found[fields["Package"]] = fields["Version"]
    return found


@pytest.mark.integration
@pytest.mark.parametrize("role", ["master", "worker"])
def test_sbom_lists_what_the_image_holds(built: Path, role: str) -> None:
    text = (built / f"{role}.cdx.json").read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    sbom = json.loads(text)
    image = built / f"{role}.img"
    assert sbom["metadata"]["component"]["hashes"] == [{"alg": "SHA-256", "content": sha256_of(image)}]
    components = sbom["components"]
    # Every installed package of the image's own dpkg database, read here from the image itself.
    packages = {c["name"]: c for c in components if c.get("purl", "").startswith("pkg:deb/")}
    status = installed(read_root_file(image, "/var/lib/dpkg/status"))
    assert {name: c["version"] for name, c in packages.items()} == status
    assert ("hello" in packages) == (role == "worker")
    assert packages["dash"]["purl"] == f"pkg:deb/debian/dash@{status['dash']}?arch=arm64&distro=debian-12"
    assert packages["libc6"]["pedigree"]["ancestors"][0]["name"] == "glibc"
    with_licenses = [c for c in packages.values() if c.get("licenses")]
    assert len(with_licenses) > len(packages) // 2, "most Debian packages state their license in DEP-5"
    assert {"os"} <= {c["bom-ref"] for c in components}
    # Every file the layers wrote, with the digest of what the image holds at that path.
    files = [c for c in components if c["type"] == "file"]
    assert "file:/etc/cluster-note" in {c["bom-ref"] for c in files}
    for c in files:
        if "hashes" in c:
            assert c["hashes"][0]["content"] == hashlib.sha256(read_image_file(image, c["name"])).hexdigest(), c["name"]
    # The test recipe says k3s.assets: none; IMAGEBUILDER_K3S_ASSETS, when set, brings the binary in.
    assert any(c["name"] == "k3s" for c in components) == bool(os.environ.get(ASSETS_ENV))


@pytest.mark.integration
def test_overlay_template_rendered_per_role(built: Path) -> None:
    assert read_root_file(built / "worker.img", "/etc/cluster-note") == "buildtest worker one\n"
    assert read_root_file(built / "master.img", "/etc/cluster-note") == "buildtest master\n"


@pytest.mark.integration
@pytest.mark.parametrize("role", ["master", "worker"])
def test_no_build_traces_in_image(built: Path, role: str, tmp_path: Path) -> None:
    image = built / f"{role}.img"
    assert read_root_file(image, "/usr/sbin/policy-rc.d") == ""
    assert read_root_file(image, "/etc/machine-id") == ""
    _, root = boot_and_root(image)
    with resources.loop_device(image, offset=root.start, size=root.size, read_only=True) as device, \
            resources.mounted(device, tmp_path / "root", fstype="ext4", options=("ro", "noload")) as tree:
        assert nevership.leftovers(tree) == []


@pytest.mark.integration
def test_bmap_copy_reproduces_image(built: Path, tmp_path: Path) -> None:
    for role in ("master", "worker"):
        target = tmp_path / f"{role}.copy"
        subprocess.run(["bmaptool", "copy", "--bmap", built / f"{role}.img.bmap", built / f"{role}.img", target],
                       check=True, capture_output=True)
        assert sha256_of(target) == sha256_of(built / f"{role}.img")


@pytest.mark.integration
def test_compressed_image_decompresses_to_same_digest(built: Path, tmp_path: Path) -> None:
    target = tmp_path / "worker.img"
    subprocess.run(["zstd", "-q", "-d", built / "worker.img.zst", "-o", target], check=True)
    assert sha256_of(target) == sha256_of(built / "worker.img")


def _fail_at(n: int):
    count = 0

    def hook(what: str) -> None:
        nonlocal count
        count += 1
        if count == n:
            raise RuntimeError(f"injected failure after acquisition {n}: {what}")
    return hook


@pytest.mark.integration
def test_failure_after_each_acquisition_leaves_nothing(built: Path, tmp_path: Path) -> None:
    ours = (str(make_context().cache_dir), str(tmp_path))
    assert leftovers(*ours) == []
    n = 1
    while True:
        # A new marker each time, so the worker stage is built (not taken from the cache).
        recipe = load_recipe(make_recipe(tmp_path, marker=f"inject-{n}"))
        ctx = make_context()
        resources.ACQUIRE_HOOKS.append(_fail_at(n))
        try:
            with ctx.stack:
                build(ctx, recipe)
            break  # no acquisition left to fail after
        except RuntimeError as e:
            assert "injected failure" in str(e)
        finally:
            resources.ACQUIRE_HOOKS.clear()
        assert leftovers(*ours) == [], f"left behind after acquisition {n}"
        assert not list((recipe.output_dir).glob(".*partial*")), f"partial output after acquisition {n}"
        assert not list(make_context().cache_dir.glob("stages/.*partial*"))
        n += 1
    assert n > 10  # the build went through every acquisition of a stage build and the outputs


@pytest.mark.integration
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_build_unwinds(built: Path, tmp_path: Path, signum: int) -> None:
    ours = (str(make_context().cache_dir), str(tmp_path))
    assert leftovers(*ours) == []
    recipe = make_recipe(tmp_path, marker=f"signal-{signum}-{time.time()}", checked=True)
    proc = subprocess.Popen([sys.executable, "-m", "imagebuilder", "build", recipe], cwd=ROOT,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    # Wait until the worker stage is inside its chroot (mounted, binds up), then interrupt.
    for line in proc.stderr:
        if "‣ stage worker" in line:
            break
    deadline = time.monotonic() + 60
    while not any("stage-worker" in line and "/proc " in line for line in build_mounts(proc.pid).splitlines()):
        assert time.monotonic() < deadline, "the stage never mounted"
        time.sleep(0.05)
    proc.send_signal(signum)
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 128 + signum, rest
    assert "interrupted" in rest and "Traceback" not in rest
    assert leftovers(*ours) == []


@pytest.mark.integration
def test_outputs_are_the_stages_themselves_kept_by_a_rebuild_and_an_edit_through_them_is_found(
        built: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Where there are no reflinks (this machine's ext4), an image is its stage's file (no second write of it).
    A rebuild without changes keeps it as it is; an edit of the output in place is an edit of the cache
    entry, which the next build finds instead of emitting it."""
    recipe = load_recipe(make_recipe(tmp_path, marker=f"share-{time.time()}"))
    out = recipe.output_dir

    def build_once() -> None:
        ctx = make_context()
        with ctx.stack:
            build(ctx, recipe)

    build_once()
    stages = make_context().cache_dir / "stages"
    for role in ("master", "worker"):
        image = out / f"{role}.img"
        assert oct(image.stat().st_mode & 0o777) == "0o600"
        if (out.stat().st_dev == stages.stat().st_dev and not can_reflink(image, out)):
            assert [p.name for p in stages.glob(f"{role}-*.img") if p.stat().st_ino == image.stat().st_ino]
            assert f"{role}.img: the {role} stage's file itself" in caplog.text
    def images() -> dict[str, tuple[int, int]]:  # SHA256SUMS and manifest.json are written by every build
        return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.img*")}

    before = images()
    assert len(before) == 6  # the images, their bmaps and zstd copies
    caplog.clear()
    build_once()
    assert caplog.text.count("outputs kept") == 2, caplog.text
    assert images() == before
    worker = out / "worker.img"
    _, root = boot_and_root(worker)
    with worker.open("r+b") as f:  # the root file system's superblock: read by every check
        f.seek(root.start + 1024 + 100)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    edited = sha256_of(worker)
    with pytest.raises(ImageBuilderError, match="written through an output that is this file"):
        build_once()
    build_once()
    sums = dict(line.split("  ")[::-1] for line in (out / "SHA256SUMS").read_text().splitlines())
    assert sums["worker.img"] == sha256_of(worker) != edited
    assert verify_image(out / "worker.img").ok


@pytest.mark.integration
def test_an_image_no_board_would_boot_is_refused_when_its_stage_is_made(built: Path, tmp_path: Path) -> None:
    """verify runs when a role's stage is made (beside its digest): a refused stage is neither cached nor
    emitted."""
    broken = tmp_path / "broken" / "boot"
    broken.mkdir(parents=True)
    (broken / "config.txt").write_text("[all]\narm_64bit=1\nkernel=no-such-kernel.img\n")
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(small_recipe("verifytest", tmp_path / "out",
                                        extra="packages: {worker: [hello]}\noverlays: [broken]\n"))
    recipe = load_recipe(recipe_path)
    for _ in range(2):  # the second time too: the refused stage was not kept
        ctx = make_context()
        # Either role's stage may be refused first: they are made beside each other.
        with pytest.raises(ChecksFailed, match="the (master|worker) image: verify: .*no-such-kernel.img"), \
                ctx.stack:
            build(ctx, recipe)
        assert not list(recipe.output_dir.glob("*.img"))


@pytest.mark.integration
def test_per_node_image_differs_only_in_boot_partition(built: Path) -> None:
    worker, node = built / "worker.img", built / "node1.img"
    assert worker.stat().st_size == node.stat().st_size
    boot, _ = boot_and_root(worker)
    differing = []
    with open(worker, "rb") as a, open(node, "rb") as b:
        offset = 0
        while chunk := a.read(2**20):
            if chunk != b.read(len(chunk)):
                differing.append(offset)
            offset += len(chunk)
    assert differing, "the seed is missing"
    assert all(boot.start <= o < boot.end for o in differing), differing
    assert read_hostname_seed(node) == "node1" and read_hostname_seed(worker) is None


@pytest.mark.integration
def test_per_node_bmap_is_the_one_read_from_scratch(built: Path, tmp_path: Path) -> None:
    # Its digests are worker.img's but for the boot partition's: they must be what reading it all gives.
    node = built / "node1.img"
    assert (built / "node1.img.bmap").read_bytes() == make_bmap(node, image_usage(node))
    target = tmp_path / "node1.copy"
    subprocess.run(["bmaptool", "copy", "--bmap", built / "node1.img.bmap", node, target], check=True,
                   capture_output=True)
    assert sha256_of(target) == sha256_of(node)


@pytest.mark.integration
def test_seed_network_config_is_the_copy_keep_seed_compares_with(built: Path, tmp_path: Path) -> None:
    # Byte for byte: otherwise every fresh card "replaces" its own seed at first boot.
    for role in ("master", "worker"):
        image = built / f"{role}.img"
        boot, _ = boot_and_root(image)
        seed = tmp_path / f"{role}-seed"
        subprocess.run(["mcopy", "-i", f"{image}@@{boot.start}", "::/network-config", seed], check=True,
                       env={**os.environ, **MTOOLS_ENV})
        assert seed.read_bytes() == read_root_file(image, "/etc/imagebuilder/network-config").encode(), role


@pytest.mark.integration
def test_roles_enabled_and_boot_configured(built: Path) -> None:
    boot, _ = boot_and_root(built / "master.img")
    assert "cgroup_memory=1 cgroup_enable=memory" in fat_read(built / "master.img", boot, "cmdline.txt")
    for role, units in (("master", ["nftables.service", "k3s.service", "imagebuilder-beacon.service",
                                    "imagebuilder-dashboard.service", "dnsmasq.service",
                                    "imagebuilder-seed.service", "imagebuilder-time-wait.service"]),
                        ("worker", ["imagebuilder-hostname.service", "imagebuilder-jobs-ready.service",
                                    "srv-jobs.automount", "imagebuilder-k3s-agent.service",
                                    "imagebuilder-seed.service"])):
        image = built / f"{role}.img"
        wants = "".join(
            subprocess.run(["debugfs", "-R", f"ls /etc/systemd/system/{target}.wants",
                            f"{image}?offset={boot_and_root(image)[1].start}"],
                           capture_output=True, text=True, check=True).stdout
            for target in ("multi-user.target", "sysinit.target", "remote-fs.target", "cloud-init.target"))
        for unit in units:
            assert unit in wants, (role, unit, wants)
    # The seed's user-data is empty; the node's cloud-config is system configuration in the root.
    assert yaml.safe_load(fat_read(built / "worker.img", boot, "user-data")) == {}
    config = yaml.safe_load(read_root_file(built / "worker.img", "/etc/cloud/cloud.cfg.d/90-imagebuilder.cfg"))
    assert config["preserve_hostname"] is True and config["locale"] == "C.UTF-8"
    manifest = json.loads((built / "manifest.json").read_text())
    # The test recipe says k3s.assets: none; IMAGEBUILDER_K3S_ASSETS, when set, brings the binary in.
    folder = os.environ.get(ASSETS_ENV)
    assert (manifest["k3s_binary"], manifest["k3s_assets"]) == (
        ("included", str(asset_base("none", "")).rstrip("/")) if folder else ("none", "none"))


@pytest.mark.integration
def test_secrets_never_printed_and_workers_carry_no_server_secret(built: Path) -> None:
    secrets = read_k3s_secrets(make_context(), "buildtest")
    assert secrets is not None
    recipe = load_recipe(make_recipe(built.parent.parent))
    result = subprocess.run([sys.executable, "-m", "imagebuilder", "build", recipe.source], cwd=ROOT,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    for value in (secrets.server_token, secrets.agent_token, secrets.ca_key):
        assert value not in result.stdout + result.stderr
    master = yaml.safe_load(read_root_file(built / "master.img", "/etc/rancher/k3s/config.yaml"))
    assert master["token"] == secrets.server_token and master["agent-token"] == secrets.agent_token
    worker = yaml.safe_load(read_root_file(built / "worker.img", "/etc/rancher/k3s/config.yaml"))
    assert worker["token"] == secrets.worker_token
    # Not anywhere on a worker card: every byte of the image, the boot partition and free blocks included.
    server_token, key = secrets.server_token.encode(), secrets.ca_key.strip().splitlines()[1].encode()
    for image in (built / "worker.img", built / "node1.img"):
        with open(image, "rb") as f:
            previous = b""
            while chunk := f.read(1 << 24):
                window = previous[-200:] + chunk
                assert server_token not in window and key not in window, image
                previous = chunk
    assert read_root_file(built / "master.img", "/var/lib/rancher/k3s/server/tls/server-ca.crt") == secrets.ca_cert
    _, root = boot_and_root(built / "master.img")
    stat = subprocess.run(["debugfs", "-R", "stat /var/lib/rancher/k3s/server/tls/server-ca.key",
                           f"{built / 'master.img'}?offset={root.start}"], capture_output=True, text=True,
                          check=True).stdout
    assert "Mode:  0600" in stat


@pytest.mark.integration
def test_outputs_are_for_their_owner_only(built: Path) -> None:
    assert built.stat().st_mode & 0o777 == 0o700
    for path in built.iterdir():
        if path.is_file() and not path.name.startswith("."):
            assert path.stat().st_mode & 0o077 == 0, path


@pytest.mark.integration
def test_kernel_update_on_the_node_keeps_the_kernel_arguments_and_the_boot(built: Path, tmp_path: Path) -> None:
    # What apt runs on a node after a kernel or firmware upgrade, or any update-initramfs: Debian's hook
    # rewrites cmdline.txt and config.txt from scratch.
    image = tmp_path / "worker.img"
    subprocess.run(["cp", "--sparse=always", built / "worker.img", image], check=True)
    layout = LAYOUTS["raspios"]
    with mounted_image(image, layout, tmp_path) as root, chroot_session(root, "arm64") as chroot:
        kernel = sorted(p.name.removeprefix("vmlinuz-") for p in (root / "boot").glob("vmlinuz-*"))[-1]
        (root / "boot/firmware/cmdline.txt").write_text("stale\n")  # so a hook that did nothing shows
        chroot.run(["/etc/kernel/postinst.d/z50-raspi-firmware", kernel, f"/boot/vmlinuz-{kernel}"],
                   env={"DEB_MAINT_PARAMS": "configure"})
        cmdline = (root / "boot/firmware/cmdline.txt").read_text()
        config = (root / "boot/firmware/config.txt").read_text()
    assert "stale" not in cmdline and "cgroup_memory=1 cgroup_enable=memory" in cmdline, cmdline
    assert f"root=LABEL={layout.root_label}" in cmdline and "console=serial0,115200" in cmdline
    assert "It is automatically generated" in config
    before, after = verify_image(built / "worker.img"), verify_image(image)
    assert after.ok and after.good_boards == before.good_boards, after
