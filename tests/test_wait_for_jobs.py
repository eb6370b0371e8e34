"""The worker's wait for /srv/jobs (overlays/worker): its settings as the build writes them, and how it asks
the master, run on this host against 127.0.0.1."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from imagebuilder.layers.render import BUILTIN
from imagebuilder.recipe.load import load_recipe
from tests.conftest import VALID
from tests.test_beacon import load_program, render_overlay

PROGRAM = BUILTIN / "worker/root/usr/local/lib/imagebuilder/wait_for_jobs.py"
wait_for_jobs = load_program(PROGRAM)


def test_the_settings_the_build_writes_name_the_master(recipe_file: Any, tmp_path: Path) -> None:
    recipe = load_recipe(recipe_file(VALID.replace("master_ip: 10.0.0.1", "master_ip: 10.0.0.2")))
    settings = tmp_path / "jobs.json"
    settings.write_text(render_overlay(BUILTIN / "worker/root/etc/imagebuilder/jobs.json.j2", recipe, "worker"))
    assert wait_for_jobs.read_master(settings) == "10.0.0.2"


def test_the_master_answers_once_its_nfs_port_listens() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert wait_for_jobs.master_answers("127.0.0.1", port)
    assert not wait_for_jobs.master_answers("127.0.0.1", port)


def test_a_folder_is_mounted_only_when_something_is_mounted_there(tmp_path: Path) -> None:
    assert not wait_for_jobs.mounted(str(tmp_path))
    assert not wait_for_jobs.mounted(str(tmp_path / "missing"))
    assert wait_for_jobs.mounted("/")

