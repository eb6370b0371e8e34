"""A base image ready for the stages: downloaded and verified, or bootstrapped; raw, in the cache."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from imagebuilder.recipe.catalogue import Layout


@dataclass(frozen=True)
class BaseImage:
    path: Path
    sha256: str
    layout: Layout
    packages: dict[str, str]  # name -> version
    origin: tuple[Path, ...] = ()  # the cache entries it was made from (a download), which must stay with it
