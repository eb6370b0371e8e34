"""The rootless backend: libguestfs edits the image in its own small VM, without loop devices or mounts.

The appliance runs the host's kernel, not the image's architecture, so nothing of the image can be run:
no apt-get, no systemctl. Overlay files are written through the guestfs API, units are enabled by making
the symlinks `systemctl enable` would make, and packages are left to cloud-init at first boot.
"""

from __future__ import annotations

import contextlib
import os
import platform
import posixpath
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagebuilder.core.errors import CommandTimedOut, ImageBuilderError
from imagebuilder.core.log import log, step
from imagebuilder.core.resources import acquired
from imagebuilder.core.run import run
from imagebuilder.engine.checks import ConfigCheck
from imagebuilder.layers.nevership import MACHINE_ID, NEVER_SHIP
from imagebuilder.layers.render import RenderedLayer
from imagebuilder.layers.write import add_kernel_arguments
from imagebuilder.netboot.populate import NetbootSource
from imagebuilder.recipe.catalogue import Layout
from imagebuilder.sources.dpkg import DebPackage, read_packages

# Where `systemctl enable` looks for unit files, in its order (Debian's split-usr build includes /lib).
UNIT_DIRS = ("/etc/systemd/system", "/usr/local/lib/systemd/system", "/lib/systemd/system",
             "/usr/lib/systemd/system")
FIX = "apt-get install python3-guestfs libguestfs-tools linux-image-amd64"


def _import_guestfs() -> Any:
    try:
        import guestfs
    except ImportError:
        raise ImageBuilderError("the guestfs backend needs libguestfs's Python bindings (python3-guestfs)",
                                f"{FIX}; make the venv with --system-site-packages") from None
    return guestfs


class _Accel:
    # Set once KVM is found unable to run the appliance in this process, so later stages do not try it again.
    force_tcg = os.environ.get("LIBGUESTFS_BACKEND_SETTINGS", "") != ""
    probed = False


KVM_PROBE_SECONDS = 20.0  # a kernel under KVM prints its banner within a second; TCG needs a few


def kvm_boots_kernels() -> bool:
    """Whether KVM here gets a Linux kernel as far as its banner, tried with the kernel the appliance uses.

    Some nested VMs offer a /dev/kvm on which a guest starts but hangs as the kernel begins (the firmware
    runs, the kernel never prints), and libguestfs would then wait forever: it only falls back to TCG when
    KVM fails at once.
    """
    kernels = sorted(Path("/boot").glob("vmlinuz-*"))
    kernel = os.environ.get("SUPERMIN_KERNEL") or (str(kernels[-1]) if kernels else "")
    program = f"qemu-system-{platform.machine()}"
    if not (os.access("/dev/kvm", os.R_OK | os.W_OK) and kernel and os.access(kernel, os.R_OK)
            and shutil.which(program)):
        return True  # nothing to try it with: libguestfs decides
    seen: list[str] = []
    with contextlib.suppress(CommandTimedOut):  # the hang this looks for
        run([program, "-accel", "kvm", "-cpu", "max", "-m", "256", "-nodefaults", "-no-user-config",
             "-display", "none", "-no-reboot", "-serial", "stdio", "-kernel", kernel,
             "-append", "console=ttyS0 panic=-1"], check=False, on_line=seen.append, timeout=KVM_PROBE_SECONDS)
    return any("Linux version" in line for line in seen)


def _launched(guestfs: Any, image: Path) -> Any:
    g = guestfs.GuestFS(python_return_dict=True)
    # direct: qemu started by us, no libvirt daemon (and no root) needed.
    if "LIBGUESTFS_BACKEND" not in os.environ:
        g.set_backend("direct")
    if _Accel.force_tcg and "LIBGUESTFS_BACKEND_SETTINGS" not in os.environ:
        g.set_backend_settings(["force_tcg"])
    # discard: fstrim in the appliance punches holes in the file; unsafe: the file is a temporary stage
    # image, thrown away unless the whole stage succeeds, so flushing it to disk buys nothing.
    g.add_drive_opts(str(image), format="raw", readonly=False, discard="besteffort", cachemode="unsafe")
    try:
        g.launch()
    except BaseException:
        g.close()
        raise
    return g


@contextlib.contextmanager
def guestfs_handle(image: Path) -> Iterator[Any]:
    """A launched libguestfs appliance with `image` attached read-write; shut down and closed afterwards."""
    guestfs = _import_guestfs()
    if not (_Accel.force_tcg or _Accel.probed):
        _Accel.probed = True
        if not kvm_boots_kernels():
            log.info("KVM here does not boot a kernel (a nested VM?): the libguestfs appliance runs under TCG")
            _Accel.force_tcg = True
    with step("start the libguestfs appliance" + (" (TCG)" if _Accel.force_tcg else "")):
        try:
            g = _launched(guestfs, image)
        except RuntimeError as first:
            if _Accel.force_tcg:
                raise _launch_failed(first) from None
            # Machines whose /dev/kvm cannot run guests (nested VMs) fail at once: use the emulator.
            log.info("libguestfs could not start its appliance with KVM; using TCG (LIBGUESTFS_BACKEND_SETTINGS="
                     "force_tcg skips this try)")
            _Accel.force_tcg = True
            try:
                g = _launched(guestfs, image)
            except RuntimeError as second:
                raise _launch_failed(second) from None
    try:
        acquired(f"libguestfs appliance for {image.name}")
        yield g
        g.shutdown()  # waits for the appliance to write everything back
    finally:
        g.close()


def _launch_failed(e: RuntimeError) -> ImageBuilderError:
    return ImageBuilderError(f"libguestfs could not start its appliance: {str(e).splitlines()[0]}",
                             f"run libguestfs-test-tool to see why; {FIX}")


class GuestfsTree:
    def __init__(self, g: Any, layout: Layout, workdir: Path) -> None:
        self.g = g
        self.layout = layout
        self.workdir = workdir

    def install(self, packages: tuple[str, ...], debs: Path) -> None:
        raise ImageBuilderError(
            "the guestfs backend cannot install packages into the image",
            "build as root (--backend loop), or let cloud-init install them at first boot",
        )

    def write_layer(self, layer: RenderedLayer) -> list[str]:
        """As layers.write.write_layer: boot/ onto the boot partition, modes applied, owned by root.

        The appliance resolves every path inside the image, so no link in it can reach the host.
        """
        g = self.g
        written = []
        for f in layer.files:
            path = f.system_path(self.layout.boot_mount)
            g.mkdir_p(posixpath.dirname(path))
            if g.is_symlink(path) or (g.exists(path) and not g.is_dir(path)):
                g.rm_f(path)
            if f.symlink:
                g.ln_s(f.data.decode(), path)
            else:
                g.write(path, f.data)
                if not f.boot:  # FAT has neither owners nor modes
                    g.chown(0, 0, path)
                    g.chmod(f.mode, path)
            written.append(path)
        return written

    def add_kernel_arguments(self, arguments: list[str]) -> list[str]:
        def read(path: str) -> str | None:
            return self.g.read_file(path).decode() if self.g.is_file(path, followsymlinks=True) else None

        def write(path: str, text: str) -> None:
            self.g.write(path, text.encode())

        return add_kernel_arguments(read, write, self.layout.boot_mount, arguments)

    def update_initramfs(self) -> None:
        raise ImageBuilderError("a layer changes the initramfs (netboot), which the guestfs backend cannot "
                                "regenerate: it runs none of the image's programs", "build as root (the loop backend)")

    def add_netboot_tree(self, source: NetbootSource, work: Path) -> None:
        raise ImageBuilderError("netboot: the master's tree is copied from the worker's stage through loop "
                                "devices, which the guestfs backend does not use", "build as root (the loop backend)")

    def run_checks(self, checks: list[ConfigCheck]) -> None:
        # The checks run the image's own tools (nft, exportfs...), which the appliance cannot run.
        log.warning("guestfs backend: %d check(s) of generated files skipped (%s); the loop backend runs them",
                    len(checks), ", ".join(sorted({c.tool for c in checks})))

    def enable_units(self, units: list[str]) -> None:
        done: set[str] = set()
        for unit in units:
            self._enable(unit, done)

    def _enable(self, unit: str, done: set[str]) -> None:
        """What `systemctl enable` does offline: links from the [Install] section's targets."""
        if unit in done:
            return
        done.add(unit)
        prefix, at, rest = unit.partition("@")
        instance, _, kind = rest.rpartition(".")
        # foo@bar.service comes from foo@bar.service if there is one, else from the template foo@.service.
        source = self._find_unit(unit, fallback=f"{prefix}@.{kind}" if at and instance else None)
        if source is None:
            # Its package is installed at first boot, so is its unit file: nothing to link to yet.
            log.warning("unit %s is not in the image (its package comes at first boot): enable it there, "
                        "e.g. cloud-init runcmd: systemctl enable --now %s", unit, unit)
            return
        install = self._install_section(source)
        name = unit
        if at and not instance:
            default = install.get("defaultinstance", "")
            name = f"{prefix}@{default}.{kind}" if default else ""
        for key in ("wantedby", "requiredby"):
            suffix = ".wants" if key == "wantedby" else ".requires"
            for target in install.get(key, "").split():
                if name:
                    self._link(source, f"/etc/systemd/system/{target}{suffix}/{name}")
        for alias in install.get("alias", "").split():
            self._link(source, f"/etc/systemd/system/{alias}")
        for also in install.get("also", "").split():
            self._enable(also, done)
        if not any(install.get(k) for k in ("wantedby", "requiredby", "alias", "also")):
            log.warning("unit %s has no [Install] section: enabling it does nothing", unit)

    def _find_unit(self, unit: str, fallback: str | None = None) -> str | None:
        for name in (unit, fallback) if fallback else (unit,):
            for directory in UNIT_DIRS:
                path = f"{directory}/{name}"
                if self.g.is_symlink(path) and self.g.readlink(path) == "/dev/null":
                    raise ImageBuilderError(f"unit {unit} is masked in the image ({path})",
                                            f"remove the mask from the overlays or drop {unit} from enable-units")
                if self.g.is_file(path, followsymlinks=True):
                    return path
        return None

    def _install_section(self, path: str) -> dict[str, str]:
        text = self.g.read_file(path).decode(errors="replace")
        # Unit files repeat keys (WantedBy= twice); join the values as systemd does.
        install: dict[str, str] = {}
        in_install = False
        for raw in text.splitlines():
            line = raw.strip()
            if line.startswith("["):
                in_install = line == "[Install]"
            elif in_install and "=" in line and not line.startswith(("#", ";")):
                key, value = (part.strip() for part in line.split("=", 1))
                install[key.lower()] = f"{install.get(key.lower(), '')} {value}".strip()
        return install

    def _link(self, source: str, link: str) -> None:
        self.g.mkdir_p(posixpath.dirname(link))
        if self.g.is_symlink(link) or self.g.exists(link):
            self.g.rm_f(link)
        self.g.ln_s(source, link)

    def list_packages(self) -> tuple[DebPackage, ...]:
        # The same dpkg-query the loop backend runs, on a copy of the image's dpkg status.
        admin = self.workdir / "dpkg-root" / "var/lib/dpkg"
        (admin / "updates").mkdir(parents=True, exist_ok=True)
        self.g.download("/var/lib/dpkg/status", str(admin / "status"))
        return read_packages(self.workdir / "dpkg-root")

    def read_file(self, path: str) -> bytes | None:
        # The appliance follows links inside the image.
        return bytes(self.g.read_file(path)) if self.g.is_file(path, followsymlinks=True) else None

    def tidy(self) -> None:
        """As the loop backend: the one list of what never ships, through the appliance."""
        for pattern, _ in NEVER_SHIP:
            for path in self.g.glob_expand("/" + pattern):
                self.g.rm_rf(path)
        machine_id = self.layout.machine_id
        self.g.write("/" + MACHINE_ID, f"{machine_id}\n".encode() if machine_id else b"")
        # Free blocks become holes in the file, so the bmap and the compressed images carry only data.
        self.g.fstrim("/")


@dataclass(frozen=True)
class GuestfsBackend:
    name = "guestfs"
    installs_packages = False
    runs_checks = False
    mounts = False
    # Not done: remaking the root from its files keeps their owners only where the host writes them as root
    # (mkfs.ext4 -d copies the tree's owners). Images made without root are not reproducible.
    rewrites = False

    def key_material(self) -> dict[str, str]:
        # The same inputs as a loop stage make another image (no package installed, nothing run in it):
        # the two never share a cache entry.
        return {"backend": self.name}

    def shrink(self, image: Path) -> None:
        """Left as it is: with no package installed, a stage grows only by what a netboot tree needs, and
        shrinking would take a loop device (root)."""

    def rewrite(self, image: Path, epoch: int, clock: int, size: int | None, work: Path) -> None:
        raise NotImplementedError("the guestfs backend does not rewrite (rewrites is False)")

    @contextlib.contextmanager
    def open(self, image: Path, layout: Layout, arch: str, workdir: Path, *,
             grow_fs: bool, epoch: int, rewrite: bool) -> Iterator[GuestfsTree]:
        # Nothing runs in the image here, so nothing needs the epoch, and nothing is made again (rewrite).
        with guestfs_handle(image) as g:
            boot, root = g.list_partitions()[:2]
            if grow_fs:
                g.e2fsck_f(root)
                g.resize2fs(root)
            g.mount(root, "/")
            g.mkdir_p(layout.boot_mount)
            g.mount(boot, layout.boot_mount)
            yield GuestfsTree(g, layout, workdir)
            g.umount_all()
