"""Acquisitions undo themselves: on success, on an exception half-way, and on SIGINT/SIGTERM."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from imagebuilder.core import resources
from imagebuilder.core.mountinfo import mounts_at
from imagebuilder.core.resources import atomic_output, loop_device, mounted, temporary_directory
from imagebuilder.core.run import run
from tests.conftest import ROOT, loop_devices, mounts, require_programs, require_root


def test_temporary_directory_removed_on_error(tmp_path: Path) -> None:
    made: list[Path] = []
    with pytest.raises(RuntimeError), temporary_directory(parent=tmp_path) as d:
        made.append(d)
        (d / "file").write_text("x")
        raise RuntimeError("boom")
    assert not made[0].exists()


def test_sweep_takes_our_killed_temporary_directories_from_the_systems_folder_and_nothing_else(
        tmp_path: Path) -> None:
    # A verify killed with SIGKILL: its directory made by temporary_directory in the system's folder, its
    # lock gone with it.
    script = ("import os, sys\nfrom imagebuilder.core.resources import temporary_directory\n"
              "with temporary_directory() as d:\n    (d / 'initrd').mkdir()\n    print(d, flush=True)\n"
              "    os.kill(os.getpid(), 9)\n")
    killed = subprocess.run([sys.executable, "-c", script], env={**os.environ, "TMPDIR": str(tmp_path)},
                            capture_output=True, text=True, cwd=ROOT, check=False)
    assert killed.returncode == -signal.SIGKILL
    left = Path(killed.stdout.strip())
    assert left.parent == tmp_path and left.is_dir()
    assert left.name.startswith(resources.TEMPORARY_PREFIX)
    young = tmp_path / f"{resources.TEMPORARY_PREFIX}young"
    theirs = tmp_path / "someone-elses"
    # The test suite's own folders, made by tests/conftest.py and test_wheel while a build runs: not ours.
    tests = tmp_path / "imagebuilder-test-abc123"
    # Ours by name, another user's by owner: a root build must not take it.
    another_users = tmp_path / f"{resources.TEMPORARY_PREFIX}nobody"
    for d in (young, theirs, tests, another_users):
        d.mkdir()
    os.chown(another_users, 65534, 65534)
    long_ago = 1_000_000_000
    for d in (left, theirs, tests, another_users):
        os.utime(d, (long_ago, long_ago))
    # A live command's directory, named as ours and as old: its lock keeps it.
    with temporary_directory(prefix=resources.TEMPORARY_PREFIX, parent=tmp_path) as alive:
        os.utime(alive, (long_ago, long_ago))
        assert resources.sweep_partials([], temporary=tmp_path) == [left]
        assert alive.is_dir()
    assert not left.exists() and all(d.is_dir() for d in (young, theirs, tests, another_users))


def test_atomic_output_only_renames_when_complete(tmp_path: Path) -> None:
    final = tmp_path / "out" / "master.img"
    with pytest.raises(RuntimeError), atomic_output(final) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert not final.exists() and list(final.parent.iterdir()) == []
    with atomic_output(final) as tmp:
        tmp.write_text("whole")
    assert final.read_text() == "whole" and list(final.parent.iterdir()) == [final]


def test_atomic_output_over_a_link_to_the_same_file_leaves_no_partial(tmp_path: Path) -> None:
    """An output emitted again as the stage's file itself: rename(2) of one link over another of the same
    file does nothing, and the temporary name would stay (found by test_kill)."""
    stage = tmp_path / "stage.img"
    stage.write_text("stage")
    final = tmp_path / "out" / "master.img"
    final.parent.mkdir()
    os.link(stage, final)
    with atomic_output(final) as tmp:
        tmp.unlink()
        os.link(stage, tmp)
    assert list(final.parent.iterdir()) == [final] and final.stat().st_ino == stage.stat().st_ino


def _ext4_image(path: Path) -> Path:
    run(["truncate", "-s", "16M", path])
    run(["mkfs.ext4", "-q", "-F", path])
    return path


@pytest.mark.integration
@pytest.mark.parametrize("how", ["bind", "tmpfs"])
def test_a_signal_just_after_the_mount_command_leaves_no_mount(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               how: str) -> None:
    """The kernel made the mount, the signal lands before its undo is registered: it is undone all the same."""
    require_root()
    real_run = resources.run

    def interrupted_after_mount(argv: list[str], **kwargs: object) -> object:
        result = real_run(argv, **kwargs)  # type: ignore[arg-type]
        if argv[0] == "mount":
            raise KeyboardInterrupt
        return result

    monkeypatch.setattr(resources, "run", interrupted_after_mount)
    target = tmp_path / "target"
    try:
        with pytest.raises(KeyboardInterrupt):
            if how == "bind":
                (tmp_path / "source").mkdir()
                with resources.bind_mount(tmp_path / "source", target):
                    pass
            else:
                with resources.mounted("tmpfs", target, fstype="tmpfs"):
                    pass
        assert mounts_at(target) == 0
    finally:
        while mounts_at(target):
            subprocess.run(["umount", target], check=True)


@pytest.mark.integration
def test_failure_after_each_acquisition_unwinds(tmp_path: Path) -> None:
    require_root()
    require_programs("losetup", "mkfs.ext4")
    image = _ext4_image(tmp_path / "fs.img")
    before = (loop_devices(), mounts())
    for fail_at in (1, 2, 3):
        count = 0

        def hook(what: str, fail_at: int = fail_at) -> None:
            nonlocal count
            count += 1
            if count == fail_at:
                raise RuntimeError(f"injected after {what}")

        resources.ACQUIRE_HOOKS.append(hook)
        try:
            with pytest.raises(RuntimeError, match="injected"), contextlib.ExitStack() as stack:
                work = stack.enter_context(temporary_directory(parent=tmp_path))
                device = stack.enter_context(loop_device(image))
                stack.enter_context(mounted(device, work / "mnt"))
        finally:
            resources.ACQUIRE_HOOKS.clear()
        assert (loop_devices(), mounts()) == before, f"left behind after acquisition {fail_at}"
    assert [p.name for p in tmp_path.iterdir()] == ["fs.img"]


HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from imagebuilder.cli.main import _Signals
    from imagebuilder.core.context import Context
    from imagebuilder.core.errors import Interrupted
    from imagebuilder.core.resources import loop_device, mounted, temporary_directory
    _Signals().install()
    ctx = Context()
    try:
        with ctx.stack:
            d = ctx.stack.enter_context(temporary_directory(parent=Path(sys.argv[2])))
            dev = ctx.stack.enter_context(loop_device(Path(sys.argv[1])))
            ctx.stack.enter_context(mounted(dev, d / "mnt"))
            print("ready", d, flush=True)
            time.sleep(60)
    except Interrupted as e:
        sys.exit(128 + e.signum)
""")


@pytest.mark.integration
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_unwinds_everything(tmp_path: Path, signum: int) -> None:
    require_root()
    require_programs("losetup", "mkfs.ext4")
    image = _ext4_image(tmp_path / "fs.img")
    work = tmp_path / "work"
    work.mkdir()
    before = (loop_devices(), mounts())
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(image), str(work)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("ready"), line
    assert str(work) in mounts()
    proc.send_signal(signum)
    assert proc.wait(timeout=30) == 128 + signum
    assert (loop_devices(), mounts()) == before
    assert list(work.iterdir()) == []
