"""The build as a plan: which stages, made from what, under which cache key, and which the cache has.

`plan_build` is pure: given the recipe and the inputs that cost something to get (the base image, the
cluster's token, the k3s assets), it returns the stages in the order they are made. `build` gets the inputs
and executes the plan; `build --plan` gets them from the cache only, without root, network or writes, and
prints the same plan.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagebuilder.build.epoch import Epochs
from imagebuilder.engine.backends.interface import Backend
from imagebuilder.engine.checks import stage_checks
from imagebuilder.engine.stages import Stage, stage_image
from imagebuilder.layers.description import load_description
from imagebuilder.layers.render import BUILTIN, RenderedLayer, render_layer
from imagebuilder.netboot.populate import NetbootSource, state_folder
from imagebuilder.recipe.catalogue import LAYOUTS, Layout, load_catalogue
from imagebuilder.recipe.model import Recipe
from imagebuilder.roles.cloudinit import cloud_init_for_base
from imagebuilder.roles.secrets import K3sSecrets
from imagebuilder.roles.table import K3S_UNIT, ROLES
from imagebuilder.roles.variables import template_variables
from imagebuilder.sources.base import BaseImage
from imagebuilder.sources.k3s_assets import ASSETS_ENV, K3sAssets

# A stand-in for the secrets when they are not made yet; a plan holding them says its role stages are to
# be built.
UNKNOWN_SECRETS = K3sSecrets(*(["(made on the first build)"] * 6))


@dataclass(frozen=True)
class Inputs:
    """What the plan needs that has a cost or a side effect to get."""

    base: BaseImage | None  # None: not in the cache yet
    secrets: K3sSecrets | None  # None: the cluster's first build makes them
    k3s: K3sAssets
    backend: Backend
    epochs: Epochs = Epochs(0, 0, 0)  # SOURCE_DATE_EPOCH (build/epoch.py)
    reproducible: bool = False  # the emitted images are made again from their files (build/epoch.py)


@dataclass(frozen=True)
class PlannedStage:
    stage: Stage
    role: str  # common, master or worker: whose image it leads to
    unknown: str | None = None  # why its key is not final: an input it depends on is not made yet

    @property
    def known(self) -> bool:
        return self.unknown is None

    def image(self, stage_dir: Path) -> Path:
        return stage_image(stage_dir, self.stage)


@dataclass(frozen=True)
class BuildPlan:
    recipe: Recipe
    inputs: Inputs
    stages: tuple[PlannedStage, ...]
    notes: tuple[str, ...] = field(default=())  # what the plan could not know, and what the build will do

    def final(self, role: str) -> PlannedStage:
        """The stage whose image becomes role.img."""
        return next(s for s in self.stages if s.stage.name == role)


def layer_directories(recipe: Recipe, role: str) -> list[tuple[str, Path]]:
    """The built-in layer of a role (and, for workers that may boot from the network, the netboot layer),
    then (master and worker) the recipe's own overlay directories."""
    layers = [(role, BUILTIN / role)]
    if role == "worker" and recipe.netboot is not None:
        layers.append(("netboot", BUILTIN / "netboot"))
    if role != "common":
        layers += [(str(d), d) for d in recipe.overlay_dirs()]
    return layers


def role_packages(recipe: Recipe, role: str) -> tuple[str, ...]:
    """What a role installs: its layers' packages (layer.yaml) and the recipe's packages.<role>."""
    described = [p for _, d in layer_directories(recipe, role) for p in load_description(d).packages]
    return tuple(dict.fromkeys([*described, *getattr(recipe.packages, role)]))


def render_layers(recipe: Recipe, role: str, variables: dict[str, Any]) -> tuple[RenderedLayer, ...]:
    return tuple(render_layer(name, directory, variables) for name, directory in layer_directories(recipe, role))


def expected_layout(recipe: Recipe) -> Layout:
    """The layout the base will have, before it is made (a base given by URL: read off it later)."""
    if recipe.base.bootstrap is not None:
        return LAYOUTS[recipe.base.bootstrap.layout]
    if recipe.base.image is not None:
        return load_catalogue()[recipe.base.image].layout
    return LAYOUTS["raspios"]


def netboot_source(recipe: Recipe, worker: Stage, stage_dir: Path) -> NetbootSource:
    assert recipe.netboot is not None
    return NetbootSource(stage_image(stage_dir, worker), worker.key(), recipe.netboot.tree,
                         str(recipe.network.master_ip), tuple(state_folder(w.mac) for w in recipe.netboot_workers()))


def k3s_source(recipe: Recipe, where: str) -> str:
    """Where a build gets the k3s assets the cache does not hold (`where`: their folder or URL), in words."""
    if os.environ.get(ASSETS_ENV):
        return f"takes {recipe.k3s.version} from ${ASSETS_ENV} ({where})"
    if recipe.k3s.assets == "release":
        return f"downloads release {recipe.k3s.version} ({where})"
    return f"takes {recipe.k3s.version} from k3s.assets ({where})"


def plan_build(recipe: Recipe, inputs: Inputs, stage_dir: Path) -> BuildPlan:
    """base -> common (packages + files) -> per role: packages stage, files stage."""
    base = inputs.base
    layout = base.layout if base is not None else expected_layout(recipe)
    secrets = inputs.secrets or UNKNOWN_SECRETS
    installs = inputs.backend.installs_packages
    notes: list[str] = []
    # Every key is a digest of its inputs, so a stage's key waits for the first of them not made yet.
    unknown = None
    if inputs.base is None:
        unknown = "unknown: no base yet"
        made = ("a build as root bootstraps it first (mmdebstrap needs root)" if recipe.base.bootstrap else
                f"the build downloads it first (or now: imagebuilder fetch --raw {recipe.source})")
        notes.append(f"the base image is not in the cache ({stage_dir.parent}): {made}; every stage's key follows "
                     "from its digest")
    if inputs.secrets is None:
        notes.append("the cluster has no k3s secrets yet: the first build makes them (the role stages hold them)")
    if inputs.k3s.source is None:
        notes.append("no k3s binary in the images: k3s.assets is none")
    elif inputs.k3s.layer is None:
        unknown = unknown or "unknown: no k3s yet"
        notes.append(f"k3s: the build {k3s_source(recipe, inputs.k3s.source)}: not in the cache yet (the build "
                     "fails if it cannot get it), and every stage's key follows from it")
    size = recipe.output.image_size
    base_packages, cloud_init_layer = cloud_init_for_base(recipe, layout)
    common_layers = render_layers(recipe, "common", template_variables(
        recipe, "common", secrets=secrets, boot_mount=layout.boot_mount))
    if inputs.k3s.layer is not None:
        common_layers += (inputs.k3s.layer,)
    if cloud_init_layer is not None:
        common_layers += (cloud_init_layer,)
    common = Stage(
        name="common", parent=base.path if base else Path("(base image, not made yet)"),
        parent_key=base.sha256 if base else "", parent_is_base=True,
        packages=(*base_packages, *role_packages(recipe, "common")) if installs else (),
        layers=common_layers, arch=recipe.arch, layout=layout, backend=inputs.backend, epoch=inputs.epochs.stages,
        checks=stage_checks(common_layers, layout.boot_mount),
    )
    planned = [PlannedStage(common, "common", unknown)]
    # A netboot tree on the master is copied from the worker's final stage: the worker's stages come first.
    finals: dict[str, Stage] = {}
    for role in sorted(ROLES, key=lambda r: r != "worker") if recipe.netboot else ROLES:
        packages = role_packages(recipe, role)
        first_boot = () if installs else (*role_packages(recipe, "common"), *packages)
        layers = render_layers(recipe, role, template_variables(
            recipe, role, secrets=secrets, boot_mount=layout.boot_mount, first_boot_packages=first_boot))
        # Packages and files in separate stages, so an overlay edit never redoes the install.
        parent = common
        if packages and installs:
            parent = Stage(name=f"{role}-packages", parent=stage_image(stage_dir, common), parent_key=common.key(),
                           packages=packages, layers=(), arch=recipe.arch, layout=layout, backend=inputs.backend,
                           size=size, epoch=inputs.epochs.stages)
            planned.append(PlannedStage(parent, role, unknown))
        missing = (K3S_UNIT[role],) if inputs.k3s.layer is None else ()
        netboot = netboot_source(recipe, finals["worker"], stage_dir) if role == "master" and recipe.netboot else None
        stage = Stage(name=role, parent=stage_image(stage_dir, parent), parent_key=parent.key(), packages=(),
                      layers=layers, arch=recipe.arch, layout=layout, backend=inputs.backend, size=size,
                      epoch=inputs.epochs.images, clock=inputs.epochs.clock,
                      checks=stage_checks(layers, layout.boot_mount, missing), netboot=netboot,
                      verify=True, rewrite=inputs.reproducible and inputs.backend.rewrites)
        finals[role] = stage
        planned.append(PlannedStage(stage, role, unknown or (None if inputs.secrets else "unknown: no secrets yet")))
    return BuildPlan(recipe, inputs, tuple(planned), tuple(notes))
