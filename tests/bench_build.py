"""Bench: `imagebuilder build` against the floor of its work on this machine, in one run.

    .venv/bin/python -m tests.bench_build [--keep] [--base-cached] [--no-floors] [--no-xz] [--only xz]

Builds, each the real command in its own process against a fresh cache (times include start-up):
  cold         from nothing: the base bootstrapped, every stage made (--base-cached: the machine's cached
               base images are linked in, and the cold figures have no floor to compare with)
  warm         the same recipe again, no change
  overlay      one file of a recipe overlay changed (three times: the fastest counts)
  package      one package added to the workers
  5 / 250      the table with 5, then 250 workers, alternated, three times each (both remake the files
               stages and the outputs; the fastest of each counts: single builds differ by more than 5%)
  per-node     `build --per-node` with 5, 50 and 250 workers, onto btrfs (reflinks) and onto the folder
               the bench runs in (here ext4: full copies, or the refusal when the disk cannot hold them)
  xz           the same images emitted as xz, against xz -T0 of each image alone (the roles' compressions
               take turns, each with every core; --only xz: the cold build with the bases cached, then this)
Floors, in the same run: `../shared/tools/floors.sh` (the base, a role's packages, assembling and
compressing an image, with plain Debian tools) for the cold build; for an overlay edit, the bench's own
equivalent on the images just built (a sparse copy of each, one file written into its ext4 with debugfs,
zstd -T0 of each). Compression's use of the cores: zstd and xz with one thread against all, on worker.img.
Every figure is printed with its goal. Needs root.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from imagebuilder.core.context import default_cache_dir
from imagebuilder.core.run import is_root
from imagebuilder.disk.partitions import boot_and_root
from imagebuilder.outputs.compress import COMPRESSORS

ROOT = Path(__file__).resolve().parent.parent
FLOORS = ROOT.parent / "shared" / "tools" / "floors.sh"
MIB = 2**20

RECIPE = """\
cluster: {{name: bench}}
base: {{bootstrap: {{suite: bookworm}}}}
# Benchmarks reach nothing outside this machine: no k3s release download.
k3s: {{assets: none}}
workers:
{workers}
packages: {{worker: [{packages}]}}
overlays: [bench-overlay]
output: {{dir: {out}, compress: {compress}, bmap: true}}
"""


@dataclass
class Run:
    name: str
    seconds: float
    steps: dict[str, float] = field(default_factory=dict)
    stderr: str = ""


@dataclass
class Goal:
    what: str
    figure: str
    goal: str
    met: bool | None  # None: not measured in this run


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


def workers(count: int) -> str:
    return "\n".join(f'  - {{hostname: node{i}, mac: "b8:27:eb:00:{i // 256:02x}:{i % 256:02x}"}}'
                     for i in range(1, count + 1))


def write_recipe(work: Path, packages: list[str], *, compress: str = "zstd", count: int = 2,
                 out: Path | None = None) -> Path:
    path = work / "recipe.yaml"
    path.write_text(RECIPE.format(workers=workers(count), packages=", ".join(packages),
                                  out=out or work / "out", compress=compress))
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


def timed_build(name: str, cache: Path, recipe: Path, log: Path, src: Path, *extra: str,
                expect: int = 0) -> Run:
    # Each build in a mount namespace of its own: a process that another job on the machine starts in a
    # new namespace meanwhile (ip netns exec, a test's qemu) would otherwise hold a copy of the stage's
    # mounts, keep its filesystem alive after our umount, and fail the stage's fsck.
    argv = ["unshare", "--mount", "--propagation", "private",
            sys.executable, "-m", "imagebuilder", "--cache-dir", str(cache), "build", *extra, str(recipe)]
    print(f"bench_build: {name} ...", flush=True)
    # Every build starts with nothing of the last one's writes still queued for the disk: otherwise each
    # fsync of its outputs waits on the gigabytes the previous build left in the page cache.
    os.sync()
    start = time.monotonic()
    proc = subprocess.run(argv, cwd=src, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - start
    with log.open("a") as f:
        f.write(f"===== {name}: {' '.join(argv)}\n{proc.stderr}\n")
    if proc.returncode != expect:
        tail = "\n".join(proc.stderr.splitlines()[-15:])
        raise SystemExit(f"bench_build: the {name} build exited {proc.returncode}, not {expect}:\n{tail}\nlog: {log}")
    steps: dict[str, float] = {}
    for line in proc.stderr.splitlines():
        if m := STEP_DONE.match(line):
            steps[m.group(2)] = steps.get(m.group(2), 0.0) + float(m.group(3))
    return Run(name, seconds, steps, proc.stderr)


def compress_seconds(run: Run) -> float:
    return sum(v for k, v in run.steps.items() if k.startswith("compress "))


def timed(argv: list[str | Path], stdout: object = subprocess.DEVNULL) -> float:
    start = time.monotonic()
    subprocess.run(argv, check=True, stdout=stdout, stderr=subprocess.PIPE)  # type: ignore[call-overload]
    return time.monotonic() - start


def overlay_floor(out: Path, scratch: Path) -> dict[str, float]:
    """The least an overlay edit can cost on these images: per image, a sparse copy, one file written into
    its ext4 (debugfs -w, no mount) and zstd -T0 of the result (floors.sh steps e.1, e.3, d.2)."""
    floor = {"copy": 0.0, "write": 0.0, "zstd": 0.0}
    note = scratch / "note"
    note.write_text("overlay floor\n")
    for role in ("master", "worker"):
        copy = scratch / f"{role}.img"
        timed(["cat", out / f"{role}.img"])  # in the page cache, as floors.sh's image is
        subprocess.run(["sync"], check=True)
        floor["copy"] += timed(["cp", "--sparse=always", out / f"{role}.img", copy])
        floor["copy"] += timed(["sync"])
        _, root = boot_and_root(copy)
        floor["write"] += timed(["debugfs", "-w", "-R", f"write {note} /etc/bench-floor",
                                 f"{copy}?offset={root.start}"])
        subprocess.run(["sync"], check=True)
        # Its holes read once first (untimed): zstd reading a fresh file's holes pays for filling the page
        # cache with zero pages, which the build does not (it feeds zstd through a pipe), so the floor is
        # zstd at its fastest.
        timed(["cat", copy])
        floor["zstd"] += timed(["zstd", "-q", "-T0", "-3", "-f", copy, "-o", f"{copy}.zst"])
        copy.unlink()
        Path(f"{copy}.zst").unlink()
    return floor


def compression_threads(image: Path, scratch: Path, formats: list[str]) -> dict[str, tuple[float, float, int]]:
    """Seconds with one thread and with all, and the size, of the build's own compress commands."""
    results = {}
    timed(["cat", image])  # in the page cache for both, as it is after a build
    for fmt in formats:
        argv = COMPRESSORS[fmt]
        one = [a if a != "-T0" else "-T1" for a in argv]
        times: dict[str, float] = {}
        for name, command in (("all", argv), ("one", one), ("all again", argv)):
            if name == "all again" and times["all"] > 30:  # xz: minutes, and steady
                times[name] = times["all"]
                continue
            times[name], size = timed_compress(command, image, scratch / f"threads.{fmt}")
        results[fmt] = (times["one"], min(times["all"], times["all again"]), size)
    return results


def timed_compress(argv: list[str], image: Path, target: Path) -> tuple[float, int]:
    """Seconds and output size of a compress command on image."""
    with open(target, "wb") as sink:
        seconds = timed([*argv, image], stdout=sink)
    size = target.stat().st_size
    target.unlink()
    return seconds, size


def compress_alone(image: Path, scratch: Path, fmt: str) -> float:
    """Seconds of the build's own compress command on image, alone on the machine, the image in the page
    cache (as it is after a build)."""
    timed(["cat", image])
    return timed_compress(COMPRESSORS[fmt], image, scratch / f"alone.{fmt}")[0]


def xz_part(cache: Path, work: Path, recipe: Path, log: Path, src: Path,
            worker_alone: float | None = None) -> tuple[Run, Goal]:
    """The images of the last build emitted as xz, against xz -T0 of each alone in this run (worker_alone:
    already measured): the build compresses them one after the other, each with every core, so both take
    no longer than the sum of each alone, though the roles are made side by side."""
    out = work / "out" / "bench"
    alone = {"master": compress_alone(out / "master.img", work, "xz"),
             "worker": worker_alone or compress_alone(out / "worker.img", work, "xz")}
    run = timed_build("xz emit of the same images (xz -T0 -6)", cache, recipe, log, src)
    total = sum(alone.values())
    return run, Goal("xz of both images (the build) / sum of each alone",
                     f"{run.seconds:.1f} / {alone['master']:.1f} + {alone['worker']:.1f} s = "
                     f"{run.seconds / total:.3f}x (its compress steps {compress_seconds(run):.1f} s)",
                     "<= 1.05x", run.seconds <= 1.05 * total)


def run_floors(script: Path, work: Path, log: Path) -> dict[str, float]:
    """floors.sh a-e in its own folder (cold .deb cache); its rows by label."""
    print(f"bench_build: floors ({script}), about 25 minutes ...", flush=True)
    proc = subprocess.run([script, work], capture_output=True, text=True, check=False,
                          env={**os.environ, "FLOORS_STEPS": "a b c d e"})
    with log.open("a") as f:
        f.write(f"===== floors: {script} {work}\n{proc.stdout}\n{proc.stderr}\n")
    if proc.returncode != 0:
        raise SystemExit(f"bench_build: floors.sh failed (exit {proc.returncode}); log: {log}")
    rows = {}
    for line in (work / "times.tsv").read_text().splitlines():
        label, seconds, *_ = line.split("\t")
        rows[label] = float(seconds)
    return rows


def floor_row(rows: dict[str, float], prefix: str) -> float:
    return next(v for k, v in rows.items() if k.startswith(prefix))


def btrfs_folder(work: Path, size_gib: int = 60) -> tuple[Path, Path]:
    backing = work / "btrfs.img"
    with open(backing, "wb") as f:
        f.truncate(size_gib * 2**30)
    subprocess.run(["mkfs.btrfs", "-q", backing], check=True)
    mount = work / "btrfs"
    mount.mkdir()
    subprocess.run(["mount", "-o", "loop", backing, mount], check=True)
    return mount, backing


def exclusive_bytes(paths: list[Path]) -> int:
    """What the files take on btrfs that no other file shares (btrfs filesystem du)."""
    text = subprocess.run(["btrfs", "filesystem", "du", "--raw", *paths], check=True, capture_output=True,
                          text=True).stdout
    return sum(int(line.split()[1]) for line in text.splitlines()[1:] if line.strip())


def per_node(name: str, cache: Path, work: Path, out: Path, count: int, log: Path, src: Path,
             expect: int = 0) -> dict[str, object]:
    write_overlay(work, f"per-node {count} {out}")
    recipe = write_recipe(work, ["hello", "sl"], count=count, out=out)
    run = timed_build(f"{name}: --per-node, {count} workers", cache, recipe, log, src, "--per-node", expect=expect)
    folder = out / "bench"
    nodes = sorted(folder.glob("node*.img"))
    result: dict[str, object] = {"count": count, "seconds": run.steps.get(f"write {count} per-node images"),
                                 "build": run.seconds, "nodes": len(nodes)}
    if expect != 0:
        result["refused"] = next((line for line in run.stderr.splitlines() if "per-node images take" in line), "")
    elif name == "btrfs":
        result["disk"] = exclusive_bytes(nodes)
    else:
        result["disk"] = sum(p.stat().st_blocks * 512 for p in nodes)
    for p in folder.glob("node*"):
        p.unlink()
    return result


def measure_xz_only(work: Path, cache: Path, src: Path, log: Path) -> Goal:
    """--only xz: the cold build (bases cached), then the same images emitted as xz against each alone."""
    write_overlay(work, "first")
    cold = timed_build("cold (base cached)", cache, write_recipe(work, ["hello"]), log, src)
    xz, goal = xz_part(cache, work, write_recipe(work, ["hello"], compress="xz"), log, src)
    print_runs([cold, xz])
    print_goals([goal])
    return goal


def print_runs(runs: list[Run]) -> None:
    """Each build's time, against the first (the cold build), and its slowest steps."""
    print(f"\n{'build':44} {'seconds':>8} {'ratio to cold':>14}   slowest steps")
    for r in runs:
        top = sorted(((k, v) for k, v in r.steps.items() if not k.startswith("build ")), key=lambda kv: -kv[1])
        print(f"{r.name:44} {r.seconds:8.1f} {r.seconds / runs[0].seconds:14.3f}   "
              + ", ".join(f"{k} {v:.1f}s" for k, v in top[:3]))


def print_goals(goals: list[Goal]) -> None:
    print(f"\n{'goal':58} {'measured':>34}  {'target':28} met")
    for g in goals:
        verdict = "-" if g.met is None else "yes" if g.met else "MISSED"
        print(f"{g.what:58} {g.figure:>34}  {g.goal:28} {verdict}")


@dataclass
class Measured:
    """Every figure of one bench run."""
    runs: list[Run]  # every timed build, in order: cold and warm first
    edits: list[Run]  # the overlay edits
    floor: dict[str, float]  # the bench's own floor of an overlay edit
    floors: dict[str, float]  # floors.sh's rows, when it ran
    tables: dict[int, list[Run]]  # by worker count: the alternated 5- and 250-worker builds
    nodes: list[dict[str, object]]  # --per-node onto btrfs
    local: list[dict[str, object]]  # --per-node onto the bench's own folder
    threads: dict[str, tuple[float, float, int]]  # by format: one thread, all, size
    worker_allocated: int  # bytes of worker.img that hold data
    xz_goal: Goal | None  # the build's xz of both images against each alone, unless --no-xz

    @property
    def cold(self) -> Run:
        return self.runs[0]

    @property
    def warm(self) -> Run:
        return self.runs[1]

    @property
    def overlay(self) -> Run:
        return min(self.edits, key=lambda r: r.seconds)


def measure_floors(args: argparse.Namespace, work: Path, log: Path) -> dict[str, float]:
    """floors.sh's rows, or nothing when it is skipped or absent."""
    if args.no_floors or args.base_cached:
        return {}
    if not args.floors.exists():
        print(f"bench_build: no {args.floors}: the cold build has no floor (--floors PATH)", flush=True)
        return {}
    floors = run_floors(args.floors.resolve(), work / "floors", log)
    subprocess.run(["rm", "-rf", "--one-file-system", "--", work / "floors"], check=False)
    return floors


def measure_per_node(cache: Path, work: Path, btrfs: Path, log: Path, src: Path,
                     worker_allocated: int) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """--per-node onto btrfs (5, 50, 250 workers), and onto the bench's own folder where the disk holds them."""
    nodes = [per_node("btrfs", cache, work, btrfs / "out", n, log, src) for n in (5, 50, 250)]
    local = [per_node("ext4", cache, work, work / "out-local", 5, log, src)]
    space = shutil.disk_usage(work).free
    for n in (50, 250):
        if worker_allocated * n < space * 0.9:
            local.append(per_node("ext4", cache, work, work / "out-local", n, log, src))
        else:
            local.append(per_node("ext4", cache, work, work / "out-local", n, log, src, expect=2))
    return nodes, local


def measure(args: argparse.Namespace, work: Path, cache: Path, src: Path, log: Path,
            stack: contextlib.ExitStack) -> Measured:
    """Every build of the bench, then the compression threads. The btrfs folder is unmounted by `stack`."""
    floors = measure_floors(args, work, log)
    write_overlay(work, "first")
    recipe = write_recipe(work, ["hello"])
    cold = timed_build("cold" + (" (base cached)" if args.base_cached else " (from nothing)"), cache, recipe,
                       log, src)
    runs = [cold, timed_build("warm rebuild (no change)", cache, recipe, log, src)]
    # Measured three times, the fastest counting: the first edits after a cold build share the disk with
    # what follows the gigabytes that build wrote and removed (writeback, ext4's online discard).
    edits = []
    for text in ("second", "third", "fourth"):
        write_overlay(work, text)
        edits.append(timed_build(f"overlay file changed ({text})", cache, recipe, log, src))
    runs += edits
    runs.append(timed_build("one package added", cache, write_recipe(work, ["hello", "sl"]), log, src))
    out = work / "out" / "bench"
    floor = overlay_floor(out, work)
    # Alternated, three times each, the fastest of each counting (both remake the files stages and the outputs).
    tables: dict[int, list[Run]] = {5: [], 250: []}
    for attempt in (1, 2, 3):
        for count in (5, 250):
            write_overlay(work, f"table {count} {attempt}")
            tables[count].append(timed_build(f"{count} workers ({attempt})", cache,
                                             write_recipe(work, ["hello", "sl"], count=count), log, src))
    runs += [*tables[5], *tables[250]]
    btrfs, _ = btrfs_folder(work)
    stack.callback(subprocess.run, ["umount", btrfs], check=False)
    worker_allocated = (out / "worker.img").stat().st_blocks * 512
    nodes, local = measure_per_node(cache, work, btrfs, log, src, worker_allocated)
    threads = compression_threads(out / "worker.img", work, ["zstd"] if args.no_xz else ["zstd", "xz"])
    xz_goal = None
    if not args.no_xz:
        write_overlay(work, "table 250 3")  # the images in out/bench, made by the last table build
        xz, xz_goal = xz_part(cache, work, write_recipe(work, ["hello", "sl"], count=250, compress="xz"),
                              log, src, worker_alone=threads["xz"][1])
        runs.append(xz)
    return Measured(runs, edits, floor, floors, tables, nodes, local, threads, worker_allocated, xz_goal)


def build_goals(m: Measured) -> list[Goal]:
    """The goals of the build's own speed: no-op rebuild, overlay edit, table size, cold build."""
    goals = [Goal("no-op rebuild", f"{m.warm.seconds:.1f} s", "< 2 s", m.warm.seconds < 2)]
    overlay, floor, floors, cold = m.overlay, m.floor, m.floors, m.cold
    # "The compression of the two images" is what zstd -T0 alone takes on them, measured in this run (the
    # floor's zstd): the build compresses one image beside the other's stage, so its own compress steps
    # overlap other work, and subtracting them would count that work twice.
    squeezed = overlay.seconds - floor["zstd"]
    slowest = max(m.edits, key=lambda r: r.seconds)
    goals.append(Goal("overlay edit, zstd, without its compression",
                      f"{squeezed:.1f} s (+ {floor['zstd']:.1f} s zstd alone; its compress steps "
                      f"{compress_seconds(overlay):.1f} s; slowest edit {slowest.seconds - floor['zstd']:.1f} s)",
                      "<= 10 s", squeezed <= 10))
    # The floor of an overlay edit, per image: a sparse copy and its writeback, one file written, zstd
    # -T0 (floors.sh e.1, e.1s, e.3, d.2); the bench's own measurement of the same only without floors.sh.
    if floors:
        floor_total = 2 * sum(floor_row(floors, row) for row in ("e.1 ", "e.1s", "e.3", "d.2"))
        source = "floors.sh"
    else:
        floor_total, source = sum(floor.values()), "own"
    goals.append(Goal(f"overlay edit / its floor ({source}: copy+write+zstd, 2 images)",
                      f"{overlay.seconds:.1f} / {floor_total:.1f} s = {overlay.seconds / floor_total:.2f}x "
                      f"(slowest edit {slowest.seconds / floor_total:.2f}x)",
                      "<= 2x", overlay.seconds <= 2 * floor_total))
    five, many = (min(m.tables[n], key=lambda r: r.seconds) for n in (5, 250))
    goals.append(Goal("250 workers / 5 workers", f"{many.seconds:.1f} / {five.seconds:.1f} s = "
                      f"{many.seconds / five.seconds:.3f}x", "<= 1.05x", many.seconds <= 1.05 * five.seconds))
    if floors:
        # What a cold build does, by plain tools: bootstrap the base, install the roles' packages (the
        # first install cold, the second warm), assemble and compress two images.
        cold_floor = (floor_row(floors, "a. base") + floor_row(floors, "b.1") + floor_row(floors, "b.2")
                      + floor_row(floors, "b.4") + 2 * floor_row(floors, "c. assemble total")
                      + 2 * floor_row(floors, "d.2"))
        goals.append(Goal("cold build from nothing / sum of floors", f"{cold.seconds:.0f} / {cold_floor:.0f} s"
                          f" = {cold.seconds / cold_floor:.2f}x", "<= 1.3x", cold.seconds <= 1.3 * cold_floor))
    else:
        goals.append(Goal("cold build from nothing / sum of floors", "not measured (see --no-floors, "
                          "--base-cached)", "<= 1.3x", None))
    return goals


def output_goals(m: Measured) -> list[Goal]:
    """The goals of what is written: --per-node images on btrfs and ext4, compression's use of the cores."""
    goals = []
    full = m.worker_allocated
    for result in m.nodes:
        count = int(result["count"])  # type: ignore[call-overload]
        per = int(result["disk"]) / count  # type: ignore[call-overload]
        seconds = float(result["seconds"] or 0) / count  # type: ignore[arg-type]
        goals.append(Goal(f"--per-node on btrfs, {count} nodes: per extra node",
                          f"{seconds:.2f} s, {per / 1024:.0f} KiB (full: {full / MIB:.0f} MiB)",
                          "what differs, not a copy", per < full / 50))
    for result in m.local:
        count = int(result["count"])  # type: ignore[call-overload]
        if "refused" in result:
            goals.append(Goal(f"--per-node on ext4, {count} nodes", "refused before writing: "
                              + str(result["refused"])[:60], "disk said up front", bool(result["refused"])))
        else:
            per = int(result["disk"]) / count  # type: ignore[call-overload]
            seconds = float(result["seconds"] or 0) / count  # type: ignore[arg-type]
            goals.append(Goal(f"--per-node on ext4 (no reflinks), {count} nodes: per node",
                              f"{seconds:.2f} s, {per / MIB:.0f} MiB", "full copies, said up front", None))
    for fmt, (one, every, size) in m.threads.items():
        goals.append(Goal(f"{fmt} on worker.img: 1 thread / all {os.cpu_count()} cores",
                          f"{one:.1f} / {every:.1f} s = {one / every:.2f}x ({size / MIB:.0f} MiB)",
                          "uses every core", one / every > 1.3))
    goals.append(m.xz_goal or Goal("xz of both images (the build) / sum of each alone", "not measured (--no-xz)",
                                   "<= 1.05x", None))
    return goals


def print_compression(m: Measured, image: Path) -> None:
    print("\ncompress options on worker.img "
          f"({image.stat().st_size / MIB:.0f} MiB raw, {m.worker_allocated / MIB:.0f} MiB data):")
    print(f"  none: 0 s, {m.worker_allocated / MIB:.0f} MiB on disk (sparse)")
    for fmt, (_, every, size) in m.threads.items():
        print(f"  {fmt}: {every:.1f} s on all cores, {size / MIB:.0f} MiB")
    print("\nfloors (s): " + json.dumps(m.floors or "not run") + "\noverlay floor (s): " + json.dumps(m.floor))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", type=Path, default=default_cache_dir() / "bases",
                        help="where the cached base images are (for --base-cached)")
    parser.add_argument("--base-cached", action="store_true",
                        help="link the machine's cached bases in: the cold build skips the bootstrap")
    parser.add_argument("--floors", type=Path, default=FLOORS, help="floors.sh (default: %(default)s)")
    parser.add_argument("--no-floors", action="store_true", help="skip floors.sh (about 25 minutes)")
    parser.add_argument("--source", type=Path, default=ROOT, help="the imagebuilder tree to bench")
    parser.add_argument("--no-xz", action="store_true", help="skip the xz runs (minutes on 2 cores)")
    parser.add_argument("--only", choices=["xz"],
                        help="the cold build (the bases cached, no floors), then only this part")
    parser.add_argument("--keep", action="store_true", help="keep the bench's cache and outputs")
    args = parser.parse_args(argv)
    if args.only:
        args.base_cached = args.no_floors = True
    if not is_root():
        print("bench_build: needs root (loop devices, mounts, chroot)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="bench-build-", dir="/var/tmp"))
    goals: list[Goal] = []
    try:
        cache = work / "cache"
        if args.base_cached and link_bases(args.bases, cache) == 0:
            print(f"bench_build: no base image in {args.bases}: run the integration tests first",
                  file=sys.stderr)
            return 2
        src = snapshot_source(args.source.resolve(), work)
        log = work / "build.log"
        print(f"bench_build: {os.cpu_count()} cores; logs in {log}", flush=True)
        if args.only == "xz":
            goals = [measure_xz_only(work, cache, src, log)]
            return 0 if goals[0].met else 1
        with contextlib.ExitStack() as stack:
            measured = measure(args, work, cache, src, log, stack)
            print_runs(measured.runs)
            goals = [*build_goals(measured), *output_goals(measured)]
            print_goals(goals)
            print_compression(measured, work / "out" / "bench" / "worker.img")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            subprocess.run(["rm", "-rf", "--one-file-system", "--", work], check=False)
    return 0 if all(g.met is not False for g in goals) else 1


if __name__ == "__main__":
    sys.exit(main())
