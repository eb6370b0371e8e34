"""Check the generated configuration with the real tools, inside the image, at build time.

The tools are the image's own (its cloud-init, dnsmasq, systemd), run in the stage's chroot, so a
configuration is checked by exactly the version that will read it on the card. What each layer asks to be
checked is in its layer.yaml; every unit file a layer ships is verified too.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from imagebuilder.core.errors import CommandFailed, ImageBuilderError
from imagebuilder.core.run import run
from imagebuilder.engine.backends.chroot import Chroot
from imagebuilder.layers.render import OverlayFile, RenderedLayer

UNIT_SUFFIXES = (".service", ".socket", ".mount", ".automount", ".timer", ".path")


@dataclass(frozen=True)
class ConfigCheck:
    path: str  # the file checked, as in the running system
    argv: tuple[str, ...]  # run in the chroot; on the host with "{root}" standing for the tree
    tool: str
    on_host: bool = False


def _tool_check(tool: str, path: str) -> ConfigCheck | None:
    """The check a layer names with `tool` for the file at `path`; None for checks made on the rendered data."""
    if tool == "cloud-init-schema":
        return ConfigCheck(path, ("cloud-init", "schema", "--config-file", path), "cloud-init schema")
    if tool == "dnsmasq":
        return ConfigCheck(path, ("dnsmasq", "--test", f"--conf-file={path}"), "dnsmasq --test")
    if tool == "chrony":
        # -p: parse the file, print the configuration and exit; an unknown or malformed directive fails.
        return ConfigCheck(path, ("chronyd", "-p", "-f", path), "chronyd -p")
    if tool == "nft":
        # qemu-user cannot pass netlink through: the host's nft checks it, in a network namespace of its
        # own so that nothing could touch the host's ruleset.
        return ConfigCheck(path, ("unshare", "--net", "nft", "-c", "-f", "{root}" + path), "nft -c", on_host=True)
    return None


def stage_checks(layers: tuple[RenderedLayer, ...], boot_mount: str,
                 missing: tuple[str, ...] = ()) -> tuple[ConfigCheck, ...]:
    """What the layers ask to check, and `systemd-analyze verify` on every unit file they ship.

    missing: units whose program is knowingly absent (k3s without its binary): verify would only report that.
    """
    checks: list[ConfigCheck] = []
    for layer in layers:
        files = {f.tree_path: f for f in layer.files}
        for wanted in layer.description.checks:
            check = _tool_check(wanted.tool, files[wanted.file].system_path(boot_mount))
            if check is not None:
                checks.append(check)
        for f in layer.files:
            name = f.path.rsplit("/", 1)[-1]
            if (not f.boot and not f.symlink and f.path.startswith("etc/systemd/system/")
                    and name.endswith(UNIT_SUFFIXES) and name not in missing):
                path = "/" + f.path
                checks.append(ConfigCheck(path, ("systemd-analyze", "verify", "--man=no", path),
                                          "systemd-analyze verify"))
    return tuple(checks)


def check_rendered(layers: tuple[RenderedLayer, ...], boot_mount: str) -> None:
    """The checks made on the rendered files themselves, where no tool of the image can do it."""
    for layer in layers:
        files = {f.tree_path: f for f in layer.files}
        for wanted in layer.description.checks:
            checker = DATA_CHECKS.get(wanted.tool)
            if checker is not None:
                checker(files[wanted.file], boot_mount)


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


_EXPORT = re.compile(r"^(/\S+)((?:\s+\S+\([a-z_,=0-9]+\))+)$")
_CLIENT = re.compile(r"(\S+)\(([a-z_,=0-9]+)\)")
_EXPORT_OPTIONS = {"rw", "ro", "sync", "async", "no_subtree_check", "subtree_check", "root_squash",
                   "no_root_squash", "all_squash", "secure", "insecure", "wdelay", "no_wdelay", "crossmnt"}


def check_exports(text: str, path: str = "/etc/exports") -> None:
    """exports(5) syntax: exportfs has no dry run, so the lines are checked here. A line is a path and one
    or more clients, each with its options."""
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _EXPORT.match(line.strip())
        options = [] if match is None else [o for c in _CLIENT.finditer(match.group(2)) for o in c.group(2).split(",")]
        bad = [o for o in options if o.split("=")[0] not in _EXPORT_OPTIONS | {"anonuid", "anongid", "fsid"}]
        if match is None or bad:
            raise ImageBuilderError(f"{path}:{number}: not a valid export line: {line.strip()}",
                                    "fix the layer's template of it (overlays/master/root/etc/exports.j2)")


def _check_exports_file(f: OverlayFile, boot_mount: str) -> None:
    check_exports(f.data.decode(), f.system_path(boot_mount))


DATA_CHECKS: dict[str, Callable[[OverlayFile, str], None]] = {"exports": _check_exports_file}
