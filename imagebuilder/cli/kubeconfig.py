"""The kubeconfig command: where the cluster's kubeconfig is, or a copy of it elsewhere."""

from __future__ import annotations

import argparse
from pathlib import Path

from imagebuilder.cli.command import Command, add_recipe_argument
from imagebuilder.core.context import Context
from imagebuilder.core.errors import ImageBuilderError
from imagebuilder.core.resources import atomic_output
from imagebuilder.outputs.kubeconfig import write_kubeconfig
from imagebuilder.recipe.load import load_recipe
from imagebuilder.roles.secrets import read_k3s_secrets


def _arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_argument(parser)
    parser.add_argument("--output", "-o", type=Path, metavar="FILE",
                        help="write a copy there (mode 0600) instead of printing the path")


def kubeconfig(ctx: Context, args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe)
    secrets = read_k3s_secrets(ctx, recipe.cluster.name)
    if secrets is None:
        raise ImageBuilderError(f"{args.recipe}: cluster {recipe.cluster.name!r} has no CAs yet",
                                f"build its images first: sudo imagebuilder build {args.recipe}")
    # Made again here when it was deleted or the recipe moved the master: the CAs are the cluster's.
    ctx.give_back(recipe.output_dir)
    path = write_kubeconfig(ctx, recipe, secrets)
    if args.output is None:
        print(path)
        return 0
    with atomic_output(args.output.resolve(), 0o600) as tmp:
        tmp.write_bytes(path.read_bytes())
    ctx.give_back(args.output.resolve())
    return 0


COMMANDS = [
    Command("kubeconfig", "print the path of the cluster's kubeconfig (for kubectl), or copy it with --output",
            _arguments, kubeconfig),
]
