"""What a root tree has installed, read from its dpkg database with the host's dpkg-query."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from imagebuilder.core.run import output

# One line per package: the fields of DebPackage, then dpkg's state of it.
FORMAT = "${Package}\t${Version}\t${Architecture}\t${source:Package}\t${source:Version}\t${db:Status-Status}\n"


@dataclass(frozen=True)
class DebPackage:
    name: str
    version: str
    architecture: str  # arm64, armhf or all
    source: str  # the source package it was built from
    source_version: str
    installed: bool = True  # False: removed with its configuration files kept (dpkg's config-files state)


def read_packages(root: Path) -> tuple[DebPackage, ...]:
    """Every package the tree's dpkg database knows, in its order (by name)."""
    text = output(["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", "-f", FORMAT])
    packages = []
    for line in text.splitlines():
        if not line:
            continue
        name, version, arch, source, source_version, status = line.split("\t")
        packages.append(DebPackage(name, version, arch, source or name, source_version or version,
                                   status == "installed"))
    return tuple(packages)


def installed_packages(root: Path) -> dict[str, str]:
    return versions(read_packages(root))


def versions(packages: tuple[DebPackage, ...]) -> dict[str, str]:
    """name -> version, as manifest.json lists them."""
    return {p.name: p.version for p in packages}
