"""Whether a cluster has come up, and which nodes heard on its LAN are missing from its table.

Both read the node list `status` shows (a master's /api/nodes, or the beacons heard on the LAN) beside
the recipe's cluster table; neither sends anything to a node.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from imagebuilder.outputs.manifest import read_manifest
from imagebuilder.recipe.fields import check_hostname
from imagebuilder.recipe.model import Recipe
from imagebuilder.status.nodelist import NodeList, NodeRow


@dataclass(frozen=True)
class TableNode:
    hostname: str
    role: str
    mac: str | None  # the master's is not in the recipe


@dataclass(frozen=True)
class Expected:
    """What `status --wait` waits for: these nodes, and k3s on each where the images carry its binary."""

    nodes: tuple[TableNode, ...]
    k3s: bool


def expected_from_recipe(recipe: Recipe) -> Expected:
    nodes = (TableNode(recipe.master.hostname, "master", None),
             *(TableNode(w.hostname, "worker", w.mac) for w in recipe.workers))
    return Expected(nodes, k3s=images_carry_k3s(recipe))


def images_carry_k3s(recipe: Recipe) -> bool:
    """From the last build's manifest: were the images built with the k3s binary?"""
    manifest = read_manifest(recipe.output_dir)
    return manifest is not None and manifest.carries_k3s


def _find(rows: tuple[NodeRow, ...], node: TableNode) -> NodeRow | None:
    """The row of a table node: by MAC for a worker, by name for the master (whose MAC the build never knew)."""
    for row in rows:
        if row.state == "expected":
            continue
        if node.mac is not None and row.mac == node.mac:
            return row
        if node.mac is None and row.role == node.role and row.hostname == node.hostname:
            return row
    return None


def node_missing(row: NodeRow | None, role: str, want_k3s: bool) -> list[str]:
    """What one node still lacks to count as up; empty when it is."""
    if row is None or row.state == "expected":
        return ["not heard yet"]
    missing = []
    if row.state != "up":
        missing.append(f"{row.state}: last heard {_seconds(row.age)} s ago")
    last = row.last
    cloud_init = last.cloud_init if last else None
    if cloud_init != "done":
        missing.append(f"cloud-init {cloud_init or 'not reported'}")
    if role == "worker" and not (last and last.jobs):
        missing.append("/srv/jobs not mounted")
    if want_k3s and not (last and last.k3s):
        missing.append("k3s not running")
    return missing


def _seconds(age: float | None) -> str:
    return "?" if age is None else f"{age:g}"


def waiting_for(nodes: NodeList, expected: Expected | None) -> list[str]:
    """One line per node that is not up yet, saying what it lacks; empty when the cluster is up.

    Without a recipe the node list itself is the table: every node it names (the dashboard lists the
    cluster table's nodes it has not heard as "expected")."""
    rows = nodes.nodes
    if expected is None:
        # The dashboard's own table, k3s only where some node reports it running.
        want_k3s = any(r.last and r.last.k3s for r in rows)
        return [f"{r.hostname} ({r.role}): {', '.join(lack)}"
                for r in rows if (lack := node_missing(r, r.role, want_k3s))]
    lines = []
    for node in expected.nodes:
        lack = node_missing(_find(rows, node), node.role, expected.k3s)
        if lack:
            label = f"{node.hostname} ({node.mac})" if node.mac else f"{node.hostname} (master)"
            lines.append(f"{label}: {', '.join(lack)}")
    return lines


@dataclass(frozen=True)
class NewWorker:
    hostname: str  # the name suggested for the table
    mac: str
    heard_as: str
    ip: str


def new_workers(nodes: NodeList, recipe: Recipe) -> list[NewWorker]:
    """Workers heard whose MAC is not in the recipe's table, each with a name that follows the table's."""
    known = {w.mac for w in recipe.workers}
    taken = {w.hostname for w in recipe.workers} | {recipe.master.hostname}
    found = []
    for row in sorted(nodes.nodes, key=lambda r: r.mac or ""):
        mac = row.mac
        if row.role != "worker" or not mac or mac in known or row.state == "expected":
            continue
        known.add(mac)
        name = _next_name(taken, row.hostname) or f"node-{mac.replace(':', '')[-6:]}"
        taken.add(name)
        found.append(NewWorker(name, mac, row.hostname, row.ip or ""))
    return found


_NUMBERED = re.compile(r"^(?P<stem>[a-z][a-z0-9-]*?)(?P<number>\d+)$")


def _next_name(taken: set[str], heard: str) -> str:
    """The next free name of the table's numbered series (node4 after node1..node3); the name the node
    gave itself when the table has no such series."""
    series: dict[str, int] = {}
    for name in taken:
        if m := _NUMBERED.match(name):
            series[m["stem"]] = max(series.get(m["stem"], 0), int(m["number"]))
    if not series:
        # What a node says of itself reaches the recipe only as a valid hostname.
        return heard if check_hostname(heard) is None and heard not in taken else ""
    stem = max(series, key=lambda s: (sum(1 for n in taken if n.startswith(s)), s))
    number = series[stem] + 1
    while f"{stem}{number}" in taken:
        number += 1
    return f"{stem}{number}"


def format_entries(found: list[NewWorker]) -> str:
    """The `workers:` entries to paste into the recipe."""
    return "\n".join(f'  - {{hostname: {w.hostname}, mac: "{w.mac}"}}  # heard as {_printable(w.heard_as)}'
                     + (f" at {w.ip}" if w.ip else "") for w in found)


def _printable(text: str) -> str:
    """A name from the network inside a YAML comment: no line break or control character gets through."""
    return text.encode("unicode_escape").decode() if not text.isprintable() else text
