"""The package's shape: each folder imports only from the folders beneath it, so there is no cycle; the
programs that run on the nodes import nothing but the standard library and the modules beside them.

Every import counts, including those inside functions: a lazy import must not hide a cycle.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "imagebuilder"
NODE_PROGRAMS = sorted((PACKAGE.parent / "overlays").glob("*/root/usr/local/lib/imagebuilder/*.py"))
# Modules of the package that are node programs too: links to the overlay's file, so both import one file.
SHARED_WITH_NODES = {"imagebuilder/status/nodetable.py": "overlays/master/root/usr/local/lib/imagebuilder/nodetable.py"}
DEVELOPMENT = PACKAGE.parent / "docs" / "development.md"


def stated_layers() -> tuple[str, ...]:
    """The folders in the order docs/development.md's code layout table states, bottom first: a folder may
    import from itself and from those before it. The order is stated there once; this test enforces it."""
    section = DEVELOPMENT.read_text().split("## Code layout", 1)[1]
    return tuple(re.findall(r"^\| `([a-z_]+)/` \|", section, flags=re.MULTILINE))


LAYERS = stated_layers()


def folder_of(module: str) -> str | None:
    """The top-level folder of `imagebuilder.x.y`, or None for the package itself."""
    parts = module.split(".")
    return parts[1] if parts[0] == "imagebuilder" and len(parts) > 1 else None


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> list[tuple[str, int]]:
    """(imported module, line) for every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text())
    here = module_name(path).split(".")
    if path.name != "__init__.py":
        here = here[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            found.append((module, node.lineno))
            # `from imagebuilder.disk import seed` imports the module imagebuilder.disk.seed
            found += [(f"{module}.{alias.name}", node.lineno) for alias in node.names]
    return found


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_folder_is_a_known_layer() -> None:
    assert len(LAYERS) == len(set(LAYERS)) >= 10, LAYERS
    folders = {p.relative_to(PACKAGE).parts[0] for p in modules() if len(p.relative_to(PACKAGE).parts) > 1}
    assert folders == set(LAYERS), f"folders not in {DEVELOPMENT.name}'s table: {folders - set(LAYERS)}; " \
        f"in it but not in the package: {set(LAYERS) - folders}"


def test_folders_import_only_from_beneath() -> None:
    wrong = []
    for path in modules():
        parts = path.relative_to(PACKAGE).parts
        if len(parts) == 1:  # __init__ and __main__ of the package itself
            continue
        mine = parts[0]
        for module, line in imports_of(path):
            theirs = folder_of(module)
            if theirs is None or theirs == mine or theirs not in LAYERS:
                continue
            if LAYERS.index(theirs) > LAYERS.index(mine):
                wrong.append(f"{path.relative_to(PACKAGE)}:{line}: {mine} imports {module} (above it)")
    assert not wrong, "\n".join(wrong)


def _packages_of(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts) + 1)]


def test_no_import_cycle_between_modules() -> None:
    """Within a folder too: module A importing B while B imports A (at any depth) is a cycle."""
    names = {module_name(p): p for p in modules()}
    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        wanted = {m for m, _ in imports_of(path) if m in names and m != name}
        # Importing a.b.c runs the __init__ of a.b first: an edge to every enclosing package.
        graph[name] = {p for m in wanted for p in _packages_of(m) if p in names and p != name} | wanted
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
    assert not cycles, "\n".join(cycles)


def test_pyproject_lists_every_package() -> None:
    """setuptools is given the package list (the overlays are mapped in): a new folder must be added."""
    import tomllib

    config = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {module_name(p) for p in PACKAGE.rglob("__init__.py")}
    assert set(config["packages"]) == found | {"imagebuilder.overlays"}
    assert config["package-dir"] == {"imagebuilder.overlays": "overlays"}


def test_node_programs_import_the_standard_library_and_the_modules_beside_them() -> None:
    """A node runs them with its own python3, the program's folder first on sys.path: neither the imagebuilder
    package nor anything from PyPI is there, only what the same layer installs beside the program."""
    assert len(NODE_PROGRAMS) >= 5, NODE_PROGRAMS
    wrong = []
    for path in NODE_PROGRAMS:
        beside = {p.stem for p in path.parent.glob("*.py")}
        for module, line in imports_of(path):
            top = module.split(".")[0]
            if top not in sys.stdlib_module_names and top not in beside:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line}: imports {module}")
    assert not wrong, "\n".join(wrong)


def test_package_modules_shared_with_the_nodes_are_the_overlays_files() -> None:
    """`imagebuilder status` and the collector on the master import the same node table: the package's module
    is a link to the overlay's, which the master image carries (a wheel holds a copy of it)."""
    for module, program in SHARED_WITH_NODES.items():
        link = PACKAGE.parent / module
        assert link.is_symlink() and link.resolve() == (PACKAGE.parent / program).resolve(), module
    links = {p.relative_to(PACKAGE.parent).as_posix() for p in modules() if p.is_symlink()}
    assert links == set(SHARED_WITH_NODES)
