"""The master's edge, tried with packets: its nftables ruleset loaded into a network namespace whose `eth0`
(the LAN) and `eth1` (the uplink) are veth pairs to two other namespaces, with listeners on the master's
ports. From the uplink nothing new gets in (ssh only when the recipe asks); from the LAN what the cluster
uses does, and nothing else.

Day two: reloading, restarting or stopping nftables.service (as the Debian unit with our drop-in runs it)
replaces or removes only our tables; k3s's own tables stay."""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imagebuilder.boottest.edge import LISTENER
from imagebuilder.core.resources import network_namespace
from tests.conftest import require_programs, require_root
from tests.test_roles import CLUSTER, files_of, rendered

LAN_TCP = [22, 53, 2049, 6443, 10250, 30080, 8080]
LAN_UDP = [53, 67, 123, 8472, 7777, 30080]
CLOSED_TCP = [111, 25, 9345, 2379]  # rpcbind (NFSv3), mail, k3s supervisor/etcd: not the cluster's business
CLOSED_UDP = [111, 69]
PROBE = """
import socket, sys
proto, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
s.settimeout(0.7)  # veth pairs answer at once; a drop answers never
try:
    if proto == "tcp":
        s.connect((host, port)); print(s.recv(10).decode() or "closed")
    else:
        s.sendto(b"x", (host, port)); print(s.recvfrom(10)[0].decode())
except OSError:
    print("closed")
"""


def ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True)


@contextlib.contextmanager
def edge(rules: str, tmp_path: Path) -> Iterator[str]:
    """Namespaces fw (the master: eth0 10.0.0.1, eth1 10.0.2.15), lan (10.0.0.50) and wan (10.0.2.2)."""
    tag = f"{os.getpid() % 10000}"
    fw, lan, wan = f"ibfw{tag}", f"iblan{tag}", f"ibwan{tag}"
    for ns in (fw, lan, wan):
        ip("netns", "add", ns)
    try:
        for ns in (fw, lan, wan):
            ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", fw, "link", "add", "eth0", "type", "veth", "peer", "name", "p0", "netns", lan)
        ip("-n", fw, "link", "add", "eth1", "type", "veth", "peer", "name", "p1", "netns", wan)
        for ns, dev, address in ((fw, "eth0", "10.0.0.1/24"), (fw, "eth1", "10.0.2.15/24"),
                                 (lan, "p0", "10.0.0.50/24"), (wan, "p1", "10.0.2.2/24")):
            ip("-n", ns, "addr", "add", address, "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")
        (tmp_path / "rules.nft").write_text(rules)
        subprocess.run(["ip", "netns", "exec", fw, "nft", "-f", tmp_path / "rules.nft"], check=True)
        # The uplink side can address the master's LAN address too: it is no way round the uplink's rules.
        ip("-n", wan, "route", "add", "10.0.0.0/24", "via", "10.0.2.15")
        tcp, udp = ",".join(map(str, LAN_TCP + CLOSED_TCP)), ",".join(map(str, LAN_UDP + CLOSED_UDP))
        listener = subprocess.Popen(["ip", "netns", "exec", fw, sys.executable, "-c", LISTENER, tcp, udp],
                                    stdout=subprocess.PIPE, text=True)
        try:
            assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
            yield tag
        finally:
            listener.kill()
            listener.wait()
    finally:
        for ns in (fw, lan, wan):
            subprocess.run(["ip", "netns", "delete", ns], check=False)


def probe(ns: str, proto: str, host: str, port: int) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", PROBE, proto, host, str(port)],
                          capture_output=True, text=True, check=True).stdout.strip()


def master_files(tmp_path: Path, recipe_file: Any, extra: str = "") -> dict[str, str]:
    text = CLUSTER.replace("  lan_interface: eth0\n", f"  lan_interface: eth0\n  uplink_interface: eth1\n{extra}")
    text += "monitoring: {dashboard_port: 8080, port: 7777}\n"
    return files_of(rendered(text, "master", tmp_path, recipe_file))


def master_rules(tmp_path: Path, recipe_file: Any, extra: str = "") -> str:
    return master_files(tmp_path, recipe_file, extra)["root/etc/nftables.conf"]


@pytest.mark.integration
@pytest.mark.parametrize("uplink_ssh", [False, True])
def test_uplink_is_closed_and_the_lan_gets_what_the_cluster_uses(tmp_path: Path, recipe_file: Any,
                                                                 uplink_ssh: bool) -> None:
    require_root()
    require_programs("ip", "nft")
    rules = master_rules(tmp_path, recipe_file, "  uplink_ssh: true\n" if uplink_ssh else "")
    with edge(rules, tmp_path) as tag:
        lan, wan = f"iblan{tag}", f"ibwan{tag}"
        start = time.monotonic()
        for port in LAN_TCP:
            assert probe(lan, "tcp", "10.0.0.1", port) == "open", f"LAN tcp {port}"
            want = "open" if port == 22 and uplink_ssh else "closed"
            assert probe(wan, "tcp", "10.0.2.15", port) == want, f"uplink tcp {port}"
        for port in LAN_UDP:
            assert probe(lan, "udp", "10.0.0.1", port) == "open", f"LAN udp {port}"
            assert probe(wan, "udp", "10.0.2.15", port) == "closed", f"uplink udp {port}"
        for port in CLOSED_TCP:
            assert probe(lan, "tcp", "10.0.0.1", port) == "closed", f"LAN tcp {port}"
        for port in CLOSED_UDP:
            assert probe(lan, "udp", "10.0.0.1", port) == "closed", f"LAN udp {port}"
        # The LAN's own address on the uplink side is not a way round: the uplink is closed whatever it is sent to.
        assert probe(wan, "tcp", "10.0.0.1", 6443) == "closed"
        assert time.monotonic() - start < 120


# Stand-ins for what k3s writes at run time: iptables-nft's tables (kube-proxy, flannel, the network policy
# controller) in the ip family, and one in inet beside ours.
STANDIN = """\
table ip k3s-standin {
	chain KUBE-FORWARD {
		type filter hook forward priority filter - 1; policy accept;
		ip saddr 10.42.0.0/16 accept
	}
}
table inet kube-standin {
	chain services {
		type nat hook prerouting priority dstnat; policy accept;
		tcp dport 30080 dnat ip to 10.42.1.5:80
	}
}
"""
DEBIAN_UNIT = Path("/usr/lib/systemd/system/nftables.service")


def exec_lines(units: list[str]) -> dict[str, list[list[str]]]:
    """Exec*= commands of a unit and its drop-ins, read in order as systemd does (an empty value resets)."""
    commands: dict[str, list[list[str]]] = {}
    for text in units:
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep and key.startswith("Exec"):
                commands[key] = [*commands.get(key, []), shlex.split(value)] if value else []
    return commands


def nft(ns: str, *argv: str | Path) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "nft", *map(str, argv)], capture_output=True, text=True,
                          check=True).stdout


@pytest.mark.integration
def test_reload_restart_and_stop_leave_other_tables_alone(tmp_path: Path, recipe_file: Any) -> None:
    require_root()
    require_programs("ip", "nft")
    if not DEBIAN_UNIT.is_file():
        pytest.fail(f"{DEBIAN_UNIT} is missing: install nftables (make setup-build)")
    files = master_files(tmp_path, recipe_file)
    rules = tmp_path / "nftables.conf"
    rules.write_text(files["root/etc/nftables.conf"])
    (tmp_path / "standin.nft").write_text(STANDIN)
    # The image's unit: Debian's, with our drop-in; its commands on our copy of the rules.
    dropin = files["root/etc/systemd/system/nftables.service.d/imagebuilder.conf"]
    commands = exec_lines([DEBIAN_UNIT.read_text(), dropin])
    commands = {k: [[str(rules) if a == "/etc/nftables.conf" else a for a in argv] for argv in v]
                for k, v in commands.items()}
    assert commands["ExecReload"] == [["/usr/sbin/nft", "-f", str(rules)]] == commands["ExecStart"]

    with network_namespace(f"ibnft{os.getpid() % 10000}") as ns:
        def service(action: str) -> None:
            for argv in commands[action]:
                subprocess.run(["ip", "netns", "exec", ns, *argv], check=True)

        def listed() -> str:
            return nft(ns, "list", "ruleset")

        def standins() -> str:
            return nft(ns, "list", "table", "ip", "k3s-standin") + nft(ns, "list", "table", "inet", "kube-standin")

        nft(ns, "-f", tmp_path / "standin.nft")
        before = standins()
        service("ExecStart")
        loaded = listed()
        assert "table inet imagebuilder {" in loaded and "table ip imagebuilder_nat {" in loaded
        for action in ("ExecReload", "ExecReload", "ExecStop", "ExecStart"):  # reload twice, then a restart
            service(action)
        after = listed()
        assert standins() == before
        # Ours replaced, not added to: each of our rules once, as after the first start.
        assert after == loaded
        assert after.count("masquerade") == 1 and after.count("tcp dport @lan_tcp accept") == 1
        # Stopped: ours gone, k3s's as they were.
        service("ExecStop")
        tables = nft(ns, "list", "tables").split()
        assert "imagebuilder" not in tables and "imagebuilder_nat" not in tables
        assert standins() == before and listed().strip() == STANDIN.strip()
