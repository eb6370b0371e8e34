"""The boot test: a cluster built from the bootstrap base comes alive under qemu (master, one known worker,
one unknown), on a LAN inside a network namespace made here; and its parts, fast, without qemu."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagebuilder.boottest.clocks import ntp_offset
from imagebuilder.boottest.plan import CLOCK_AHEAD, CLOCK_BEHIND, BootOptions, BootReport, plan_nodes
from imagebuilder.boottest.poll import poll
from imagebuilder.boottest.qemu import GuestSpec, Uplink, qemu_argv, user_netdev
from imagebuilder.boottest.report import format_report, report_data, write_json
from imagebuilder.recipe.load import load_recipe
from tests.conftest import ROOT, VALID, descendants, require_programs
from tests.images import SECURITY, arm64_base, make_context

RECIPE = """\
cluster: {{name: boottest, domain: cluster.lan}}
base: {{bootstrap: {{suite: bookworm}}}}
# Tests reach nothing outside this machine: no k3s release download.
k3s: {{assets: none}}
network:
  uplink_interface: eth1
  subnet: 10.0.0.0/24
  master_ip: 10.0.0.1
  dhcp_range: [10.0.0.100, 10.0.0.199]
  upstream_dns: [10.0.2.3]  # qemu's user-net resolver: an address of the test's own network
users:
  - {{name: ibtest, ssh_authorized_keys: ["{key}"]}}
workers:
  - {{hostname: node1, mac: "b8:27:eb:00:00:01", ip: 10.0.0.11}}
  - {{hostname: node2, mac: "b8:27:eb:00:00:02", ip: 10.0.0.12}}
unknown_workers: {{hostname: "node-{{mac6}}"}}
# Reproducible: the images it boots are the file systems made again from their files (disk/rewrite.py).
output: {{dir: {out}, compress: none, bmap: false, reproducible: true}}
# What the boot test runs a container with, as k3s's embedded runc would (the check "container runs").
packages: {{common: [runc, busybox-static]}}
"""


# ---------------------------------------------------------------------------------------------------
# Fast: the parts, without qemu.


def test_plan_first_known_workers_then_unknown(recipe_file) -> None:
    recipe = load_recipe(recipe_file(VALID))
    nodes = plan_nodes(recipe, BootOptions(workers=1, unknown=2))
    assert [(n.name, n.role, n.known, n.ip) for n in nodes] == [
        ("master", "master", True, "10.0.0.1"), ("node1", "worker", True, "10.0.0.11"),
        ("node-b00701", "worker", False, None), ("node-b00702", "worker", False, None)]
    assert len({n.mac for n in nodes}) == len({n.tap for n in nodes}) == 4
    # Unknown MACs are locally administered: no real card has them.
    assert all(int(n.mac.split(":")[0], 16) & 2 for n in nodes if not n.known)


def test_plan_starts_clocks_wrong_as_boards_have_them(recipe_file) -> None:
    nodes = plan_nodes(load_recipe(recipe_file(VALID)), BootOptions(workers=2))
    assert [n.clock for n in nodes] == [CLOCK_BEHIND, CLOCK_AHEAD, None]
    spec = GuestSpec("m", "arm64", Path("m.qcow2"), Path("k"), None, "", "tap0", "02:00:00:b0:07:00",
                     clock=nodes[0].clock)
    assert qemu_argv(spec)[-2:] == ["-rtc", f"base={CLOCK_BEHIND}"]
    # On a Pi model (no clock there) the table's first worker; the clock ahead goes to the next on virt.
    nodes = plan_nodes(load_recipe(recipe_file(VALID)), BootOptions(workers=1, unknown=1, board="pi3b"))
    assert [(n.board, n.clock, n.disk) for n in nodes] == [
        (None, CLOCK_BEHIND, "/dev/vda"), ("pi3b", None, "/dev/mmcblk0p"), (None, CLOCK_AHEAD, "/dev/vda")]


def test_ntp_offset_read_in_every_unit_timesyncd_uses() -> None:
    status = "       Server: 10.0.0.1 (10.0.0.1)\n       Offset: {}\n        Delay: 301us\n"
    for shown, seconds in (("-38us", -38e-6), ("+1.234ms", 1.234e-3), ("+2.500s", 2.5), ("-3min", -180.0)):
        assert ntp_offset(status.format(shown)) == pytest.approx(seconds)
    assert ntp_offset("       Offset: -5y 3month\n") is None  # the step before the first set: not a measure
    assert ntp_offset("") is None


def test_plan_refuses_more_workers_than_the_table(recipe_file) -> None:
    from imagebuilder.core.errors import ImageBuilderError

    with pytest.raises(ImageBuilderError, match="--workers 3: the recipe's table has 2"):
        plan_nodes(load_recipe(recipe_file(VALID)), BootOptions(workers=3))


def test_poll_reads_until_the_value_is_accepted() -> None:
    values = iter(range(10))
    assert poll(lambda: next(values), lambda v: v >= 3, time.monotonic() + 30, 0.01) == 3
    assert next(values) == 4  # read no more than needed


def test_poll_gives_up_at_its_deadline_with_the_last_value_read() -> None:
    reads: list[float] = []

    def read() -> int:
        reads.append(time.monotonic())
        return len(reads)

    start = time.monotonic()
    last = poll(read, lambda v: False, start + 0.3, 0.05)
    assert last == len(reads) >= 3 and 0.3 <= time.monotonic() - start < 1.0
    # A deadline already past: one read, so the verdict says what the guest says now.
    assert poll(lambda: "late", lambda v: False, start, 5.0) == "late"


def test_ssh_hands_the_remote_shell_each_word_whole(tmp_path: Path) -> None:
    from imagebuilder.boottest.lan import Lan
    from imagebuilder.boottest.ssh import Ssh

    target = tmp_path / "a dir; rm -rf x" / "it's $HOME"
    target.parent.mkdir()
    argv = Ssh(Lan("ns"), tmp_path / "ssh_config").argv("ib-master", ["sh", "-c", 'echo "$1" >"$2"', "sh",
                                                                        "nonce", str(target)])
    assert argv[:7] == ["ip", "netns", "exec", "ns", "ssh", "-F", str(tmp_path / "ssh_config")]
    assert argv[7] == "ib-master" and len(argv) == 9
    # ssh gives the remote user's shell that one line: run it with a shell here.
    subprocess.run(["sh", "-c", argv[8]], check=True)
    assert target.read_text() == "nonce\n"


def test_leases_give_unknown_workers_their_address_without_changing_the_results(recipe_file) -> None:
    from imagebuilder.boottest.checks import check_leases, with_leased_address
    from imagebuilder.boottest.plan import NodeResult

    nodes = plan_nodes(load_recipe(recipe_file(VALID)), BootOptions(workers=1, unknown=2))
    master, known, leased, silent = (NodeResult(n, guest=None, address=n.ip) for n in nodes)
    leases = {known.node.mac: "10.0.0.11", leased.node.mac: "10.0.0.150"}
    verdicts = [(c.node, c.ok) for c in check_leases([r.node for r in (known, leased, silent)], leases)]
    assert verdicts == [("node1", True), ("node-b00701", True), ("node-b00702", False)]
    located = [with_leased_address(r, leases) for r in (master, known, leased, silent)]
    assert [r.address for r in located] == ["10.0.0.1", "10.0.0.11", "10.0.0.150", None]
    assert located[2].host == "10.0.0.150" and leased.address is None  # a new record: the input is as it was
    assert [c.ok for c in check_leases([known.node], {known.node.mac: "10.0.0.99"})] == [False]


def test_uplink_is_restricted_and_forwards_only_to_loopback() -> None:
    netdev = user_netdev(Uplink(hostfwd={22: 2222}, guestfwd=("10.0.2.100", 80, ["/usr/bin/socat", "-", "a,b"])))
    assert "restrict=on" in netdev.split(",")
    assert "hostfwd=tcp:127.0.0.1:2222-:22" in netdev
    # qemu reads ',,' as a literal comma inside an option value.
    assert netdev.endswith("guestfwd=tcp:10.0.2.100:80-cmd:/usr/bin/socat - a,,b")


def test_first_nic_is_the_lan_and_the_disk_an_overlay(tmp_path: Path) -> None:
    spec = GuestSpec("w", "armhf", tmp_path / "w.qcow2", tmp_path / "k", None, "root=LABEL=rootfs", "tap1",
                     "b8:27:eb:00:00:01")
    argv = qemu_argv(spec)
    assert argv[:5] == ["qemu-system-arm", "-M", "virt,highmem=off", "-cpu", "cortex-a15"]
    devices = [argv[i + 1] for i, a in enumerate(argv) if a == "-device"]
    assert devices == ["virtio-blk-device,drive=disk", "virtio-net-device,netdev=lan,mac=b8:27:eb:00:00:01"]
    assert f"if=none,id=disk,format=qcow2,file={tmp_path / 'w.qcow2'}" in argv
    assert "-initrd" not in argv and not any(a.startswith("user,") for a in argv)


@pytest.mark.parametrize("arch", ["arm64", "armhf"])
def test_the_lan_is_eth0_and_the_uplink_eth1(tmp_path: Path, arch: str) -> None:
    spec = GuestSpec("m", arch, tmp_path / "m.qcow2", tmp_path / "k", None, "", "tap0", "02:00:00:b0:07:00",
                     uplink=Uplink(hostfwd={}))
    nics = [a.split(",")[1] for a in qemu_argv(spec) if a.startswith("virtio-net-")]
    # The kernel names mmio devices (armhf) in the reverse of qemu's order, pci ones (arm64) in it; an armhf
    # master once came up with its LAN address on the uplink, behind the uplink's firewall.
    assert nics == (["netdev=lan", "netdev=uplink"] if arch == "arm64" else ["netdev=uplink", "netdev=lan"])


# ---------------------------------------------------------------------------------------------------
# Boot: the whole cluster under qemu.


def namespaces() -> set[str]:
    return set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout.split())


def boot_workdirs() -> list[Path]:
    return sorted(make_context().cache("tmp").glob("imagebuilder-boot-*"))


def build_cluster(tmp: Path, arch: str = "arm64", variant: str = "", extra: str = "") -> tuple[Path, Path]:
    """The test recipe for arch (with a key made here) and its built images: (recipe, private key).
    variant: a cluster of its own (name suffix), whose recipe also has the lines `extra`."""
    system = {"arm64": "qemu-system-aarch64", "armhf": "qemu-system-arm"}[arch]
    require_programs(system, "qemu-img", "socat", "ssh", "ssh-keygen", "ip", "mcopy")
    key = tmp / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "imagebuilder-boot-test", "-f", key],
                   check=True)
    recipe_path = tmp / "recipe.yaml"
    text = RECIPE.format(key=Path(f"{key}.pub").read_text().strip(), out=tmp / "out")
    if arch != "arm64":  # a cluster of its own: its outputs and state apart from the arm64 one
        text = text.replace("name: boottest", f"name: boottest-{arch}") + f"arch: {arch}\n"
        if not SECURITY[arch]:
            text = text.replace("{bootstrap: {suite: bookworm}}", "{bootstrap: {suite: bookworm, security: false}}")
    if variant:
        text = text.replace("name: boottest", f"name: boottest-{variant}") + extra
    recipe_path.write_text(text)
    from imagebuilder.build.execute import build

    ctx = make_context()
    with ctx.stack:
        build(ctx, load_recipe(recipe_path))
    return recipe_path, key


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The arm64 test cluster, built: (recipe, private key)."""
    arm64_base()
    return build_cluster(tmp_path_factory.mktemp("boot"))


@pytest.fixture(scope="module")
def booted(cluster: tuple[Path, Path]) -> Iterator[tuple[BootReport, Path]]:
    """One boot of master, node1 (on qemu's Raspberry Pi 3 model, booted as its firmware would) and one unknown
    worker; every check ran; the guests are gone again."""
    from imagebuilder.boottest.boot import boot_test

    recipe_path, key = cluster
    logs = recipe_path.parent / "logs"
    before = namespaces()
    ctx = make_context()
    with ctx.stack:
        report = boot_test(ctx, load_recipe(recipe_path),
                           BootOptions(workers=1, unknown=1, ssh_key=key, logs=logs, board="pi3b"))
    print(format_report(report))  # shown with -s, and in the log of a failure
    write_json(report, logs / "report.json")
    assert namespaces() == before, "a namespace outlived the boot test"
    assert not boot_workdirs(), "a temporary directory outlived the boot test"
    assert all(r.guest.proc.poll() is not None for r in report.nodes), "a guest outlived the boot test"
    yield report, logs


def check(report: BootReport, name: str) -> None:
    chosen = [c for c in report.checks if c.name == name]
    assert chosen, f"no check {name!r} ran: {[c.name for c in report.checks]}"
    failed = [f"{c.node}: {c.detail}" for c in chosen if not c.ok]
    assert not failed, "\n".join(failed)


@pytest.mark.boot
def test_every_node_boots_and_reports_its_times(booted: tuple[BootReport, Path]) -> None:
    report, logs = booted
    check(report, "boots")
    assert [r.node.name for r in report.nodes] == ["master", "node1", "node-b00701"]
    data = json.loads((logs / "report.json").read_text())
    assert data == report_data(report)
    for node in data["nodes"]:
        assert 0 < node["seconds"]["kernel up"] < node["seconds"]["cloud-init done"]
        console = (logs / f"serial-{node['name']}.log").read_text()
        assert console.count("Booting Linux") == 1
        assert "IMAGEBUILDER: seed" not in console  # a card as built carries the recipe's seed already
        # Each node's own account of its boot is kept beside its console: systemd's, and cloud-init's log.
        account = (logs / f"analyze-{node['name']}.txt").read_text()
        for said in ("Startup finished in", "graphical.target @", "### systemd-analyze blame"):
            assert said in account, account
        assert "finish: modules-final: SUCCESS" in (logs / f"cloud-init-{node['name']}.txt").read_text()
        assert "imagebuilder-boot-report" in (logs / f"journal-{node['name']}.txt").read_text()
    assert re.search(r"^node1\s+worker\s+pi3b\s+10\.0\.0\.11\s+\d+\.\d", format_report(report), re.M)


@pytest.mark.boot
def test_the_card_on_the_pi_model_boots_as_its_firmware_boots_it(booted: tuple[BootReport, Path]) -> None:
    report, logs = booted
    check(report, "firmware step")
    (firmware,) = [c for c in report.checks if c.name == "firmware step"]
    assert firmware.node == "node1" and "bcm2837-rpi-3-b.dtb" in firmware.detail, firmware.detail
    assert "cgroup_enable=memory" in firmware.detail  # the card's own cmdline.txt
    # Every node: the boot finished with no failed unit, root and boot partition on its own card (the SD
    # card on the model), the memory cgroup k3s needs.
    for name in ("boot finished", "root and boot on the card", "memory cgroup"):
        check(report, name)
    assert "root=/dev/mmcblk0p2 boot=/dev/mmcblk0p1" in (logs / "serial-node1.log").read_text()


@pytest.mark.boot
def test_cloud_init_finished_once_without_errors(booted: tuple[BootReport, Path]) -> None:
    check(booted[0], "cloud-init once, no errors (console)")
    check(booted[0], "cloud-init once, no errors")


@pytest.mark.boot
def test_known_worker_takes_its_table_name_unknown_the_pattern(booted: tuple[BootReport, Path]) -> None:
    check(booted[0], "hostname (console)")
    check(booted[0], "hostname")


@pytest.mark.boot
def test_dnsmasq_leased_reserved_addresses_and_names_resolve(booted: tuple[BootReport, Path]) -> None:
    check(booted[0], "dnsmasq lease")
    check(booted[0], "DNS")


@pytest.mark.boot
def test_jobs_share_written_on_one_worker_is_read_on_others(booted: tuple[BootReport, Path]) -> None:
    check(booted[0], "NFS write")
    check(booted[0], "NFS read")


@pytest.mark.boot
def test_worker_reaches_the_uplink_through_the_masters_nat(booted: tuple[BootReport, Path]) -> None:
    check(booted[0], "NAT")
    server_log = (booted[1] / "uplink-server.log").read_text()
    assert "GET /uplink-check" in server_log


@pytest.mark.boot
def test_workers_set_their_clocks_from_the_master_whatever_they_started_with(
        booted: tuple[BootReport, Path]) -> None:
    check(booted[0], "clock")  # the master: no time server, not earlier than its image's build
    check(booted[0], "clock from the master")


@pytest.mark.boot
def test_every_node_made_its_own_machine_id_and_host_keys(booted: tuple[BootReport, Path]) -> None:
    check(booted[0], "own identity")


@pytest.mark.boot
def test_masters_edge_is_closed_on_the_uplink_and_open_on_the_lan(booted: tuple[BootReport, Path]) -> None:
    """ssh, DNS, NFS, the dashboard and k3s's ports: each answers from the LAN, none from the uplink."""
    check(booted[0], "edge: LAN side open")
    check(booted[0], "edge: uplink side closed")
    assert len([c for c in booted[0].checks if c.name == "edge: uplink side closed"]) >= 8


@pytest.mark.boot
def test_dashboard_lists_every_node_up(booted: tuple[BootReport, Path]) -> None:
    check(booted[0], "dashboard")


@pytest.mark.boot
def test_k3s_units_enabled_with_config_and_token(booted: tuple[BootReport, Path]) -> None:
    check(booted[0], "k3s server")
    check(booted[0], "k3s agent")
    check(booted[0], "no server secret")
    check_k3s_tier(booted[0])


# With the k3s binary (IMAGEBUILDER_K3S_ASSETS, docs/development.md): every node Ready, a pod on each,
# reached from the master through the pod network and at each worker's NodePort.
K3S_TIER = ("k3s nodes Ready", "k3s pods", "k3s pod network", "k3s NodePort")


def check_k3s_tier(report: BootReport) -> None:
    if os.environ.get("IMAGEBUILDER_K3S_ASSETS"):
        for name in K3S_TIER:
            check(report, name)
    else:
        assert not [c for c in report.checks if c.name in K3S_TIER]


@pytest.mark.boot
def test_every_node_gives_k3s_its_kernel_cgroups_snapshots_containers_and_vxlan(
        booted: tuple[BootReport, Path]) -> None:
    """What `k3s check-config` checks and what the agent does first, on the master, the Pi model and virt."""
    for name in ("k3s kernel", "k3s cgroups", "overlay snapshot", "container runs", "VXLAN"):
        check(booted[0], name)
    ran = {c.node for c in booted[0].checks if c.name == "container runs" and c.ok and not c.skipped}
    assert ran == {"master", "node1", "node-b00701"}, ran
    # Every worker reached every other node across VXLAN.
    assert len([c for c in booted[0].checks if c.name == "VXLAN"]) == 4


@pytest.mark.boot
def test_ctrl_c_while_booting_removes_guests_namespace_and_files(cluster: tuple[Path, Path]) -> None:
    recipe_path, key = cluster
    before = namespaces()
    proc = subprocess.Popen([sys.executable, "-m", "imagebuilder", "boot-test", recipe_path, "--workers", "1",
                             "--ssh-key", key], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    with contextlib.ExitStack() as undo:
        undo.callback(lambda: proc.poll() is None and proc.kill())
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if "power on master" in line:
                break
        else:
            raise AssertionError("boot-test ended before powering on the master:\n" + "".join(seen[-20:]))
        # qemu starts a moment after the line, inside the namespace.
        until = time.monotonic() + 30
        while not (qemus := qemu_children(proc.pid)) and time.monotonic() < until:
            time.sleep(0.1)
        tree = [(pid, Path(f"/proc/{pid}/comm").read_text().strip()) for pid in descendants(proc.pid)
                if Path(f"/proc/{pid}").exists()]
        assert qemus, f"no qemu was started: {tree}"
        proc.send_signal(signal.SIGINT)
        rest = proc.stderr.read()
        assert proc.wait(timeout=60) == 128 + signal.SIGINT, rest
    assert "interrupted" in rest and "Traceback" not in rest
    assert namespaces() == before
    assert not boot_workdirs()
    assert not [pid for pid in qemus if Path(f"/proc/{pid}").exists()]


def qemu_children(parent: int) -> list[int]:
    """qemu processes below `parent` (the boot test runs them in namespaces of its own, a few levels down)."""
    found = []
    for pid in descendants(parent):
        try:
            if "qemu" in Path(f"/proc/{pid}/comm").read_text():
                found.append(pid)
        except OSError:
            continue
    return found
