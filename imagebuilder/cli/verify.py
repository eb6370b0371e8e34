"""The verify command: what the firmware and the early boot need, checked on an image file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from imagebuilder.boards.models import BOARDS
from imagebuilder.boards.verify import verify_image
from imagebuilder.cli.command import Command
from imagebuilder.core.context import Context
from imagebuilder.core.errors import ChecksFailed, ImageBuilderError
from imagebuilder.netboot.tree import served_at, verify_netboot_tree


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", type=Path, metavar="IMAGE",
                        help="a raw image (.img), e.g. out/picluster/worker.img; or a netboot tree (a folder, e.g. "
                             "/srv/netboot on the master), read as each board's bootloader reads it over TFTP")
    parser.add_argument("--board", action="append", choices=sorted(BOARDS), metavar="BOARD",
                        help=f"check only this board (again for more): {', '.join(BOARDS)}; default: every board "
                             "the image's architecture runs")
    parser.add_argument("--json", action="store_true", help="print the verdict as JSON")


def verify(ctx: Context, args: argparse.Namespace) -> int:
    image: Path = args.image
    if image.is_dir():
        server, served = served_at(image)
        verdict = verify_netboot_tree(image, server, args.board, served=served or str(image))
    elif not image.is_file() or image.name.endswith((".xz", ".zst", ".gz")):
        raise ImageBuilderError(f"{image}: not a raw image file", "give the .img (verify reads it in place)")
    else:
        verdict = verify_image(image, args.board)
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
