"""Every program imagebuilder runs on the host, the package that provides it, and the tiers that need it.

The one place this is declared: the Makefile's package lists (`python3 imagebuilder/core/programs.py
packages build`), the "X not found: install Y" line and `imagebuilder doctor` read it, and
tests/test_programs.py proves it against dpkg and against the source. Standard library only, so that the
Makefile can run it with the system python3 before any venv exists.

Tiers: build (`imagebuilder build`, `verify`, `fetch`), boot (`imagebuilder boot-test`), test (the test
suite, which also needs the other tiers), lint (`make lint`, whose linters come from PyPI).
"""

from __future__ import annotations

import functools
import glob
import platform
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

BUILD, BOOT, TEST, LINT = "build", "boot", "test", "lint"
TIERS = {
    BUILD: "imagebuilder build, verify and fetch; make images",
    BOOT: "imagebuilder boot-test; make boot-test",
    TEST: "the test suite: make test",
    LINT: "the linters: make lint",
}


@dataclass(frozen=True)
class Program:
    name: str
    package: str  # on Debian
    tiers: tuple[str, ...]
    ubuntu: str | None = None  # the package on Ubuntu, where its name differs
    machine: str | None = None  # needed only on hosts of this platform.machine()

    def package_on(self, distribution: str) -> str:
        return self.ubuntu if distribution == "ubuntu" and self.ubuntu else self.package


@dataclass(frozen=True)
class Package:
    """A package a tier needs that is no program on PATH: a Python module, a kernel, a registration."""
    name: str
    tiers: tuple[str, ...]
    why: str
    ubuntu: str | None = None
    unless: str | None = None  # a glob: when a file matches it, the need is met without the package

    def package_on(self, distribution: str) -> str:
        name = self.ubuntu if distribution == "ubuntu" and self.ubuntu else self.name
        return name.format(arch=debian_arch())


def _programs(package: str, tiers: tuple[str, ...], *names: str, ubuntu: str | None = None,
              machine: str | None = None) -> list[Program]:
    return [Program(name, package, tiers, ubuntu, machine) for name in names]


_B, _BT, _T = (BUILD,), (BOOT,), (TEST,)

PROGRAMS: tuple[Program, ...] = (
    # Partitions, file systems, FAT without a mount, the image's own checks.
    *_programs("mount", _B, "mount", "umount"),
    *_programs("mount", _T, "losetup"),
    *_programs("util-linux", _B, "unshare", "fstrim"),
    *_programs("util-linux", _T, "setpriv"),
    *_programs("fdisk", _B, "sfdisk"),
    *_programs("e2fsprogs", _B, "mkfs.ext4", "e2fsck", "resize2fs", "debugfs", "dumpe2fs"),
    *_programs("dosfstools", _B, "mkfs.vfat", "fsck.vfat"),
    *_programs("mtools", _B, "mcopy", "mdir", "mtype", "minfo", "mlabel", "mmd"),
    *_programs("mtools", _T, "mdel"),
    *_programs("kmod", _B, "modprobe"),
    *_programs("coreutils", _B, "chroot", "cp", "du", "rm", "sync"),
    *_programs("coreutils", _T, "sha256sum", "sleep", "env", "chmod"),
    *_programs("procps", _T, "pgrep"),
    # The bootstrap: mmdebstrap runs arch-test; the kernel runs the foreign binaries through qemu-user.
    *_programs("mmdebstrap", _B, "mmdebstrap"),
    *_programs("arch-test", _B, "arch-test"),
    *_programs("qemu-user-static", _B, "qemu-aarch64-static", "qemu-arm-static"),
    *_programs("apt", _B, "apt-config"),
    *_programs("dpkg", _B, "dpkg-query"),
    *_programs("dpkg", _T, "dpkg"),
    # verify reads the initramfs; the firewall is checked by the host's nft in a namespace of its own.
    *_programs("initramfs-tools-core", _B, "lsinitramfs"),
    *_programs("nftables", _B, "nft"),
    *_programs("openssl", _B, "openssl"),
    *_programs("xz-utils", _B, "xz"),
    *_programs("zstd", _B, "zstd"),
    # The boot test: guests on a private LAN in a network namespace, reached over ssh.
    *_programs("qemu-system-arm", _BT, "qemu-system-aarch64", "qemu-system-arm"),
    *_programs("qemu-utils", _BT, "qemu-img"),
    *_programs("socat", _BT, "socat"),
    *_programs("openssh-client", _BT, "ssh"),
    # Signs SHA256SUMS (build) and checks the signature (flash); the boot test makes its login key with it.
    *_programs("openssh-client", (BUILD, BOOT), "ssh-keygen"),
    *_programs("iproute2", _BT, "ip"),
    *_programs("curl", _BT, "curl"),
    # The test suite: the rootless backend probes KVM with the host's own qemu; generated configurations
    # are checked by the real tools; the dashboard is read by a browser; reflinks need btrfs.
    *_programs("qemu-system-x86", _T, "qemu-system-x86_64", machine="x86_64"),
    *_programs("dnsmasq-base", _T, "dnsmasq"),
    *_programs("systemd", _T, "systemd-analyze", "systemd-escape"),
    *_programs("chromium", _T, "chromium", ubuntu="chromium-browser"),
    *_programs("bmap-tools", _T, "bmaptool"),
    *_programs("btrfs-progs", _T, "mkfs.btrfs", "btrfs"),
    *_programs("diffutils", _T, "diff"),
    *_programs("dash", _T, "dash", "sh"),
    # The node's shell scripts: `make lint` checks them as they are, the tests as the build renders them.
    *_programs("shellcheck", (TEST, LINT), "shellcheck"),
    # The install as users make it (make install), run with sudo by a user the test makes.
    *_programs("make", _T, "make"),
    *_programs("sudo", _T, "sudo"),
    *_programs("passwd", _T, "useradd", "userdel"),
)

PACKAGES: tuple[Package, ...] = (
    Package("python3", (BUILD, LINT), "the Python imagebuilder runs on"),
    Package("python3-venv", (BUILD, LINT), "the Makefile's .venv"),
    Package("python3-pip", (BUILD, LINT), "installs imagebuilder and its Python dependencies into the .venv"),
    Package("binfmt-support", (BUILD,), "registers qemu-user-static's interpreters when the machine starts"),
    Package("python3-guestfs", (TEST,), "the rootless backend's libguestfs, imported by the .venv's Python"),
    Package("libguestfs-tools", (TEST,), "the libguestfs appliance the rootless backend starts"),
    Package("linux-image-{arch}", (TEST,), "the host kernel libguestfs's appliance boots, where /boot has none",
            ubuntu="linux-image-generic", unless="/boot/vmlinuz-*"),
)

_PACKAGE_OF = {p.name: p for p in PROGRAMS}


def debian_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "armhf"}.get(machine, machine)


@functools.cache
def distribution(os_release: Path = Path("/etc/os-release")) -> str:
    """'ubuntu' on Ubuntu and its derivatives, else 'debian'."""
    try:
        fields = dict(line.split("=", 1) for line in os_release.read_text().splitlines() if "=" in line)
    except OSError:
        return "debian"
    ids = {fields.get("ID", "").strip('"'), *fields.get("ID_LIKE", "").strip('"').split()}
    return "ubuntu" if "ubuntu" in ids else "debian"


def programs_of(tiers: Iterable[str]) -> list[Program]:
    """The programs the tiers need on this machine, in table order."""
    wanted = set(tiers)
    return [p for p in PROGRAMS if wanted & set(p.tiers) and p.machine in (None, platform.machine())]


def packages_of(tiers: Iterable[str]) -> list[Package]:
    """The packages the tiers need besides their programs' on this machine (a met `unless` drops one)."""
    wanted = set(tiers)
    return [p for p in PACKAGES if wanted & set(p.tiers) and not (p.unless and glob.glob(p.unless))]


def package_names(tiers: Iterable[str], distribution: str) -> list[str]:
    """Every package name the tiers need on this machine, each once."""
    tiers = list(tiers)
    entries: list[Package | Program] = [*packages_of(tiers), *programs_of(tiers)]
    names = [p.package_on(distribution) for p in entries]
    return list(dict.fromkeys(names))


def package_of(program: str, distribution: str = "debian") -> str | None:
    """The package that provides `program`, None for one the table does not know."""
    entry = _PACKAGE_OF.get(program)
    return entry.package_on(distribution) if entry else None


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "packages" or not set(argv[1:]) <= set(TIERS):
        print(f"usage: programs.py packages TIER... (tiers: {', '.join(TIERS)})", file=sys.stderr)
        return 2
    print(" ".join(package_names(argv[1:], distribution())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
