"""The configuration keys `k3s server` takes, per k3s minor version (data/k3s-keys.yaml)."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources

import yaml


@dataclass(frozen=True)
class KeyList:
    minor: str  # the listed minor version the keys are of, e.g. v1.31
    keys: frozenset[str]
    exact: bool  # the recipe's own minor version; otherwise the nearest one listed


def _minor(version: str) -> tuple[int, int]:
    match = re.match(r"v(\d+)\.(\d+)", version)
    assert match, version  # validated with the recipe (check_k3s_version)
    return int(match.group(1)), int(match.group(2))


@functools.cache
def load_key_lists() -> dict[str, frozenset[str]]:
    text = resources.files("imagebuilder").joinpath("data/k3s-keys.yaml").read_text()
    return {minor: frozenset(keys) for minor, keys in yaml.safe_load(text).items()}


def keys_for(version: str) -> KeyList:
    """The keys of the version's minor release, or of the nearest listed one (the newer on a tie)."""
    lists = load_key_lists()
    wanted = _minor(version)
    minor = min(lists, key=lambda m: (abs(_minor(m)[1] - wanted[1]) + 100 * abs(_minor(m)[0] - wanted[0]),
                                      -_minor(m)[1]))
    return KeyList(minor, lists[minor], _minor(minor) == wanted)
