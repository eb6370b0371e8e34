"""The doctor command: everything this machine lacks for each tier at once, with the line that installs it.

Exit status 1 when the build tier is incomplete (`imagebuilder build` would stop on a missing program),
0 otherwise: the other tiers are only needed to test imagebuilder itself.
"""

from __future__ import annotations

import argparse
import glob

from imagebuilder.cli.command import Command
from imagebuilder.core.context import Context
from imagebuilder.core.programs import BUILD, TIERS, Package, debian_arch, distribution, packages_of, programs_of
from imagebuilder.core.run import output, which


def _arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # no options: every tier is checked


def _installed(package: Package, name: str) -> bool:
    if package.unless and not glob.glob(package.unless):
        return False  # what it would bring is not there (packages_of keeps it only then)
    if which("dpkg-query") is None:
        return False
    status = output(["dpkg-query", "-W", "-f", "${Status}", name], check=False)
    return status == "install ok installed"


def missing_packages(tier: str, dist: str) -> list[tuple[str, str]]:
    """(package, what it is missing for) for everything `tier` needs that is absent here."""
    missing: dict[str, list[str]] = {}
    for program in programs_of([tier]):
        if which(program.name) is None:
            missing.setdefault(program.package_on(dist), []).append(program.name)
    for package in packages_of([tier]):
        name = package.package_on(dist)
        if not _installed(package, name):
            missing.setdefault(name, []).append(package.why)
    return [(name, ", ".join(needs)) for name, needs in missing.items()]


def doctor(ctx: Context, args: argparse.Namespace) -> int:
    dist = distribution()
    print(f"this machine: {dist} {debian_arch()}")
    incomplete: set[str] = set()
    for tier, purpose in TIERS.items():
        missing = missing_packages(tier, dist)
        if not missing:
            print(f"{tier} ({purpose}): ok")
            continue
        incomplete.add(tier)
        print(f"{tier} ({purpose}): missing")
        for package, needs in missing:
            print(f"    {package}: {needs}")
        print(f"    install: apt-get install {' '.join(name for name, _ in missing)}")
    if BUILD in incomplete:
        print("imagebuilder cannot build images here until the build tier is installed")
        return 1
    return 0


COMMANDS = [
    Command("doctor", "list what this machine lacks for building, the boot test, the test suite and the linters, "
            "with the packages to install", _arguments, doctor),
]
