"""The subcommands. Each is small: parse its arguments, call the module that does the work."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from imagebuilder.catalogue import load_catalogue
from imagebuilder.cli import Command
from imagebuilder.context import Context
from imagebuilder.recipe import load_recipe, summary
from imagebuilder.status import add_arguments as status_arguments
from imagebuilder.status import show_status


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
    from imagebuilder.decompress import decompress_to_cache
    from imagebuilder.errors import ImageBuilderError
    from imagebuilder.fetch import fetch_base, fetch_url

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


def build(ctx: Context, args: argparse.Namespace) -> int:
    from imagebuilder.build import build as build_images

    build_images(ctx, load_recipe(args.recipe))
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
    from imagebuilder.flash import FlashOptions
    from imagebuilder.flash import flash as run_flash

    return run_flash(ctx, FlashOptions(
        image=args.image, device=args.device, recipe=args.recipe, force=args.force, yes=args.yes,
        to_file=args.to_file, hostname=args.hostname, use_bmap=args.use_bmap,
    ))


def _imager_repo_arguments(parser: argparse.ArgumentParser) -> None:
    _recipe_argument(parser)
    parser.add_argument("--base-url", metavar="URL",
                        help="where the images will be served; default: URLs relative to os_list.json")


def imager_repo(ctx: Context, args: argparse.Namespace) -> int:
    from imagebuilder.imagerepo import write_os_list

    recipe = load_recipe(args.recipe)
    print(write_os_list(recipe.output_dir, recipe, args.base_url))
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
            needs_root=lambda args: True),
]
