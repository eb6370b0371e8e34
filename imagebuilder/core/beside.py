"""Jobs run beside each other on threads, and stopped together.

The master's and the worker's stages and outputs do not depend on each other, and on two cores one
role's compression or digest fills the time the other spends waiting on mounts and programs. What makes
threads safe here is the stopping: when a job fails, or the main thread is interrupted (signals only
reach it), the others are cancelled: the long programs they run (`run(..., cancellable=True)`) are
stopped and their copy loops raise `Cancelled`, so each thread unwinds its own mounts, loop devices and
partial files on its way out. Only then does the first error go on, as if there had been one thread.
An undo is never cancellable: it always runs to its end.

Work that uses every core by itself and loses by sharing them (xz -T0) takes turns instead (`Turns`): the
build's two `xz -T0` side by side took 341.4 s on two cores, one after the other 316.3 s; the other jobs'
waits and programs go on meanwhile.
"""

from __future__ import annotations

import signal
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager, suppress
from typing import TypeVar

from imagebuilder.core.errors import Cancelled
from imagebuilder.core.log import log, nested, nesting

T = TypeVar("T")

_cancelled = threading.Event()
_lock = threading.Lock()
_running: set[subprocess.Popen[bytes]] = set()
# How long a cancelled program may take to end on SIGTERM before it gets SIGKILL.
GRACE = 10.0


def raise_if_cancelled() -> None:
    """Called between units of long work (a chunk copied, a program started)."""
    if _cancelled.is_set():
        raise Cancelled()


@contextmanager
def stoppable(proc: subprocess.Popen[bytes]) -> Iterator[None]:
    """proc is stopped if its job is cancelled while it runs; Cancelled is raised when it was."""
    with _lock:
        _running.add(proc)
        started_cancelled = _cancelled.is_set()
    if started_cancelled:
        proc.terminate()
    try:
        yield
    finally:
        with _lock:
            _running.discard(proc)
    raise_if_cancelled()


class Turns:
    """One at a time: a job that would use every core waits for the one using them now (cancellably)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holder = ""

    @contextmanager
    def turn(self, what: str) -> Iterator[None]:
        """Hold the cores for `what`; while another holds them, say so and wait (Cancelled ends the wait)."""
        if not self._lock.acquire(blocking=False):
            log.info("%s%s: waits for %s (one at a time, each with every core)", "  " * nesting(), what,
                     self._holder)
            while not self._lock.acquire(timeout=0.1):
                raise_if_cancelled()
        try:
            raise_if_cancelled()  # the holder may have let go because the build is being stopped
            self._holder = what
            yield
        finally:
            self._lock.release()


def _stop_running(sig: int) -> None:
    with _lock:
        for proc in _running:
            if proc.returncode is None:
                with suppress(ProcessLookupError):
                    proc.send_signal(sig)


def run_beside(jobs: Mapping[str, Callable[[], T]], *, side_by_side: bool = True) -> dict[str, T]:
    """Run the jobs on threads of their own; return their results by name, or raise the first error after
    every job has ended (the others cancelled). side_by_side False: one after the other, in their order."""
    if len(jobs) < 2 or not side_by_side:
        return {name: job() for name, job in jobs.items()}
    depth = nesting()

    def start(job: Callable[[], T]) -> T:
        with nested(depth):  # its steps are indented as if run here
            return job()

    with ThreadPoolExecutor(len(jobs), thread_name_prefix="beside") as pool:
        futures: dict[str, Future[T]] = {name: pool.submit(start, job) for name, job in jobs.items()}
        try:
            done, _ = wait(futures.values(), return_when=FIRST_EXCEPTION)
            for future in done:
                future.result()  # a failed job's error, raised here before waiting on the others
            return {name: future.result() for name, future in futures.items()}
        except BaseException:
            _cancel(list(futures.values()))
            raise


def _cancel(futures: list[Future[T]]) -> None:
    """Stop the jobs still running and wait for each to unwind; their own errors (Cancelled, or a program
    that died of the signal) are dropped: the caller raises the one that started this."""
    _cancelled.set()
    try:
        _stop_running(signal.SIGTERM)
        if wait(futures, timeout=GRACE).not_done:
            _stop_running(signal.SIGKILL)
            wait(futures)
    finally:
        _cancelled.clear()
