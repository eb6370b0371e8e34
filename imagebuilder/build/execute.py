"""`imagebuilder build`: base -> common stage -> master and worker stages -> outputs."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from imagebuilder.core.cache import prune_compressed, prune_stages
from imagebuilder.core.context import Context
from imagebuilder.core.errors import ImageBuilderError
from imagebuilder.core.log import log, step
from imagebuilder.engine.backends import choose_backend
from imagebuilder.engine.checks import check_exports, role_checks, unit_checks
from imagebuilder.engine.stages import Stage, StageResult, realise
from imagebuilder.layers.render import BUILTIN, RenderedLayer, render_layer
from imagebuilder.outputs.emit import emit_outputs, emit_per_node
from imagebuilder.recipe.model import Recipe
from imagebuilder.roles.cloudinit import cloud_init_for_base
from imagebuilder.roles.secrets import k3s_token
from imagebuilder.roles.table import K3S_UNIT, ROLE_PACKAGES, ROLES
from imagebuilder.roles.variables import template_variables
from imagebuilder.sources.base import BaseImage
from imagebuilder.sources.bootstrap import bootstrap_base
from imagebuilder.sources.k3s_assets import fetch_k3s


def resolve_base(ctx: Context, recipe: Recipe) -> BaseImage:
    """The base image this recipe starts from, verified and cached."""
    if recipe.base.bootstrap is not None:
        return bootstrap_base(ctx, recipe.base.bootstrap, recipe.arch)
    from imagebuilder.sources.fetch import prepare_base

    return prepare_base(ctx, recipe)


def render_layers(recipe: Recipe, layer: str, variables: dict[str, Any]) -> tuple[RenderedLayer, ...]:
    """The built-in layer, then (after the role layers) the recipe's own overlay directories."""
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


def role_packages(recipe: Recipe, role: str) -> tuple[str, ...]:
    """The packages a role adds (common: those on every node)."""
    return (*ROLE_PACKAGES[role], *getattr(recipe.packages, role))


def prune_cache(ctx: Context) -> None:
    removed = prune_stages(ctx.cache("stages")) + prune_compressed(ctx.cache("compressed"))
    if removed:
        log.info("removed %d old entries from the cache", removed)


def build(ctx: Context, recipe: Recipe, *, per_node: bool = False,
          backend: str | None = None) -> dict[str, StageResult]:
    """backend: "loop", "guestfs", or None for loop as root and guestfs otherwise."""
    chosen = choose_backend(backend)
    installs = chosen.installs_packages
    # Whatever happens, the cache keeps only the newest few stages and compressed copies.
    ctx.stack.callback(prune_cache, ctx)
    with step(f"build {recipe.cluster.name} ({chosen.name} backend)"):
        if not installs:
            wanted = sorted({p for r in ("common", *ROLES) for p in role_packages(recipe, r)})
            log.info("the %s backend cannot run the image's programs: cloud-init installs the packages at "
                     "first boot instead (the nodes need the network then): %s", chosen.name,
                     ", ".join(wanted) or "none")
        with step("base image"):
            base = resolve_base(ctx, recipe)
        token = k3s_token(ctx, recipe.cluster.name)
        boot_mount = base.layout.boot_mount
        with step("k3s release assets"):
            k3s = fetch_k3s(ctx, recipe.k3s, recipe.arch)
        debs = ctx.cache("debs", f"{recipe.arch}-{base.sha256[:16]}")
        common_layers = render_layers(recipe, "common", template_variables(
            recipe, "common", token=token, boot_mount=boot_mount))
        if k3s.layer is not None:
            common_layers += (k3s.layer,)
        base_packages, cloud_init_layer = cloud_init_for_base(recipe, base.layout)
        if cloud_init_layer is not None:
            if not installs:
                raise ImageBuilderError(f"{recipe.base.image} has no cloud-init, and the {chosen.name} backend "
                                        "cannot install it", "build as root (the loop backend)")
            common_layers += (cloud_init_layer,)
        common = Stage(
            name="common", parent=base.path, parent_key=base.sha256,
            packages=(*base_packages, *role_packages(recipe, "common")) if installs else (),
            layers=common_layers, arch=recipe.arch, layout=base.layout, backend=chosen.name,
            checks=tuple(unit_checks([u for layer in common_layers for u in layer.units])),
        )
        common_result = realise(ctx, common, debs)
        results = {}
        for role in ROLES:
            packages = role_packages(recipe, role)
            first_boot = () if installs else (*role_packages(recipe, "common"), *packages)
            layers = render_layers(recipe, role, template_variables(recipe, role, token=token, boot_mount=boot_mount,
                                                                     first_boot_packages=first_boot))
            # Packages and files in separate stages, so an overlay edit never redoes the install.
            parent = common_result
            if packages and installs:
                parent = realise(ctx, Stage(
                    name=f"{role}-packages", parent=common_result.image, parent_key=common_result.key,
                    packages=packages, layers=(), arch=recipe.arch, layout=base.layout,
                    size=parse_size(recipe.output.image_size),
                ), debs)
            for layer in layers:
                for f in layer.files:
                    if f.path == "etc/exports":
                        check_exports(f.data.decode())
            stage = Stage(
                name=role, parent=parent.image, parent_key=parent.key, packages=(),
                layers=layers, arch=recipe.arch, layout=base.layout, backend=chosen.name,
                size=parse_size(recipe.output.image_size),
                checks=tuple(role_checks(role, boot_mount, [u for layer in layers for u in layer.units],
                                         missing=(K3S_UNIT[role],) if k3s.missing else ())),
            )
            result = realise(ctx, stage, debs)
            results[role] = dataclasses.replace(
                result, files=common_result.files + result.files, units=common_result.units + result.units
            )
        emit_outputs(ctx, recipe, base, results, k3s_missing=k3s.missing)
        if per_node:
            emit_per_node(ctx, recipe, base.layout)
    log.info("images in %s", recipe.output_dir)
    if k3s.missing:
        log.warning("WARNING: the images have no k3s binary: %s", k3s.missing)
    return results
