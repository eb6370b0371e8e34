"""Build a Debian base image from packages, in the Raspberry Pi OS (or Ubuntu) SD-card layout.

mmdebstrap installs an arm64/armhf system under qemu-user-static into a directory; the tree is then
finished with host tools and assembled into an image without mounting anything. The result is cached
like a downloaded base, keyed by everything that decides its content.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

from imagebuilder import __version__
from imagebuilder.core.binfmt import ensure_binfmt
from imagebuilder.core.context import Context
from imagebuilder.core.log import log, step
from imagebuilder.core.resources import atomic_output, ensure_space, file_lock, temporary_directory
from imagebuilder.core.run import output, run
from imagebuilder.disk.image import assemble, check_filesystems
from imagebuilder.layers.nevership import forget_identity
from imagebuilder.recipe.catalogue import LAYOUTS, Layout
from imagebuilder.recipe.model import Bootstrap
from imagebuilder.sources.aptsources import Mirrors, host_mirrors, source_lines
from imagebuilder.sources.base import BaseImage
from imagebuilder.sources.checksums import sha256_of
from imagebuilder.sources.cloudinit_modules import trim_cloud_init
from imagebuilder.sources.dpkg import installed_packages

# Bump when the way a base is made changes, so cached bases are rebuilt.
FORMAT = 3  # 2: the boot partition's fstab line has no 10 s device timeout; 3: cloud-init trimmed

COMPONENTS = "main non-free-firmware"  # raspi-firmware lives in non-free-firmware
KERNEL = {"arm64": "linux-image-arm64", "armhf": "linux-image-armmp"}
# As small as boots a Pi with cloud-init and ssh; variant "apt" installs no Recommends.
PACKAGES = (
    "systemd-sysv", "udev", "dbus", "kmod", "initramfs-tools", "raspi-firmware", "e2fsprogs", "dosfstools",
    "openssh-server", "cloud-init", "cloud-guest-utils", "ifupdown", "isc-dhcp-client", "iproute2",
    "netbase", "sudo",
)
# The initramfs only needs to find the root filesystem: an SD card on a Pi, or a virtio disk under qemu.
# A short list makes each mkinitramfs under emulation take seconds instead of minutes.
INITRD_MODULES = ("ext4", "mmc_block", "sdhci_iproc", "bcm2835", "virtio_blk", "virtio_mmio", "virtio_pci")


def packages_for(arch: str) -> tuple[str, ...]:
    return (*PACKAGES, KERNEL[arch])


def cache_key(spec: Bootstrap, arch: str) -> str:
    fields = {
        "suite": spec.suite, "arch": arch, "layout": spec.layout, "packages": packages_for(arch),
        "modules": INITRD_MODULES, "image_mirror": spec.image_mirror, "format": FORMAT,
        "builder": __version__,
    }
    if not spec.security:  # only then: the bases made with it keep their keys
        fields["security"] = False
    material = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(material.encode()).hexdigest()[:24]


def base_path(cache_dir: Path, spec: Bootstrap, arch: str) -> Path:
    key = cache_key(spec, arch)
    return cache_dir / "bases" / f"bootstrap-{spec.suite}-{arch}-{spec.layout}-{key}.img"


def cached_bootstrap(cache_dir: Path, spec: Bootstrap, arch: str) -> BaseImage | None:
    """The base from the cache, or None when it was not built yet (reads only)."""
    image = base_path(cache_dir, spec, arch)
    meta = image.with_suffix(".json")
    if not (image.exists() and meta.exists()):
        return None
    info = json.loads(meta.read_text())
    return BaseImage(image, info["sha256"], LAYOUTS[spec.layout], info["packages"])


def bootstrap_base(ctx: Context, spec: Bootstrap, arch: str) -> BaseImage:
    """Return the cached base image for spec/arch, building it first if needed."""
    ctx.cache("bases")
    image = base_path(ctx.cache_dir, spec, arch)
    with file_lock(image.with_suffix(".lock"), f"the {spec.suite} {arch} base"):
        base = cached_bootstrap(ctx.cache_dir, spec, arch)
        if base is not None:
            log.info("using cached base %s", image)
            return base
        with step(f"bootstrap Debian {spec.suite} {arch} ({spec.layout} layout)"):
            build_base(ctx, spec, arch, image, image.with_suffix(".json"))
    base = cached_bootstrap(ctx.cache_dir, spec, arch)
    assert base is not None
    return base


def build_base(ctx: Context, spec: Bootstrap, arch: str, image: Path, meta: Path) -> None:
    layout = LAYOUTS[spec.layout]
    # The unpacked tree (about 1 GiB), the image made from it, and mmdebstrap's own downloads.
    ensure_space(ctx.cache("tmp"), 3 * 2**30, f"bootstrapping Debian {spec.suite} {arch}")
    ensure_binfmt(arch)
    mirrors = Mirrors(spec.mirror, None) if spec.mirror else host_mirrors()
    if not spec.security:
        log.warning("bootstrapping Debian %s without %s-security (base.bootstrap.security is false): the images "
                    "get no security updates until their apt sources name it", spec.suite, spec.suite)
        mirrors = dataclasses.replace(mirrors, security=None)
    work = ctx.stack.enter_context(temporary_directory("imagebuilder-bootstrap-", ctx.cache("tmp")))
    root, boot, stage = work / "root", work / "boot", work / "stage"
    write_early_config(stage, layout)
    with step("mmdebstrap (packages installed under emulation)"):
        run_mmdebstrap(spec.suite, arch, mirrors, stage, root, work)
    with step("finish the tree"):
        packages = finish_tree(root, layout, spec, mirrors)
        shutil.move(root / layout.boot_mount.lstrip("/"), boot)
        (root / layout.boot_mount.lstrip("/")).mkdir(mode=0o755)
    with step("assemble the image"), atomic_output(image) as tmp:
        used = int(output(["du", "-sxb", root]).split()[0])
        root_size = _round_up(max(int(used * 1.3), used + 300 * 2**20), 64 * 2**20)
        assemble(tmp, root, boot, layout, root_size, disk_id=cache_key(spec, arch)[:8])
        check_filesystems(tmp, work)
        digest = sha256_of(tmp)
        with atomic_output(meta) as meta_tmp:
            meta_tmp.write_text(json.dumps({"sha256": digest, "size": tmp.stat().st_size, "packages": packages,
                                            "suite": spec.suite,
                                            "arch": arch, "layout": spec.layout}, indent=1, sort_keys=True))
    log.info("base image %s (%d MiB, root tree %d MiB)", image.name, image.stat().st_size // 2**20, used // 2**20)


def write_early_config(stage: Path, layout: Layout) -> None:
    """Files that must be in place before the kernel is installed (its postinst builds the initramfs)."""
    conf = stage / "etc/initramfs-tools/conf.d/imagebuilder.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text("# Written by imagebuilder: only the modules listed by the hook below.\nMODULES=list\n")
    hook = stage / "etc/initramfs-tools/hooks/imagebuilder-modules"
    hook.parent.mkdir(parents=True)
    hook.write_text(
        "#!/bin/sh\n# Written by imagebuilder: what finding the root filesystem needs.\n"
        'PREREQ=""\nprereqs() { echo "$PREREQ"; }\ncase "$1" in prereqs) prereqs; exit 0;; esac\n'
        ". /usr/share/initramfs-tools/hook-functions\n"
        f"for m in {' '.join(INITRD_MODULES)}; do manual_add_modules \"$m\"; done\n"
    )
    hook.chmod(0o755)


def run_mmdebstrap(suite: str, arch: str, mirrors: Mirrors, stage: Path, root: Path, work: Path) -> None:
    argv: list[str | os.PathLike[str]] = [
        "mmdebstrap", "--mode=root", "--variant=apt", f"--architectures={arch}", "--verbose",
        f"--include={','.join(packages_for(arch))}",
        '--aptopt=Acquire::Languages "none"',
        f"--essential-hook=sync-in {stage} /",
    ]
    # mmdebstrap does not read the host's apt.conf.d; follow it where it accepts expired Release files
    # (snapshot mirrors).
    if re.search(r'^Acquire::Check-Valid-Until "(false|0)";', output(["apt-config", "dump"]), re.M | re.I):
        argv.append('--aptopt=Acquire::Check-Valid-Until "false"')
    installed = 0

    def count(line: str) -> None:
        nonlocal installed
        if line.startswith("Setting up "):
            installed += 1
            if installed % 25 == 0:
                log.info("  %d packages set up", installed)

    run([*argv, suite, root, *source_lines(mirrors, suite, COMPONENTS)], env={"TMPDIR": str(work)},
        on_line=count)


def finish_tree(root: Path, layout: Layout, spec: Bootstrap, mirrors: Mirrors) -> dict[str, str]:
    """Host-side edits: boot config, fstab, cloud-init datasource, and nothing that identifies a machine."""
    boot = root / layout.boot_mount.lstrip("/")
    default = root / "etc/default/raspi-firmware"
    text = default.read_text()
    text = re.sub(r"^#?ROOTPART=.*$", f"ROOTPART=LABEL={layout.root_label}", text, flags=re.M)
    text = re.sub(r"^#?CONSOLES=.*$", 'CONSOLES="serial0,115200 tty1"', text, flags=re.M)
    default.write_text(text)
    # The kernel hook wrote the build host's root device and consoles: write what a Pi needs.
    (boot / "cmdline.txt").write_text(
        f"console=serial0,115200 console=tty1 root=LABEL={layout.root_label} rootfstype=ext4 rw "
        "fsck.repair=yes rootwait net.ifnames=0\n"
    )
    (root / "etc/fstab").write_text(
        f"LABEL={layout.root_label}\t/\text4\tdefaults,noatime\t0 1\n"
        # nofail: a boot without the boot partition goes on rather than to emergency mode. No short device
        # timeout: on a slow board (or its qemu model) udev may start well after 10 s, and the partition was
        # then never mounted.
        f"LABEL={layout.boot_label}\t{layout.boot_mount}\tvfat\tdefaults,umask=0077,nofail\t0 2\n"
    )
    cloud = root / "etc/cloud/cloud.cfg.d/90-imagebuilder-datasource.cfg"
    cloud.write_text(layout.nocloud_datasource())
    trim_cloud_init(root)
    (root / "etc/hostname").write_text("localhost\n")
    if spec.image_mirror:
        sources = root / "etc/apt/sources.list"
        sources.write_text(sources.read_text().replace(mirrors.archive, spec.image_mirror.rstrip("/")))
    forget_identity(root, layout.machine_id)
    (root / "etc/resolv.conf").unlink(missing_ok=True)  # the build host's, left by mmdebstrap
    return installed_packages(root)


def _round_up(value: int, step_: int) -> int:
    return (value + step_ - 1) // step_ * step_

