"""Logging in to the boot test's guests, over the cluster LAN.

The ssh client runs inside the test's namespace, which has an address on the LAN (lan.py): it reaches the
master and each worker at their LAN addresses, as a workstation on the LAN does; the master's uplink stays
closed (its firewall lets nothing in there). Host keys are new on every boot of a test guest, so they are
neither checked nor remembered.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from imagebuilder.boottest.lan import Lan
from imagebuilder.boottest.poll import poll
from imagebuilder.core.errors import ImageBuilderError
from imagebuilder.core.invoker import home
from imagebuilder.core.run import output, run
from imagebuilder.recipe.model import Recipe

MASTER_ALIAS = "ib-master"


def public_key_of(private_key: Path) -> str:
    return output(["ssh-keygen", "-y", "-f", private_key])


def find_login_key(recipe: Recipe, given: Path | None) -> Path:
    """The private key whose public half is in users[0].ssh_authorized_keys: `given`, or one in ~/.ssh."""
    if not recipe.users:
        raise ImageBuilderError(f"{recipe.source}: users: the boot test logs in as users[0], and there is none",
                                "add a user with ssh_authorized_keys and pass its private key with --ssh-key")
    wanted = {" ".join(k.split()[:2]) for k in recipe.users[0].ssh_authorized_keys}
    candidates = [given] if given is not None else [
        home() / ".ssh" / name for name in ("id_ed25519", "id_ecdsa", "id_rsa")]
    for key in candidates:
        if key.is_file() and " ".join(public_key_of(key).split()[:2]) in wanted:
            return key
    which = str(given) if given is not None else "no key in ~/.ssh"
    raise ImageBuilderError(
        f"{recipe.source}: users[0].ssh_authorized_keys: {which} matches none of its keys, so the boot test "
        "cannot log in",
        "put your public key there, rebuild, and pass the private key with --ssh-key",
    )


@dataclass(frozen=True)
class Ssh:
    lan: Lan
    config: Path

    def argv(self, host: str, command: Sequence[str]) -> list[str]:
        """ssh argv for `command` on `host` (the master's alias or a worker's address). ssh hands the remote
        shell one line: each word is quoted, so a path or a script is one argument there too."""
        return self.lan.exec_argv(["ssh", "-F", str(self.config), host, shlex.join(command)])

    def run(self, host: str, command: Sequence[str]) -> subprocess.CompletedProcess[bytes]:
        """Run a remote command; the caller reads returncode and stdout (a failing check is not an error)."""
        return run(self.argv(host, command), capture=True, check=False)

    def text(self, host: str, command: Sequence[str]) -> str | None:
        """stdout of a remote command, or None when it (or the login) failed."""
        result = self.run(host, command)
        return result.stdout.decode(errors="replace").strip() if result.returncode == 0 else None

    def wait_until_up(self, host: str, deadline: float) -> bool:
        """Ask until a login works (sshd starts after host keys are made at first boot) or the deadline.
        A refused connection returns at once: asked each second, a login comes a second after sshd starts."""
        return poll(lambda: self.run(host, ["true"]).returncode == 0, bool, deadline, 1.0)


def write_ssh_config(path: Path, user: str, key: Path, master_ip: str) -> Path:
    path.write_text("\n".join([
        "Host *",
        f"  User {user}",
        f"  IdentityFile \"{key}\"",
        "  IdentitiesOnly yes",
        "  BatchMode yes",
        "  StrictHostKeyChecking no",
        "  UserKnownHostsFile /dev/null",
        "  LogLevel ERROR",
        "  ConnectTimeout 10",
        "  ServerAliveInterval 5",
        "  ServerAliveCountMax 6",
        f"Host {MASTER_ALIAS}",
        f"  HostName {master_ip}",
        "",
    ]))
    return path
