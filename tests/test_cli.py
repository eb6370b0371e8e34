"""The command line as a user meets it: exit codes, one line per problem, no traceback."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT, VALID


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
