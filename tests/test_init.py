"""`imagebuilder init`: a starter recipe that validates as written and takes the user's own login key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from imagebuilder.recipe.load import load_recipe
from tests.conftest import ROOT, require_programs


def imagebuilder(*args: str, home: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(home)}
    env.pop("SUDO_UID", None)
    return subprocess.run([sys.executable, "-m", "imagebuilder", *args], capture_output=True, text=True, cwd=cwd,
                          env={**env, "PYTHONPATH": str(ROOT)}, check=False)


def test_init_writes_a_recipe_that_validates_with_the_users_key(tmp_path: Path) -> None:
    require_programs("ssh-keygen")
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "me@laptop", "-f",
                    home / ".ssh" / "id_ed25519"], check=True)
    result = imagebuilder("init", "--name", "lab", home=home, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "1 public key(s) of yours" in result.stdout
    recipe = load_recipe(tmp_path / "cluster.yaml")
    key = (home / ".ssh" / "id_ed25519.pub").read_text().strip()
    assert recipe.cluster.name == "lab" and recipe.users[0].ssh_authorized_keys == (key,)
    assert recipe.network.uplink_interface == "eth1" and recipe.workers == ()
    checked = imagebuilder("validate", "cluster.yaml", home=home, cwd=tmp_path)
    assert checked.returncode == 0 and "WARNING" not in checked.stderr, checked.stderr
    # Every place to fill in is marked, and the way to the MACs is named.
    text = (tmp_path / "cluster.yaml").read_text()
    assert text.count("# FILL IN") == 3 and "imagebuilder scan cluster.yaml" in text


def test_init_without_a_key_says_nobody_can_log_in(tmp_path: Path) -> None:
    result = imagebuilder("init", "my.yaml", home=tmp_path, cwd=tmp_path)
    assert result.returncode == 0 and "no public key found" in result.stdout
    checked = imagebuilder("validate", "my.yaml", home=tmp_path, cwd=tmp_path)
    assert checked.returncode == 0
    assert "users: nobody can log in to the nodes" in checked.stderr


def test_init_never_overwrites(tmp_path: Path) -> None:
    (tmp_path / "cluster.yaml").write_text("mine\n")
    result = imagebuilder("init", home=tmp_path, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[0] == "imagebuilder: cluster.yaml: already exists; init writes only a new file"
    assert (tmp_path / "cluster.yaml").read_text() == "mine\n"
    bad = imagebuilder("init", "x.yaml", "--name", "Bad Name", home=tmp_path, cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("imagebuilder: --name: ")
    assert not (tmp_path / "x.yaml").exists()
