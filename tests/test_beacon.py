"""The beacon program (overlays/common), run against a /proc and /sys tree the test makes."""

from __future__ import annotations

import importlib
import json
import socket
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from imagebuilder.layers.render import render_layer
from imagebuilder.layers.write import write_layer
from imagebuilder.recipe.load import load_recipe
from imagebuilder.roles.variables import template_variables
from tests.conftest import ROOT, SECRETS, VALID

BEACON = ROOT / "overlays/common/root/usr/local/lib/imagebuilder/beacon.py"
COLLECTOR = ROOT / "overlays/master/root/usr/local/lib/imagebuilder/collector.py"


def load_program(path: Path) -> ModuleType:
    """Import a node program by path, as the node runs it: with its folder on sys.path, where it finds the
    modules beside it (the collector's nodetable, webserver, dashboard). It is not part of the imagebuilder
    package."""
    if str(path.parent) not in sys.path:
        sys.path.append(str(path.parent))
    return importlib.import_module(path.stem)


beacon = load_program(BEACON)
collector = load_program(COLLECTOR)
nodetable = load_program(COLLECTOR.with_name("nodetable.py"))
webserver = load_program(COLLECTOR.with_name("webserver.py"))
dashboard = load_program(COLLECTOR.with_name("dashboard.py"))

MOUNTINFO = """\
22 1 179:2 / / rw,relatime shared:1 - ext4 /dev/root rw
25 22 0:5 / /proc rw shared:12 - proc proc rw
40 22 0:40 / /srv/jobs rw,relatime shared:20 - nfs4 10.0.0.1:/srv/jobs rw,vers=4.2
"""


def make_tree(root: Path, *, hostname: str = "node1", busy: int = 100, total: int = 1000,
              thermal: dict[str, tuple[str, str]] | None = None, mounts: str = MOUNTINFO) -> tuple[Path, Path]:
    """A /proc and /sys with just what the beacon reads; numbers as a Pi 2 would show them."""
    proc, sys_ = root / "proc", root / "sys"
    (proc / "sys/kernel").mkdir(parents=True)
    (proc / "self").mkdir()
    (proc / "sys/kernel/hostname").write_text(hostname + "\n")
    (proc / "uptime").write_text("3725.41 12000.10\n")
    (proc / "loadavg").write_text("0.52 0.31 0.12 1/151 2032\n")
    idle = total - busy
    # user nice system idle iowait irq softirq steal guest guest_nice
    (proc / "stat").write_text(f"cpu  {busy - 20} 0 20 {idle - 10} 10 0 0 0 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n")
    (proc / "meminfo").write_text("MemTotal:         948280 kB\nMemFree:          500000 kB\n"
                                  "MemAvailable:     711210 kB\nBuffers:           20000 kB\n")
    (proc / "self/mountinfo").write_text(mounts)
    (sys_ / "class/net/eth0").mkdir(parents=True)
    (sys_ / "class/net/eth0/address").write_text("b8:27:eb:00:00:01\n")
    (sys_ / "class/thermal").mkdir(parents=True)
    for name, (kind, temp) in (thermal or {}).items():
        (sys_ / "class/thermal" / name).mkdir()
        (sys_ / "class/thermal" / name / "type").write_text(kind + "\n")
        (sys_ / "class/thermal" / name / "temp").write_text(temp + "\n")
    return proc, sys_


def fake_systemctl(tmp_path: Path, states: str) -> str:
    """systemctl is an outside program: a script that answers is-active the way systemd 252 does."""
    script = tmp_path / "systemctl"
    script.write_text(f"#!/bin/sh\n[ \"$1\" = is-active ] || exit 64\nprintf '{states}'\nexit 3\n")
    script.chmod(0o755)
    return str(script)


CONFIG = {"enabled": True, "group": "239.255.77.1", "port": 7777, "interval": 5, "interface": "eth0",
          "role": "worker", "k3s_unit": "k3s-agent.service", "local_copy": False}


def sampler(tmp_path: Path, systemctl: str = "/nonexistent/systemctl", **tree: Any) -> Any:
    proc, sys_ = make_tree(tmp_path, **tree)
    return beacon.Sampler(CONFIG, proc=proc, sys_=sys_, root=str(tmp_path), systemctl=systemctl)


def test_packet_from_fake_tree(tmp_path: Path) -> None:
    s = sampler(tmp_path, systemctl=fake_systemctl(tmp_path, "active\\nactive\\n"),
                thermal={"thermal_zone0": ("cpu-thermal", "48312")})
    packet = s.packet("10.0.0.11")
    assert packet["v"] == 1 and packet["host"] == "node1" and packet["role"] == "worker"
    assert packet["mac"] == "b8:27:eb:00:00:01" and packet["ip"] == "10.0.0.11"
    assert packet["uptime"] == 3725.41 and packet["load"] == [0.52, 0.31, 0.12]
    assert packet["mem_total"] == 948280 * 1024 and packet["mem_available"] == 711210 * 1024
    assert packet["temp"] == 48.3
    assert packet["jobs"] is True and packet["k3s"] is True and packet["cloud_init"] == "done"
    assert packet["cpu"] is None  # no previous sample to take a difference from
    assert 0 < packet["disk_used"] <= packet["disk_total"]
    # What the beacon sends is what the collector keeps.
    assert nodetable.parse_packet(beacon.encode(packet), "10.0.0.11", None) == packet


def test_cpu_percent_from_stat_deltas(tmp_path: Path) -> None:
    s = sampler(tmp_path)
    assert s.cpu_percent() is None
    # 250 more busy jiffies out of 1000 more in all: 25%.
    (tmp_path / "proc/stat").write_text("cpu  330 0 20 1640 10 0 0 0 0 0\n")
    assert s.cpu_percent() == 25.0
    # iowait counts as idle: the CPU could have run something else.
    (tmp_path / "proc/stat").write_text("cpu  330 0 20 1640 1010 0 0 0 0 0\n")
    assert s.cpu_percent() == 0.0


def test_temperature_prefers_the_soc_zone(tmp_path: Path) -> None:
    s = sampler(tmp_path, thermal={"thermal_zone0": ("acpitz", "30000"), "thermal_zone1": ("soc_thermal", "61000")})
    assert s.packet("10.0.0.11")["temp"] == 61.0


def test_no_thermal_zone_no_systemd_no_jobs(tmp_path: Path) -> None:
    s = sampler(tmp_path, mounts=MOUNTINFO.splitlines(keepends=True)[0])
    packet = s.packet(None)
    assert packet["temp"] is None and packet["jobs"] is False
    assert packet["k3s"] is None and packet["cloud_init"] is None and packet["ip"] == ""


@pytest.mark.parametrize(("states", "cloud_init", "k3s"), [
    ("activating\\ninactive\\n", "running", False),
    ("failed\\nfailed\\n", "error", False),
    ("inactive\\nactive\\n", "inactive", True),
])
def test_unit_states(tmp_path: Path, states: str, cloud_init: str, k3s: bool) -> None:
    packet = sampler(tmp_path, systemctl=fake_systemctl(tmp_path, states)).packet("10.0.0.11")
    assert (packet["cloud_init"], packet["k3s"]) == (cloud_init, k3s)


def test_systemctl_is_asked_at_most_every_30_seconds(tmp_path: Path) -> None:
    log = tmp_path / "calls"
    script = tmp_path / "systemctl"
    script.write_text(f"#!/bin/sh\necho x >> {log}\nprintf 'active\\nactive\\n'\n")
    script.chmod(0o755)
    s = sampler(tmp_path, systemctl=str(script))
    for t in (0.0, 5.0, 10.0, 29.0, 30.0, 35.0):
        s.packet("10.0.0.11", now=t)
    assert log.read_text().count("x") == 2


def test_largest_packet_fits(tmp_path: Path) -> None:
    s = sampler(tmp_path, hostname="n" * 64, systemctl=fake_systemctl(tmp_path, "deactivating\\nactive\\n"),
                thermal={"thermal_zone0": ("cpu", "-12345")})
    packet = s.packet("255.255.255.255")
    packet.update(uptime=1e12 + 0.123, time=1e12 + 0.123, seq=2**63, cpu=100.0,
                  load=[1234.56, 1234.56, 1234.56], mem_total=2**63, mem_available=2**63,
                  disk_used=2**63, disk_total=2**63)
    assert len(beacon.encode(packet)) <= 1200


def test_check_enabled(tmp_path: Path) -> None:
    config = tmp_path / "monitoring.json"
    config.write_text(json.dumps({**CONFIG, "enabled": False}))
    assert beacon.main(["--config", str(config), "--check-enabled"]) == 1
    config.write_text(json.dumps(CONFIG))
    assert beacon.main(["--config", str(config), "--check-enabled"]) == 0


@pytest.mark.parametrize("enabled", [True, False])
def test_units_are_skipped_when_the_recipe_turns_monitoring_off(recipe_file: Any, enabled: bool) -> None:
    """Decided when the units are rendered: a Python start at every boot (ExecCondition) held multi-user.target."""
    recipe = load_recipe(recipe_file(VALID + f"monitoring: {{enabled: {str(enabled).lower()}}}\n"))
    for layer, unit in (("common", "imagebuilder-beacon.service"), ("master", "imagebuilder-dashboard.service")):
        text = render_overlay(ROOT / "overlays" / layer / "root/etc/systemd/system" / f"{unit}.j2", recipe, "master")
        assert "\nExecCondition=" not in text
        assert ("ConditionPathExists=/nonexistent/" in text) == (not enabled), text


def test_sender_waits_for_a_missing_interface(capsys: pytest.CaptureFixture[str]) -> None:
    sender = beacon.Sender({**CONFIG, "interface": "nosuch0"})
    assert sender.address() is None
    assert sender.address() is None
    assert capsys.readouterr().err == "no interface nosuch0; waiting for it\n"  # said once, not every beacon


def render_overlay(template: Path, recipe: Any, role: str) -> str:
    """One file of a built-in layer, rendered by the build's own overlay code."""
    layer_dir = next(p for p in template.parents if p.parent == ROOT / "overlays")
    rel = template.relative_to(layer_dir).as_posix().removesuffix(".j2")  # root/... or boot/...
    variables = template_variables(recipe, role, secrets=SECRETS, boot_mount="/boot/firmware")
    layer = render_layer(layer_dir.name, layer_dir, variables)
    return next(f.data.decode() for f in layer.files if f.tree_path == rel)


def test_config_rendered_from_recipe(recipe_file: Any, tmp_path: Path) -> None:
    recipe = load_recipe(recipe_file(VALID + "monitoring: {group: 239.1.2.3, interval: 2}\n"))
    for role in ("worker", "master"):
        # As the build does: the common layer once, then the role's layer on top.
        tree = tmp_path / role
        for layer in ("common", role):
            variables = template_variables(recipe, role, secrets=SECRETS, boot_mount="/boot/firmware")
            write_layer(render_layer(layer, ROOT / "overlays" / layer, variables), tree)
        config = beacon.load_config(tree / "etc/imagebuilder/monitoring.json")
        if role == "worker":
            assert config == {**CONFIG, "group": "239.1.2.3", "interval": 2}
        else:
            assert config["role"] == "master" and config["local_copy"] is True
            assert config["k3s_unit"] == "k3s.service"


def test_beacon_sends_to_a_unicast_sink(tmp_path: Path) -> None:
    # Multicast is for the namespaces of the integration tests; here the packet goes to 127.0.0.1
    # as the master's local copy does, through the real program's socket code.
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.settimeout(5)
    sender = beacon.Sender({**CONFIG, "interface": "lo", "group": "127.0.0.1", "port": sink.getsockname()[1]})
    ip = sender.address()
    assert ip == "127.0.0.1"
    sender.send(beacon.encode(sampler(tmp_path).packet(ip)))
    data, _ = sink.recvfrom(2048)
    assert json.loads(data)["host"] == "node1"
    sink.close()
