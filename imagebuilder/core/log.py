"""Logging to stderr with named, timed steps, and progress that suits the terminal.

Progress bars (tqdm) appear only when stderr is a TTY; otherwise a plain log line every few seconds,
so CI logs and pipes stay readable.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from tqdm import tqdm

log = logging.getLogger("imagebuilder")
# -v: every command run and every stage decision; --debug adds the commands' own output and tracebacks.
VERBOSE = 15
logging.addLevelName(VERBOSE, "VERBOSE")



class _Nesting(threading.local):
    depth = 0  # per thread: jobs run beside each other (core/beside.py) nest their own steps


_nesting = _Nesting()


def nesting() -> int:
    return _nesting.depth


@contextlib.contextmanager
def nested(depth: int) -> Iterator[None]:
    """This thread's steps are indented as if nested `depth` deep (a job started by a thread that was)."""
    before, _nesting.depth = _nesting.depth, depth
    try:
        yield
    finally:
        _nesting.depth = before


def setup_logging(verbose: bool, debug: bool) -> None:
    level = logging.DEBUG if debug else VERBOSE if verbose else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


@contextlib.contextmanager
def step(name: str) -> Iterator[None]:
    """Log `name` on entry and its duration on exit; nested steps are indented."""
    indent = "  " * _nesting.depth
    log.info("%s‣ %s", indent, name)
    start = time.monotonic()
    _nesting.depth += 1
    try:
        yield
    finally:
        _nesting.depth -= 1
    log.info("%s✓ %s (%.1fs)", indent, name, time.monotonic() - start)


# Seconds between the log lines of a Progress that is not on a TTY.
PROGRESS_INTERVAL = 5.0


class Progress:
    """Counts work done; a tqdm bar on a TTY, a log line every `interval` seconds otherwise."""

    def __init__(self, desc: str, total: int | None, unit: str = "B", interval: float | None = None) -> None:
        self.desc = desc
        self.total = total
        self.unit = unit
        self.done = 0
        self.interval = PROGRESS_INTERVAL if interval is None else interval
        self._start = time.monotonic()
        self._last = self._start
        self._bar: tqdm[Any] | None = None
        if sys.stderr.isatty():
            self._bar = tqdm(
                total=total, desc=desc, unit=unit, unit_scale=unit == "B", unit_divisor=1024,
                file=sys.stderr, leave=False, dynamic_ncols=True,
            )

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(ok=kind is None)

    def update(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            log.info("  %s: %s", self.desc, self._describe(now))

    def _describe(self, now: float) -> str:
        elapsed = max(now - self._start, 1e-6)
        if self.unit == "B":
            text = f"{self.done / 2**20:.1f} MiB"
            if self.total:
                text += f" of {self.total / 2**20:.1f} MiB ({100 * self.done / self.total:.0f}%)"
            return text + f", {self.done / 2**20 / elapsed:.1f} MiB/s"
        text = f"{self.done}"
        if self.total:
            text += f" of {self.total} {self.unit}"
        return text

    def close(self, ok: bool = True) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif ok and self.done:
            log.debug("  %s: %s", self.desc, self._describe(time.monotonic()))
