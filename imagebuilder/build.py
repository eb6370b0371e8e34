"""`imagebuilder build`: base -> common stage -> master and worker stages -> outputs."""

from __future__ import annotations

import dataclasses
import re

from imagebuilder.bootstrap import BaseImage, bootstrap_base
from imagebuilder.context import Context
from imagebuilder.emit import emit_outputs
from imagebuilder.log import log, step
from imagebuilder.overlay import BUILTIN, RenderedLayer, render_layer
from imagebuilder.recipe import Recipe
from imagebuilder.roles import ROLE_PACKAGES, ROLES
from imagebuilder.stages import Stage, StageResult, realise


def resolve_base(ctx: Context, recipe: Recipe) -> BaseImage:
    """The base image this recipe starts from, verified and cached."""
    if recipe.base.bootstrap is not None:
        return bootstrap_base(ctx, recipe.base.bootstrap, recipe.arch)
    from imagebuilder.fetch import prepare_base

    return prepare_base(ctx, recipe)


def render_layers(recipe: Recipe, layer: str, role: str) -> tuple[RenderedLayer, ...]:
    """The built-in layer, then (after the role layers) the recipe's own overlay directories."""
    variables = {"recipe": recipe, "role": role}
    layers = [render_layer(layer, BUILTIN / layer, variables)]
    if layer != "common":
        layers += [render_layer(str(d), d, variables) for d in recipe.overlay_dirs()]
    return tuple(layers)


def parse_size(text: str | None) -> int | None:
    if text is None:
        return None
    match = re.fullmatch(r"(\d+)([MG])", text)
    assert match, text  # validated with the recipe
    return int(match.group(1)) * (2**20 if match.group(2) == "M" else 2**30)


def build(ctx: Context, recipe: Recipe) -> dict[str, StageResult]:
    with step(f"build {recipe.cluster.name}"):
        with step("base image"):
            base = resolve_base(ctx, recipe)
        debs = ctx.cache("debs", f"{recipe.arch}-{base.sha256[:16]}")
        common = Stage(
            name="common", parent=base.path, parent_key=base.sha256,
            packages=(*ROLE_PACKAGES["common"], *recipe.packages.common),
            layers=render_layers(recipe, "common", "common"), arch=recipe.arch, layout=base.layout,
        )
        common_result = realise(ctx, common, debs)
        results = {}
        for role in ROLES:
            stage = Stage(
                name=role, parent=common_result.image, parent_key=common_result.key,
                packages=(*ROLE_PACKAGES[role], *getattr(recipe.packages, role)),
                layers=render_layers(recipe, role, role), arch=recipe.arch, layout=base.layout,
                size=parse_size(recipe.output.image_size),
            )
            result = realise(ctx, stage, debs)
            results[role] = dataclasses.replace(
                result, files=common_result.files + result.files, units=common_result.units + result.units
            )
        emit_outputs(ctx, recipe, base, results)
    log.info("images in %s", recipe.output_dir)
    return results

