"""The subcommands. Each is small: parse its arguments, call the module that does the work."""

from __future__ import annotations

import argparse
from pathlib import Path

from imagebuilder.catalogue import load_catalogue
from imagebuilder.cli import Command
from imagebuilder.context import Context
from imagebuilder.recipe import load_recipe, summary


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


COMMANDS = [
    Command("validate", "check a recipe and print a one-line summary", _recipe_argument, validate),
    Command("images", "list the built-in catalogue of base images", lambda p: None, images),
]
