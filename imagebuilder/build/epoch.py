"""The build's epoch (SOURCE_DATE_EPOCH): the one time a reproducible build's images carry in every file and
file system, and the time the programs run in every stage are given.

Two builds of the same recipe from the same base and the same cluster state must give the same bytes, so the
epoch follows from those inputs alone: the later of the base's own making (its root file system's creation
time, which a published image fixes) and the cluster's CA (its certificate's start). The stages before the
final ones take the base's alone, so that `build --plan` knows their keys before the first build makes the
CA. The CA's matters on the nodes: systemd keeps a clock no earlier than /usr/lib/clock-epoch, which a
reproducible image dates at the epoch, so a master that boots with no time server still finds its CA valid.
SOURCE_DATE_EPOCH in the environment wins, as for every tool that reads it.
"""

from __future__ import annotations

import calendar
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from imagebuilder.core.errors import ImageBuilderError
from imagebuilder.core.run import output
from imagebuilder.disk.partitions import boot_and_root
from imagebuilder.recipe.model import Recipe
from imagebuilder.roles.secrets import K3sSecrets
from imagebuilder.sources.base import BaseImage

ENV = "SOURCE_DATE_EPOCH"
EXT4_MAGIC = 0xEF53


def is_reproducible(recipe: Recipe) -> bool:
    """output.reproducible, or SOURCE_DATE_EPOCH set: what a release build sets to ask for the same bytes."""
    return recipe.output.reproducible or ENV in os.environ


@dataclass(frozen=True)
class Epochs:
    stages: int  # the packages and common stages': the base's alone, so they are known before the cluster's CA
    images: int  # the final stages': no earlier than the cluster's CA either
    clock: int  # /usr/lib/clock-epoch's: no earlier than either CA's start, even under SOURCE_DATE_EPOCH


def build_epochs(base: BaseImage | None, secrets: K3sSecrets | None) -> Epochs:
    cas = max(ca_start(secrets.ca_cert), ca_start(secrets.client_ca_cert)) if secrets is not None else 0
    given = os.environ.get(ENV)
    if given is not None:
        if not given.isdigit():
            raise ImageBuilderError(f"{ENV}={given!r} is not a whole number of seconds since 1970",
                                    f"unset {ENV}, or set it to a time such as {int(time.time())}")
        return Epochs(int(given), int(given), max(int(given), cas))
    made = filesystem_created(base.path) if base is not None and base.path.exists() else 0
    return Epochs(made, max(made, cas), max(made, cas))


def filesystem_created(image: Path) -> int:
    """When the image's root file system was made (ext4's s_mkfs_time)."""
    _, root = boot_and_root(image)
    with open(image, "rb") as f:
        f.seek(root.start + 1024)
        superblock = f.read(1024)
    if len(superblock) < 1024 or struct.unpack_from("<H", superblock, 0x38)[0] != EXT4_MAGIC:
        # Not 0: SOURCE_DATE_EPOCH=0 would date the accounts package scripts make in 1970 (/etc/shadow),
        # which PAM reads as a password to change at once.
        raise ImageBuilderError(f"{image}: its root partition is not ext4, so the build cannot tell when the "
                                "base was made", f"set {ENV} to the time the base was released")
    low: int = struct.unpack_from("<I", superblock, 0x108)[0]
    high = superblock[0x276]  # s_mkfs_time_hi: the bits above 32 (after 2106)
    return low | high << 32


def ca_start(certificate: str) -> int:
    """The certificate's notBefore, in seconds since 1970."""
    text = output(["openssl", "x509", "-noout", "-startdate"], input=certificate.encode())
    stamp = " ".join(text.removeprefix("notBefore=").split())
    return calendar.timegm(time.strptime(stamp, "%b %d %H:%M:%S %Y GMT"))
