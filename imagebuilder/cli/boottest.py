"""The boot-test command: the built cluster under qemu."""

from __future__ import annotations

import argparse
from pathlib import Path

from imagebuilder.boards.models import BOARDS
from imagebuilder.boottest.boot import BootTestFailed
from imagebuilder.boottest.boot import boot_test as run_boot_test
from imagebuilder.boottest.plan import BootOptions
from imagebuilder.boottest.report import format_report, write_json
from imagebuilder.cli.command import Command, add_recipe_argument
from imagebuilder.core.context import Context
from imagebuilder.recipe.load import load_recipe
from imagebuilder.status.readiness import images_carry_k3s


def _boot_test_arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_argument(parser)
    parser.add_argument("--workers", type=int, metavar="N", help="boot the first N workers of the table (default: all)")
    parser.add_argument("--unknown", type=int, default=0, metavar="N", help="add N workers whose MACs are not in it")
    parser.add_argument("--kernel", type=Path, help="boot this kernel instead of the image's own vmlinuz-*")
    parser.add_argument("--initrd", type=Path, help="with it, this initrd")
    parser.add_argument("--timeout", type=float, default=900, metavar="SECONDS", help="for the whole test (900)")
    parser.add_argument("--ssh-key", type=Path, metavar="FILE",
                        help="private key of users[0] (default: the one in ~/.ssh that the recipe lists)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the report as JSON")
    parser.add_argument("--logs", type=Path, metavar="DIR", help="keep each guest's serial console log here")
    models = [name for name, board in BOARDS.items() if board.qemu is not None]
    parser.add_argument("--board", choices=("virt", *models), default="virt",
                        help=f"virt: every node on qemu's virt machine (default); {', '.join(models)}: the first "
                             "worker on qemu's model of that Raspberry Pi, booted the way its firmware boots it")


def boot_test(ctx: Context, args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe)
    # The k3s tier (nodes Ready, a pod on each reached through the pod network and a NodePort) runs where the
    # build put the binary in the images, as its manifest says.
    options = BootOptions(workers=args.workers, unknown=args.unknown, kernel=args.kernel, initrd=args.initrd,
                          timeout=args.timeout, ssh_key=args.ssh_key, logs=args.logs,
                          board=None if args.board == "virt" else args.board, k3s_assets=images_carry_k3s(recipe))
    report = run_boot_test(ctx, recipe, options)
    print(format_report(report))
    if args.json is not None:
        write_json(report, args.json)
    if not report.ok:
        raise BootTestFailed(report, args.logs)
    return 0


COMMANDS = [
    Command("boot-test", "boot the built images under qemu on a private LAN and check the cluster comes alive",
            _boot_test_arguments, boot_test, needs_root=lambda args: True, isolate=lambda args: True),
]
