"""Asking a guest again until it says what the test waits for, or a deadline passes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll(read: Callable[[], T], done: Callable[[T], bool], until: float, pause: float) -> T:
    """Call `read` until `done` accepts its value or time.monotonic() reaches `until`, `pause` seconds apart;
    return the last value read, accepted or not (the caller's verdict says which).

    Reads at least once, however late: a check that starts after its deadline still reports what it sees."""
    while True:
        value = read()
        left = until - time.monotonic()
        if done(value) or left <= 0:
            return value
        time.sleep(min(pause, left))
