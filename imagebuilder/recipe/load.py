"""Load a recipe file: parse, convert, check; one line per problem, naming the file, the key and the line."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import yaml

from imagebuilder.core.errors import RecipeError
from imagebuilder.core.log import log
from imagebuilder.recipe.model import Recipe
from imagebuilder.recipe.rules import check_cluster
from imagebuilder.recipe.schema import Loader
from imagebuilder.recipe.yamlfile import load_document


def load_recipe(path: Path) -> Recipe:
    """Load and validate a recipe; raise RecipeError with one line per problem."""
    shown = str(path)
    try:
        doc = load_document(path)
    except FileNotFoundError:
        raise RecipeError([f"{shown}: no such file (check the path)"]) from None
    except (PermissionError, IsADirectoryError, UnicodeDecodeError) as e:
        raise RecipeError([f"{shown}: cannot read it: {e.strerror if isinstance(e, OSError) else e}"]) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        raise RecipeError([f"{shown}: {where}: YAML does not parse: {e.problem or e.context}"]) from None
    except yaml.YAMLError as e:
        raise RecipeError([f"{shown}: YAML does not parse: {e}"]) from None

    loader = Loader(doc)
    recipe = loader.load(Recipe, doc.data)
    if recipe is not None:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        recipe = dataclasses.replace(recipe, source=path.resolve(), digest=digest)
        recipe = check_cluster(recipe, loader)
    if loader.problems:
        def sort_key(p: tuple[str, str]) -> int:
            return doc.lines.get(p[0], 0)
        lines = []
        for key, message in sorted(loader.problems, key=sort_key):
            line = doc.lines.get(key)
            lines.append(f"{shown}: {key}: {message}" + (f" (line {line})" if line else ""))
        raise RecipeError(lines)
    assert isinstance(recipe, Recipe)
    return recipe


def summary(recipe: Recipe) -> str:
    base = recipe.base
    if base.image:
        what = base.image
    elif base.url:
        what = base.url.rsplit("/", 1)[-1]
    else:
        assert base.bootstrap is not None
        what = f"debian {base.bootstrap.suite} bootstrap ({base.bootstrap.layout} layout)"
    n = len(recipe.workers)
    return f"{recipe.cluster.name}: base {what}, {recipe.arch}, {n} worker{'s' if n != 1 else ''}"


def warn_if_nobody_logs_in(recipe: Recipe) -> None:
    """The nodes need no login to work, but a node that does not come up can then only be read from its
    console: `validate` and `build` say so before the cards are made."""
    if any(u.ssh_authorized_keys or u.password_hash for u in recipe.users):
        return
    log.warning("WARNING: %s: users: nobody can log in to the nodes (no user has ssh_authorized_keys or a "
                "password_hash); add your public key (e.g. the line of ~/.ssh/id_ed25519.pub) to a user, or set "
                "a user with Raspberry Pi Imager's customisation when you flash", recipe.source)
