"""Published checksums: parse `sha256sum` listings and pick the line for one file.

A listing is what `sha256sum` prints (`DIGEST  name`, `DIGEST *name` for binary mode, a leading `\\`
when the name was escaped), BSD tags (`SHA256 (name) = DIGEST`), or a lone digest (a `.sha256` file
written for one image). Publishers put many images in one SHA256SUMS, so every lookup is by name.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path, PurePosixPath

from imagebuilder.core.errors import ChecksumMismatch

_GNU = re.compile(r"^(\\?)([0-9a-fA-F]{64}) [ *](.+)$")
_BSD = re.compile(r"^SHA256 ?\((.+)\) ?= ?([0-9a-fA-F]{64})$")
_LONE = re.compile(r"^([0-9a-fA-F]{64})$")
_ESCAPE = re.compile(r"\\(.)")
_UNESCAPED = {"n": "\n", "r": "\r", "\\": "\\"}


def parse_listing(text: str) -> dict[str, str]:
    """Map each file name (without directories) in a listing to its digest (lower case).

    A lone digest maps from the empty name. Lines that are not checksums (comments, PGP armour of a
    signed listing) are skipped.
    """
    found: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.rstrip("\r")
        if m := _GNU.match(line):
            escaped, digest, name = m.groups()
            if escaped:
                # sha256sum escapes names holding a backslash or newline and marks the line with `\`.
                name = _ESCAPE.sub(lambda m: _UNESCAPED.get(m.group(1), m.group(0)), name)
        elif m := _BSD.match(line):
            name, digest = m.groups()
        elif m := _LONE.match(line.strip()):
            name, digest = "", m.group(1)
        else:
            continue
        found[PurePosixPath(name).name if name else ""] = digest.lower()
    return found


def digest_for(listing: dict[str, str], name: str, source: str) -> str:
    """The digest of `name` in a parsed listing; `source` names the listing in errors."""
    if name in listing:
        return listing[name]
    if list(listing) == [""]:
        return listing[""]
    names = ", ".join(sorted(listing)[:5]) or "no checksum lines"
    raise ChecksumMismatch(f"{source}: has no sha256 for {name} (it lists {names})",
                           "check the image URL and the checksum URL belong together")


def newest_matching(listing: dict[str, str], pattern: str, source: str) -> str:
    """The newest file name in a listing that matches `pattern` (point releases sort by version)."""
    regex = re.compile(pattern)
    names = [n for n in listing if regex.fullmatch(n)]
    if not names:
        raise ChecksumMismatch(f"{source}: no file matches '{pattern}'",
                               "the publisher may have renamed the image: give base.url and base.sha256")
    return max(names, key=_version_key)


def _version_key(name: str) -> tuple[list[tuple[int, ...]], str]:
    # Dotted number runs compare as versions: 24.04.10 > 24.04.9 > 24.04 (the .0 release has no third part).
    versions = [tuple(int(x) for x in run.split(".")) for run in re.findall(r"\d+(?:\.\d+)*", name)]
    return versions, name


def sha256_of(path: Path) -> str:
    """The sha256 of a whole file (images, downloads, outputs: every digest of a file on disk)."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
