"""Which Debian mirror to use: the recipe's, or the one the build host already uses.

No mirror host is written into this project: a build that names none takes the host's apt sources.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from imagebuilder.core.errors import ImageBuilderError

APT_DIR = Path("/etc/apt")


@dataclass(frozen=True)
class Mirrors:
    archive: str  # e.g. http://<host>/debian
    security: str | None  # the host's security mirror, when it has one


def _deb822_entries(text: str) -> list[tuple[list[str], list[str]]]:
    entries = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.lstrip().startswith("#") or ":" not in line:
                continue
            key, value = line.split(":", 1)
            fields[key.strip().lower()] = value.strip()
        if fields.get("enabled", "yes").lower() == "no" or "deb" not in fields.get("types", "").split():
            continue
        entries.append((fields.get("uris", "").split(), fields.get("suites", "").split()))
    return entries


def _one_line_entries(text: str) -> list[tuple[list[str], list[str]]]:
    entries = []
    for line in text.splitlines():
        words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
        if len(words) >= 3 and words[0] == "deb":
            entries.append(([words[1]], [words[2]]))
    return entries


def host_mirrors(apt_dir: Path = APT_DIR) -> Mirrors:
    """The Debian archive and security mirrors named in the host's apt sources."""
    entries: list[tuple[list[str], list[str]]] = []
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        entries += _deb822_entries(path.read_text())
    for path in [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]:
        if path.is_file():
            entries += _one_line_entries(path.read_text())
    archive = security = None
    for uris, suites in entries:
        for uri in uris:
            if any(s.endswith("-security") for s in suites):
                security = security or uri.rstrip("/")
            elif any(re.fullmatch(r"[a-z]+(-updates|-backports)?", s) for s in suites):
                archive = archive or uri.rstrip("/")
    if archive is None:
        raise ImageBuilderError(
            f"no Debian mirror found in {apt_dir}/sources.list or sources.list.d",
            "name one in the recipe: base.bootstrap.mirror",
        )
    return Mirrors(archive=archive, security=security)


def source_lines(mirrors: Mirrors, suite: str, components: str) -> list[str]:
    """One-line apt sources for the suite, its updates and (when known) its security suite."""
    lines = [f"deb {mirrors.archive} {suite} {components}", f"deb {mirrors.archive} {suite}-updates {components}"]
    if mirrors.security:
        lines.append(f"deb {mirrors.security} {suite}-security {components}")
    return lines
