"""SIGKILL at any point of a build: nothing stays mounted, attached or running, and the next build succeeds
and leaves no partial file or held lock.

One recipe, a fresh cache holding only the base, and a build killed in turn during apt in the chroot, while
a stage's overlay is written, while the outputs are written and while they are compressed; then a build
that finishes. After each kill the kernel must have taken everything away (the build's namespaces).
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imagebuilder.core.resources import PARTIAL
from tests.conftest import ROOT, descendants, loop_devices, require_programs
from tests.images import arm64_base, small_recipe
from tests.test_diskfull import seeded_cache

# (what the build is doing, a pattern of the log line that starts it, seconds to wait after that line)
KILL_POINTS = [
    ("apt in the chroot", r"‣ install \d+ packages$", 4.0),
    ("writing a stage's overlay", r"‣ stage master$", 1.5),
    ("writing the outputs", r"‣ write outputs of master\.img to ", 0.2),
    ("compressing", r"‣ compress master\.img ", 0.5),
]


def processes_touching(marker: str) -> list[str]:
    """Processes whose command line, root or working directory mentions `marker` (ours: the test's folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            places = [os.readlink(entry / "root"), os.readlink(entry / "cwd")]
        except OSError:
            continue
        if marker in cmdline or any(marker in p for p in places):
            found.append(f"{entry.name}: {cmdline[:120]}")
    return found


def left_behind(marker: str) -> list[str]:
    """What of ours the kernel still holds: loop devices, mounts (in any namespace), processes."""
    mounts = [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if marker in line]
    loops = [line for line in loop_devices().splitlines() if marker in line]
    return loops + mounts + processes_touching(marker)


def start(recipe: Path, cache: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "imagebuilder", "--cache-dir", str(cache), "build", str(recipe)],
                            cwd=ROOT, stderr=subprocess.PIPE, text=True)


def kill_when(proc: subprocess.Popen[str], pattern: str, delay: float) -> None:
    """SIGKILL the build (the process the user started) `delay` seconds after it logs a line matching
    `pattern`."""
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if re.search(pattern, line.rstrip()):
            break
    else:
        raise AssertionError(f"the build ended before '{pattern}':\n{''.join(seen[-20:])}")
    time.sleep(delay)
    assert descendants(proc.pid), "the build runs in processes of its own namespaces"
    proc.kill()
    proc.wait()


@pytest.mark.integration
def test_sigkill_at_every_stage_leaves_nothing_and_the_next_build_succeeds(tmp_path: Path) -> None:
    require_programs("zstd")
    arm64_base()
    cache = tmp_path / "cache"
    seeded_cache(cache)
    out = tmp_path / "out"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(small_recipe("killtest", out))
    marker = str(tmp_path)
    for what, line, delay in KILL_POINTS:
        proc = start(recipe, cache)
        kill_when(proc, line, delay)
        deadline = time.monotonic() + 15
        while left_behind(marker) and time.monotonic() < deadline:
            time.sleep(0.2)  # the kernel tears the namespaces down as their last processes exit
        assert left_behind(marker) == [], f"left behind after a SIGKILL while {what}"
    result = subprocess.run([sys.executable, "-m", "imagebuilder", "--cache-dir", str(cache), "build", str(recipe)],
                            cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "left by a build that did not finish" in result.stderr  # the partial files were swept
    assert left_behind(marker) == []
    assert [p for p in (*cache.rglob("*"), *out.rglob("*")) if PARTIAL in p.name] == []
    assert not (cache / "tmp").exists() or not any((cache / "tmp").iterdir())
    for lock in cache.rglob("*lock*"):
        with open(lock) as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises when a dead build still held it
    subprocess.run(["sha256sum", "--check", "--quiet", "SHA256SUMS"], cwd=out / "killtest", check=True)


@pytest.mark.integration
def test_sighup_unwinds_like_sigterm(tmp_path: Path) -> None:
    """A closed ssh session: the build undoes what it made and says so."""
    arm64_base()
    cache = tmp_path / "cache"
    seeded_cache(cache)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(small_recipe("killtest", tmp_path / "out"))
    proc = start(recipe, cache)
    assert proc.stderr is not None
    for line in proc.stderr:
        if re.search(KILL_POINTS[0][1], line.rstrip()):
            break
    time.sleep(2)
    proc.send_signal(signal.SIGHUP)
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 128 + signal.SIGHUP, rest
    assert "interrupted by SIGHUP; everything acquired was undone" in rest
    assert left_behind(str(tmp_path)) == []
