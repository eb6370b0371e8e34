"""The node list `status` shows, read once into typed records.

It comes from a master's /api/nodes (any server the user names: its fields are checked here, a document
that is not a node list is one error) or from the beacons heard on the LAN (nodetable checked each packet).
The table, `--wait` and `scan` read these records; `--json` prints the document as it came.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from imagebuilder.core.errors import ImageBuilderError


class StatusError(ImageBuilderError):
    """The master or the beacons could not be read."""


class _Malformed(ValueError):
    pass


@dataclass(frozen=True)
class Report:
    """What a node said of itself in its last beacon."""

    cpu: float | None  # percent busy, None before its second beacon
    mem_total: int
    mem_available: int
    load: tuple[float, float, float]
    temp: float | None
    disk_used: int
    disk_total: int
    cloud_init: str | None  # "done", "running", "error"...; None where cloud-init cannot say
    jobs: bool  # /srv/jobs mounted
    k3s: bool | None  # None: no k3s in the image


@dataclass(frozen=True)
class NodeRow:
    hostname: str
    role: str
    state: str  # up, late, down; "expected": in the cluster table, never heard
    mac: str | None
    ip: str | None
    age: float | None  # seconds since its last beacon, None if never heard
    last: Report | None


@dataclass(frozen=True)
class NodeList:
    cluster: str
    nodes: tuple[NodeRow, ...]
    document: Mapping[str, Any]  # as received: what --json prints


def read_node_list(document: object, source: str) -> NodeList:
    """The node list in `document`; StatusError naming `source` when it is not one."""
    try:
        if not isinstance(document, dict) or not isinstance(document.get("nodes"), list):
            raise _Malformed("no node list")
        nodes = tuple(_read_row(row) for row in document["nodes"])
        cluster = _optional_text(document.get("cluster")) or "cluster"
    except _Malformed as e:
        raise StatusError(f"{source} did not return a node list ({e})", "is that an imagebuilder dashboard?") from None
    return NodeList(cluster, nodes, document)


def _read_row(row: object) -> NodeRow:
    if not isinstance(row, dict):
        raise _Malformed("a node is not an object")
    last = row.get("last")
    return NodeRow(_text(row.get("hostname")), _text(row.get("role")), _text(row.get("state")),
                   _optional_text(row.get("mac")), _optional_text(row.get("ip")),
                   _optional_number(row.get("age")), None if not last else _read_report(last))


def _read_report(last: object) -> Report:
    if not isinstance(last, dict):
        raise _Malformed("a node's report is not an object")
    load = last.get("load")
    if not isinstance(load, list) or len(load) != 3:
        raise _Malformed("a node's load is not three numbers")
    one, five, fifteen = (_number(x) for x in load)
    return Report(_optional_number(last.get("cpu")), _integer(last.get("mem_total")),
                  _integer(last.get("mem_available")), (one, five, fifteen), _optional_number(last.get("temp")),
                  _integer(last.get("disk_used")), _integer(last.get("disk_total")),
                  _optional_text(last.get("cloud_init")), _flag(last.get("jobs")),
                  None if last.get("k3s") is None else _flag(last.get("k3s")))


def _text(value: object) -> str:
    if isinstance(value, str):
        return value
    raise _Malformed(f"{value!r} is not text")


def _optional_text(value: object) -> str | None:
    return None if value is None else _text(value)


def _number(value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise _Malformed(f"{value!r} is not a number")


def _optional_number(value: object) -> float | None:
    return None if value is None else _number(value)


def _integer(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise _Malformed(f"{value!r} is not a count")


def _flag(value: object) -> bool:
    if isinstance(value, bool):
        return value
    raise _Malformed(f"{value!r} is not true or false")
