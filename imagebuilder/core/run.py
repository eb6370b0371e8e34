"""The one way imagebuilder runs external programs.

argv lists only, never a shell; stdin closed; output captured or streamed into the debug log; a
failure raises CommandFailed whose message is a line the user can copy and re-run.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

from imagebuilder.core.beside import stoppable
from imagebuilder.core.errors import CommandFailed, CommandTimedOut, ToolMissing
from imagebuilder.core.log import VERBOSE, log
from imagebuilder.core.programs import distribution, package_of

_TAIL_LINES = 15


def search_path(path: str) -> str:
    """PATH with the sbin beside each of its bin folders: a user's PATH often lacks sbin, where programs
    such as sfdisk live. Only beside what PATH names, so a PATH restricted to a folder stays restricted."""
    folders = [f for f in path.split(os.pathsep) if f]
    beside = [str(Path(f).with_name("sbin")) for f in folders if Path(f).name == "bin"]
    return os.pathsep.join(dict.fromkeys([*folders, *beside]))


def find_program(name: str) -> str:
    """Return the path of `name`, or raise ToolMissing naming the package that provides it."""
    found = shutil.which(name, path=search_path(os.environ.get("PATH", "")))
    if found is None:
        package = package_of(name, distribution())
        if package is None:
            raise ToolMissing(f"{name} not found", "imagebuilder doctor lists what this machine lacks")
        raise ToolMissing(f"{name} not found: install {package}", f"apt-get install {package}")
    return found


def _pump(stream: IO[bytes], sink: Callable[[str], None]) -> None:
    for raw in iter(stream.readline, b""):
        sink(raw.decode(errors="replace").rstrip("\n"))
    stream.close()


def _environment(env: Mapping[str, str] | None, inherit_env: bool) -> dict[str, str]:
    """A command's whole environment: ours (in the C locale unless ours says otherwise) with `env` added, or
    `env` alone."""
    if not inherit_env:
        return dict(env or {})
    full = dict(os.environ)
    full.setdefault("LC_ALL", "C.UTF-8")
    full.update(env or {})
    return full


# Its options are subprocess.run's and Popen's, by keyword only: one wrapper for every command.
def run(  # noqa: PLR0913
    argv: Sequence[str | os.PathLike[str]],
    *,
    capture: bool = False,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    check: bool = True,
    stdout: IO[bytes] | None = None,
    on_line: Callable[[str], None] | None = None,
    inherit_env: bool = True,
    timeout: float | None = None,
    feed: Callable[[int], None] | None = None,
    feed_from: str | os.PathLike[str] | None = None,
    cancellable: bool = False,
) -> subprocess.CompletedProcess[bytes]:
    """Run argv and wait for it.

    capture: return stdout as bytes (otherwise stdout goes to the debug log, or to `stdout`).
    env: extra variables, added to ours; with inherit_env=False, the whole environment (programs in a
    chroot get only what the build gives them, never the caller's).
    on_line: called with every stderr and (uncaptured) stdout line, for progress.
    timeout: seconds after which it is stopped and CommandTimedOut raised (whatever `check` says).
    feed: writes the command's standard input (given the pipe's descriptor), for input too large for
    `input`; a command that stops reading ends it (the command's exit status then tells). feed_from: the
    file it gives, shown as `< file` in the command line, so that the line still runs as it is.
    cancellable: long work a job run beside others may be stopped in (core/beside.py); never an undo.
    """
    args = [os.fspath(a) for a in argv]
    args[0] = find_program(args[0]) if "/" not in args[0] else args[0]
    shown = shlex.join([os.path.basename(args[0]), *args[1:]])
    if feed_from is not None:
        shown += f" < {shlex.quote(os.fspath(feed_from))}"
    log.log(VERBOSE, "+ %s", shown)
    full_env = _environment(env, inherit_env)

    tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)

    def sink(line: str) -> None:
        tail.append(line)
        log.debug("  %s", line)
        if on_line is not None:
            on_line(line)

    proc = subprocess.Popen(
        args,
        stdin=subprocess.PIPE if input is not None or feed is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE if capture or stdout is None else stdout,
        stderr=subprocess.PIPE,
        env=full_env,
        cwd=cwd,
    )
    threads = []
    assert proc.stderr is not None
    threads.append(threading.Thread(target=_pump, args=(proc.stderr, sink), daemon=True))
    out_chunks: list[bytes] = []
    if capture:
        assert proc.stdout is not None
        out = proc.stdout
        threads.append(threading.Thread(target=lambda: out_chunks.append(out.read()), daemon=True))
    elif stdout is None:
        assert proc.stdout is not None
        threads.append(threading.Thread(target=_pump, args=(proc.stdout, sink), daemon=True))
    for t in threads:
        t.start()
    try:
        with stoppable(proc) if cancellable else contextlib.nullcontext():
            returncode = _communicate(proc, input, feed, timeout)
    except subprocess.TimeoutExpired:
        terminate(proc)
        for t in threads:
            t.join(timeout=5)
        raise CommandTimedOut(f"command stopped after {timeout:.0f} s: {shown}",
                              "\n    ".join(["last lines of its output:", *tail]) if tail else None,
                              -1, list(tail)) from None
    except BaseException:
        # Ctrl-C or SIGTERM while waiting: the child must not outlive us.
        terminate(proc)
        raise
    finally:
        for t in threads:
            t.join(timeout=5)
    result = subprocess.CompletedProcess(args, returncode, b"".join(out_chunks), None)
    if check and returncode != 0:
        raise CommandFailed(
            f"command failed (exit {returncode}): {shown}",
            "\n    ".join(["last lines of its output:", *tail]) if tail else None,
            returncode,
            list(tail),
        )
    return result


def _communicate(proc: subprocess.Popen[bytes], input: bytes | None, feed: Callable[[int], None] | None,
                 timeout: float | None) -> int:
    if input is not None:
        assert proc.stdin is not None
        proc.stdin.write(input)
        proc.stdin.close()
    if feed is not None:
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError), proc.stdin:
            feed(proc.stdin.fileno())
    return proc.wait(timeout=timeout)


def output(argv: Sequence[str | os.PathLike[str]], **kwargs: object) -> str:
    """Run argv and return its stdout as text, stripped."""
    return run(argv, capture=True, **kwargs).stdout.decode().strip()  # type: ignore[arg-type]


def terminate(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """Stop proc: SIGTERM, then SIGKILL after `grace` seconds; reaped either way."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    if not _reap(proc, grace):
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        _reap(proc, None)


def _reap(proc: subprocess.Popen[bytes], timeout: float | None) -> bool:
    """Wait for proc with waitpid, not Popen.wait: a Ctrl-C that lands inside Popen.wait(timeout) can leave
    its internal lock taken (a CPython race), and every later Popen.wait() then blocks for ever. Seen here:
    a boot test interrupted while ssh ran hung with ssh a zombie."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            pid, status = os.waitpid(proc.pid, os.WNOHANG)
        except ChildProcessError:  # reaped already (by Popen, or a reaper)
            pid, status = proc.pid, 0
        if pid:
            if proc.returncode is None:
                proc.returncode = os.waitstatus_to_exitcode(status)
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def is_root() -> bool:
    return os.geteuid() == 0


def which(name: str) -> Path | None:
    try:
        return Path(find_program(name))
    except ToolMissing:
        return None
