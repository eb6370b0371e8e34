"""Bench: `imagebuilder build` cold, warm, after an overlay edit and after adding a package, in one run.

    .venv/bin/python -m tests.bench_build [--keep]

"Cold" means nothing cached but the base: the builds use a fresh --cache-dir into which the cached base
images of the machine's cache (~/.cache/imagebuilder/bases) are hard-linked (or reflinked), with no stages,
no compressed copies and an empty .deb cache. Each build is the real command in its own process, so the
times include start-up. Ratios are against the cold build of the same run. The builds run a copy of the
code and the built-in overlays taken when the bench starts, so edits made meanwhile cannot turn a warm
rebuild into a cold one. Needs root and a cached arm64 bootstrap base (the integration tests make one).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from imagebuilder.core.context import default_cache_dir
from imagebuilder.core.run import is_root

ROOT = Path(__file__).resolve().parent.parent
GOALS = {"warm": "< 2 s and >= 10x faster than cold", "overlay": "< 30 s"}

RECIPE = """\
cluster: {{name: bench}}
base: {{bootstrap: {{suite: bookworm}}}}
# Benchmarks reach nothing outside this machine: no k3s release download.
k3s: {{assets: none}}
workers:
  - {{hostname: node1, mac: "b8:27:eb:00:00:01"}}
  - {{hostname: node2, mac: "b8:27:eb:00:00:02"}}
packages: {{worker: [{packages}]}}
overlays: [bench-overlay]
output: {{dir: {out}, compress: {compress}, bmap: true}}
"""


@dataclass
class Run:
    name: str
    seconds: float
    steps: dict[str, float]


def link_bases(source: Path, cache: Path) -> int:
    """Give the fresh cache the machine's base images without copying gigabytes."""
    bases = cache / "bases"
    bases.mkdir(parents=True)
    count = 0
    for path in sorted(source.glob("*")):
        if path.suffix not in (".img", ".json"):
            continue
        try:
            os.link(path, bases / path.name)
        except OSError:  # another filesystem: a reflink (or a sparse copy where there is none)
            subprocess.run(["cp", "--reflink=auto", "--sparse=always", path, bases / path.name], check=True)
        count += path.suffix == ".img"
    return count


def write_recipe(work: Path, packages: list[str], compress: str = "zstd") -> Path:
    path = work / "recipe.yaml"
    path.write_text(RECIPE.format(packages=", ".join(packages), out=work / "out", compress=compress))
    return path


def write_overlay(work: Path, text: str) -> None:
    etc = work / "bench-overlay" / "root" / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "bench-note.j2").write_text("{{ recipe.cluster.name }} {{ role }} " + text + "\n")


# "‣ name" / "✓ name (1.2s)" lines of log.step, at any depth.
STEP_DONE = re.compile(r"^(\s*)✓ (.+) \((\d+\.\d)s\)$")


def snapshot_source(source: Path, work: Path) -> Path:
    """A frozen copy of the builder (code and built-in overlays) for every build of the run."""
    src = work / "src"
    for part in ("imagebuilder", "overlays"):
        shutil.copytree(source / part, src / part, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    return src


def timed_build(name: str, cache: Path, recipe: Path, log: Path, src: Path) -> Run:
    # Each build in a mount namespace of its own: a process that another job on the machine starts in a
    # new namespace meanwhile (ip netns exec, a test's qemu) would otherwise hold a copy of the stage's
    # mounts, keep its filesystem alive after our umount, and fail the stage's fsck.
    argv = ["unshare", "--mount", "--propagation", "private",
            sys.executable, "-m", "imagebuilder", "--cache-dir", str(cache), "build", str(recipe)]
    start = time.monotonic()
    proc = subprocess.run(argv, cwd=src, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - start
    with log.open("a") as f:
        f.write(f"===== {name}: {' '.join(argv)}\n{proc.stderr}\n")
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.splitlines()[-15:])
        raise SystemExit(f"bench_build: the {name} build failed (exit {proc.returncode}):\n{tail}\nlog: {log}")
    steps: dict[str, float] = {}
    for line in proc.stderr.splitlines():
        if (m := STEP_DONE.match(line)) and len(m.group(1)) <= 4:
            steps[m.group(2)] = float(m.group(3))
    return Run(name, seconds, steps)


def print_table(runs: list[Run], cold: Run) -> None:
    print(f"\n{'build':44} {'seconds':>8} {'ratio to cold':>14}")
    for r in runs:
        print(f"{r.name:44} {r.seconds:8.1f} {r.seconds / cold.seconds:14.3f}")
    warm = next(r for r in runs if r.name.startswith("warm"))
    overlay = next(r for r in runs if r.name.startswith("overlay"))
    print(f"\ngoals: no-op {warm.seconds:.1f} s (< 2 s: {'met' if warm.seconds < 2 else 'MISSED'}); "
          f"warm {cold.seconds / warm.seconds:.0f}x faster than cold (>= 10x: "
          f"{'met' if cold.seconds / warm.seconds >= 10 else 'MISSED'}); overlay change {overlay.seconds:.1f} s "
          f"(< 30 s: {'met' if overlay.seconds < 30 else 'MISSED'})")
    print("\nslowest steps per build:")
    for r in runs:
        top = sorted(r.steps.items(), key=lambda kv: -kv[1])[:4]
        print(f"  {r.name}: " + ", ".join(f"{k} {v:.1f}s" for k, v in top if not k.startswith("build ")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", type=Path, default=default_cache_dir() / "bases",
                        help="where the cached base images are (default: the machine's cache)")
    parser.add_argument("--source", type=Path, default=ROOT, help="the imagebuilder tree to bench")
    parser.add_argument("--no-xz", action="store_true", help="skip the xz emit (minutes on 2 cores)")
    parser.add_argument("--keep", action="store_true", help="keep the bench's cache and outputs")
    args = parser.parse_args(argv)
    if not is_root():
        print("bench_build: needs root (loop devices, mounts, chroot)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="bench-build-", dir="/var/tmp"))
    try:
        cache = work / "cache"
        if link_bases(args.bases, cache) == 0:
            print(f"bench_build: no base image in {args.bases}: run the integration tests first", file=sys.stderr)
            return 2
        src = snapshot_source(args.source.resolve(), work)
        log = work / "build.log"
        print(f"bench_build: {os.cpu_count()} cores; logs in {log}", flush=True)
        write_overlay(work, "first")
        recipe = write_recipe(work, ["hello"])
        runs = [timed_build("cold (nothing cached but the base)", cache, recipe, log, src)]
        runs.append(timed_build("warm rebuild (no change)", cache, recipe, log, src))
        write_overlay(work, "second")
        runs.append(timed_build("overlay file changed", cache, recipe, log, src))
        recipe = write_recipe(work, ["hello", "sl"])
        runs.append(timed_build("one package added", cache, recipe, log, src))
        if not args.no_xz:
            recipe = write_recipe(work, ["hello", "sl"], compress="xz")
            runs.append(timed_build("xz emit of the same images (xz -T0 -6)", cache, recipe, log, src))
        print_table(runs, runs[0])
        out = work / "out" / "bench"
        sizes = ", ".join(f"{p.name} {p.stat().st_size / 2**20:.0f} MiB ({p.stat().st_blocks * 512 / 2**20:.0f} "
                          "MiB allocated)" for p in sorted(out.glob("*.img")))
        print(f"images: {sizes}")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            subprocess.run(["rm", "-rf", "--one-file-system", "--", work], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
