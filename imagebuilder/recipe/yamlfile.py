"""Read a YAML file keeping what error messages need: key paths, lines, and the source text.

PyYAML's own loader silently keeps the last of two equal keys and turns `10:20:30:40:50:59` into a
sexagesimal integer; we build the Python value from the node tree ourselves so that duplicates are
reported and a string-typed setting can take the scalar's text exactly as written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class Document:
    path: Path
    data: Any
    lines: dict[str, int] = field(default_factory=dict)  # key path -> 1-based line
    texts: dict[str, str] = field(default_factory=dict)  # key path -> plain scalar text as written
    problems: list[tuple[str, str]] = field(default_factory=list)  # (key path, message)


def join_path(parent: str, key: object) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else str(key)


def load_document(path: Path) -> Document:
    """Parse `path`; raises OSError when unreadable and yaml.MarkedYAMLError when it does not parse."""
    text = path.read_text(encoding="utf-8")
    doc = Document(path=path, data=None)
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if node is not None:
        constructor = yaml.SafeLoader("")
        doc.data = _build(node, "", doc, constructor)
    return doc


def _build(node: yaml.Node, path: str, doc: Document, constructor: yaml.SafeLoader) -> Any:
    doc.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = constructor.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                key = str(key)
            child = join_path(path, key)
            if key in out:
                first = doc.lines.get(child, 0)
                doc.problems.append(
                    (child, f"duplicate key (first given on line {first}); keep one of them")
                )
                continue
            doc.lines[child] = key_node.start_mark.line + 1
            out[key] = _build(value_node, child, doc, constructor)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, join_path(path, i), doc, constructor) for i, item in enumerate(node.value)]
    assert isinstance(node, yaml.ScalarNode)
    if node.style is None:
        doc.texts[path] = node.value
    return constructor.construct_object(node, deep=True)
