"""Turn parsed YAML into frozen dataclasses, checking keys and types against the field declarations.

A setting is declared once, as a dataclass field with `setting(help=..., check=...)`; the loader, the
defaults and the recipe reference (`describe`) are all derived from that declaration.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable
from typing import Any

import yaml

from imagebuilder.recipe.yamlfile import Document, join_path

# A field check returns an error message (with its fix) or None; it may also normalise the value
# by returning ("ok", new_value).
FieldCheck = Callable[[Any], "str | None | tuple[str, Any]"]


def setting(*, help: str, default: Any = dataclasses.MISSING, check: FieldCheck | None = None,
            example: str | None = None, written_as: Any = None) -> Any:
    """Declare one recipe setting. `written_as`: the type the YAML gives, when the check parses it into the
    field's own type (a size written "4G" kept as bytes)."""
    metadata = {"help": help, "check": check, "example": example, "written_as": written_as}
    if isinstance(default, type):  # a nested section whose keys all have defaults
        return dataclasses.field(default_factory=default, metadata=metadata)
    if isinstance(default, list | dict):
        frozen = tuple(default) if isinstance(default, list) else default
        return dataclasses.field(default_factory=lambda: frozen, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


class Loader:
    """Converts one Document, collecting every problem instead of stopping at the first."""

    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.problems: list[tuple[str, str]] = list(doc.problems)

    def failed(self, prefix: str) -> bool:
        """Whether a problem was recorded at `prefix` or below it."""
        return any(p == prefix or p.startswith((prefix + ".", prefix + "[")) for p, _ in self.problems)

    def problem(self, path: str, message: str) -> None:
        self.problems.append((path, message))

    def load(self, cls: type[Any], data: Any, path: str = "") -> Any:
        """Return an instance of dataclass `cls`, or None when a required part is unusable."""
        if data is None:
            data = {}
        if not isinstance(data, dict):
            self.problem(path or "(top level)", f"expected a mapping of keys, got {describe_value(data)}")
            return None
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key in data:
            if key not in fields:
                near = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
                fix = f"did you mean '{near[0]}'?" if near else f"known keys: {', '.join(fields)}"
                self.problem(join_path(path, key), f"unknown key; {fix}")
        values: dict[str, Any] = {}
        complete = True
        for name, f in fields.items():
            child = join_path(path, name)
            if name not in data:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    self.problem(child, "is required")
                    complete = False
                continue
            ok, value = self.convert(f.metadata.get("written_as") or hints[name], data[name], child)
            if ok and value is not None and f.metadata.get("check"):
                ok, value = self.apply_check(f.metadata["check"], value, child)
            if ok:
                values[name] = value
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                complete = False
        return cls(**values) if complete else None

    def apply_check(self, check: FieldCheck, value: Any, path: str) -> tuple[bool, Any]:
        verdict = check(value)
        if verdict is None:
            return True, value
        if isinstance(verdict, tuple):
            return True, verdict[1]
        self.problem(path, verdict)
        return False, None

    def convert(self, hint: Any, value: Any, path: str) -> tuple[bool, Any]:
        origin = typing.get_origin(hint)
        args = typing.get_args(hint)
        if origin in (typing.Union, types.UnionType):
            if value is None and type(None) in args:
                return True, None
            (inner,) = [a for a in args if a is not type(None)]
            return self.convert(inner, value, path)
        if dataclasses.is_dataclass(hint):
            result = self.load(hint, value, path)  # type: ignore[arg-type]
            return result is not None, result
        if origin is tuple:
            return self.convert_list(args[0], value, path)
        return self.convert_plain(hint, value, path)

    def convert_list(self, hint: Any, value: Any, path: str) -> tuple[bool, Any]:
        """A YAML list as a tuple of `hint`s."""
        if not isinstance(value, list):
            self.problem(path, f"expected a list, got {describe_value(value)}")
            return False, None
        items = []
        ok = True
        for i, item in enumerate(value):
            item_ok, converted = self.convert(hint, item, join_path(path, i))
            if not item_ok and dataclasses.is_dataclass(hint):
                # Keep the table's indices for the checks across items; the problem is
                # recorded, so this partial recipe never leaves the loader.
                converted, item_ok = None, True
            ok = ok and item_ok
            items.append(converted)
        return ok, tuple(items)

    def convert_plain(self, hint: Any, value: Any, path: str) -> tuple[bool, Any]:
        """A mapping, a string, a boolean or a whole number, as YAML gave it."""
        kind = typing.get_origin(hint) or hint
        if kind not in PLAIN:
            raise TypeError(f"unsupported setting type {hint!r} at {path}")
        # A plain scalar such as 12345678 or 10:20:30 meant as text: take it as written.
        if kind is str and isinstance(value, int | float) and not isinstance(value, bool) and path in self.doc.texts:
            return True, self.doc.texts[path]
        wanted, accepts = PLAIN[kind]
        if accepts(value):
            return True, value
        self.problem(path, f"expected {wanted}, got {describe_value(value)}")
        return False, None


# The plain types a setting may have: what an error says is expected, and which YAML values are one.
PLAIN: dict[type, tuple[str, Callable[[Any], bool]]] = {
    dict: ("a mapping", lambda v: isinstance(v, dict)),
    str: ("a string", lambda v: isinstance(v, str)),
    bool: ("true or false", lambda v: isinstance(v, bool)),
    int: ("a whole number", lambda v: isinstance(v, int) and not isinstance(v, bool)),
}


def describe_value(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, int | float):
        return f"the number {value}"
    return repr(value)


def describe(cls: type[Any], prefix: str = "") -> list[str]:
    """The recipe reference: one Markdown row per setting, derived from the declarations."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        path = join_path(prefix, f.name)
        target = hints[f.name]
        if typing.get_origin(target) in (typing.Union, types.UnionType):
            (target,) = [a for a in typing.get_args(target) if a is not type(None)]
        if typing.get_origin(target) is tuple and dataclasses.is_dataclass(typing.get_args(target)[0]):
            target = typing.get_args(target)[0]
            path += "[]"
        if f.default is not dataclasses.MISSING:
            default = f"`{yaml_text(f.default)}`"
        elif f.default_factory is not dataclasses.MISSING and isinstance(f.default_factory, type):
            default = "see below"
        elif f.default_factory is not dataclasses.MISSING:
            default = f"`{yaml_text(f.default_factory())}`"
        else:
            default = "required"
        rows.append(f"| `{path}` | {default} | {f.metadata.get('help', '')} |")
        if dataclasses.is_dataclass(target) and isinstance(target, type):
            rows.extend(describe(target, path))
    return rows


def yaml_text(value: Any) -> str:
    """A default as a user would write it in the recipe."""
    if isinstance(value, tuple):
        value = list(value)
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("\n...").strip()
