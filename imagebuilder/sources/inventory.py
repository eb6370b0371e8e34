"""What an image holds, for its SBOM: its distribution (os-release) and every installed Debian package with
the licenses its copyright file states.

Read once, when the stage whose image becomes an output is made (the tree is open then), and kept in the
stage's record: emitting the image never opens it again.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from imagebuilder.sources.dpkg import DebPackage

# The os-release fields an SBOM names the distribution by.
OS_FIELDS = ("ID", "VERSION_ID", "VERSION_CODENAME", "PRETTY_NAME")
# Debian's machine-readable copyright format names itself in its first paragraph's Format field (the URL
# of a version of the spec, or of DEP-5 before it was one).
_FORMAT = re.compile(r"copyright-format|dep5", re.IGNORECASE)


@dataclass(frozen=True)
class Package(DebPackage):
    licenses: tuple[str, ...] = ()  # the short names of its machine-readable copyright file, as written


@dataclass(frozen=True)
class Inventory:
    os_release: dict[str, str]
    packages: tuple[Package, ...]

    def to_record(self) -> dict[str, Any]:
        return {"os_release": self.os_release,
                "packages": [[p.name, p.version, p.architecture, p.source, p.source_version, list(p.licenses)]
                             for p in self.packages]}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Inventory:
        return cls(dict(record["os_release"]),
                   tuple(Package(n, v, a, s, sv, licenses=tuple(lic)) for n, v, a, s, sv, lic in record["packages"]))


def read_inventory(packages: tuple[DebPackage, ...], read: Callable[[str], bytes | None]) -> Inventory:
    """The installed packages of a tree (from its dpkg database) and their licenses; `read` gives a file of
    the tree by its path there, None when there is none."""
    found = []
    for p in packages:
        if not p.installed:
            continue
        copyright_file = read(f"/usr/share/doc/{p.name}/copyright")
        licenses = stated_licenses(copyright_file.decode(errors="replace")) if copyright_file else ()
        found.append(Package(**{**dataclasses.asdict(p), "licenses": licenses}))
    os_release = read("/etc/os-release") or read("/usr/lib/os-release") or b""
    return Inventory(parse_os_release(os_release.decode(errors="replace")), tuple(found))


def parse_os_release(text: str) -> dict[str, str]:
    """The OS_FIELDS os-release(5) sets (shell-quoted values unquoted)."""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key in OS_FIELDS:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = re.sub(r"\\(.)", r"\1", value[1:-1]) if value[0] == '"' else value[1:-1]
            fields[key] = value
    return fields


def paragraphs(text: str) -> list[dict[str, str]]:
    """deb822 paragraphs: field names lower-cased, each value's first line (continuations dropped)."""
    found: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                found.append(current)
            current = {}
        elif line[0] in " \t" or line.startswith("#"):
            continue
        elif ":" in line:
            key, _, value = line.partition(":")
            current.setdefault(key.strip().lower(), value.strip())
    if current:
        found.append(current)
    return found


def stated_licenses(text: str) -> tuple[str, ...]:
    """The licenses a machine-readable copyright file gives its files (the License short names of the
    header and of the Files paragraphs, each once); none for a file in free form."""
    found = paragraphs(text)
    if not found or not _FORMAT.search(found[0].get("format", "")):
        return ()
    header, rest = found[0], found[1:]
    names = [header.get("license", "")] + [p.get("license", "") for p in rest if "files" in p]
    return tuple(dict.fromkeys(name for name in names if name))
