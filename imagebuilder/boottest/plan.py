"""The boot test's plan and results: which nodes to power on, what each reached, what was checked."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from imagebuilder.boottest.qemu import Guest
from imagebuilder.boottest.ssh import MASTER_ALIAS
from imagebuilder.core.errors import ImageBuilderError
from imagebuilder.recipe.model import Recipe

K3S_ASSETS_ENV = "IMAGEBUILDER_K3S_ASSETS"
CLOCK_BEHIND = "2020-01-01T00:00:00"
CLOCK_AHEAD = "2031-01-01T00:00:00"
EVENTS = ("kernel up", "cloud-init done", "hostname set", "boot finished", "NFS mounted", "time synced",
          "k3s joined")


@dataclass(frozen=True)
class BootOptions:
    workers: int | None = None  # the first N of the table; None: all
    unknown: int = 0
    kernel: Path | None = None
    initrd: Path | None = None
    timeout: float = 900.0
    ssh_key: Path | None = None
    logs: Path | None = None  # keep each guest's console log here
    # The k3s tier: the images carry the binary (the command reads the build's manifest; in-process callers
    # default to whether IMAGEBUILDER_K3S_ASSETS brought it in).
    k3s_assets: bool = field(default_factory=lambda: bool(os.environ.get(K3S_ASSETS_ENV)))
    board: str | None = None  # a Raspberry Pi model (boards.models) for the first worker; None: all on virt


@dataclass(frozen=True)
class Node:
    name: str  # the hostname it must get
    role: str  # master or worker
    mac: str
    ip: str | None  # the reserved address; None for a worker not in the table
    known: bool
    tap: str
    clock: str | None = None  # where its clock starts (qemu -rtc base=); None: the host's time
    board: str | None = None  # the Raspberry Pi model (boards.models) it runs on; None: qemu's virt machine
    netboot: bool = False  # no card: its kernel and initramfs come over TFTP, its root over NFS (recipe netboot)
    boot: int = 1  # which power-on of this node (a netbooted node is powered on again to see it keeps its identity)

    @property
    def disk(self) -> str:
        """Its card as its kernel names it ("" for none)."""
        return "" if self.netboot else "/dev/mmcblk0p" if self.board else "/dev/vda"


@dataclass
class NodeResult:
    node: Node
    guest: Guest
    times: dict[str, float | None] = field(default_factory=dict)
    address: str | None = None  # where it answers on the LAN (unknown workers: from the master's leases)

    @property
    def host(self) -> str:
        """The ssh destination: the master's alias, or the worker's LAN address."""
        return MASTER_ALIAS if self.node.role == "master" else (self.address or self.node.mac)


@dataclass(frozen=True)
class CheckResult:
    name: str
    node: str  # "" for a check about the whole cluster
    ok: bool
    detail: str
    skipped: bool = False  # not applicable to this recipe (the detail says why); never a failure


@dataclass
class BootReport:
    cluster: str
    nodes: list[NodeResult]
    checks: list[CheckResult]
    seconds: float

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)


def unknown_mac(index: int) -> str:
    # Locally administered (02:...), so it can be in no recipe's table of real Raspberry Pi MACs.
    return f"02:00:00:b0:07:{index + 1:02x}"


def unknown_name(recipe: Recipe, mac: str) -> str:
    digits = mac.replace(":", "").lower()
    return recipe.unknown_workers.hostname.format(mac6=digits[-6:], mac=digits)


def plan_nodes(recipe: Recipe, options: BootOptions) -> list[Node]:
    table = recipe.workers if options.workers is None else recipe.workers[: options.workers]
    if options.workers is not None and options.workers > len(recipe.workers):
        raise ImageBuilderError(f"--workers {options.workers}: the recipe's table has {len(recipe.workers)}",
                                f"use --workers {len(recipe.workers)} or fewer, and --unknown for more")
    nodes = [Node(recipe.master.hostname, "master", "02:00:00:b0:07:00", recipe.network.master_ip, True, "tap0")]
    netbooted = {w.mac for w in recipe.netboot_workers()}
    nodes += [Node(w.hostname, "worker", w.mac, w.ip, True, f"tap{i + 1}",
                   netboot=w.mac in netbooted) for i, w in enumerate(table)]
    if options.board is not None:
        if len(nodes) < 2:
            raise ImageBuilderError(f"--board {options.board}: the card on the board is the table's first worker, "
                                    "and none is booted", "add a worker to the recipe's table, or --workers 1")
        if nodes[1].netboot:
            raise ImageBuilderError(f"--board {options.board}: the table's first worker boots from the network, "
                                    "and qemu's Pi models run no network boot ROM",
                                    "put a worker that boots from its card first in the table, or drop --board")
        nodes[1] = dataclasses.replace(nodes[1], board=options.board)
    for i in range(options.unknown):
        mac = unknown_mac(i)
        nodes.append(Node(unknown_name(recipe, mac), "worker", mac, None, False, f"tap{len(nodes)}"))
    # Clocks as boards have them: a Pi has no battery, so the master starts years behind (the test's uplink
    # reaches no time server either); the first worker on virt starts years ahead, as a board with a stale
    # clock chip might. The Pi models have no clock at all: they start at the image's build time.
    nodes[0] = dataclasses.replace(nodes[0], clock=CLOCK_BEHIND)
    ahead = next((i for i, n in enumerate(nodes) if n.role == "worker" and n.board is None and not n.netboot), None)
    if ahead is not None:
        nodes[ahead] = dataclasses.replace(nodes[ahead], clock=CLOCK_AHEAD)
    return nodes
