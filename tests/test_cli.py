"""The command line as a user meets it: exit codes, one line per problem, no traceback."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT, VALID, as_another_user


def imagebuilder(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "imagebuilder", *args], capture_output=True, text=True,
                          cwd=ROOT, check=False)


def test_validate_ok() -> None:
    result = imagebuilder("validate", "recipes/cluster.yaml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "recipes/cluster.yaml: ok: picluster: base debian bookworm bootstrap (raspios layout), arm64, 3 workers"
    )


def test_validate_reports_each_problem_on_its_own_line(recipe_file) -> None:
    path = recipe_file(VALID.replace("arch: arm64", "arch: sparc").replace("ip: 10.0.0.12", "ip: 10.9.0.12"))
    result = imagebuilder("validate", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{path}: arch: 'sparc' is not one of arm64, armhf (line 4)",
        f"{path}: workers[1].ip: 10.9.0.12 is outside the subnet 10.0.0.0/24 (line 12)",
    ]


def test_unknown_k3s_option_is_one_line_with_a_suggestion(recipe_file) -> None:
    path = recipe_file(VALID + "k3s: {extra_config: {tls-sans: [master.lab]}}\n")
    result = imagebuilder("validate", str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"{path}: k3s.extra_config.tls-sans: 'tls-sans' is not a k3s v1.31 server option; did you mean 'tls-san'? "
        f"(line {VALID.count(chr(10)) + 1})"]


def test_missing_recipe_is_one_line() -> None:
    result = imagebuilder("validate", "no/such.yaml")
    assert result.returncode == 2
    assert result.stderr == "no/such.yaml: no such file (check the path)\n"
    assert "Traceback" not in result.stderr


def test_help_on_every_command() -> None:
    top = imagebuilder("--help")
    assert top.returncode == 0
    for command in ("validate", "images"):
        assert command in top.stdout
        sub = imagebuilder(command, "--help")
        assert sub.returncode == 0 and "usage: imagebuilder" in sub.stdout


def test_images_lists_catalogue() -> None:
    result = imagebuilder("images")
    assert result.returncode == 0
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert names == ["ubuntu-24.04-raspi", "raspios-lite-trixie", "raspios-lite-bookworm"]


def test_readme_reference_matches_declarations() -> None:
    from imagebuilder.recipe.model import Recipe
    from imagebuilder.recipe.schema import describe

    readme = (ROOT / "README.md").read_text()
    assert "\n".join(describe(Recipe)) in readme, "README recipe reference is stale: regenerate it"


def test_json_output_of_validate_and_images(recipe_file) -> None:  # type: ignore[no-untyped-def]
    import json

    ok = imagebuilder("validate", "--json", "recipes/cluster.yaml")
    document = json.loads(ok.stdout)
    assert ok.returncode == 0 and document["ok"] and [w["hostname"] for w in document["workers"]] == [
        "node1", "node2", "node3"]
    bad = imagebuilder("validate", "--json", str(recipe_file(VALID.replace("arch: arm64", "arch: sparc"))))
    assert bad.returncode == 2 and json.loads(bad.stdout)["problems"][0].endswith(
        "arch: 'sparc' is not one of arm64, armhf (line 4)")
    names = [e["name"] for e in json.loads(imagebuilder("images", "--json").stdout)]
    assert names == ["ubuntu-24.04-raspi", "raspios-lite-trixie", "raspios-lite-bookworm"]


def test_verbose_shows_the_commands_run(recipe_file, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = recipe_file(VALID)
    out = tmp_path / "out/testcluster"
    out.mkdir(parents=True)
    (out / "worker.img").write_bytes(b"\0" * 65536)
    argv = ["--cache-dir", str(tmp_path / "cache"), "imager-repo", str(path)]
    quiet = subprocess.run([sys.executable, "-m", "imagebuilder", *argv], capture_output=True, text=True,
                           cwd=tmp_path, check=True)
    assert "+ xz" not in quiet.stderr
    (out / "worker.img.xz").unlink()
    (out / "worker.img").write_bytes(b"\1" * 65536)  # another digest: the cached copy does not serve it
    verbose = subprocess.run([sys.executable, "-m", "imagebuilder", "-v", *argv], capture_output=True, text=True,
                             cwd=tmp_path, check=True)
    # The image reaches xz through a pipe (holes as zeros from memory); the line says which, and runs as shown.
    assert f"+ xz -T0 -6 -c < {out / 'worker.img'}" in verbose.stderr


def test_failed_checks_have_an_exit_status_of_their_own(monkeypatch, capfd) -> None:  # type: ignore[no-untyped-def]
    from imagebuilder.cli import boottest
    from imagebuilder.cli.main import main
    from imagebuilder.core.errors import ChecksFailed

    def failing(ctx, recipe, options):  # type: ignore[no-untyped-def]
        raise ChecksFailed("boot test of x: 1 of 9 checks failed")

    monkeypatch.setattr(boottest, "run_boot_test", failing)
    monkeypatch.setattr("imagebuilder.cli.main.is_root", lambda: True)
    assert main(["boot-test", str(ROOT / "recipes/cluster.yaml")]) == 3
    assert capfd.readouterr().err.startswith("imagebuilder: boot test of x")


def test_global_options_before_or_after_the_command(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from imagebuilder.cli.main import main

    cache = tmp_path / "cache"
    for argv in (["--cache-dir", str(cache), "cache"], ["cache", "--cache-dir", str(cache)],
                 # A copy of the option on the command must not put back the default given before it.
                 ["--cache-dir", str(cache), "-v", "cache", "--debug"]):
        assert main(argv) == 0
        assert capsys.readouterr().out.startswith(f"{cache}: 0 entries")
    assert imagebuilder("validate", "recipes/cluster.yaml", "-v").returncode == 0


def test_debug_after_the_command_shows_the_traceback() -> None:
    quiet = imagebuilder("validate", "no/such.yaml")
    debug = imagebuilder("validate", "no/such.yaml", "--debug")
    assert quiet.returncode == debug.returncode == 2
    assert "Traceback" not in quiet.stderr and "Traceback" in debug.stderr


def test_a_mistyped_command_gets_the_nearest_names() -> None:
    result = imagebuilder("--cache-dir", "/nonexistent", "valdate", "recipes/cluster.yaml")
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["imagebuilder: unknown command 'valdate'",
                                          "  hint: did you mean validate? (imagebuilder --help lists the commands)"]
    other = imagebuilder("frobnicate")
    assert other.returncode == 2 and other.stderr.splitlines()[1] == "  hint: imagebuilder --help lists the commands"


def test_a_bug_keeps_its_traceback(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import dataclasses

    import pytest

    from imagebuilder.cli import main as cli
    from imagebuilder.cli.recipes import COMMANDS

    def broken(ctx, args):  # type: ignore[no-untyped-def]
        raise KeyError("a bug")

    images = next(c for c in COMMANDS if c.name == "images")
    monkeypatch.setattr(cli, "COMMANDS", [dataclasses.replace(images, run=broken)])
    for argv in (["images"], ["images", "--debug"]):
        with pytest.raises(KeyError):  # not an expected error: it reaches Python, which prints the traceback
            cli.main(argv)


def test_a_build_that_mounts_asks_for_root_and_one_that_does_not_goes_on() -> None:
    """The loop backend mounts on this host, so it needs root; guestfs and a plan do not (the backend says)."""
    def as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(as_another_user([sys.executable, "-m", "imagebuilder", *args]), capture_output=True,
                              text=True, cwd=ROOT, check=False)

    refused = as_nobody("build", "--backend", "loop", "recipes/cluster.yaml")
    assert refused.returncode == 2
    assert refused.stderr.startswith("imagebuilder: imagebuilder build needs root"), refused.stderr
    for args in (("--backend", "loop", "--plan"), ("--backend", "guestfs", "--plan")):
        planned = as_nobody("build", *args, "recipes/cluster.yaml")
        assert "needs root" not in planned.stderr, planned.stderr
