"""The verify command: what the firmware and the early boot need, checked on an image file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from imagebuilder.boards.models import BOARDS
from imagebuilder.boards.verify import verify_image
from imagebuilder.cli.command import Command
from imagebuilder.core.access import access_denied
from imagebuilder.core.context import Context
from imagebuilder.core.errors import ChecksFailed, ImageBuilderError
from imagebuilder.disk.partitions import has_partition_table
from imagebuilder.netboot.tree import served_at, verify_netboot_tree


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", type=Path, metavar="IMAGE",
                        help="a raw image (.img), e.g. out/picluster/worker.img; or a netboot tree (a folder, e.g. "
                             "/srv/netboot on the master), read as each board's bootloader reads it over TFTP")
    parser.add_argument("--board", action="append", choices=sorted(BOARDS), metavar="BOARD",
                        help=f"check only this board (again for more): {', '.join(BOARDS)}; default: every board "
                             "the image's architecture runs")
    parser.add_argument("--json", action="store_true", help="print the verdict as JSON")


def check_raw_image(image: Path) -> None:
    """One line for what is not a disk image, before sfdisk says it in its own words."""
    if not image.exists():
        raise ImageBuilderError(f"{image}: no such file", "check the path: a build writes out/<cluster>/master.img "
                                "and worker.img")
    if not image.is_file() or image.name.endswith((".xz", ".zst", ".gz")):
        raise ImageBuilderError(f"{image}: not a raw image file", "give the .img (verify reads it in place)")
    if not has_partition_table(image):
        raise ImageBuilderError(f"{image}: not a disk image (no partition table)",
                                "give an SD-card image such as out/<cluster>/worker.img, or a netboot folder")


def verify(ctx: Context, args: argparse.Namespace) -> int:
    image: Path = args.image
    try:
        if image.is_dir():
            server, served = served_at(image)
            verdict = verify_netboot_tree(image, server, args.board, served=served or str(image))
        else:
            check_raw_image(image)
            verdict = verify_image(image, args.board)
    except PermissionError as e:
        raise access_denied(e.filename or image, f"run it as the owner: sudo imagebuilder verify {image}") from None
    if args.json:
        print(json.dumps({"image": str(image), "arch": verdict.arch, "ok": verdict.ok, "boots_on": verdict.good_boards,
                          "problems": verdict.general, "boards": verdict.boards, "notes": verdict.notes}, indent=1))
    else:
        print("\n".join(verdict.lines()))
    if not verdict.ok:
        raise ChecksFailed(f"{image}: verify found {len(verdict.general)} problem(s) for every board"
                           if verdict.general else f"{image}: no board would boot it")
    return 0


COMMANDS = [
    Command("verify", "check what the firmware and the early boot need on an image, per board", _arguments, verify),
]
