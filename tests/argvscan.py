"""Find the programs a package runs by reading its source: the first word of every command line it builds.

A command line reaches a program through run(), output(), spawned(), mount_now(), find_program(),
which() or subprocess, as a list literal, a name bound to one (in the function or the module), a
function's parameter (then at every call of that function), a dict of them, or a function returning
one. What the scan cannot follow is reported as unresolved, with its place, instead of being dropped:
a test then names each such place and says which programs run there.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Calls that take a command line (or a program's name) as their first argument. exec_argv prefixes
# `ip netns exec`: the command it wraps runs on the host too.
NAME_SINKS = {"run", "output", "spawned", "mount_now", "find_program", "which"}
ATTRIBUTE_SINKS = {"which", "exec_argv", "Popen", "check_output", "check_call", "call"}
SUBPROCESS_RUN = ("subprocess", "run")


@dataclass
class Scan:
    programs: dict[str, set[str]] = field(default_factory=dict)  # program -> "file:line" where it runs
    unresolved: set[str] = field(default_factory=set)  # "file: expression" (lines move; the expression stays)


@dataclass
class _Module:
    path: str
    tree: ast.Module
    parents: dict[ast.AST, ast.AST]


def scan(roots: list[Path], relative_to: Path) -> Scan:
    modules = []
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
            modules.append(_Module(str(path.relative_to(relative_to)), tree, parents))
    result = Scan()
    resolver = _Resolver(modules)
    for module in modules:
        for node in ast.walk(module.tree):
            if isinstance(node, ast.Call) and node.args and _is_sink(node):
                where = f"{module.path}:{node.lineno}"
                names, unresolved = resolver.resolve(node.args[0], module, set())
                for name in names:
                    result.programs.setdefault(name, set()).add(where)
                result.unresolved |= {f"{module.path}: {u}" for u in unresolved}
    return result


def _is_sink(call: ast.Call) -> bool:
    func = call.func
    if isinstance(func, ast.Name):
        return func.id in NAME_SINKS
    if isinstance(func, ast.Attribute):
        if isinstance(func.value, ast.Name) and (func.value.id, func.attr) == SUBPROCESS_RUN:
            return True
        return func.attr in ATTRIBUTE_SINKS
    return False


# The parts of an expression that stand for its argv[0]: a list's first item, a comprehension's source, both
# sides of a conditional, a dict's values, the left of a concatenation.
_LEADS_TO: dict[type[ast.AST], Callable[[Any], tuple[ast.AST, ...]]] = {
    ast.List: lambda n: tuple(n.elts[:1]),
    ast.Tuple: lambda n: tuple(n.elts[:1]),
    ast.ListComp: lambda n: (n.generators[0].iter,),
    ast.Starred: lambda n: (n.value,),
    ast.Subscript: lambda n: (n.value,),
    ast.Dict: lambda n: tuple(n.values),
    ast.IfExp: lambda n: (n.body, n.orelse),
    ast.BinOp: lambda n: (n.left,),
}


def _leads_to(node: ast.AST) -> tuple[ast.AST, ...] | None:
    """What `node` stands for, to be followed in its place; None when it is not such an expression."""
    if isinstance(node, ast.Attribute) and ast.unparse(node) == "sys.executable":
        return ()  # the Python imagebuilder runs on
    if isinstance(node, ast.Attribute) and node.attr == "program":
        return (node.value,)
    follow = _LEADS_TO.get(type(node))
    return follow(node) if follow is not None else None


class _Resolver:
    def __init__(self, modules: list[_Module]) -> None:
        self.modules = modules

    def resolve(self, node: ast.AST, module: _Module, seen: set[int]) -> tuple[set[str], set[str]]:
        """The program names `node` can stand for at argv[0], and what could not be followed."""
        if id(node) in seen:
            return set(), set()
        seen = seen | {id(node)}
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            # A path names a program the code found itself (a venv's, an image's): not one from PATH.
            return ({node.value}, set()) if "/" not in node.value else (set(), set())
        inner = _leads_to(node)
        if inner is not None:
            return self._union(inner, module, seen)
        if isinstance(node, ast.Name):
            return self._resolve_name(node, module, seen)
        if isinstance(node, ast.Call):
            return self._resolve_call(node, module, seen)
        return set(), {ast.unparse(node)}

    def _union(self, nodes: Iterator[ast.AST] | tuple[ast.AST, ...], module: _Module,
               seen: set[int]) -> tuple[set[str], set[str]]:
        names: set[str] = set()
        unresolved: set[str] = set()
        for n in nodes:
            more, lost = self.resolve(n, module, seen)
            names |= more
            unresolved |= lost
        return names, unresolved

    def _resolve_name(self, name: ast.Name, module: _Module, seen: set[int]) -> tuple[set[str], set[str]]:
        for scope in [*self._enclosing_functions(name, module), module.tree]:
            values = list(_assigned(scope, name.id))
            if values:
                return self._union(iter(values), module, seen)
            if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef)):
                position = _parameter_position(scope, name.id)
                if position is None:
                    continue
                if scope.name in NAME_SINKS | ATTRIBUTE_SINKS:
                    return set(), set()  # inside a wrapper: each call of it is scanned as a sink
                return self._union(iter(self._arguments_at_calls(scope.name, position, name.id)), module, seen)
        return set(), {name.id}

    def _resolve_call(self, call: ast.Call, module: _Module, seen: set[int]) -> tuple[set[str], set[str]]:
        func = call.func
        called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        if called in {"find_program", "which"} and call.args:
            return self.resolve(call.args[0], module, seen)
        if called[:1].isupper() and call.args:
            return self.resolve(call.args[0], module, seen)  # a record whose first field is the program
        returns = [(ret.value, m) for m in self.modules for f in _functions(m.tree, called)
                   for ret in ast.walk(f) if isinstance(ret, ast.Return) and ret.value is not None]
        if not returns:
            return set(), {ast.unparse(call)}
        names: set[str] = set()
        unresolved: set[str] = set()
        for value, m in returns:
            more, lost = self.resolve(value, m, seen)
            names |= more
            unresolved |= lost
        return names, unresolved

    def _arguments_at_calls(self, function: str, position: int, keyword: str) -> Iterator[ast.AST]:
        for m in self.modules:
            for node in ast.walk(m.tree):
                if not isinstance(node, ast.Call):
                    continue
                func = node.func
                called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
                if called != function:
                    continue
                if len(node.args) > position and not any(isinstance(a, ast.Starred) for a in node.args[:position]):
                    yield node.args[position]
                yield from (k.value for k in node.keywords if k.arg == keyword)

    def _enclosing_functions(self, node: ast.AST, module: _Module) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
        """The functions `node` is in, innermost first."""
        current = module.parents.get(node)
        while current is not None:
            if isinstance(current, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield current
            current = module.parents.get(current)


def _assigned(scope: ast.AST, name: str) -> Iterator[ast.AST]:
    """Values bound to `name` in scope (a function's body, or a module's top level)."""
    body = scope.body if isinstance(scope, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef)) else []
    nodes = ast.walk(scope) if not isinstance(scope, ast.Module) else iter(body)
    for node in nodes:
        if isinstance(node, ast.For) and isinstance(node.target, ast.Name) and node.target.id == name:
            yield from _elements(node.iter)
            continue
        targets = (node.targets if isinstance(node, ast.Assign)
                   else [node.target] if isinstance(node, ast.AnnAssign) else [])
        value = getattr(node, "value", None)
        if value is not None and any(isinstance(t, ast.Name) and t.id == name for t in targets):
            yield value


def _elements(node: ast.AST) -> Iterator[ast.AST]:
    """What a loop over `node` binds: each element of a literal (spliced ones included), else `node` itself."""
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        for element in node.elts:
            yield from _elements(element.value) if isinstance(element, ast.Starred) else (element,)
    elif isinstance(node, ast.IfExp):
        yield from _elements(node.body)
        yield from _elements(node.orelse)
    else:
        yield node


def _parameter_position(function: ast.FunctionDef | ast.AsyncFunctionDef, name: str) -> int | None:
    params = [a.arg for a in [*function.args.posonlyargs, *function.args.args]]
    if name not in params:
        return None
    position = params.index(name)
    # A method's self is not written at its calls.
    return position - 1 if params and params[0] in {"self", "cls"} else position


def _functions(tree: ast.Module, name: str) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            yield node


def scan_literal(roots: list[Path], relative_to: Path) -> Scan:
    """The programs named outright: every name given to require_programs(), and the first word of a command
    line written as a list at a subprocess call (the tests' way; they follow no names)."""
    result = Scan()
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            where = str(path.relative_to(relative_to))
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not isinstance(node, ast.Call):
                    continue
                if isinstance(node.func, ast.Name) and node.func.id == "require_programs":
                    words = node.args
                elif _is_sink(node) and isinstance(node.func, ast.Attribute) and node.args \
                        and isinstance(node.args[0], ast.List) and node.args[0].elts:
                    words = node.args[0].elts[:1]
                else:
                    continue
                for word in words:
                    if isinstance(word, ast.Constant) and isinstance(word.value, str) and "/" not in word.value:
                        result.programs.setdefault(word.value, set()).add(f"{where}:{node.lineno}")
    return result
