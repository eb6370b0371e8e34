"""The flash command: an image onto a card."""

from __future__ import annotations

import argparse
from pathlib import Path

from imagebuilder.cli.command import Command
from imagebuilder.core.context import Context
from imagebuilder.flash.card import FlashOptions
from imagebuilder.flash.card import flash as run_flash


def _flash_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", metavar="IMAGE",
                        help="a .img, .img.xz or .img.zst file, or master/worker with --recipe")
    parser.add_argument("device", type=Path, metavar="DEVICE", help="the SD card, e.g. /dev/sdb (see lsblk)")
    parser.add_argument("--recipe", type=Path, help="the recipe whose output folder holds IMAGE (a role name)")
    parser.add_argument("--yes", action="store_true", help="write without asking for confirmation")
    parser.add_argument("--force", action="store_true",
                        help="write a disk that does not say it is removable (never a system or mounted disk)")
    parser.add_argument("--to-file", action="store_true", help="allow DEVICE to be a regular file")
    parser.add_argument("--hostname", metavar="NAME",
                        help="worker image only: this card takes NAME whatever its MAC")
    parser.add_argument("--no-bmap", dest="use_bmap", action="store_false",
                        help="write every byte even when a .bmap is beside the image")
    parser.add_argument("--verify-key", type=Path, metavar="PUBLIC_KEY",
                        help="write only an image that SHA256SUMS.sig, signed with this OpenSSH key (e.g. "
                             "~/.ssh/id_ed25519.pub), vouches for; with --recipe, the default is the .pub beside its "
                             "output.sign_key")


def flash(ctx: Context, args: argparse.Namespace) -> int:
    return run_flash(ctx, FlashOptions(
        image=args.image, device=args.device, recipe=args.recipe, force=args.force, yes=args.yes,
        to_file=args.to_file, hostname=args.hostname, use_bmap=args.use_bmap, verify_key=args.verify_key,
    ))


COMMANDS = [
    Command("flash", "write an image onto an SD card, only its mapped blocks, and verify it",
            _flash_arguments, flash),
]
