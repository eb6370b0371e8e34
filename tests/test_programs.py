"""The table of programs (imagebuilder/core/programs.py) against this machine's dpkg, the source, a build under
a PATH holding only the build tier's programs, and `imagebuilder doctor`."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from imagebuilder.core import programs
from imagebuilder.core.programs import BOOT, BUILD, PROGRAMS, TEST, TIERS, distribution, package_names, programs_of
from tests.argvscan import scan, scan_literal
from tests.conftest import ROOT, lacking, require_programs

SYSTEM_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])

# Command lines the scan cannot follow, and the programs a reader found they run on the host.
UNRESOLVED = {
    # A layer's checks marked on_host (engine/checks.py _tool_check): the host's nft in a namespace of its own.
    "imagebuilder/engine/checks.py: check.argv": ("unshare", "nft"),
    # The rootless backend's KVM probe runs the host's own qemu.
    "imagebuilder/engine/backends/guestfs.py: f'qemu-system-{platform.machine()}'":
        (f"qemu-system-{platform.machine()}",),
    # doctor looks for every program of the table: it runs none of them.
    "imagebuilder/cli/doctor.py: program.name": (),
}
# Shared code whose program only one tier's code reaches: network_namespace(), made only for the boot test's LAN.
TIER_OF_SHARED = {("imagebuilder/core/resources.py", "ip"): BOOT}


def owners(paths: list[str]) -> dict[str, set[str]]:
    """The packages dpkg says own each path (paths no package owns are left out)."""
    result = subprocess.run(["dpkg", "-S", *paths], capture_output=True, text=True, check=False)
    owned: dict[str, set[str]] = {}
    for line in result.stdout.splitlines():
        if line.startswith("diversion ") or ": " not in line:
            continue
        packages, path = line.split(": ", 1)
        owned[path] = {p.split(":")[0] for p in packages.split(", ")}  # "pkg:arch" on multi-arch packages
    return owned


def aliases(path: str) -> list[str]:
    """The names dpkg may know a program by: the path found, where its symlinks (alternatives) lead, and
    either with the /usr-merge prefix added or dropped (bookworm's packages still list /bin and /sbin)."""
    names = [path, os.path.realpath(path)]
    merged = [n.removeprefix("/usr") if n.startswith(("/usr/bin/", "/usr/sbin/")) else "/usr" + n for n in names]
    return list(dict.fromkeys([*names, *merged]))


def test_dpkg_names_the_tables_package_for_each_program() -> None:
    require_programs("dpkg")
    dist = distribution()
    found = {p.name: shutil.which(p.name, path=SYSTEM_PATH) for p in programs_of(TIERS)}
    owned = owners([a for path in found.values() if path for a in aliases(path)])
    wrong = []
    for program in programs_of(TIERS):
        path = found[program.name]
        if path is None:
            continue
        said = set().union(*(owned.get(a, set()) for a in aliases(path)))
        if program.package_on(dist) not in said:
            wrong.append(f"{program.name} ({path}): the table says {program.package_on(dist)}, dpkg {sorted(said)}")
    assert not wrong, "\n".join(wrong)
    missing = sorted(name for name, path in found.items() if path is None)
    if missing:
        lacking(f"not installed, so not checked against dpkg: {', '.join(missing)}")


def test_every_program_the_package_runs_is_in_the_table() -> None:
    result = scan([ROOT / "imagebuilder"], ROOT)
    # The package runs some forty programs: finding far fewer means the scan lost track of how it calls them.
    assert len(result.programs) >= 30, sorted(result.programs)
    assert result.unresolved == set(UNRESOLVED), "command lines the scan cannot follow: say what they run"
    table = {p.name for p in PROGRAMS}
    run = set(result.programs) | {name for names in UNRESOLVED.values() for name in names}
    assert sorted(run - table) == [], "programs run but missing from imagebuilder/core/programs.py"


def test_each_program_is_in_the_tier_of_the_code_that_runs_it() -> None:
    result = scan([ROOT / "imagebuilder"], ROOT)
    tiers = {p.name: p.tiers for p in PROGRAMS}
    wrong = []
    for name, places in sorted(result.programs.items()):
        for place in places:
            tier = TIER_OF_SHARED.get((place.split(":")[0], name),
                                      BOOT if place.startswith("imagebuilder/boottest/") else BUILD)
            if tier not in tiers.get(name, ()):
                wrong.append(f"{place} runs {name}: not in the {tier} tier")
    assert not wrong, "\n".join(wrong)


def test_what_the_tests_run_is_in_the_table() -> None:
    result = scan_literal([ROOT / "tests"], ROOT)
    table = {p.name for p in PROGRAMS}
    assert len(result.programs) >= 20, sorted(result.programs)
    assert sorted(set(result.programs) - table) == []


def test_lsinitramfs_comes_from_initramfs_tools_core_in_the_build_tier() -> None:
    assert programs.package_of("lsinitramfs") == "initramfs-tools-core"
    assert "initramfs-tools-core" in package_names([BUILD], "debian")


def test_the_makefile_reads_the_table_with_the_system_python_alone() -> None:
    # -I: no site-packages, no current directory on sys.path: what a fresh machine's python3 has.
    result = subprocess.run(["/usr/bin/python3", "-I", "imagebuilder/core/programs.py", "packages", "build"],
                            cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.split() == package_names([BUILD], distribution())
    refused = subprocess.run(["/usr/bin/python3", "-I", "imagebuilder/core/programs.py", "packages", "nosuch"],
                             cwd=ROOT, capture_output=True, text=True, check=False)
    assert refused.returncode == 2 and "tiers: build, boot, test, lint" in refused.stderr


def test_ubuntu_names_its_own_packages(tmp_path: Path) -> None:
    os_release = tmp_path / "os-release"
    os_release.write_text('NAME="Linux Mint"\nID=linuxmint\nID_LIKE="ubuntu debian"\n')
    assert distribution(os_release) == "ubuntu"
    assert "chromium-browser" in package_names(["test"], "ubuntu")
    assert "chromium" in package_names(["test"], "debian")


def programs_dir(folder: Path, names: dict[str, str]) -> Path:
    """A folder of symlinks, name -> program: the whole PATH of a command run with it."""
    folder.mkdir(parents=True)
    for name, target in names.items():
        (folder / name).symlink_to(target)
    return folder


def table_programs(*, without: tuple[str, ...] = ()) -> dict[str, str]:
    """Every program of the table installed here, by name, but those named in `without`."""
    found = {p.name: shutil.which(p.name, path=SYSTEM_PATH) for p in programs_of(TIERS) if p.name not in without}
    return {name: path for name, path in found.items() if path}


def doctor(path: Path | str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": str(path)}
    return subprocess.run([sys.executable, "-m", "imagebuilder", "doctor"], cwd=ROOT, env=env, capture_output=True,
                          text=True, check=False)


def test_doctor_names_each_missing_program_with_its_package(tmp_path: Path) -> None:
    require_programs("socat", "ssh", "dpkg-query")
    result = doctor(programs_dir(tmp_path / "bin", table_programs(without=("socat", "ssh"))))
    assert result.returncode == 0, result.stdout + result.stderr  # the build tier is complete
    lines = result.stdout.splitlines()
    boot = lines.index(f"boot ({TIERS[BOOT]}): missing")
    assert lines[boot + 1:boot + 4] == ["    socat: socat", "    openssh-client: ssh",
                                        "    install: apt-get install socat openssh-client"]
    assert f"build ({TIERS[BUILD]}): ok" in lines


def test_doctor_fails_without_a_program_of_the_build_tier(tmp_path: Path) -> None:
    require_programs("lsinitramfs", "dpkg-query")
    result = doctor(programs_dir(tmp_path / "bin", table_programs(without=("lsinitramfs",))))
    assert result.returncode == 1
    assert "    initramfs-tools-core: lsinitramfs" in result.stdout.splitlines()
    assert "    install: apt-get install initramfs-tools-core" in result.stdout.splitlines()


def test_doctor_passes_on_this_machine() -> None:
    result = doctor(os.environ.get("PATH", ""))
    if result.returncode != 0:
        lacking(f"this machine lacks part of the build tier:\n{result.stdout}")
    assert f"build ({TIERS[BUILD]}): ok" in result.stdout.splitlines()


def installed_closure(packages: list[str]) -> list[str]:
    """`packages` and what apt installs with them: their Depends and Pre-Depends, recursively, as installed
    here (the alternative that is), and the Essential packages every Debian system has."""
    fields = "${db:Status-Abbrev}\t${Package}\t${Essential}\t${Provides}\t${Pre-Depends}, ${Depends}\n"
    listing = subprocess.run(["dpkg-query", "-W", "-f", fields], capture_output=True, text=True, check=True).stdout
    depends: dict[str, list[list[str]]] = {}
    provider: dict[str, str] = {}
    wanted = list(packages)
    for line in listing.splitlines():
        status, name, essential, provides, relations = line.split("\t")
        if not status.startswith("ii"):
            continue
        depends[name] = [[_relation_name(a) for a in r.split("|")] for r in relations.split(",") if r.strip()]
        for virtual in provides.split(","):
            if virtual.strip():
                provider.setdefault(_relation_name(virtual), name)
        if essential == "yes":
            wanted.append(name)
    closure: dict[str, None] = {}
    while wanted:
        name = wanted.pop()
        if name in closure or name not in depends:
            continue
        closure[name] = None
        for alternatives in depends[name]:
            installed = [p for p in (a if a in depends else provider.get(a, "") for a in alternatives) if p in depends]
            wanted.extend(installed[:1])
    return list(closure)


def _relation_name(relation: str) -> str:
    """The package a relation names: "libc6 (>= 2.34)", "python3:any" -> "libc6", "python3"."""
    return relation.strip().split(" ")[0].split(":")[0]


def tier_programs(tiers: tuple[str, ...]) -> dict[str, str]:
    """Every program (bin and sbin) that the tiers' packages, and what apt installs with them, put here."""
    found: dict[str, str] = {}
    for package in installed_closure(package_names(tiers, distribution())):
        listed = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, check=False).stdout
        for line in listed.splitlines():
            path = Path(line)
            if path.parent.name in ("bin", "sbin") and path.parent.parent in (Path("/"), Path("/usr")) \
                    and os.path.isfile(path) and os.access(path, os.X_OK):
                found.setdefault(path.name, str(path))
    return found


def build_tier_path(folder: Path) -> str:
    """A PATH holding nothing but the programs of the build tier's packages (and of what apt installs with
    them) and the Python imagebuilder runs on. test_kill's finishing build, a whole build with every stage
    made from a cache holding only the base, runs under it: the build tier is enough for a build."""
    names = tier_path_programs((BUILD,))
    # Not one program of the boot tier that comes from a package of its own: the PATH is really restricted.
    # (ssh is a boot program, but openssh-client is a build package for ssh-keygen: it comes along.)
    build_packages = set(installed_closure(package_names((BUILD,), distribution())))
    assert not {p.name for p in programs_of([BOOT])
                if BUILD not in p.tiers and p.package not in build_packages} & set(names)
    return str(programs_dir(folder, names))


def boot_tier_path(folder: Path) -> str:
    """The same for `make boot-test`, which installs the build and the boot tiers: the armhf cluster's boot
    test runs under it (tests/test_boot_armhf.py), so the two tiers are enough for a boot test."""
    names = tier_path_programs((BUILD, BOOT))
    # The test tier's dnsmasq, bmaptool, chromium...: installed here, not on this PATH. It is really restricted.
    left_out = {p.name for p in programs_of([TEST]) if shutil.which(p.name, path=SYSTEM_PATH)} - set(names)
    assert {"dnsmasq", "bmaptool"} <= left_out, left_out
    return str(programs_dir(folder, names))


def tier_path_programs(tiers: tuple[str, ...]) -> dict[str, str]:
    """The programs of the tiers' packages, each of the table's programs of the tiers among them, and the
    Python imagebuilder runs on."""
    require_programs("dpkg")
    names = tier_programs(tiers)
    missing = [p.name for p in programs_of(list(tiers)) if p.name not in names]
    assert not missing, f"the packages of the tiers {tiers} do not install {missing}"
    names.update({"python3": sys.executable})
    return names
