"""imagebuilder as users install it: `make install` (a wheel in an environment of its own), run from
outside the checkout, with sudo by a user.

The built-in overlays must come from the installed package, not from a git checkout next to it.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagebuilder.disk.partitions import boot_and_root
from tests.conftest import ROOT, require_programs
from tests.images import arm64_base, make_context, small_recipe


def clean_env() -> dict[str, str]:
    # Nothing may lead the installed program back to the checkout.
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def test_wheel_carries_the_overlays(installed_by_make: Path, tmp_path: Path) -> None:
    probe = ("import imagebuilder, imagebuilder.layers.render as r; "
             "print(imagebuilder.__file__); print(r.BUILTIN); print(sorted(p.name for p in r.BUILTIN.iterdir()))")
    python = installed_by_make.resolve().parent / "python"
    out = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True,
                         cwd=tmp_path, env=clean_env()).stdout.splitlines()
    assert not out[0].startswith(str(ROOT)) and not out[1].startswith(str(ROOT)), out
    assert "'common'" in out[2] and "'master'" in out[2] and "'worker'" in out[2]
    beacon = Path(out[1]) / "common/root/usr/local/lib/imagebuilder/beacon.py"
    assert beacon.is_file() and (Path(out[1]) / "master/layer.yaml").is_file()


@pytest.fixture(scope="module")
def installed_by_make() -> Iterator[Path]:
    """`make install` (the README's way) into a prefix of the test's; the installed command. In a folder
    anyone may enter (pytest's own are root's only): the sudo test's user runs it too."""
    require_programs("make")
    work = Path(tempfile.mkdtemp(prefix="imagebuilder-install-"))
    try:
        work.chmod(0o755)
        subprocess.run(["make", "-s", "install", f"PREFIX={work}/usr", f"INSTALL_DIR={work}/opt/imagebuilder"],
                       cwd=ROOT, check=True, env=clean_env())
        yield work / "usr/bin/imagebuilder"
    finally:
        shutil.rmtree(work)


@contextlib.contextmanager
def sudoer(parent: Path) -> Iterator[tuple[pwd.struct_passwd, Path]]:
    """A user of this machine who may run anything with sudo, made for the test and removed after it."""
    require_programs("useradd", "userdel", "sudo", "setpriv")
    name = f"ibtest{secrets.token_hex(3)}"
    home = parent / name
    subprocess.run(["useradd", "--create-home", "--home-dir", home, "--shell", "/bin/sh", name], check=True)
    try:
        rule = Path("/etc/sudoers.d") / name
        rule.write_text(f"{name} ALL=(root) NOPASSWD: ALL\n")
        rule.chmod(0o440)
        try:
            yield pwd.getpwnam(name), home
        finally:
            rule.unlink()
    finally:
        subprocess.run(["userdel", name], check=True)


def as_user(user: pwd.struct_passwd, argv: list[str | Path]) -> list[str | Path]:
    """argv run by `user` from a login-like environment: the user's HOME and a plain PATH, nothing of ours."""
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "env", "-i",
            f"HOME={user.pw_dir}", f"USER={user.pw_name}", "PATH=/usr/local/bin:/usr/bin:/bin", *argv]


@pytest.mark.integration
def test_sudo_build_keeps_one_state_and_gives_the_outputs_to_the_user(installed_by_make: Path,
                                                                      shared_tmp: Path) -> None:
    """The user who runs `sudo imagebuilder build` owns and reads what it writes, and the cluster's secrets
    stay in their home: a later run without sudo sees the same cluster state."""
    arm64_base()
    require_programs("debugfs")
    with sudoer(shared_tmp) as (user, home):
        recipe = home / "cluster.yaml"
        recipe.write_text(small_recipe("wheeltest", Path("out"), compress="none", bmap=False))
        # sudo finds what make install put in /usr/local/bin (its secure_path), and the rootless backend's
        # bindings import in the installed environment.
        path = subprocess.run(as_user(user, ["sudo", "-n", "sh", "-c", "echo $PATH"]), capture_output=True,
                              text=True, check=True).stdout
        assert "/usr/local/bin" in path.split(":"), path
        python = installed_by_make.resolve().parent / "python"
        subprocess.run([python, "-c", "import guestfs"], check=True, env=clean_env())
        # The test cache holds the base (bootstrapping another takes minutes); everything else is the default.
        cache = str(make_context().cache_dir)
        result = subprocess.run(as_user(user, ["sudo", "-n", installed_by_make, "--cache-dir", cache, "build",
                                               recipe]), cwd=home, capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr[-3000:]
        state = home / ".local/state/imagebuilder/wheeltest"
        out = home / "out/wheeltest"
        for path in (home / ".local", home / ".local/state", state, *state.rglob("*"), home / "out", out,
                     *out.rglob("*")):
            assert path.lstat().st_uid == user.pw_uid, f"{path} does not belong to the user"
        assert {p.name for p in state.iterdir()} and all(p.stat().st_mode & 0o077 == 0 for p in state.iterdir())
        assert not Path("/root/.local/state/imagebuilder/wheeltest").exists()
        read = subprocess.run(as_user(user, ["sha256sum", "master.img", "worker.img"]), cwd=out, check=False,
                              capture_output=True, text=True)
        assert read.returncode == 0, read.stderr
        # The images carry the built-in overlays of the installed package, with their modes.
        for role, file, mode in (("worker", "/usr/local/lib/imagebuilder/set_hostname.py", "0755"),
                                 ("worker", "/usr/local/lib/imagebuilder/beacon.py", "0755"),
                                 # The node table `imagebuilder status` imports through a link: a file here.
                                 ("master", "/usr/local/lib/imagebuilder/nodetable.py", "0644"),
                                 ("master", "/etc/dnsmasq.d/cluster.conf", "0644"),
                                 ("master", "/etc/rancher/k3s/config.yaml", "0600")):
            image = out / f"{role}.img"
            _, root = boot_and_root(image)
            stat = subprocess.run(["debugfs", "-R", f"stat {file}", f"{image}?offset={root.start}"],
                                  capture_output=True, text=True, check=True).stdout
            assert re.search(rf"Mode: +{mode}\b", stat), (role, file, stat[:300])
        # The same cluster state without sudo: the plan finds the secrets the sudo build made.
        plan = subprocess.run(as_user(user, [installed_by_make, "--cache-dir", home / "own-cache", "build", "--plan",
                                             "--json", recipe]), cwd=home, capture_output=True, text=True, check=False)
        assert plan.returncode == 0, plan.stderr
        assert not any("no k3s secrets yet" in note for note in json.loads(plan.stdout)["notes"])
