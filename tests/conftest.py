from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagebuilder.roles.secrets import K3sSecrets

ROOT = Path(__file__).resolve().parent.parent

VALID = """\
cluster: {name: testcluster, domain: cluster.lan}
base:
  bootstrap: {suite: bookworm}
arch: arm64
network:
  lan_interface: eth0
  subnet: 10.0.0.0/24
  master_ip: 10.0.0.1
  dhcp_range: [10.0.0.100, 10.0.0.199]
workers:
  - {hostname: node1, mac: "b8:27:eb:00:00:01", ip: 10.0.0.11}
  - {hostname: node2, mac: "b8:27:eb:00:00:02", ip: 10.0.0.12}
"""


# Stand-in secrets for rendering tests (the real ones are made per cluster in the state directory).
SECRETS = K3sSecrets("s" * 64, "a" * 64, "-----BEGIN CERTIFICATE-----\nTEST\n-----END CERTIFICATE-----\n",
                     "-----BEGIN EC PRIVATE KEY-----\nTEST\n-----END EC PRIVATE KEY-----\n",
                     "-----BEGIN CERTIFICATE-----\nCLIENT\n-----END CERTIFICATE-----\n",
                     "-----BEGIN EC PRIVATE KEY-----\nCLIENT\n-----END EC PRIVATE KEY-----\n")


def pytest_collection_finish(session: pytest.Session) -> None:
    """A run that will boot the armhf cluster, on a machine with no test base yet (a new machine's CI),
    bootstraps the two bases side by side first."""
    if any(item.nodeid.startswith("tests/test_boot_armhf.py") for item in session.items):
        from tests.images import bootstrap_both_bases_at_once

        bootstrap_both_bases_at_once()


@pytest.fixture
def recipe_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # output.dir is relative to the current directory: keep a test's outputs in its own folder.
    monkeypatch.chdir(tmp_path)

    def write(text: str, name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path
    return write


def lacking(reason: str) -> None:
    """This machine lacks what the test needs: skip it, or under `make test` fail it.

    `make test` installs everything the suite uses, so there a missing program is a missing install step,
    which must not pass quietly as a skip.
    """
    if os.environ.get("IMAGEBUILDER_REQUIRE_ALL"):
        pytest.fail(f"{reason} (make test installs what the tests need: add it to the Makefile)")
    pytest.skip(reason)


def require_root() -> None:
    if os.geteuid() != 0:
        lacking("needs root")


def require_programs(*names: str) -> None:
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    missing = [n for n in names if shutil.which(n, path=path) is None]
    if missing:
        lacking(f"not installed: {', '.join(missing)}")


def as_another_user(argv: list[str]) -> list[str]:
    """argv run by someone who does not own what the test made: nobody when the tests run as root (root is
    refused nothing); under another user the test makes its files unreadable to itself instead."""
    if os.geteuid() != 0:
        return argv
    require_programs("setpriv")
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv]


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A folder anyone may enter (pytest's own tmp_path is its owner's only), for a run as another user."""
    path = Path(tempfile.mkdtemp(prefix="imagebuilder-test-"))
    path.chmod(0o755)
    yield path
    subprocess.run(["chmod", "-R", "u+rwX", path], check=True)  # what lock_away closed
    shutil.rmtree(path)


def lock_away(path: Path) -> None:
    """Make the folder `path` one that as_another_user's user may not enter (as a build run with sudo leaves
    out/<cluster>/ and the cache)."""
    path.chmod(0o700 if os.geteuid() == 0 else 0)


def loop_devices() -> str:
    return subprocess.run(["losetup", "-a"], check=False, capture_output=True, text=True).stdout


def mounts() -> str:
    return Path("/proc/self/mountinfo").read_text()


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, nearest first."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        children = parents.get(queue.pop(0), [])
        found += children
        queue += children
    return found


def build_mounts(pid: int) -> str:
    """The mounts a running imagebuilder (started as `pid`) sees: builds run in a mount namespace of their
    own, invisible from the test's."""
    for child in reversed(descendants(pid)):
        try:
            # A process in a chroot (a check run in the stage's tree) sees only the mounts under its root.
            if os.readlink(f"/proc/{child}/root") != "/":
                continue
            return Path(f"/proc/{child}/mountinfo").read_text()
        except OSError:
            continue
    return ""


def leftovers(*markers: str) -> list[str]:
    """Loop devices and mounts that involve any of `markers` (paths a test owns).

    Filtering by what the test owns keeps an unrelated build running beside the tests (a benchmark,
    a user's build) from being counted as ours.
    """
    lines = loop_devices().splitlines() + mounts().splitlines()
    return [line for line in lines if any(m in line for m in markers)]
