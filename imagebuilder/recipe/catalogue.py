"""The built-in catalogue of named base images (data/catalogue.yaml)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml


@dataclass(frozen=True)
class Layout:
    boot_label: str
    root_label: str
    boot_mount: str = "/boot/firmware"
    # What /etc/machine-id holds in an image: empty, or "uninitialized" where the base's first boot waits
    # for that (Raspberry Pi OS trixie).
    machine_id: str = ""

    def nocloud_datasource(self) -> str:
        """cloud-init reads its NoCloud seed from the boot partition, found by its label."""
        return ("# Written by imagebuilder: the NoCloud seed is on the boot partition.\n"
                "datasource_list: [NoCloud, None]\n"
                f"datasource:\n  NoCloud:\n    fs_label: {self.boot_label}\n")


@dataclass(frozen=True)
class Source:
    url: str
    checksum: str  # "sibling" or the URL of a SHA256SUMS listing
    pick: str | None = None  # regex of the file name to pick from the checksum listing


@dataclass(frozen=True)
class Entry:
    name: str
    description: str
    arches: dict[str, Source]
    compression: str
    layout: Layout
    firstboot: str
    network_renderer: str


LAYOUTS = {
    "raspios": Layout(boot_label="bootfs", root_label="rootfs"),
    "ubuntu": Layout(boot_label="system-boot", root_label="writable"),
}


def _entry(name: str, raw: dict[str, Any]) -> Entry:
    return Entry(
        name=name,
        description=raw["description"],
        arches={arch: Source(**src) for arch, src in raw["arches"].items()},
        compression=raw["compression"],
        layout=Layout(**raw["layout"]),
        firstboot=raw["firstboot"],
        network_renderer=raw["network_renderer"],
    )


@functools.cache
def load_catalogue() -> dict[str, Entry]:
    text = resources.files("imagebuilder").joinpath("data/catalogue.yaml").read_text()
    return {name: _entry(name, raw) for name, raw in yaml.safe_load(text).items()}
