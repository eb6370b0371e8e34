"""Commands about recipes and the catalogue: validate, images."""

from __future__ import annotations

import argparse

from imagebuilder.cli.command import Command, add_recipe_argument
from imagebuilder.core.context import Context
from imagebuilder.recipe.catalogue import load_catalogue
from imagebuilder.recipe.load import load_recipe, summary


def validate(ctx: Context, args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe)
    print(f"{args.recipe}: ok: {summary(recipe)}")
    return 0


def images(ctx: Context, args: argparse.Namespace) -> int:
    for name, entry in load_catalogue().items():
        print(f"{name:24} {', '.join(entry.arches):12} {entry.description}")
    return 0


COMMANDS = [
    Command("validate", "check a recipe and print a one-line summary", add_recipe_argument, validate),
    Command("images", "list the built-in catalogue of base images", lambda p: None, images),
]
