"""The shell scripts the nodes run (overlays/*): each run on this host against a temporary root, with the
outside programs it calls (sleep, systemctl) as scripts that answer; and every one, as the build
renders it, passes shellcheck."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path
from typing import Any

from imagebuilder.layers.render import BUILTIN, OverlayFile, render_layer
from imagebuilder.recipe.load import load_recipe
from imagebuilder.roles.variables import template_variables
from tests.conftest import SECRETS, VALID, require_programs

PROGRAMS = "root/usr/local/lib/imagebuilder"
KEEP_SEED = BUILTIN / "common" / PROGRAMS / "keep-seed"
START_WHEN_SYNCHRONIZED = BUILTIN / "worker" / PROGRAMS / "start-when-synchronized"
NETBOOT_KEEP_KEYS = BUILTIN / "netboot" / PROGRAMS / "netboot-keep-keys"


def run_script(script: Path, root: Path, *args: str, path: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The script run by the shell its #! line names (a checkout may not keep the executable bit: the layer
    gives the mode), with `root` standing for / and `path` first on PATH; the root's console leads to the
    script's stdout."""
    (root / "dev").mkdir(parents=True, exist_ok=True)
    if not (root / "dev/console").is_symlink():
        # The console is a device, written with `>`: as a file it would keep only the last line.
        (root / "dev/console").symlink_to("/dev/stdout")
    env = {**os.environ, "IMAGEBUILDER_ROOT": str(root)}
    if path is not None:
        env["PATH"] = f"{path}{os.pathsep}{env.get('PATH', '')}"
    shell = script.read_text().split("\n", 1)[0].removeprefix("#!")
    return subprocess.run([shell, script, *args], env=env, capture_output=True, text=True, check=False, timeout=60)


def console(result: subprocess.CompletedProcess[str]) -> list[str]:
    """What the script said on the console (its stdout, where the test's console leads)."""
    return result.stdout.splitlines()


def answering(folder: Path, name: str, body: str) -> None:
    """An outside program as a script on PATH."""
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(f"#!/bin/sh\n{body}")
    (folder / name).chmod(0o755)


def test_keep_seed_leaves_a_seed_that_holds_the_recipes(tmp_path: Path) -> None:
    (tmp_path / "ours").write_text("network: {version: 2}\n")
    (tmp_path / "seed").write_text("network: {version: 2}\n")
    result = run_script(KEEP_SEED, tmp_path / "root", str(tmp_path / "ours"), str(tmp_path / "seed"))
    assert result.returncode == 0, result.stderr
    assert console(result) == []
    assert not (tmp_path / "seed.imagebuilder-new").exists()


def test_keep_seed_puts_the_recipes_seed_back_and_says_so(tmp_path: Path) -> None:
    (tmp_path / "ours").write_text("network: {version: 2}\n")
    (tmp_path / "seed").write_text("network: {version: 2, ethernets: {}}\n")
    result = run_script(KEEP_SEED, tmp_path / "root", str(tmp_path / "ours"), str(tmp_path / "seed"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "seed").read_text() == "network: {version: 2}\n"
    assert console(result) == [
        f"IMAGEBUILDER: seed {tmp_path / 'seed'} replaced by the recipe's (the card's was another)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ours", "root", "seed"]


def test_keep_seed_writes_a_seed_the_card_lacks(tmp_path: Path) -> None:
    (tmp_path / "ours").write_text("instance-id: x\n")
    result = run_script(KEEP_SEED, tmp_path / "root", str(tmp_path / "ours"), str(tmp_path / "seed"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "seed").read_text() == "instance-id: x\n"


def test_keep_seed_fails_when_ours_is_missing(tmp_path: Path) -> None:
    (tmp_path / "seed").write_text("the card's\n")
    result = run_script(KEEP_SEED, tmp_path / "root", str(tmp_path / "ours"), str(tmp_path / "seed"))
    assert result.returncode != 0
    assert (tmp_path / "seed").read_text() == "the card's\n" and console(result) == []


def test_start_when_synchronized_waits_for_the_clock_then_starts_the_unit(tmp_path: Path) -> None:
    bin_, root = tmp_path / "bin", tmp_path / "root"
    synchronized = root / "run/systemd/timesync/synchronized"
    # Not synchronised when first looked at: timesyncd touches its file while the script sleeps.
    answering(bin_, "sleep", f'[ "$*" = 1 ] || exit 64\nmkdir -p "{synchronized.parent}"\ntouch "{synchronized}"\n')
    answering(bin_, "systemctl", f'echo "$*" >"{tmp_path / "started"}"\n')
    result = run_script(START_WHEN_SYNCHRONIZED, root, "k3s-agent.service", path=bin_)
    assert result.returncode == 0, result.stderr
    lines = console(result)
    assert lines[0] == "IMAGEBUILDER: waiting-for-time the master's NTP has not answered yet (0s)"
    assert lines[1].startswith("IMAGEBUILDER: time-synchronized ") and lines[1].endswith(", starting k3s-agent.service")
    assert len(lines) == 2
    assert (tmp_path / "started").read_text() == "start --no-block k3s-agent.service\n"


def test_start_when_synchronized_starts_at_once_on_a_synchronised_clock(tmp_path: Path) -> None:
    bin_, root = tmp_path / "bin", tmp_path / "root"
    (root / "run/systemd/timesync").mkdir(parents=True)
    (root / "run/systemd/timesync/synchronized").touch()
    answering(bin_, "sleep", "exit 64\n")  # never called
    answering(bin_, "systemctl", f'echo "$*" >"{tmp_path / "started"}"\n')
    result = run_script(START_WHEN_SYNCHRONIZED, root, "k3s-agent.service", path=bin_)
    assert result.returncode == 0, result.stderr
    assert [line.split(" ")[1] for line in console(result)] == ["time-synchronized"]
    assert (tmp_path / "started").read_text() == "start --no-block k3s-agent.service\n"


def test_netboot_keep_keys_copies_each_host_key_once(tmp_path: Path) -> None:
    root = tmp_path / "root"
    ssh = root / "etc/ssh"
    ssh.mkdir(parents=True)
    (ssh / "ssh_host_ed25519_key").write_text("private\n")
    (ssh / "ssh_host_ed25519_key").chmod(0o600)
    (ssh / "ssh_host_ed25519_key.pub").write_text("public\n")
    (ssh / "sshd_config").write_text("not a key\n")
    result = run_script(NETBOOT_KEEP_KEYS, root)
    assert result.returncode == 0, result.stderr
    state = root / "var/lib/imagebuilder/netboot-state/ssh"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert sorted(p.name for p in state.iterdir()) == ["ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"]
    assert stat.S_IMODE((state / "ssh_host_ed25519_key").stat().st_mode) == 0o600
    # Once: keys already kept are the node's identity, and a later boot's keys do not replace them.
    (ssh / "ssh_host_ed25519_key").write_text("made again\n")
    assert run_script(NETBOOT_KEEP_KEYS, root).returncode == 0
    assert (state / "ssh_host_ed25519_key").read_text() == "private\n"


def test_netboot_keep_keys_without_keys_keeps_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc/ssh").mkdir(parents=True)
    result = run_script(NETBOOT_KEEP_KEYS, root)
    assert result.returncode == 0, result.stderr
    assert list((root / "var/lib/imagebuilder/netboot-state/ssh").iterdir()) == []


def rendered_layers(recipe_file: Any) -> dict[str, list[OverlayFile]]:
    """The files of each role's built-in layers as the build writes them (templates rendered), netboot included."""
    recipe = load_recipe(recipe_file(VALID + "netboot: {workers: [node1]}\n"))
    found: dict[str, list[OverlayFile]] = {}
    for role, layers in (("master", ("common", "master")), ("worker", ("common", "worker", "netboot"))):
        variables = template_variables(recipe, role, secrets=SECRETS, boot_mount="/boot/firmware")
        found[role] = [f for name in layers for f in render_layer(name, BUILTIN / name, variables).files]
    return found


def rendered_shell_scripts(recipe_file: Any, tmp_path: Path) -> list[Path]:
    """Every shell script of the built-in layers as the build writes it, in a folder."""
    out = []
    for role, files in rendered_layers(recipe_file).items():
        for f in files:
            if f.symlink or f.data.split(b"\n", 1)[0] not in (b"#!/bin/sh", b"# shellcheck shell=sh"):
                continue
            target = tmp_path / "scripts" / role / f.tree_path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(f.data)
            out.append(target)
    return out


def test_node_shell_scripts_as_rendered_pass_shellcheck(recipe_file: Any, tmp_path: Path) -> None:
    require_programs("shellcheck")
    scripts = rendered_shell_scripts(recipe_file, tmp_path)
    names = {p.name for p in scripts}
    # The templates too (k3s-node-ip, the initramfs's netboot script), which `make lint` cannot read unrendered.
    assert {"keep-seed", "boot-report", "start-when-synchronized", "k3s-node-ip", "netboot-keep-keys",
            "imagebuilder-netboot", "nfs4root"} <= names, names
    result = subprocess.run(["shellcheck", *map(str, scripts)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


def test_every_program_a_unit_starts_is_one_its_layers_install(recipe_file: Any) -> None:
    for role, files in rendered_layers(recipe_file).items():
        installed = {"/" + f.path for f in files if not f.boot}
        started = [word for f in files if f.path.startswith("etc/systemd/system/") and not f.symlink
                   for line in f.data.decode().splitlines() if line.startswith(("ExecStart", "ExecCondition"))
                   for word in line.split("=", 1)[1].split() if word.startswith("/usr/local/lib/imagebuilder/")]
        assert started, role
        assert sorted(set(started) - installed) == [], role
