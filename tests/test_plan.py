"""The build plan: stages, their parents and keys, what a change rebuilds; and the layer descriptions it reads.

No root, no image: the plan is computed from the recipe and stand-in inputs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from imagebuilder.build.plan import Inputs, plan_build, role_packages
from imagebuilder.cli.main import main
from imagebuilder.core.errors import ImageBuilderError, RecipeError
from imagebuilder.disk.usage import Usage
from imagebuilder.engine.backends.interface import choose_backend
from imagebuilder.engine.checkmemo import check_key, passed_before
from imagebuilder.engine.checks import DATA_CHECKS, stage_checks
from imagebuilder.engine.entry import StageRecord
from imagebuilder.engine.stages import stage_image
from imagebuilder.layers.description import CHECK_TOOLS, load_description
from imagebuilder.layers.render import BUILTIN, OverlayFile, RenderedLayer, render_layer
from imagebuilder.recipe.catalogue import LAYOUTS
from imagebuilder.recipe.load import load_recipe
from imagebuilder.roles.secrets import K3sSecrets
from imagebuilder.sources.base import BaseImage
from imagebuilder.sources.k3s_assets import ASSETS_ENV, K3sAssets
from tests.conftest import ROOT, SECRETS, VALID, as_another_user, lock_away

BASE = BaseImage(Path("/cache/bases/base.img"), "ab" * 32, LAYOUTS["raspios"], {})
NO_K3S = K3sAssets(None, None)
RELEASE = "https://github.com/k3s-io/k3s/releases/download/v1.31.4%2Bk3s1"


def inputs(base: BaseImage | None = BASE, secrets: K3sSecrets | None = SECRETS, backend: str = "loop") -> Inputs:
    return Inputs(base=base, secrets=secrets, k3s=NO_K3S, backend=choose_backend(backend))


def keys(text: str, recipe_file: Any, **kw: Any) -> dict[str, str]:
    plan = plan_build(load_recipe(recipe_file(text)), inputs(**kw), Path("/cache/stages"))
    return {p.stage.name: p.stage.key() for p in plan.stages}


def test_stages_in_order_each_from_its_parent(recipe_file: Any) -> None:
    plan = plan_build(load_recipe(recipe_file(VALID)), inputs(), Path("/cache/stages"))
    names = [p.stage.name for p in plan.stages]
    assert names == ["common", "master-packages", "master", "worker-packages", "worker"]
    by_name = {p.stage.name: p.stage for p in plan.stages}
    assert by_name["common"].parent == BASE.path and by_name["common"].parent_key == BASE.sha256
    assert by_name["master-packages"].parent == stage_image(Path("/cache/stages"), by_name["common"])
    assert by_name["master"].parent == stage_image(Path("/cache/stages"), by_name["master-packages"])
    assert by_name["worker-packages"].parent == stage_image(Path("/cache/stages"), by_name["common"])
    assert by_name["worker"].parent == stage_image(Path("/cache/stages"), by_name["worker-packages"])
    assert set(by_name["master-packages"].packages) == {"dnsmasq", "nfs-kernel-server", "nftables", "chrony"}
    assert set(by_name["worker-packages"].packages) == {"systemd-timesyncd"}
    assert {"nfs-common", "tzdata"} <= set(by_name["common"].packages)
    assert all(p.known for p in plan.stages) and plan.notes == ("no k3s binary in the images: k3s.assets is none",)


def test_stage_keys_are_not_final_before_the_k3s_assets_are_fetched(recipe_file: Any) -> None:
    recipe = load_recipe(recipe_file(VALID))
    pending = dataclasses.replace(inputs(), k3s=K3sAssets(None, RELEASE))
    plan = plan_build(recipe, pending, Path("/cache/stages"))
    assert not any(p.known for p in plan.stages)
    assert plan.notes == (f"k3s: the build downloads release v1.31.4+k3s1 ({RELEASE}): not in the cache yet (the "
                          "build fails if it cannot get it), and every stage's key follows from it",)
    fetched = K3sAssets(RenderedLayer("k3s", (OverlayFile("usr/local/bin/k3s", b"k3s", 0o755),)), "file:///srv/k3s")
    plan = plan_build(recipe, dataclasses.replace(inputs(), k3s=fetched), Path("/cache/stages"))
    assert all(p.known for p in plan.stages) and plan.notes == ()
    # With the binary, the k3s units are verified too.
    master = plan.final("master").stage
    assert ("systemd-analyze verify", "/etc/systemd/system/k3s.service") in {(c.tool, c.path) for c in master.checks}


def test_a_table_change_rebuilds_only_the_role_file_stages(recipe_file: Any) -> None:
    before = keys(VALID, recipe_file)
    after = keys(VALID.replace("node2", "node9"), recipe_file)
    assert before["common"] == after["common"] and before["master-packages"] == after["master-packages"]
    assert before["master"] != after["master"] and before["worker"] != after["worker"]


def test_an_added_package_rebuilds_its_role_from_the_packages_stage(recipe_file: Any) -> None:
    before = keys(VALID, recipe_file)
    after = keys(VALID + "packages: {master: [htop]}\n", recipe_file)
    assert before["common"] == after["common"] and before["worker"] == after["worker"]
    assert before["master-packages"] != after["master-packages"] and before["master"] != after["master"]


def test_what_is_not_made_yet_is_said(recipe_file: Any) -> None:
    plan = plan_build(load_recipe(recipe_file(VALID)), inputs(base=None, secrets=None), Path("/cache/stages"))
    assert not any(p.known for p in plan.stages)
    assert any("base image" in n for n in plan.notes) and any("secrets" in n for n in plan.notes)
    plan = plan_build(load_recipe(recipe_file(VALID)), inputs(secrets=None), Path("/cache/stages"))
    assert {p.stage.name: p.known for p in plan.stages} == {
        "common": True, "master-packages": True, "master": False, "worker-packages": True, "worker": False}


def test_rootless_plan_installs_nothing_and_leaves_packages_to_first_boot(recipe_file: Any) -> None:
    plan = plan_build(load_recipe(recipe_file(VALID)), inputs(backend="guestfs"), Path("/cache/stages"))
    assert [p.stage.name for p in plan.stages] == ["common", "master", "worker"]
    assert all(not p.stage.packages for p in plan.stages)
    user_data = next(f for layer in plan.final("master").stage.layers for f in layer.files
                     if f.tree_path == "root/etc/cloud/cloud.cfg.d/90-imagebuilder.cfg")
    assert b"dnsmasq" in user_data.data and b"nfs-common" in user_data.data


def test_checks_come_from_the_layer_descriptions_and_the_unit_files(recipe_file: Any) -> None:
    plan = plan_build(load_recipe(recipe_file(VALID)), inputs(), Path("/cache/stages"))
    tools = {(c.tool, c.path) for c in plan.final("master").stage.checks}
    assert ("cloud-init schema", "/boot/firmware/user-data") in tools
    assert ("dnsmasq --test", "/etc/dnsmasq.d/cluster.conf") in tools and ("nft -c", "/etc/nftables.conf") in tools
    assert ("systemd-analyze verify", "/etc/systemd/system/imagebuilder-dashboard.service") in tools
    # Without the k3s binary its unit is knowingly unverifiable.
    layers = plan.final("master").stage.layers
    assert not any("k3s.service" in c.path for c in stage_checks(layers, "/boot/firmware", ("k3s.service",)))
    # Every checker name a layer.yaml may use is implemented, by a tool in the image or on the data.
    assert {*DATA_CHECKS, "cloud-init-schema", "dnsmasq", "nft", "chrony"} == set(CHECK_TOOLS)


def test_recipe_layer_description_adds_packages_units_and_arguments(recipe_file: Any, tmp_path: Path) -> None:
    layer = tmp_path / "extra"
    (layer / "root/etc/systemd/system").mkdir(parents=True)
    (layer / "root/etc/systemd/system/hello.service").write_text("[Service]\nExecStart=/bin/true\n")
    (layer / "boot").mkdir()
    (layer / "boot/hello.txt").write_text("hi\n")
    (layer / "layer.yaml").write_text("packages: [htop]\nunits: [hello.service]\nkernel_arguments: [quiet]\n"
                                      "modes: {root/etc/systemd/system/hello.service: \"0600\"}\n")
    recipe = load_recipe(recipe_file(VALID + "overlays: [extra]\n"))
    assert role_packages(recipe, "worker") == ("systemd-timesyncd", "htop")
    assert role_packages(recipe, "master")[-1] == "htop"
    rendered = render_layer("extra", layer, {})
    assert rendered.units == ("hello.service",) and rendered.kernel_arguments == ("quiet",)
    modes = {f.tree_path: f.mode for f in rendered.files}
    assert modes["root/etc/systemd/system/hello.service"] == 0o600
    assert next(f for f in rendered.files if f.boot).system_path("/boot/firmware") == "/boot/firmware/hello.txt"


def test_bytecode_beside_a_layers_programs_is_not_part_of_the_layer(tmp_path: Path) -> None:
    programs = tmp_path / "root/usr/local/lib/x"
    (programs / "__pycache__").mkdir(parents=True)
    (programs / "tool.py").write_text("print(1)\n")
    before = render_layer("x", tmp_path, {})
    (programs / "__pycache__/tool.cpython-311.pyc").write_bytes(b"\0bytecode")
    after = render_layer("x", tmp_path, {})
    assert [f.tree_path for f in after.files] == ["root/usr/local/lib/x/tool.py"]
    assert after.digest() == before.digest()


@pytest.mark.parametrize(("text", "problem"), [
    ("pakages: [htop]\n", "pakages: unknown key; did you mean 'packages'? (line 1)"),
    ("packages: [htop]\npackages: [vim]\n", "packages: duplicate key"),
    ("units: [hello]\n", "units[0]: 'hello' is not a systemd unit name"),
    ("kernel_arguments: ['quiet; reboot']\n", "kernel_arguments[0]: 'quiet; reboot' is not one kernel argument"),
    ("checks: [{file: root/etc/x, tool: eyeball}]\n", "checks[0].tool: 'eyeball' is not one of"),
    ("modes: {etc/x: '0600'}\n", "modes: 'etc/x' is not a path in the layer's trees"),
])
def test_layer_description_mistakes_name_the_file_and_key(tmp_path: Path, text: str, problem: str) -> None:
    (tmp_path / "layer.yaml").write_text(text)
    with pytest.raises(RecipeError) as excinfo:
        load_description(tmp_path)
    assert excinfo.value.problems[0].startswith(f"{tmp_path / 'layer.yaml'}: ")
    assert problem in excinfo.value.problems[0]


def test_layer_with_stray_entries_or_dangling_modes_is_refused(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    with pytest.raises(ImageBuilderError, match="a layer holds only root/, boot/ and layer.yaml"):
        render_layer("x", tmp_path, {})
    (tmp_path / "etc").rmdir()
    (tmp_path / "layer.yaml").write_text("modes: {root/etc/missing: '0600'}\n")
    with pytest.raises(ImageBuilderError, match="root/etc/missing is not a file of this layer"):
        render_layer("x", tmp_path, {})


def test_builtin_layers_describe_themselves() -> None:
    for role in ("common", "master", "worker"):
        load_description(BUILTIN / role)


def test_build_plan_command_prints_stages_and_json(recipe_file: Any, capsys: pytest.CaptureFixture[str],
                                                   tmp_path: Path) -> None:
    path = recipe_file(VALID)
    argv = ["--cache-dir", str(tmp_path / "cache"), "--state-dir", str(tmp_path / "state"), "build", "--plan"]
    assert main([*argv, str(path)]) == 0
    text = capsys.readouterr().out
    assert "common" in text and "master-packages" in text and "note: the base image is not in the cache" in text
    # VALID asks for the k3s release: the plan says where the binary comes from, and that it is fetched first.
    release = "https://github.com/k3s-io/k3s/releases/download/v1.31.4%2Bk3s1"
    assert f"\n  k3s v1.31.4+k3s1: binary from {release}\n" in text
    assert f"note: k3s: the build downloads release v1.31.4+k3s1 ({release}): not in the cache yet" in text
    assert main([*argv, "--json", str(path)]) == 0
    document = json.loads(capsys.readouterr().out)
    assert [s["stage"] for s in document["stages"]] == ["common", "master-packages", "master", "worker-packages",
                                                        "worker"]
    assert all(s["action"] == "build" for s in document["stages"])
    assert document["k3s"] == {"version": "v1.31.4+k3s1", "binary": "included", "assets": release, "cached": False}
    none = recipe_file(VALID + "k3s: {assets: none}\n")
    assert main([*argv, str(none)]) == 0
    text = capsys.readouterr().out
    assert "\n  k3s: no binary in the images (k3s.assets: none)\n" in text
    assert "note: no k3s binary in the images: k3s.assets is none" in text
    assert main([*argv, "--json", str(none)]) == 0
    assert json.loads(capsys.readouterr().out)["k3s"] == {"version": "v1.31.4+k3s1", "binary": "none",
                                                          "assets": "none", "cached": False}
    # Read only: nothing made in the cache or the state directory.
    assert not (tmp_path / "cache").exists() and not (tmp_path / "state").exists()


def test_the_plan_says_where_the_build_gets_k3s(recipe_file: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = Inputs(base=BASE, secrets=SECRETS, k3s=K3sAssets(None, RELEASE), backend=choose_backend("loop"))
    monkeypatch.delenv(ASSETS_ENV, raising=False)
    plan = plan_build(load_recipe(recipe_file(VALID)), missing, Path("/cache/stages"))
    # The layer that brings k3s is in every stage: no key is final before the download.
    assert {p.unknown for p in plan.stages} == {"unknown: no k3s yet"}
    assert plan.notes == (f"k3s: the build downloads release v1.31.4+k3s1 ({RELEASE}): not in the cache yet (the "
                          "build fails if it cannot get it), and every stage's key follows from it",)
    monkeypatch.setenv(ASSETS_ENV, "/srv/k3s")
    from_env = dataclasses.replace(missing, k3s=K3sAssets(None, "file:///srv/k3s"))
    plan = plan_build(load_recipe(recipe_file(VALID)), from_env, Path("/cache/stages"))
    assert plan.notes[0].startswith(f"k3s: the build takes v1.31.4+k3s1 from ${ASSETS_ENV} (file:///srv/k3s)")


def test_unknown_keys_are_said_in_words(recipe_file: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    argv = ["build", "--plan", str(recipe_file(VALID)), "--cache-dir", str(tmp_path / "cache"),
            "--state-dir", str(tmp_path / "state"), "--backend", "loop"]
    assert main(argv) == 0
    rows = capsys.readouterr().out.splitlines()[2:7]  # after the cluster's line and the k3s line
    assert all(row.split(None, 2)[2].startswith("unknown: no base yet  ") for row in rows), rows
    assert "?" not in "".join(rows)
    assert main([*argv, "--json"]) == 0
    assert {s["unknown"] for s in json.loads(capsys.readouterr().out)["stages"]} == {"unknown: no base yet"}


def test_a_cache_of_another_user_is_named_not_a_traceback(shared_tmp: Path) -> None:
    (shared_tmp / "recipe.yaml").write_text(VALID)
    cache = shared_tmp / "cache"
    (cache / "bases").mkdir(parents=True)
    lock_away(cache)  # as root's own cache is
    result = subprocess.run(as_another_user([sys.executable, "-m", "imagebuilder", "build", "--plan", "recipe.yaml",
                                             "--cache-dir", str(cache), "--state-dir", str(shared_tmp / "state")]),
                            capture_output=True, text=True, cwd=shared_tmp, check=False,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[0].startswith(f"imagebuilder: {cache}: permission denied (it belongs to ")


def check_keys(text: str, recipe_file: Any, role: str = "master") -> dict[tuple[str, str], str]:
    stage = plan_build(load_recipe(recipe_file(text)), inputs(), Path("/cache/stages")).final(role).stage
    return {(c.tool, c.path): check_key(stage, c) for c in stage.checks}


def test_a_check_is_run_again_exactly_when_its_inputs_change(recipe_file: Any) -> None:
    before = check_keys(VALID, recipe_file)
    # A worker renamed: the DHCP reservations (dnsmasq's file) change, so does the master's layer, whose
    # files the layer's own checks depend on; the nftables rules live in the same layer.
    renamed = check_keys(VALID.replace("node2", "node9"), recipe_file)
    dnsmasq = ("dnsmasq --test", "/etc/dnsmasq.d/cluster.conf")
    assert before[dnsmasq] != renamed[dnsmasq]
    # The same recipe: the same keys, so the checks are not run again.
    assert check_keys(VALID, recipe_file) == before
    # Another base (other tools in the image): every check again.
    stage = plan_build(load_recipe(recipe_file(VALID)), inputs(BaseImage(BASE.path, "cd" * 32, BASE.layout, {})),
                       Path("/cache/stages")).final("master").stage
    assert not {check_key(stage, c) for c in stage.checks} & set(before.values())


def test_passed_checks_are_read_from_the_records_of_the_stage_name(tmp_path: Path) -> None:
    def record(*passed: str) -> str:
        return StageRecord({}, (), (), "", 0, Usage(0, (), 0), (), passed).to_json()

    (tmp_path / "master-aaaaaaaaaaaaaaaaaaaaaaaa.json").write_text(record("k1", "k2"))
    (tmp_path / "master-bbbbbbbbbbbbbbbbbbbbbbbb.json").write_text(record("k3"))
    (tmp_path / "master-packages-cccccccccccccccccccccccc.json").write_text(record("other"))
    (tmp_path / "master-dddddddddddddddddddddddd.json").write_text("{not json")
    # A record of another version passes on no verdict.
    (tmp_path / "master-eeeeeeeeeeeeeeeeeeeeeeee.json").write_text(json.dumps({"checks_passed": ["k4"]}))
    assert passed_before(tmp_path, "master") == {"k1", "k2", "k3"}


def test_netboot_master_is_made_after_the_worker_and_from_its_key(recipe_file: Any) -> None:
    text = VALID + "netboot: {workers: [node1]}\n"
    plan = plan_build(load_recipe(recipe_file(text)), inputs(), Path("/cache/stages"))
    names = [p.stage.name for p in plan.stages]
    assert names == ["common", "worker-packages", "worker", "master-packages", "master"]
    by_name = {p.stage.name: p.stage for p in plan.stages}
    source = by_name["master"].netboot
    assert source is not None and by_name["worker"].netboot is None
    assert source.worker_image == stage_image(Path("/cache/stages"), by_name["worker"])
    assert source.worker_key == by_name["worker"].key() and source.nodes == ("b8-27-eb-00-00-01",)
    # A worker change (here its overlay, through the table) reaches the master's tree; a master-only package
    # does not reach the worker.
    before = keys(text, recipe_file)
    assert keys(text + "packages: {master: [htop]}\n", recipe_file)["worker"] == before["worker"]
    assert keys(text.replace("netboot: {workers: [node1]}", "netboot: {workers: [all]}"),
                recipe_file)["master"] != before["master"]
    assert keys(VALID, recipe_file)["master"] != before["master"]
