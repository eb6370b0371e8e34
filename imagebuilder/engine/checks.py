"""ConfigCheck the generated configuration with the real tools, inside the image, at build time.

The tools are the image's own (its cloud-init, dnsmasq, nft, systemd), run in the stage's chroot, so
a configuration is checked by exactly the version that will read it on the card.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from imagebuilder.core.errors import CommandFailed, ImageBuilderError
from imagebuilder.core.run import run
from imagebuilder.engine.backends.chroot import Chroot


@dataclass(frozen=True)
class ConfigCheck:
    path: str  # the file checked, as in the running system
    argv: tuple[str, ...]  # run in the chroot; on the host with "{root}" standing for the tree
    tool: str
    on_host: bool = False


def unit_checks(units: list[str], missing: tuple[str, ...] = ()) -> list[ConfigCheck]:
    """systemd-analyze verify on each unit we add (not on those the distribution ships).

    missing: units whose program is knowingly absent (k3s without its binary): verify would only
    report that.
    """
    ours = [u for u in units if not u.startswith(("nftables.", "dnsmasq.", "nfs-")) and u not in missing]
    return [ConfigCheck(f"/etc/systemd/system/{u}",
                        ("systemd-analyze", "verify", "--man=no", f"/etc/systemd/system/{u}"),
                        "systemd-analyze verify") for u in ours]


def role_checks(role: str, boot_mount: str, units: list[str], missing: tuple[str, ...] = ()) -> list[ConfigCheck]:
    checks = [ConfigCheck(f"{boot_mount}/user-data",
                          ("cloud-init", "schema", "--config-file", f"{boot_mount}/user-data"), "cloud-init schema")]
    if role == "master":
        checks += [
            ConfigCheck("/etc/dnsmasq.d/cluster.conf", ("dnsmasq", "--test", "--conf-file=/etc/dnsmasq.d/cluster.conf"),
                  "dnsmasq --test"),
            # qemu-user cannot pass netlink through: the host's nft checks it, in a network namespace of
            # its own so that nothing could touch the host's ruleset.
            ConfigCheck("/etc/nftables.conf", ("unshare", "--net", "nft", "-c", "-f", "{root}/etc/nftables.conf"),
                  "nft -c", on_host=True),
        ]
    return checks + unit_checks(units, missing)


def run_checks(chroot: Chroot, checks: list[ConfigCheck]) -> None:
    for check in checks:
        try:
            if check.on_host:
                run([a.replace("{root}", str(chroot.root)) for a in check.argv])
            else:
                chroot.run(list(check.argv))
        except CommandFailed as e:
            detail = e.stderr_tail[-1] if e.stderr_tail else f"exit {e.returncode}"
            raise ImageBuilderError(f"{check.path}: {check.tool} rejects it: {detail}",
                                    "this file is generated from the recipe and the overlays: fix the "
                                    "template or the recipe value it names") from None


_EXPORT = re.compile(r"^(/\S+)\s+(\S+)\(([a-z_,=0-9]+)\)$")
_EXPORT_OPTIONS = {"rw", "ro", "sync", "async", "no_subtree_check", "subtree_check", "root_squash",
                   "no_root_squash", "all_squash", "secure", "insecure", "wdelay", "no_wdelay", "crossmnt"}


def check_exports(text: str) -> None:
    """exports(5) syntax: exportfs has no dry run, so the lines are checked here."""
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _EXPORT.match(line.strip())
        bad = [] if match is None else [o for o in match.group(3).split(",")
                                       if o.split("=")[0] not in _EXPORT_OPTIONS | {"anonuid", "anongid", "fsid"}]
        if match is None or bad:
            raise ImageBuilderError(f"/etc/exports:{number}: not a valid export line: {line.strip()}",
                                    "fix overlays/master/etc/exports.j2")
