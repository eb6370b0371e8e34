"""SIGKILL at any point of a build: nothing stays mounted, attached or running, and the next build succeeds
and leaves no partial file or held lock.

One recipe, a fresh cache holding only the base, and a build killed in turn during apt in the chroot, while
a stage's overlay is written, while the outputs are written and while they are compressed; then a build
that finishes. After each kill the kernel must have taken everything away (the build's namespaces). Then,
with every stage cached, builds of an overlay edit killed every half second of their first ten, each
followed at once by the next, which must sweep what the killed one left.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from imagebuilder.core.resources import PARTIAL
from imagebuilder.sources.checksums import sha256_of
from tests.conftest import ROOT, descendants, loop_devices, require_programs
from tests.imagediff import differing_files, differing_ranges
from tests.images import arm64_base, seeded_cache, small_recipe
from tests.test_programs import build_tier_path

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


def start(recipe: Path, cache: Path, path: str | None = None) -> subprocess.Popen[str]:
    """A build, with PATH `path` when given."""
    env = {**os.environ, "PATH": path} if path is not None else None
    return subprocess.Popen([sys.executable, "-m", "imagebuilder", "--cache-dir", str(cache), "build", str(recipe)],
                            cwd=ROOT, stderr=subprocess.PIPE, text=True, env=env)


def kill_when(proc: subprocess.Popen[str], pattern: str, delay: float) -> str:
    """SIGKILL the build (the process the user started) `delay` seconds after it logs a line matching
    `pattern`; return its log."""
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
    return "".join(seen) + proc.stderr.read()


def wait_for_the_kernel(marker: str, what: str) -> None:
    """The kernel tears a killed build's namespaces down as their last processes exit: wait for that."""
    deadline = time.monotonic() + 15
    while left_behind(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left_behind(marker) == [], f"left behind after a SIGKILL {what}"


def partial_files(*folders: Path) -> set[Path]:
    return {p for folder in folders for p in folder.rglob("*") if PARTIAL in p.name}


def finish_build(recipe: Path, cache: Path, marker: str, path: str | None = None) -> str:
    """A build that runs to its end (with PATH `path`): it succeeds, and leaves no partial file, work tree,
    held lock or process."""
    env = {**os.environ, "PATH": path} if path is not None else None
    result = subprocess.run([sys.executable, "-m", "imagebuilder", "--cache-dir", str(cache), "build", str(recipe)],
                            cwd=ROOT, capture_output=True, text=True, check=False, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert left_behind(marker) == []
    out = Path(marker) / "out"
    assert partial_files(cache, out) == set()
    assert not (cache / "tmp").exists() or not any((cache / "tmp").iterdir())
    for lock in cache.rglob("*lock*"):
        with open(lock) as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises when a dead build still held it
    subprocess.run(["sha256sum", "--check", "--quiet", "SHA256SUMS"], cwd=out / "killtest", check=True)
    return result.stderr


@pytest.fixture(scope="module")
def killed_at_every_stage(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """Builds killed at each named step on a cache holding only the base, then one that finishes, all with
    nothing on PATH but the build tier's programs (test_programs.build_tier_path): the cache then holds
    every stage. Returns the recipe, the cache and the logs of the builds. The images it made stay beside
    the recipe as first-<role>.img (links: later builds replace the outputs, not these files)."""
    require_programs("zstd")
    arm64_base()
    tmp_path = tmp_path_factory.mktemp("kill")
    cache = tmp_path / "cache"
    seeded_cache(cache)
    (tmp_path / "extra" / "root" / "etc").mkdir(parents=True)
    change_overlay(tmp_path, "first")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(small_recipe("killtest", tmp_path / "out", extra="overlays: [extra]\n", reproducible=True))
    tier = build_tier_path(tmp_path / "tier")
    logs = []
    for what, line, delay in KILL_POINTS:
        proc = start(recipe, cache, tier)
        logs.append(kill_when(proc, line, delay))
        wait_for_the_kernel(str(tmp_path), f"while {what}")
    finished = finish_build(recipe, cache, str(tmp_path), tier)
    for role in ("master", "worker"):
        os.link(tmp_path / "out" / "killtest" / f"{role}.img", tmp_path / f"first-{role}.img")
    return recipe, cache, "".join(logs) + finished


def change_overlay(folder: Path, text: str) -> None:
    """A file of the recipe's own overlay: a new text makes the next build redo the files stages only."""
    (folder / "extra" / "root" / "etc" / "killtest-marker").write_text(text + "\n")


@pytest.mark.integration
def test_sigkill_at_every_stage_leaves_nothing_and_the_next_build_succeeds(
        killed_at_every_stage: tuple[Path, Path, str]) -> None:
    log = killed_at_every_stage[2]
    assert "left by a build that did not finish" in log  # the partial files were swept


@pytest.mark.integration
def test_the_build_tier_is_enough_for_a_whole_build(killed_at_every_stage: tuple[Path, Path, str]) -> None:
    """Every stage was made, by the killed builds or the finishing one, under the build tier's PATH."""
    log = killed_at_every_stage[2]
    for stage in ("common", "master-packages", "master", "worker-packages", "worker"):
        assert re.search(rf"^\s*✓ stage {stage} \(", log, re.M), f"no build made {stage}"


@pytest.mark.integration
def test_a_second_build_from_the_base_gives_the_same_images(killed_at_every_stage: tuple[Path, Path, str],
                                                             tmp_path: Path) -> None:
    """Issue 28: the same reproducible recipe, base and cluster state, built again minutes later on a cache
    holding only the base, gives bit-identical master.img and worker.img (the first build's stages were made
    by different processes, some of them killed). When they differ, the files that do are the message."""
    recipe = killed_at_every_stage[0]
    folder = recipe.parent
    change_overlay(folder, "first")  # as the fixture's builds had it
    cache = tmp_path / "cache"
    seeded_cache(cache)
    again = folder / "again.yaml"  # beside the first: its overlay folder is the same
    again.write_text(small_recipe("killtest", tmp_path / "out", extra="overlays: [extra]\n", reproducible=True))
    result = subprocess.run([sys.executable, "-m", "imagebuilder", "--cache-dir", str(cache), "build", str(again)],
                            cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    report = []
    for role in ("master", "worker"):
        first, second = folder / f"first-{role}.img", tmp_path / "out" / "killtest" / f"{role}.img"
        if sha256_of(first) != sha256_of(second):
            report += [f"{role}.img differs:", *differing_files(first, second, tmp_path / f"diff-{role}"),
                       *differing_ranges(first, second)]
    assert report == [], "\n".join(report)
    assert left_behind(str(tmp_path)) == []


class Lines:
    """A running build's log, read on a thread of its own, each line with the moment it came."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.seen: list[tuple[float, str]] = []
        self.reader = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.reader.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self.seen.append((time.monotonic(), line.rstrip()))

    def before(self, moment: float, pattern: str) -> bool:
        return any(t < moment and re.search(pattern, line) for t, line in list(self.seen))


# A build killed while its files stages are being made may hold its lock a little longer, while the kernel
# unmounts its file systems: the next build, started at once, must still sweep its partial files. Every
# half second of the first ten, each kill followed at once by the next build.
SAMPLES = [0.5 * i for i in range(1, 21)]
SWEPT_LINE = r"^‣ build killtest "  # logged after the first sweep


@pytest.mark.integration
def test_sigkill_in_the_first_seconds_is_swept_by_the_next_build(
        killed_at_every_stage: tuple[Path, Path, str]) -> None:
    recipe, cache, _ = killed_at_every_stage
    folder = recipe.parent
    marker, out = str(folder), folder / "out"
    left_by_previous: set[Path] = set()
    swept_checks = 0
    for n, delay in enumerate(SAMPLES):
        change_overlay(folder, f"sample {n}")
        proc = subprocess.Popen([sys.executable, "-m", "imagebuilder", "--cache-dir", str(cache), "build",
                                 str(recipe)], cwd=ROOT, stderr=subprocess.PIPE, text=True)
        lines = Lines(proc)
        time.sleep(delay)
        killed_at = time.monotonic()
        proc.kill()
        proc.wait()
        lines.reader.join(5)
        wait_for_the_kernel(marker, f"{delay} s into a build")
        now = partial_files(cache, out)
        if lines.before(killed_at, SWEPT_LINE):
            assert not now & left_by_previous, (
                f"a build killed {delay} s in had swept, but the partial files of the build killed before it "
                f"are still there: {sorted(p.name for p in now & left_by_previous)}")
            swept_checks += 1
        left_by_previous = now
    assert swept_checks >= len(SAMPLES) // 2, "too few builds reached their first sweep to prove anything"
    # A writer that dies while the next build runs (its lock is still held when that build starts): the
    # build takes its partial file when it ends.
    dying = cache / "stages" / f".worker-dying.img{PARTIAL}0000"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(dying)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    change_overlay(folder, "last")
    proc = subprocess.Popen([sys.executable, "-m", "imagebuilder", "--cache-dir", str(cache), "build", str(recipe)],
                            cwd=ROOT, stderr=subprocess.PIPE, text=True)
    lines = Lines(proc)
    deadline = time.monotonic() + 60
    while not lines.before(time.monotonic(), SWEPT_LINE) and time.monotonic() < deadline:
        time.sleep(0.1)
    holder.kill()
    holder.wait()
    assert proc.wait(timeout=900) == 0, "\n".join(line for _, line in lines.seen[-30:])
    lines.reader.join(5)
    assert not dying.exists(), "the build did not sweep at its end"
    assert any(f"removed {dying}" in line for _, line in lines.seen)
    assert left_behind(marker) == [] and partial_files(cache, out) == set()


HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(600)
"""


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
