"""Commands that make images: fetch a base, build, (re)write the Imager repository."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from imagebuilder.build.execute import PlanRow, describe_plan, read_plan
from imagebuilder.build.execute import build as build_images
from imagebuilder.cli.command import Command, add_recipe_argument
from imagebuilder.core.access import access_denied
from imagebuilder.core.context import Context
from imagebuilder.core.errors import ImageBuilderError
from imagebuilder.engine.backends.interface import BACKENDS, choose_backend
from imagebuilder.outputs.imager import make_imager_repo
from imagebuilder.recipe.load import load_recipe, warn_if_nobody_logs_in
from imagebuilder.recipe.model import Recipe
from imagebuilder.sources.decompress import decompress_to_cache
from imagebuilder.sources.fetch import fetch_base, fetch_url
from imagebuilder.sources.k3s_assets import K3sAssets


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
    parser.add_argument("--allow-http-checksums", action="store_true",
                        help="accept a checksum listing over plain http (only on a network you trust)")


def fetch(ctx: Context, args: argparse.Namespace) -> int:
    if (args.recipe is None) == (args.url is None):
        raise ImageBuilderError("fetch: give a RECIPE or --url", "imagebuilder fetch --url URL --sha256 HEX")
    if args.url is not None:
        path = fetch_url(ctx, args.url, sha256=args.sha256, checksum_url=args.checksum_url, mirror=args.mirror,
                         offline=args.offline, refresh=args.refresh, allow_http=args.allow_http_checksums)
    else:
        recipe = load_recipe(args.recipe)
        if args.mirror or args.allow_http_checksums:
            recipe = dataclasses.replace(recipe, base=dataclasses.replace(
                recipe.base, mirror=args.mirror or recipe.base.mirror,
                allow_http_checksums=recipe.base.allow_http_checksums or args.allow_http_checksums))
        path = fetch_base(ctx, recipe, offline=args.offline, refresh=args.refresh)
    print(decompress_to_cache(ctx, path).path if args.raw else path)
    return 0


def _build_arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_argument(parser)
    parser.add_argument("--per-node", action="store_true",
                        help="also write <hostname>.img per known worker, each with its hostname seed")
    parser.add_argument("--backend", choices=BACKENDS, default=None,
                        help="loop: mount and chroot, as root; guestfs: libguestfs, no root, packages installed "
                             "at first boot (default: loop as root, guestfs otherwise)")
    parser.add_argument("--plan", action="store_true",
                        help="print the stages, their inputs and what would be rebuilt, and stop (no root needed)")
    parser.add_argument("--json", action="store_true", help="with --plan: print it as JSON")


def build(ctx: Context, args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe)
    if args.plan:
        try:
            plan = read_plan(ctx, recipe, args.backend)
            rows = describe_plan(ctx, plan)
        except PermissionError as e:
            raise access_denied(e.filename or ctx.cache_dir, "the plan reads the cache and the cluster's state: "
                                "run it as their owner, or give --cache-dir and --state-dir folders of yours") from None
        k3s = plan.inputs.k3s
        if args.json:
            binary = {"version": recipe.k3s.version, "binary": "included" if k3s.included else "none",
                      "assets": k3s.source or "none", "cached": k3s.layer is not None}
            print(json.dumps({"recipe": str(recipe.source), "backend": plan.inputs.backend.name, "k3s": binary,
                              "stages": [row.to_json() for row in rows], "notes": list(plan.notes)}, indent=1))
        else:
            print(format_plan(recipe, plan.inputs.backend.name, rows, plan.notes, k3s))
        return 0
    warn_if_nobody_logs_in(recipe)
    ctx.give_back(recipe.output_dir)
    build_images(ctx, recipe, per_node=args.per_node, backend=args.backend)
    return 0


def format_plan(recipe: Recipe, backend: str, rows: list[PlanRow], notes: tuple[str, ...],
                k3s: K3sAssets) -> str:
    lines = [f"{recipe.cluster.name}: {backend} backend, {len(rows)} stages",
             f"  k3s {recipe.k3s.version}: binary from {k3s.source}" if k3s.included
             else "  k3s: no binary in the images (k3s.assets: none)"]
    width = max(len(r.stage) for r in rows)
    for r in rows:
        what = ", ".join(r.packages) or ", ".join(r.layers) or "-"
        lines.append(f"  {r.stage.ljust(width)}  {r.action.ljust(6)}  {r.key or r.unknown:24}  {what}")
    lines += [f"  note: {note}" for note in notes]
    return "\n".join(lines)


def _imager_repo_arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_argument(parser)
    parser.add_argument("--base-url", metavar="URL",
                        help="where out/<cluster>/ will be served over HTTP; default: file:// URLs of the files "
                             "here (Imager resolves no relative URL)")


def imager_repo(ctx: Context, args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe)
    ctx.give_back(recipe.output_dir)
    print(make_imager_repo(ctx, recipe.output_dir, recipe, args.base_url))
    return 0


def _mounts(args: argparse.Namespace) -> bool:
    """Whether the build mounts on this host (a plan only reads)."""
    return not args.plan and choose_backend(args.backend).mounts


COMMANDS = [
    Command("fetch", "download, verify and cache a base image; print its path", _fetch_arguments, fetch),
    Command("build", "build the master and worker images of a recipe", _build_arguments, build,
            needs_root=_mounts, isolate=_mounts),
    Command("imager-repo", "write os_list.json, a Raspberry Pi Imager repository of the built images (and "
            "the .img.xz copies it downloads)",
            _imager_repo_arguments, imager_repo),
]
