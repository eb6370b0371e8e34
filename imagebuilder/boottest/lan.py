"""The boot test's private network: a namespace holding the cluster LAN and everything that talks to it.

The test itself has an address on the cluster LAN (on the bridge): it reaches every node there, as a
workstation on the LAN would, and an isolated cluster (no uplink) just the same.

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
import ipaddress
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from imagebuilder.core.isolation import isolated
from imagebuilder.core.resources import mounted, network_namespace, spawned
from imagebuilder.core.run import find_program, run
from imagebuilder.recipe.model import Recipe

BRIDGE = "br0"
NETNS_DIR = Path("/run/netns")
# Fixed ports are safe: nothing else listens on the loopback of a namespace made a moment ago.
HTTP_PORT = 8000
# The master's uplink forwards guest port P to 127.0.0.1:(UPLINK_PROBE_BASE + P) in the namespace, so the
# test can knock on the master's uplink side and see that nothing answers.
UPLINK_PROBE_BASE = 20000
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
def private_lan(name: str, address: str) -> Iterator[Lan]:
    """A namespace with loopback up and an empty bridge, which has `address` (ADDRESS/PREFIX) on the cluster
    LAN: the test is a host there, as a user's workstation would be. Removed, with all it holds, at the end."""
    find_program("ip")
    with contextlib.ExitStack() as stack:
        if isolated():
            # `ip netns add` leaves a file in /run/netns whose namespace is bound over it in our mount namespace
            # only: a file of our own tmpfs, so a killed test leaves no name behind on the host.
            stack.enter_context(mounted("tmpfs", NETNS_DIR, fstype="tmpfs", options=("mode=0755",)))
        ns = stack.enter_context(network_namespace(name))
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        run(["ip", "-n", ns, "link", "add", BRIDGE, "type", "bridge"])
        run(["ip", "-n", ns, "addr", "add", address, "dev", BRIDGE])
        run(["ip", "-n", ns, "link", "set", BRIDGE, "up"])
        yield Lan(ns)


def observer_address(recipe: Recipe) -> str:
    """An address on the cluster LAN for the test itself: the highest host address no node can have (not the
    master's, no reservation, outside the DHCP range)."""
    net = recipe.lan()
    first, last = (ipaddress.IPv4Address(a) for a in recipe.network.dhcp_range or ("0.0.0.0", "0.0.0.0"))
    taken = {recipe.network.master_ip, *(w.ip for w in recipe.workers)}
    host = net.broadcast_address - 1
    while str(host) in taken or first <= host <= last:
        host -= 1
    return f"{host}/{net.prefixlen}"


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
