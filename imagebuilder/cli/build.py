"""Commands that make images: fetch a base, build, (re)write the Imager repository."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from imagebuilder.build.execute import build as build_images
from imagebuilder.cli.command import Command, add_recipe_argument
from imagebuilder.core.context import Context
from imagebuilder.core.errors import ImageBuilderError
from imagebuilder.outputs.imager import write_os_list
from imagebuilder.recipe.load import load_recipe
from imagebuilder.sources.decompress import decompress_to_cache
from imagebuilder.sources.fetch import fetch_base, fetch_url


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
    add_recipe_argument(parser)
    parser.add_argument("--per-node", action="store_true",
                        help="also write <hostname>.img per known worker, each with its hostname seed")
    parser.add_argument("--backend", choices=("loop", "guestfs"), default=None,
                        help="loop: mount and chroot, as root; guestfs: libguestfs, no root, packages installed "
                             "at first boot (default: loop as root, guestfs otherwise)")


def build(ctx: Context, args: argparse.Namespace) -> int:

    build_images(ctx, load_recipe(args.recipe), per_node=args.per_node, backend=args.backend)
    return 0


def _imager_repo_arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_argument(parser)
    parser.add_argument("--base-url", metavar="URL",
                        help="where the images will be served; default: URLs relative to os_list.json")


def imager_repo(ctx: Context, args: argparse.Namespace) -> int:

    recipe = load_recipe(args.recipe)
    print(write_os_list(recipe.output_dir, recipe, args.base_url))
    return 0


COMMANDS = [
    Command("fetch", "download, verify and cache a base image; print its path", _fetch_arguments, fetch),
    Command("build", "build the master and worker images of a recipe", _build_arguments, build,
            needs_root=lambda args: args.backend == "loop"),
    Command("imager-repo", "write os_list.json, a Raspberry Pi Imager repository of the built images",
            _imager_repo_arguments, imager_repo),
]
