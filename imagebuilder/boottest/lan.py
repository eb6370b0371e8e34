"""The boot test's private network: a namespace holding the cluster LAN and everything that talks to it.

Why a namespace with a bridge and taps, and not qemu socket netdevs on 127.0.0.1: a socket listener joins
only two guests, and one listener per worker on the master would give it one interface per worker, which
its dnsmasq does not serve; multicast socket hubs could leave loopback if a route says so. In a namespace of
our own nothing can leave: it has no interface but lo, the bridge and the guests' taps, and no route to
the machine's network. qemu runs inside it, so the master's user-mode uplink (itself `restrict=on`) binds
its forwards on the namespace's loopback, where the test's own HTTP server and ssh client run too.
Deleting the namespace removes the bridge, the taps and the forwards with it.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from imagebuilder.core.resources import network_namespace, spawned
from imagebuilder.core.run import find_program, run

BRIDGE = "br0"
# Fixed ports are safe: nothing else listens on the loopback of a namespace made a moment ago.
SSH_PORT = 2222
DASHBOARD_PORT = 8080
HTTP_PORT = 8000
# Where the small HTTP server appears behind the master's uplink (in qemu's user-mode network).
UPLINK_SERVER = "10.0.2.100"


@dataclass(frozen=True)
class Lan:
    namespace: str

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """argv run inside the namespace."""
        return ["ip", "netns", "exec", self.namespace, *argv]

    def add_tap(self, name: str) -> str:
        run(["ip", "-n", self.namespace, "tuntap", "add", "dev", name, "mode", "tap"])
        run(["ip", "-n", self.namespace, "link", "set", name, "master", BRIDGE, "up"])
        return name


@contextlib.contextmanager
def private_lan(name: str) -> Iterator[Lan]:
    """A namespace with loopback up and an empty bridge; removed, with all it holds, when the block ends."""
    find_program("ip")
    with network_namespace(name) as ns:
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        run(["ip", "-n", ns, "link", "add", BRIDGE, "type", "bridge"])
        run(["ip", "-n", ns, "link", "set", BRIDGE, "up"])
        yield Lan(ns)


@contextlib.contextmanager
def uplink_server(lan: Lan, directory: Path, log_file: Path) -> Iterator[subprocess.Popen[bytes]]:
    """An HTTP server on the namespace's 127.0.0.1 serving `directory`; its request log goes to log_file."""
    with log_file.open("wb") as sink, spawned(
        lan.exec_argv([sys.executable, "-m", "http.server", str(HTTP_PORT), "--bind", "127.0.0.1",
                       "--directory", str(directory)]),
        stdout=sink.fileno(), stderr=subprocess.STDOUT,
    ) as proc:
        yield proc


def guestfwd_relay() -> list[str]:
    """The program qemu runs for each guest connection to UPLINK_SERVER:80: a relay to the HTTP server."""
    return [find_program("socat"), "-", f"TCP:127.0.0.1:{HTTP_PORT}"]
