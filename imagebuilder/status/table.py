"""`imagebuilder status`: the cluster table in the terminal.

From a master's dashboard (`/api/nodes`), or, on the cluster LAN, straight from the beacons
(`--listen IFACE`). The packet checks and node states are the collector's own (nodetable, one file with the
master's copy), so the table and the dashboard agree; only the text table lives here, since the collector on
the Pi has no use for it.
"""

from __future__ import annotations

import select
import time

import requests

from imagebuilder.core.context import Context
from imagebuilder.status import nodetable
from imagebuilder.status.nodelist import NodeList, NodeRow, StatusError, read_node_list

__all__ = ["StatusError", "fetch_nodes", "format_table", "nodes_url"]


def nodes_url(url: str) -> str:
    if "://" not in url:
        url = "http://" + url
    return url if url.rstrip("/").endswith("/api/nodes") else url.rstrip("/") + "/api/nodes"


def fetch_nodes(url: str, timeout: float = 5.0) -> NodeList:
    """The master's /api/nodes document."""
    target = nodes_url(url)
    hint = "is the master up, and this machine on its LAN? the dashboard listens on the master's LAN address"
    try:
        response = requests.get(target, timeout=timeout)
        response.raise_for_status()
        document = response.json()
    except requests.ConnectionError as e:
        raise StatusError(f"cannot reach {target}: {_reason(e)}", hint) from None
    except requests.Timeout:
        raise StatusError(f"{target} did not answer within {timeout:.0f} s", hint) from None
    except requests.HTTPError as e:
        raise StatusError(f"{target}: HTTP {e.response.status_code}",
                          "give the dashboard's address, e.g. http://10.0.0.1:8080") from None
    except ValueError:
        raise StatusError(f"{target} did not return JSON", "is that an imagebuilder dashboard?") from None
    return read_node_list(document, target)


def _reason(error: Exception) -> str:
    text = str(error)
    for known in ("Connection refused", "No route to host", "Name or service not known", "timed out"):
        if known in text:
            return known.lower()
    return text.splitlines()[0][:120]


class Listener:
    """Beacons heard directly on a LAN interface, kept with the collector's own checks and states."""

    def __init__(self, ctx: Context, interface: str, group: str, port: int) -> None:
        try:
            self.sock = ctx.stack.enter_context(nodetable.multicast_socket(group, port, interface))
        except OSError as e:
            # Not every OSError has a strerror: an unknown interface name is one without.
            raise StatusError(f"cannot listen for beacons on {interface}: {e.strerror or e}",
                              "name the interface on the cluster LAN (see 'ip -br link')") from None
        self.nodes = nodetable.Nodes()
        self.interface = interface

    def collect(self, seconds: float) -> NodeList:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.sock], [], [], left)
            if ready:
                data, (source, _) = self.sock.recvfrom(nodetable.MAX_PACKET + 1)
                self.nodes.receive(data, source, None)
        document = {"cluster": f"beacons on {self.interface}", "now": time.time(), "nodes": self.nodes.snapshot()}
        return read_node_list(document, f"the beacons on {self.interface}")


COLUMNS = ("NODE", "ROLE", "STATE", "SEEN", "IP", "MAC", "CPU", "MEM", "LOAD", "TEMP", "DISK", "K3S", "JOBS",
           "CLOUD-INIT")


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    return f"{seconds:.0f}s" if seconds < 90 else f"{seconds / 60:.0f}m" if seconds < 5400 else f"{seconds / 3600:.0f}h"


def _row(node: NodeRow) -> tuple[str, ...]:
    p = node.last
    head = (node.hostname, node.role, node.state, _age(node.age), node.ip or "-", node.mac or "-")
    if p is None:
        return head + ("-",) * (len(COLUMNS) - len(head))
    mem = 100 * (1 - p.mem_available / p.mem_total) if p.mem_total else 0
    disk = 100 * p.disk_used / p.disk_total if p.disk_total else 0
    return head + (
        "-" if p.cpu is None else f"{p.cpu:.0f}%", f"{mem:.0f}%", f"{p.load[0]:.2f}",
        "-" if p.temp is None else f"{p.temp:.0f}C", f"{disk:.0f}%",
        "?" if p.k3s is None else "up" if p.k3s else "down", "yes" if p.jobs else "no",
        p.cloud_init or "?",
    )


def format_table(nodes: NodeList) -> str:
    """The node list as aligned text columns, one line per node, and a line of totals."""
    rows = [COLUMNS, *(_row(n) for n in nodes.nodes)]
    # Control characters in a hostile hostname must not drive the terminal.
    rows = [tuple(c.encode("unicode_escape").decode() if not c.isprintable() else c for c in r) for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    counts: dict[str, int] = {}
    for n in nodes.nodes:
        counts[n.state] = counts.get(n.state, 0) + 1
    summary = ", ".join(f"{v} {k}" for k, v in counts.items()) or "no nodes"
    return "\n".join([*lines, f"{nodes.cluster}: {summary}"])
