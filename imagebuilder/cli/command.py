"""A subcommand: its name, help, arguments, and the function that runs it."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from imagebuilder.core.context import Context


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[Context, argparse.Namespace], int]
    needs_root: Callable[[argparse.Namespace], bool] = lambda args: False
    # Mounts, loop devices or processes that must not outlive it: run it in namespaces of its own (as root).
    isolate: Callable[[argparse.Namespace], bool] = lambda args: False


def add_recipe_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", type=Path, metavar="RECIPE", help="the cluster recipe (YAML)")
