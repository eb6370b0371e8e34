"""`imagebuilder build`: get the inputs, plan, make each stage the cache lacks, write the outputs."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path

from imagebuilder.build.epoch import ENV, build_epochs, is_reproducible
from imagebuilder.build.plan import BuildPlan, Inputs, plan_build, role_packages
from imagebuilder.core.beside import run_beside
from imagebuilder.core.cache import prune, record_use, sweep
from imagebuilder.core.context import Context
from imagebuilder.core.errors import CommandFailed, ImageBuilderError
from imagebuilder.core.log import VERBOSE, log, step
from imagebuilder.core.resources import disk_full, free_space
from imagebuilder.engine.backends.interface import Backend, choose_backend
from imagebuilder.engine.entry import StageResult, is_cached
from imagebuilder.engine.realise import realise
from imagebuilder.outputs.emit import emit_image, emit_per_node, open_outputs, write_index
from imagebuilder.outputs.kubeconfig import write_kubeconfig
from imagebuilder.outputs.sbom import ImageContents
from imagebuilder.outputs.signing import sign_checksums
from imagebuilder.outputs.state import ImageOutputs
from imagebuilder.recipe.model import Recipe
from imagebuilder.roles.cloudinit import cloud_init_for_base
from imagebuilder.roles.secrets import k3s_secrets, read_k3s_secrets
from imagebuilder.roles.table import ROLES
from imagebuilder.sources.base import BaseImage
from imagebuilder.sources.bootstrap import bootstrap_base, cached_bootstrap
from imagebuilder.sources.fetch import cached_base, prepare_base
from imagebuilder.sources.k3s_assets import fetch_k3s

# Seconds the first sweep waits for partial files whose lock is still held: a build killed just before
# held them for up to 0.8 s (measured, two cores under load); a build running beside this one costs this
# build that wait once.
SWEEP_GRACE = 3.0


def resolve_base(ctx: Context, recipe: Recipe) -> BaseImage:
    """The base image this recipe starts from, verified and cached."""
    if recipe.base.bootstrap is not None:
        return bootstrap_base(ctx, recipe.base.bootstrap, recipe.arch)
    return prepare_base(ctx, recipe)


def prune_cache(ctx: Context) -> None:
    removed = prune(ctx.cache_dir)
    if removed:
        log.info("removed %d entries no recent build uses from the cache (%d MiB)", len(removed),
                 sum(e.size for e in removed) // 2**20)


def read_plan(ctx: Context, recipe: Recipe, backend: str | None = None) -> BuildPlan:
    """The plan from what the cache and the state directory hold now: no root, no network, nothing written."""
    chosen = choose_backend(backend)
    if recipe.base.bootstrap is not None:
        base = cached_bootstrap(ctx.cache_dir, recipe.base.bootstrap, recipe.arch)
    else:
        base = cached_base(ctx.cache_dir, recipe)
    secrets = read_k3s_secrets(ctx, recipe.cluster.name)
    inputs = Inputs(base=base, secrets=secrets,
                    k3s=fetch_k3s(ctx, recipe.k3s, recipe.arch, offline=True,
                                  allow_http=recipe.base.allow_http_checksums),
                    backend=chosen, epochs=build_epochs(base, secrets), reproducible=is_reproducible(recipe))
    return plan_build(recipe, inputs, ctx.cache_dir / "stages")


@dataclass(frozen=True)
class PlanRow:
    """One stage of a plan as `build --plan` shows it."""

    stage: str
    role: str
    key: str | None  # its first 24 digits; None while an input is not made (unknown says which)
    parent: Path
    packages: tuple[str, ...]
    layers: tuple[str, ...]
    action: str  # "cached" or "build"
    unknown: str | None

    def to_json(self) -> dict[str, object]:
        return {**dataclasses.asdict(self), "parent": str(self.parent), "packages": list(self.packages),
                "layers": list(self.layers)}


def describe_plan(ctx: Context, plan: BuildPlan) -> list[PlanRow]:
    """One row per stage: its name, key, parent, packages, layers, and whether the cache has it."""
    stage_dir = ctx.cache_dir / "stages"
    rows = []
    for planned in plan.stages:
        stage = planned.stage
        cached = planned.known and is_cached(stage_dir, stage)
        rows.append(PlanRow(stage.name, planned.role, stage.key()[:24] if planned.known else None, stage.parent,
                            stage.packages, tuple(layer.name for layer in stage.layers),
                            "cached" if cached else "build", planned.unknown))
    return rows


def build(ctx: Context, recipe: Recipe, *, per_node: bool = False,
          backend: str | None = None) -> dict[str, StageResult]:
    """backend: "loop", "guestfs", or None for loop as root and guestfs otherwise."""
    try:
        return _build(ctx, recipe, per_node=per_node, backend=backend)
    except CommandFailed as e:
        if not any("No space left on device" in line for line in e.stderr_tail):
            raise
        # A program ran out of space: name the folder that did (the fuller of the cache and the output).
        fuller = min((ctx.cache_dir, recipe.output_dir), key=free_space)
        raise disk_full(fuller, f"its step ({e.message.removeprefix('command failed ')})") from None


def warn_about_backend(recipe: Recipe, chosen: Backend, *, asked: bool) -> None:
    """What the rootless backend cannot do for this recipe, said before the build starts."""
    if not chosen.installs_packages:
        wanted = sorted({p for r in ("common", *ROLES) for p in role_packages(recipe, r)})
        why = "--backend guestfs" if asked else "not running as root"
        log.warning("%s: building with the %s backend (libguestfs, no root). It cannot run the image's "
                    "programs, so: cloud-init installs the packages at first boot (%s; the nodes need "
                    "their mirror then), the generated files are not checked with the image's own tools, "
                    "and each stage is slower. Run as root for the loop backend.", why, chosen.name,
                    ", ".join(wanted) or "none")
    if is_reproducible(recipe) and not chosen.rewrites:
        log.warning("the %s backend cannot make reproducible images (output.reproducible or %s): its images "
                    "differ from build to build. Run as root for the loop backend.", chosen.name, ENV)


def _build(ctx: Context, recipe: Recipe, *, per_node: bool, backend: str | None) -> dict[str, StageResult]:
    chosen = choose_backend(backend)
    # A build killed just before this one may still be dying (the kernel unmounting its file systems, its
    # locks on partial files held) when this one starts: the first sweep waits a moment for such locks,
    # and the sweep at the end takes what a writer that died during this build left.
    sweep(ctx.cache_dir, recipe.output_dir, grace=SWEEP_GRACE)
    ctx.stack.callback(sweep, ctx.cache_dir, recipe.output_dir)
    # Whatever happens, the cache keeps only what the recent builds of each recipe use: this build's
    # entries are recorded first (even when it fails: its stages serve the next attempt), then pruned.
    ctx.stack.callback(prune_cache, ctx)
    used: list[Path] = []
    ctx.stack.callback(lambda: record_use(ctx.cache_dir, recipe.source, recipe.cluster.name, used))
    with step(f"build {recipe.cluster.name} ({chosen.name} backend)"):
        warn_about_backend(recipe, chosen, asked=backend is not None)
        with step("base image"):
            base = resolve_base(ctx, recipe)
        used += [base.path, *base.origin]
        if not chosen.installs_packages and cloud_init_for_base(recipe, base.layout)[1] is not None:
            raise ImageBuilderError(f"{recipe.base.image} has no cloud-init, and the {chosen.name} backend "
                                    "cannot install it", "build as root (the loop backend)")
        with step("k3s release assets"):
            k3s = fetch_k3s(ctx, recipe.k3s, recipe.arch, allow_http=recipe.base.allow_http_checksums)
        secrets = k3s_secrets(ctx, recipe.cluster.name)
        inputs = Inputs(base=base, secrets=secrets, k3s=k3s, backend=chosen, epochs=build_epochs(base, secrets),
                        reproducible=is_reproducible(recipe))
        plan = plan_build(recipe, inputs, ctx.cache("stages"))
        for row in describe_plan(ctx, plan):
            log.log(VERBOSE, "plan: stage %s %s (key %s, from %s; packages: %s; layers: %s)", row.stage,
                    row.action, row.key, row.parent.name, ", ".join(row.packages) or "none",
                    ", ".join(row.layers) or "none")
        debs = ctx.cache("debs", f"{recipe.arch}-{base.sha256[:16]}")
        used.append(debs)
        assert plan.stages[0].role == "common"
        common = realise(ctx, plan.stages[0].stage, debs)
        used.append(common.image)
        previous = open_outputs(recipe)

        def make_role(role: str) -> tuple[StageResult, ImageOutputs]:
            """The role's stages, then its image's outputs (bmap, SBOM, compressed copy)."""
            made = [realise(ctx, planned.stage, debs) for planned in plan.stages if planned.role == role]
            used.extend(m.image for m in made)
            final = made[-1]
            # Its image carries what the common stage wrote, then its own.
            result = dataclasses.replace(final, files=common.files + final.files, units=common.units + final.units)
            assert final.inventory is not None  # read when a stage an image is emitted from is made
            layers = tuple(layer for p in plan.stages if p.role in ("common", role) for layer in p.stage.layers)
            contents = ImageContents(final.inventory, layers, base.layout.boot_mount,
                                     k3s.layer.name if k3s.layer else None)
            return result, emit_image(ctx, recipe, role, result, contents, recipe.output_dir,
                                      previous.images.get(role))

        # The roles' stages and outputs side by side (while one waits on mounts and programs, the other's
        # digest or compression runs); one after the other where the master's netboot tree is copied from
        # the worker's image.
        order = [p.role for p in plan.stages if p.role != "common" and p.stage.name == p.role]
        jobs = {role: functools.partial(make_role, role) for role in order}
        done = run_beside(jobs, side_by_side=recipe.netboot is None)
        results = {role: done[role][0] for role in ROLES}
        used += write_index(ctx, recipe, base, results, {role: done[role][1] for role in ROLES}, previous,
                            k3s_source=k3s.source)
        if per_node:
            emit_per_node(ctx, recipe, results["worker"])
        if (key := recipe.sign_key_path()) is not None:
            with step("sign SHA256SUMS"):
                log.info("signed with %s: %s", key, sign_checksums(recipe.output_dir, key))
        with step("kubeconfig"):
            write_kubeconfig(ctx, recipe, secrets)
    log.info("images in %s (%s)", recipe.output_dir,
             f"k3s {recipe.k3s.version} from {k3s.source}" if k3s.included else "no k3s binary: k3s.assets is none")
    return results
