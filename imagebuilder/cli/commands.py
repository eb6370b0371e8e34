"""The subcommands. Each is small: parse its arguments, call the module that does the work."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from imagebuilder.cli.main import Command
from imagebuilder.core.context import Context
from imagebuilder.recipe.catalogue import load_catalogue
from imagebuilder.recipe.model import load_recipe, summary
from imagebuilder.status.table import add_arguments as status_arguments
from imagebuilder.status.table import show_status


def _recipe_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", type=Path, metavar="RECIPE", help="the cluster recipe (YAML)")


def validate(ctx: Context, args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe)
    print(f"{args.recipe}: ok: {summary(recipe)}")
    return 0


def images(ctx: Context, args: argparse.Namespace) -> int:
    for name, entry in load_catalogue().items():
        print(f"{name:24} {', '.join(entry.arches):12} {entry.description}")
    return 0


def _fetch_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", type=Path, nargs="?", metavar="RECIPE", help="fetch the recipe's base image")
    parser.add_argument("--url", help="fetch this image instead (http(s)://, file:// or a path)")
    digest = parser.add_mutually_exclusive_group()
    digest.add_argument("--sha256", metavar="HEX", help="the image's sha256 (with --url)")
    digest.add_argument("--checksum-url", metavar="URL", help="a SHA256SUMS listing holding it (with --url)")
    parser.add_argument("--mirror", metavar="URL", help="download from this host instead (also IMAGEBUILDER_MIRROR)")
    parser.add_argument("--offline", action="store_true", help="use the cache only; fail if the image is not there")
    parser.add_argument("--refresh", action="store_true",
                        help="ask the publisher for the current checksum again instead of trusting the cache")
    parser.add_argument("--raw", action="store_true", help="also decompress; print the raw image's path")


def fetch(ctx: Context, args: argparse.Namespace) -> int:
    from imagebuilder.core.errors import ImageBuilderError
    from imagebuilder.sources.decompress import decompress_to_cache
    from imagebuilder.sources.fetch import fetch_base, fetch_url

    if (args.recipe is None) == (args.url is None):
        raise ImageBuilderError("fetch: give a RECIPE or --url", "imagebuilder fetch --url URL --sha256 HEX")
    if args.url is not None:
        path = fetch_url(ctx, args.url, sha256=args.sha256, checksum_url=args.checksum_url, mirror=args.mirror,
                         offline=args.offline, refresh=args.refresh)
    else:
        recipe = load_recipe(args.recipe)
        if args.mirror:
            recipe = dataclasses.replace(recipe, base=dataclasses.replace(recipe.base, mirror=args.mirror))
        path = fetch_base(ctx, recipe, offline=args.offline, refresh=args.refresh)
    print(decompress_to_cache(ctx, path).path if args.raw else path)
    return 0


def _build_arguments(parser: argparse.ArgumentParser) -> None:
    _recipe_argument(parser)
    parser.add_argument("--per-node", action="store_true",
                        help="also write <hostname>.img per known worker, each with its hostname seed")
    parser.add_argument("--backend", choices=("loop", "guestfs"), default=None,
                        help="loop: mount and chroot, as root; guestfs: libguestfs, no root, packages installed "
                             "at first boot (default: loop as root, guestfs otherwise)")


def build(ctx: Context, args: argparse.Namespace) -> int:
    from imagebuilder.build.execute import build as build_images

    build_images(ctx, load_recipe(args.recipe), per_node=args.per_node, backend=args.backend)
    return 0


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


def flash(ctx: Context, args: argparse.Namespace) -> int:
    from imagebuilder.flash.card import FlashOptions
    from imagebuilder.flash.card import flash as run_flash

    return run_flash(ctx, FlashOptions(
        image=args.image, device=args.device, recipe=args.recipe, force=args.force, yes=args.yes,
        to_file=args.to_file, hostname=args.hostname, use_bmap=args.use_bmap,
    ))


def _imager_repo_arguments(parser: argparse.ArgumentParser) -> None:
    _recipe_argument(parser)
    parser.add_argument("--base-url", metavar="URL",
                        help="where the images will be served; default: URLs relative to os_list.json")


def imager_repo(ctx: Context, args: argparse.Namespace) -> int:
    from imagebuilder.outputs.imager import write_os_list

    recipe = load_recipe(args.recipe)
    print(write_os_list(recipe.output_dir, recipe, args.base_url))
    return 0


def _boot_test_arguments(parser: argparse.ArgumentParser) -> None:
    _recipe_argument(parser)
    parser.add_argument("--workers", type=int, metavar="N", help="boot the first N workers of the table (default: all)")
    parser.add_argument("--unknown", type=int, default=0, metavar="N", help="add N workers whose MACs are not in it")
    parser.add_argument("--kernel", type=Path, help="boot this kernel instead of the image's own vmlinuz-*")
    parser.add_argument("--initrd", type=Path, help="with it, this initrd")
    parser.add_argument("--timeout", type=float, default=900, metavar="SECONDS", help="for the whole test (900)")
    parser.add_argument("--ssh-key", type=Path, metavar="FILE",
                        help="private key of users[0] (default: the one in ~/.ssh that the recipe lists)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the report as JSON")
    parser.add_argument("--logs", type=Path, metavar="DIR", help="keep each guest's serial console log here")


def boot_test(ctx: Context, args: argparse.Namespace) -> int:
    from imagebuilder.boottest.boot import BootTestFailed
    from imagebuilder.boottest.boot import boot_test as run_boot_test
    from imagebuilder.boottest.plan import BootOptions
    from imagebuilder.boottest.report import format_report, write_json

    options = BootOptions(workers=args.workers, unknown=args.unknown, kernel=args.kernel, initrd=args.initrd,
                          timeout=args.timeout, ssh_key=args.ssh_key, logs=args.logs)
    report = run_boot_test(ctx, load_recipe(args.recipe), options)
    print(format_report(report))
    if args.json is not None:
        write_json(report, args.json)
    if not report.ok:
        raise BootTestFailed(report, args.logs)
    return 0


COMMANDS = [
    Command("validate", "check a recipe and print a one-line summary", _recipe_argument, validate),
    Command("images", "list the built-in catalogue of base images", lambda p: None, images),
    Command("status", "show the cluster's nodes from the master's dashboard or the beacons on the LAN",
            status_arguments, show_status),
    Command("flash", "write an image onto an SD card, only its mapped blocks, and verify it",
            _flash_arguments, flash),
    Command("imager-repo", "write os_list.json, a Raspberry Pi Imager repository of the built images",
            _imager_repo_arguments, imager_repo),
    Command("fetch", "download, verify and cache a base image; print its path", _fetch_arguments, fetch),
    Command("build", "build the master and worker images of a recipe", _build_arguments, build,
            needs_root=lambda args: args.backend == "loop"),
    Command("boot-test", "boot the built images under qemu on a private LAN and check the cluster comes alive",
            _boot_test_arguments, boot_test, needs_root=lambda args: True),
]
