"""What every command gets: the one ExitStack, and where the cache and the secrets live."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from imagebuilder.core.beside import Turns
from imagebuilder.core.invoker import Invoker, hand_over, home, invoking_user


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(home() / ".cache")
    return Path(base) / "imagebuilder"


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(home() / ".local" / "state")
    return Path(base) / "imagebuilder"


@dataclass
class Context:
    cache_dir: Path = field(default_factory=default_cache_dir)
    state_root: Path = field(default_factory=default_state_dir)
    debug: bool = False
    # Every acquisition of the command goes on this stack, so an error or a signal unwinds it all.
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    # Under sudo: what the command writes that belongs to the person who ran it (see invoker.py).
    invoker: Invoker | None = field(default_factory=invoking_user)
    # Taken by the command's work that uses every core (compressors): its jobs side by side take turns there.
    cores: Turns = field(default_factory=Turns)

    def give_back(self, path: Path) -> None:
        """When the command ends (whatever the outcome), hand `path` over to the person behind sudo."""
        if self.invoker is not None:
            self.stack.callback(hand_over, path, self.invoker)

    def cache(self, *parts: str) -> Path:
        # The cache holds images with the clusters' secrets in them: its owner's only. (Another imagebuilder
        # may make it at the same moment: test_two_processes_fetch_once.)
        if not self.cache_dir.exists():
            self.cache_dir.mkdir(parents=True, mode=0o700, exist_ok=True)
        path = self.cache_dir.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def state_dir(self, cluster: str) -> Path:
        """The cluster's secrets directory, readable by its owner only."""
        path = self.state_root / cluster
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.chmod(0o700)
        return path
