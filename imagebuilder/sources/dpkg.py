"""What a root tree has installed, read from its dpkg database with the host's dpkg-query."""

from __future__ import annotations

from pathlib import Path

from imagebuilder.core.run import output


def installed_packages(root: Path) -> dict[str, str]:
    text = output(["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", "-f", "${Package}\t${Version}\n"])
    return dict(line.split("\t", 1) for line in text.splitlines() if line)
