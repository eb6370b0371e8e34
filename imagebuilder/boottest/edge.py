"""The master's edge, knocked on from both sides: from the uplink (through the forwards of its user-mode
uplink, lan.UPLINK_PROBE_BASE + port) nothing may answer but ssh when the recipe lets it in; from the LAN
(the test's own address there) every port the cluster uses must answer.

Each knock speaks the port's protocol (an ssh banner, a DNS query, an NFS NULL call, an HTTP request), so an
answer means the service was reached. k3s's ports (the API, the kubelet, flannel's VXLAN, a node port) have
no service here (no k3s binary), so the check starts a small listener on the master for them first.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Iterator

from imagebuilder.boottest.lan import UPLINK_PROBE_BASE
from imagebuilder.boottest.plan import CheckResult, NodeResult
from imagebuilder.boottest.ssh import Ssh
from imagebuilder.core.run import run
from imagebuilder.recipe.model import Recipe

# Ports k3s would serve (API, kubelet, a node port; flannel's VXLAN on UDP).
K3S_TCP = (6443, 10250, 30080)
K3S_UDP = (8472,)
# Answers "open" on each TCP and UDP port given (argv 1 and 2, comma-separated); says "ready" once bound.
LISTENER = """
import socket, sys, threading
def tcp(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", port)); s.listen()
    while True:
        c, _ = s.accept(); c.sendall(b"open"); c.close()
def udp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", port))
    while True:
        _, a = s.recvfrom(100); s.sendto(b"open", a)
for p in sys.argv[1].split(","):
    threading.Thread(target=tcp, args=(int(p),), daemon=True).start()
for p in sys.argv[2].split(","):
    threading.Thread(target=udp, args=(int(p),), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""
KNOCK = """
import socket, sys
proto, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
payload, wait = bytes.fromhex(sys.argv[4]), float(sys.argv[5])
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
s.settimeout(wait)
try:
    if proto == "tcp":
        s.connect((host, port))
        if payload: s.sendall(payload)
        print(s.recv(64).hex())
    else:
        s.sendto(payload, (host, port)); print(s.recvfrom(64)[0].hex())
except OSError:
    print("")
"""


def dns_query(name: str) -> bytes:
    question = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"
    return struct.pack(">HHHHHH", 0x1B0B, 0x0100, 1, 0, 0, 0) + question + struct.pack(">HH", 1, 1)


def rpc_null(program: int, version: int) -> bytes:
    """An ONC RPC NULL call over TCP (record mark, then the call with no credentials)."""
    call = struct.pack(">IIIIIIIIII", 0x1B0B, 0, 2, program, version, 0, 0, 0, 0, 0)
    return struct.pack(">I", 0x80000000 | len(call)) + call


def knocks(recipe: Recipe) -> list[tuple[str, int, bytes, str]]:
    """(protocol, port, what to send, what it is) for every port the cluster uses on the master."""
    query = dns_query(f"{recipe.master.hostname}.{recipe.cluster.domain}")
    return [
        ("tcp", 22, b"", "ssh"),
        ("tcp", 53, struct.pack(">H", len(query)) + query, "DNS"),
        ("udp", 53, query, "DNS"),
        ("tcp", 2049, rpc_null(100003, 4), "NFS"),
        ("tcp", recipe.monitoring.dashboard_port, b"GET /api/stats HTTP/1.0\r\n\r\n", "dashboard"),
        *(("tcp", port, b"x", "k3s") for port in K3S_TCP),
        *(("udp", port, b"x", "flannel") for port in K3S_UDP),
    ]


def edge_ports(recipe: Recipe) -> tuple[list[int], list[int]]:
    """The TCP and UDP ports the master's uplink forwards for the knocks."""
    found = knocks(recipe)
    return [p for proto, p, _, _ in found if proto == "tcp"], [p for proto, p, _, _ in found if proto == "udp"]


def knock(ssh: Ssh, proto: str, host: str, port: int, payload: bytes, wait: float) -> bool:
    """Whether anything answers, from the test's namespace."""
    argv = ssh.lan.exec_argv([sys.executable, "-c", KNOCK, proto, host, str(port), payload.hex(), str(wait)])
    return bool(run(argv, capture=True, check=False).stdout.strip())


def check_edge(recipe: Recipe, master: NodeResult, ssh: Ssh) -> Iterator[CheckResult]:
    name = master.node.name
    tcp = ",".join(map(str, K3S_TCP))
    udp = ",".join(map(str, K3S_UDP))
    started = ssh.run(master.host, ["sudo", "systemd-run", "--unit=imagebuilder-edge-listener", "--quiet",
                                    "/usr/bin/python3", "-c", LISTENER, tcp, udp])
    if started.returncode != 0:
        yield CheckResult("edge: listeners for k3s's ports", name, False, "systemd-run failed on the master")
        return
    for proto, port, payload, what in knocks(recipe):
        # From the LAN, what the cluster uses answers (a TCG guest is slow: allow it time).
        lan = knock(ssh, proto, str(recipe.network.master_ip), port, payload, 10.0)
        yield CheckResult("edge: LAN side open", name, lan,
                          f"{what} {proto}/{port} {'answers' if lan else 'does not answer'} on the LAN")
        if not recipe.network.uplink_interface:
            continue
        want = port == 22 and proto == "tcp" and recipe.network.uplink_ssh
        uplink = knock(ssh, proto, "127.0.0.1", UPLINK_PROBE_BASE + port, payload, 4.0)
        yield CheckResult("edge: uplink side closed", name, uplink == want,
                          f"{what} {proto}/{port} {'answers' if uplink else 'does not answer'} from the uplink"
                          + (" (uplink_ssh)" if want else ""))
    ssh.run(master.host, ["sudo", "systemctl", "stop", "imagebuilder-edge-listener"])
