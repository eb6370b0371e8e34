"""Jobs beside each other: results by name; one failing, or a signal to the main thread, stops the others'
long programs and copies, lets their undos run to the end, and raises the first error once all have ended."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagebuilder.core import beside
from imagebuilder.core.beside import run_beside
from imagebuilder.core.errors import Interrupted
from imagebuilder.core.log import step
from imagebuilder.core.run import run
from imagebuilder.disk.copy import digest_image


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def long_job(pidfile: Path, undone: list[str], name: str) -> None:
    """A program that would run a minute, whose undo is a program too (never cancellable)."""
    try:
        run(["sh", "-c", f"echo $$ > {pidfile}; exec sleep 60"], cancellable=True)
    finally:
        run(["sleep", "0.3"])  # an undo: it must run to its end even while the job is cancelled
        undone.append(name)


def wait_for(path: Path) -> int:
    deadline = time.monotonic() + 10
    while not (path.exists() and path.read_text().strip()):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return int(path.read_text())


def test_results_by_name_and_nesting(caplog: pytest.LogCaptureFixture) -> None:
    def job(n: int) -> int:
        with step(f"job {n}"):
            return n * 2

    caplog.set_level(logging.INFO, logger="imagebuilder")
    with step("outer"):
        assert run_beside({"a": lambda: job(1), "b": lambda: job(2)}) == {"a": 2, "b": 4}
    assert "  ‣ job 1" in caplog.text and "  ✓ job 2" in caplog.text  # nested under "outer", as if run there
    assert run_beside({"only": lambda: 7}) == {"only": 7}


def test_a_failing_job_stops_the_other_and_its_undo_runs(tmp_path: Path) -> None:
    undone: list[str] = []
    pidfile = tmp_path / "pid"

    def failing() -> None:
        wait_for(pidfile)
        raise RuntimeError("the master's stage failed")

    start = time.monotonic()
    with pytest.raises(RuntimeError, match="the master's stage failed"):
        # The failing job second: its error must not wait for the first job to end on its own.
        run_beside({"worker": lambda: long_job(pidfile, undone, "worker"), "master": failing})
    assert time.monotonic() - start < 10  # not the minute the program would have run
    assert undone == ["worker"]
    assert not alive(int(pidfile.read_text()))
    beside.raise_if_cancelled()  # the next build is not cancelled


def test_a_signal_to_the_main_thread_stops_both_jobs(tmp_path: Path) -> None:
    undone: list[str] = []
    pids = [tmp_path / "a", tmp_path / "b"]

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted(signum)

    def send_signal() -> None:
        for p in pids:
            wait_for(p)
        os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        threading.Thread(target=send_signal, daemon=True).start()
        with pytest.raises(Interrupted):
            run_beside({"a": lambda: long_job(pids[0], undone, "a"), "b": lambda: long_job(pids[1], undone, "b")})
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert sorted(undone) == ["a", "b"]
    assert not any(alive(int(p.read_text())) for p in pids)


@pytest.fixture
def sparse_image(tmp_path: Path) -> Iterator[Path]:
    image = tmp_path / "big.img"
    with image.open("wb") as f:
        for n in range(64):  # data every 16 MiB: a digest of many chunks
            f.seek(n * 2**24)
            f.write(os.urandom(2**20))
    yield image


def test_a_copy_loop_stops_when_cancelled(sparse_image: Path) -> None:
    started = threading.Event()

    def failing() -> None:
        started.wait()
        raise RuntimeError("boom")

    def digesting() -> None:
        started.set()
        while True:  # until cancelled: each digest reads 64 chunks, each a point where it may stop
            digest_image(sparse_image)

    with pytest.raises(RuntimeError, match="boom"):
        run_beside({"fail": failing, "digest": digesting})


def test_a_job_waiting_for_its_turn_ends_when_the_build_is_interrupted(tmp_path: Path) -> None:
    """One job holds the cores (a long program), the other waits for them: a signal to the main thread ends
    the program and the wait, and the waiting job never starts its work."""
    turns = beside.Turns()
    pidfile = tmp_path / "pid"
    undone: list[str] = []
    started: list[str] = []

    def holder() -> None:
        with turns.turn("compress master.img"):
            long_job(pidfile, undone, "holder")

    def waiter() -> None:
        wait_for(pidfile)  # the holder has the cores
        with turns.turn("compress worker.img"):
            started.append("waiter")

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted(signum)

    def send_signal() -> None:
        wait_for(pidfile)
        time.sleep(0.3)  # the waiter is in its wait
        os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        threading.Thread(target=send_signal, daemon=True).start()
        start = time.monotonic()
        with pytest.raises(Interrupted):
            run_beside({"master": holder, "worker": waiter})
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert time.monotonic() - start < 10
    assert undone == ["holder"] and started == []
    assert not alive(int(pidfile.read_text()))
    with turns.turn("the next build"):  # let go of
        pass
