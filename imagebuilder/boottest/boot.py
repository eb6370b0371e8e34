"""`imagebuilder boot-test`: power the cluster's images on under qemu, on a private LAN, and check it came alive.

The master boots first; the workers are powered on once it has finished cloud-init, so its DHCP, DNS and
NFS are there when they ask (each node's times are from its own power-on). Every guest, the namespace and
the temporary files go on the command's ExitStack, so they are removed on success, failure and Ctrl-C.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from imagebuilder.boards.models import Board, boards_for
from imagebuilder.boottest.analysis import keep_boot_accounts
from imagebuilder.boottest.board import board_for, firmware_result, model_append
from imagebuilder.boottest.checks import run_checks
from imagebuilder.boottest.edge import edge_ports
from imagebuilder.boottest.firmware_step import BootFiles, firmware_step
from imagebuilder.boottest.lan import (
    UPLINK_PROBE_BASE,
    UPLINK_SERVER,
    guestfwd_relay,
    observer_address,
    private_lan,
    uplink_server,
)
from imagebuilder.boottest.netboot import check_netboot, read_identity, tftp_boot_files
from imagebuilder.boottest.plan import BootOptions, BootReport, CheckResult, Node, NodeResult, plan_nodes
from imagebuilder.boottest.qemu import KERNEL_UP, GuestSpec, Uplink, make_overlay, running_guest, sentinel
from imagebuilder.boottest.ssh import Ssh, find_login_key, write_ssh_config
from imagebuilder.core.context import Context
from imagebuilder.core.errors import ChecksFailed, ImageBuilderError
from imagebuilder.core.log import log, step
from imagebuilder.core.resources import temporary_directory
from imagebuilder.core.run import find_program
from imagebuilder.recipe.model import Recipe

# cloud-init's own closing line, for images whose user-data does not print our sentinel.
_CLOUD_INIT_FINISHED = re.compile(r"Cloud-init v\. \S+ finished at")
# How long after cloud-init is done a node may take to print the events that follow it.
GRACE = 90.0


def image_of(recipe: Recipe, role: str) -> Path:
    image = recipe.output_dir / f"{role}.img"
    if not image.is_file():
        raise ImageBuilderError(f"{image} does not exist: the boot test boots the built images",
                                f"build them first: imagebuilder build {recipe.source}")
    return image


def boot_test(ctx: Context, recipe: Recipe, options: BootOptions) -> BootReport:
    """Boot the cluster, wait for its events, run the checks. Guests stay up until ctx.stack unwinds."""
    started = time.monotonic()
    deadline = started + options.timeout
    images = {role: image_of(recipe, role) for role in ("master", "worker")}
    nodes = plan_nodes(recipe, options)
    key = find_login_key(recipe, options.ssh_key)
    for program in ("ip", "qemu-img", "ssh", "socat", *(("curl",) if recipe.netboot else ())):
        find_program(program)
    work = ctx.stack.enter_context(temporary_directory("imagebuilder-boot-", ctx.cache("tmp")))
    logs = options.logs or work
    logs.mkdir(parents=True, exist_ok=True)
    board = board_for(recipe, options.board) if options.board else None
    on_board: BootFiles | None = None
    with step("firmware step: kernel, initramfs and command line off each card"):
        kernels = {role: boot_files(images[role], work / role, options, recipe.arch) for role in images}
        if board is not None:
            on_board = boot_files(images["worker"], work / "board", options, recipe.arch, board)
    # A name of its own: in the build's PID namespace every boot test is process 2.
    lan = ctx.stack.enter_context(private_lan(f"ib-boot-{secrets.token_hex(4)}", observer_address(recipe)))
    nonce = secrets.token_hex(8)
    served = work / "served"
    served.mkdir()
    (served / "uplink-check").write_text(nonce + "\n")
    ctx.stack.enter_context(uplink_server(lan, served, logs / "uplink-server.log"))
    ssh = Ssh(lan, write_ssh_config(work / "ssh_config", recipe.users[0].name, key, str(recipe.network.master_ip)))
    firmware: list[CheckResult] = []

    def power_on(node: Node) -> NodeResult:
        role_image = images[node.role]
        # plan_nodes puts one node on the board, and only when --board gave one: then board and on_board are set.
        model = on_board if node.board else None
        files = model or kernels[node.role]
        disk: Path | None = None
        if node.netboot:
            files = tftp_boot_files(lan, str(recipe.network.master_ip), role_image, boards_for(recipe.arch)[0],
                                    work / f"tftp-{node.tap}-{node.boot}")
        else:
            # The SoC's SD controller takes cards of a power-of-two size only.
            disk = make_overlay(role_image, work / f"{node.tap}.qcow2", power_of_two=model is not None)
        spec = GuestSpec(
            name=node.name, arch=recipe.arch, disk=disk,
            kernel=files.kernel, initrd=files.initrd, append=model_append(files) if model else files.append,
            lan_tap=lan.add_tap(node.tap) if node.boot == 1 else node.tap, lan_mac=node.mac,
            uplink=master_uplink(recipe) if node.role == "master" and recipe.network.uplink_interface else None,
            clock=node.clock,  # plan_nodes gives the board none: the models have no real-time clock
            board=board.qemu if model and board else None, dtb=files.dtb if model else None,
        )
        if model and board:
            firmware.append(firmware_result(node, board, files, role_image))
        log.info("power on %s (%s, %s%s%s%s)", node.name, node.role, node.mac,
                 f", on {board.title}" if model and board else "",
                 ", no card: from the master's netboot tree" if node.netboot else "",
                 f", clock at {node.clock}" if node.clock else "")
        serial = f"serial-{node.name}.log" if node.boot == 1 else f"serial-{node.name}-boot{node.boot}.log"
        guest = ctx.stack.enter_context(running_guest(spec, logs / serial, lan.exec_argv([])))
        return NodeResult(node, guest, address=node.ip)

    results, checks = boot_and_check(recipe, nodes, power_on, ssh, nonce, options, deadline)
    return BootReport(recipe.cluster.name, results, [*firmware, *checks], time.monotonic() - started)


def boot_and_check(recipe: Recipe, nodes: list[Node], power_on: Callable[[Node], NodeResult], ssh: Ssh, nonce: str,
                   options: BootOptions, deadline: float) -> tuple[list[NodeResult], list[CheckResult]]:
    """Power the master on, then the workers once it is up; wait for their events; check; keep each node's
    account of its boot (--logs); power the netbooted nodes off and on again and check them once more."""
    with step(f"boot {recipe.cluster.name}: master, {len(nodes) - 1} workers"):
        master = power_on(nodes[0])
        wait_for_boot(master, deadline)
        results = [master, *(power_on(n) for n in nodes[1:])]
        for result in results[1:]:
            wait_for_boot(result, deadline)
        for result in results:
            wait_for_rest(result, options, deadline)
    with step("checks"):
        results, checks = run_checks(recipe, results, ssh, nonce, options, deadline)
    if options.logs:
        with step(f"each node's account of its boot, into {options.logs}"):
            keep_boot_accounts(results, ssh, options.logs)
    netbooted = [r for r in results if r.node.netboot]
    if netbooted:
        checks += power_cycle(recipe, netbooted, ssh, power_on, deadline, options)
    return results, checks


def power_cycle(recipe: Recipe, netbooted: list[NodeResult], ssh: Ssh, power_on: Callable[[Node], NodeResult],
                deadline: float, options: BootOptions) -> list[CheckResult]:
    """Read each netbooted node's identity, power it off and on again (a node without a card keeps nothing
    of its own but its folder on the master), and check what it kept; its times are logged as the first
    boot's, its account of the second boot goes to --logs."""
    assert recipe.netboot is not None
    first = {r.node.name: read_identity(ssh, r) for r in netbooted}
    again: dict[str, dict[str, str]] = {}
    with step(f"power cycle of {len(netbooted)} netbooted workers"):
        for r in netbooted:
            ssh.run(r.host, ["sudo", "systemctl", "poweroff"])  # -no-reboot: qemu ends when the guest powers off
            try:
                r.guest.proc.wait(timeout=max(1.0, min(120.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                r.guest.proc.kill()
                r.guest.proc.wait()
        cycled = [power_on(dataclasses.replace(r.node, boot=2)) for r in netbooted]
        for result in cycled:
            wait_for_boot(result, deadline)
            wait_for_rest(result, options, deadline)
            if ssh.wait_until_up(result.host, deadline):
                again[result.node.name] = read_identity(ssh, result)
                if options.logs:
                    keep_boot_accounts([result], ssh, options.logs)
    macs = {r.node.name: r.node.mac for r in netbooted}
    return list(check_netboot(recipe.netboot.tree, str(recipe.network.master_ip), macs, first, again))


def boot_files(image: Path, dest: Path, options: BootOptions, arch: str, board: Board | None = None) -> BootFiles:
    """What the firmware of `board` (virt: of the architecture's first board) loads; --kernel/--initrd
    replace the card's kernel and initramfs, never its command line."""
    files = firmware_step(image, board or boards_for(arch)[0], dest)
    if options.kernel is not None:
        files = dataclasses.replace(files, kernel=options.kernel.resolve(), initrd=None)
    if options.initrd is not None:
        files = dataclasses.replace(files, initrd=options.initrd.resolve())
    return files


def master_uplink(recipe: Recipe) -> Uplink:
    """The master's way out (qemu user networking, restricted), with forwards of the ports the test knocks on
    from the uplink side (checks.check_edge); and the test's HTTP server behind it, for the NAT check."""
    tcp, udp = edge_ports(recipe)
    return Uplink(hostfwd={p: UPLINK_PROBE_BASE + p for p in tcp}, udp_hostfwd={p: UPLINK_PROBE_BASE + p for p in udp},
                  guestfwd=(UPLINK_SERVER, 80, guestfwd_relay()))


def cloud_init_done(line: str) -> bool:
    return sentinel("cloud-init-done")(line) or _CLOUD_INIT_FINISHED.search(line) is not None


def event_matchers(node: Node, options: BootOptions) -> dict[str, Callable[[str], bool]]:
    """The console lines that mark the events after boot that this node must reach."""
    events: dict[str, Callable[[str], bool]] = {"hostname set": sentinel("hostname"),
                                                "boot finished": sentinel("boot-report")}
    if node.role == "worker":
        events["NFS mounted"] = sentinel("nfs-mounted")
        events["time synced"] = sentinel("time-synchronized")
        if options.k3s_assets:
            events["k3s joined"] = sentinel("k3s-joined")
    elif options.k3s_assets:
        events["k3s joined"] = sentinel("k3s-server-ready")
    return events


def wait_for_boot(result: NodeResult, deadline: float) -> None:
    """Wait until the node's kernel is up and cloud-init is done (or the deadline)."""
    for event, match in (("kernel up", lambda line: KERNEL_UP.search(line) is not None),
                         ("cloud-init done", cloud_init_done)):
        found = result.guest.serial.wait_for(match, deadline)
        result.times[event] = found[0] if found else None


def wait_for_rest(result: NodeResult, options: BootOptions, deadline: float) -> None:
    """The events that come around cloud-init's end: each may trail it by GRACE seconds, not the whole
    timeout; a k3s join (pulling images, starting pods) gets until the deadline."""
    serial = result.guest.serial
    done = result.times.get("cloud-init done")
    after = serial.started + done + GRACE if done is not None else time.monotonic()
    for event, match in event_matchers(result.node, options).items():
        if event in result.times:
            continue
        found = serial.wait_for(match, deadline if event == "k3s joined" else min(after, deadline))
        result.times[event] = found[0] if found else None
    power_on = f", power-on {result.node.boot}" if result.node.boot > 1 else ""
    log.info("%s%s: %s", result.node.name, power_on, ", ".join(
        f"{e} {t:.1f}s" if t is not None else f"{e} -" for e, t in result.times.items()))

class BootTestFailed(ChecksFailed):
    """The cluster booted (or not) and some checks failed: the report above says which."""

    def __init__(self, report: BootReport, logs: Path | None) -> None:
        failed = [c for c in report.checks if not c.ok]
        first = f"{failed[0].name} [{failed[0].node}]" if failed else "no checks ran"
        super().__init__(
            f"boot test of {report.cluster}: {len(failed)} of {len(report.checks)} checks failed (first: {first})",
            f"read the serial logs in {logs}" if logs else "run again with --logs DIR to keep the serial logs",
        )
