"""Commands about recipes and the catalogue: validate, images."""

from __future__ import annotations

import argparse
import json

from imagebuilder.cli.command import Command, add_recipe_argument
from imagebuilder.core.context import Context
from imagebuilder.core.errors import RecipeError
from imagebuilder.recipe.catalogue import load_catalogue
from imagebuilder.recipe.load import load_recipe, summary, warn_if_nobody_logs_in


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def _validate_arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_argument(parser)
    add_json_argument(parser)


def validate(ctx: Context, args: argparse.Namespace) -> int:
    if not args.json:
        recipe = load_recipe(args.recipe)
        warn_if_nobody_logs_in(recipe)
        print(f"{args.recipe}: ok: {summary(recipe)}")
        return 0
    try:
        recipe = load_recipe(args.recipe)
    except RecipeError as e:
        # The same lines as without --json, as data; the exit status still says it failed.
        print(json.dumps({"recipe": str(args.recipe), "ok": False, "problems": e.problems}, indent=1))
        return e.exit_status
    print(json.dumps({
        "recipe": str(args.recipe), "ok": True, "summary": summary(recipe), "cluster": recipe.cluster.name,
        "arch": recipe.arch, "master": {"hostname": recipe.master.hostname, "ip": recipe.network.master_ip},
        "workers": [{"hostname": w.hostname, "mac": w.mac, "ip": w.ip} for w in recipe.workers],
        "output": str(recipe.output_dir),
    }, indent=1))
    return 0


def images(ctx: Context, args: argparse.Namespace) -> int:
    catalogue = load_catalogue()
    if args.json:
        print(json.dumps([{"name": name, "description": e.description, "arches": list(e.arches),
                           "boot_label": e.layout.boot_label, "root_label": e.layout.root_label,
                           "firstboot": e.firstboot} for name, e in catalogue.items()], indent=1))
        return 0
    for name, entry in catalogue.items():
        print(f"{name:24} {', '.join(entry.arches):12} {entry.description}")
    return 0


COMMANDS = [
    Command("validate", "check a recipe and print a one-line summary", _validate_arguments, validate),
    Command("images", "list the built-in catalogue of base images", add_json_argument, images),
]
