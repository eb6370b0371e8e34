"""Bench: `imagebuilder flash` with a bmap against a plain full copy, onto the same loop-device card.

    .venv/bin/python -m tests.bench_flash [IMAGE]

Without IMAGE it makes a 1 GiB sparse image with about 30% data and its bmap; with one (e.g. a worker
image the build or the test suite made, with its .bmap beside it) it flashes that. Both runs write,
flush and verify the card; the ratio is full copy time / bmap time. Needs root (a loop device).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

from imagebuilder.core.context import Context
from imagebuilder.core.log import setup_logging
from imagebuilder.core.resources import loop_device, temporary_directory
from imagebuilder.core.run import is_root, run
from imagebuilder.disk.imagefile import find_bmap
from imagebuilder.flash.card import FlashOptions, flash

MiB = 1 << 20
SIZE = 1024 * MiB
DATA_FRACTION = 0.30


def make_image(path: Path) -> None:
    """A sparse image whose data is spread like a filesystem's: 1 MiB extents, ~30% of the blocks."""
    extents = int(SIZE / MiB * DATA_FRACTION)
    stride = SIZE // extents
    with path.open("wb") as f:
        f.truncate(SIZE)
        for i in range(extents):
            f.seek(i * stride)
            f.write(os.urandom(MiB))
    run(["bmaptool", "create", "-o", f"{path}.bmap", path])


def timed_flash(image: Path, card: Path, use_bmap: bool) -> float:
    ctx = Context()
    start = time.monotonic()
    with ctx.stack:
        flash(ctx, FlashOptions(image=str(image), device=card, yes=True, force=True, use_bmap=use_bmap))
    return time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not is_root():
        print("bench_flash: needs root (a loop device stands in for the card)", file=sys.stderr)
        return 2
    setup_logging(verbose=False, debug=False)
    with contextlib.ExitStack() as stack:
        work = stack.enter_context(temporary_directory(prefix="bench-flash-", parent=Path("/var/tmp")))
        if args:
            image = Path(args[0]).resolve()
            if find_bmap(image) is None:
                print(f"bench_flash: {image} has no .bmap beside it", file=sys.stderr)
                return 2
        else:
            image = work / "worker.img"
            make_image(image)
        size = os.stat(image).st_size if image.suffix == ".img" else SIZE
        backing = work / "card.bin"
        with backing.open("wb") as f:
            f.truncate(max(size, SIZE))
        card = stack.enter_context(loop_device(backing))
        with_bmap = timed_flash(image, card, use_bmap=True)
        full = timed_flash(image, card, use_bmap=False)
    print(f"image {image.name}: bmap flash {with_bmap:.2f} s, full copy {full:.2f} s, "
          f"ratio {full / with_bmap:.2f}x (write, flush and verify each)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
