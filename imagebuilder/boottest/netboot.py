"""The boot test's workers without cards: what their boot ROM would fetch, over TFTP from the booted master,
and the checks only they have (root from the master, identity kept in their folder across a power cycle).

qemu runs no Raspberry Pi boot ROM. The test does the ROM's part: it reads config.txt from the master's
TFTP server, picks the kernel and initramfs by the firmware's rules (boards/firmware.py), fetches them and
cmdline.txt with a TFTP client on the LAN, and gives them to qemu with no disk at all. Everything after
that (the NFS root, the RAM layer, the node's state) is the image's own work.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from imagebuilder.boards.firmware import select
from imagebuilder.boards.models import Board
from imagebuilder.boottest.firmware_step import BootFiles, redirect_console
from imagebuilder.boottest.lan import Lan
from imagebuilder.boottest.plan import CheckResult, NodeResult
from imagebuilder.boottest.ssh import Ssh
from imagebuilder.core.errors import ImageBuilderError
from imagebuilder.core.run import find_program, run
from imagebuilder.disk.fat import BootPartition
from imagebuilder.disk.partitions import boot_and_root
from imagebuilder.netboot.populate import state_folder

STATE = "/var/lib/imagebuilder/netboot-state"


def tftp_fetch(lan: Lan, server: str, name: str, target: Path) -> Path:
    """One file from the master's TFTP server, fetched from the LAN as a boot ROM would."""
    # Blocks of 1468 bytes, as the Pi ROM asks for: the default 512 takes minutes for a kernel under TCG.
    result = run(lan.exec_argv([find_program("curl"), "--silent", "--show-error", "--max-time", "300",
                                "--tftp-blksize", "1468", "--output", str(target), f"tftp://{server}/{name}"]),
                 check=False, capture=True)
    if result.returncode != 0 or not target.is_file() or target.stat().st_size == 0:
        raise ImageBuilderError(f"netboot: tftp://{server}/{name} could not be fetched from the master",
                                "read the master's serial log: its dnsmasq serves the netboot tree")
    return target


def tftp_boot_files(lan: Lan, server: str, worker_image: Path, board: Board, dest: Path) -> BootFiles:
    """The kernel, initramfs and command line `board`'s firmware would load from the master's TFTP tree.

    A TFTP server lists nothing: the names to choose among are the worker image's boot files, which the
    tree holds (populate.py copies them); config.txt, the chosen files and cmdline.txt come over TFTP."""
    dest.mkdir(parents=True, exist_ok=True)
    config = tftp_fetch(lan, server, "config.txt", dest / "config.txt").read_text(errors="replace")
    names = BootPartition(worker_image, boot_and_root(worker_image)[0]).files
    chosen = select(config, board, names)
    if chosen.kernel is None or chosen.problems:
        raise ImageBuilderError(f"netboot: the firmware of a {board.title} would not boot from the master's tree: "
                                + "; ".join(chosen.problems or ["no kernel"]),
                                "imagebuilder verify lists what each board needs")
    kernel = tftp_fetch(lan, server, chosen.kernel, dest / "kernel")
    initrd = tftp_fetch(lan, server, chosen.initramfs, dest / "initrd") if chosen.initramfs else None
    cmdline = tftp_fetch(lan, server, chosen.cmdline, dest / "cmdline.txt").read_text(errors="replace")
    return BootFiles(kernel, initrd, None, redirect_console(cmdline.splitlines()[0]), chosen)


def read_identity(ssh: Ssh, result: NodeResult) -> dict[str, str]:
    """What a netbooted node must keep across power cycles, and where its root comes from."""
    commands = {
        "hostname": ["hostname"],
        "machine-id": ["cat", "/etc/machine-id"],
        "host key": ["cut", "-d", " ", "-f2", "/etc/ssh/ssh_host_ed25519_key.pub"],
        "root": ["findmnt", "-no", "FSTYPE,SOURCE", "/"],
        "shared root": ["findmnt", "-no", "FSTYPE,SOURCE", "/run/netboot/ro"],
        "state": ["findmnt", "-no", "FSTYPE,SOURCE", STATE],
    }
    # findmnt pads its columns: one space between words.
    return {what: " ".join((ssh.text(result.host, command) or "").split()) for what, command in commands.items()}


def check_netboot(tree: str, server: str, macs: dict[str, str], first: dict[str, dict[str, str]],
                  again: dict[str, dict[str, str]]) -> Iterator[CheckResult]:
    """first/again: read_identity of each netbooted node (by name; macs: its MAC) after its first and its
    second power-on."""
    for name, seen in first.items():
        want_root = f"nfs4 {server}:{tree}/root"
        yield CheckResult("root from the master under a RAM layer", name,
                          seen["root"].startswith("overlay") and seen["shared root"] == want_root,
                          f"/ is {seen['root'] or '?'}, its lower layer {seen['shared root'] or '?'}; want {want_root}")
        want_state = f"nfs4 {server}:{tree}/nodes/{state_folder(macs[name])}"
        yield CheckResult("own state folder on the master", name, seen["state"] == want_state,
                          f"{STATE} is {seen['state'] or '?'}; want {want_state}")
        later = again.get(name)
        if later is None:
            yield CheckResult("identity kept across a power cycle", name, False,
                              "no ssh login after it was powered on again (before the test's deadline)")
            continue
        kept = [k for k in ("hostname", "machine-id", "host key") if seen[k] and later[k] == seen[k]]
        yield CheckResult("identity kept across a power cycle", name, len(kept) == 3,
                          f"kept: {', '.join(kept) or 'nothing'}; machine-id {seen['machine-id'][:8]}... then "
                          f"{later['machine-id'][:8]}...")
