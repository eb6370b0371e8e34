"""Run a command in mount and PID namespaces of its own, so that no kill can leave anything behind.

An orderly end (done, an error, Ctrl-C, SIGTERM, SIGHUP) unwinds the command's ExitStack as usual. A
SIGKILL or a power cut unwinds nothing; what it would leave is then taken care of by the kernel:

- every mount (images, chroot binds of /dev, /proc, /sys, a private /run) is in the command's own mount
  namespace, which disappears with its last process;
- every process (apt in the chroot, qemu-user, qemu guests) is in the command's own PID namespace, whose
  processes are all killed when its first process (the reaper here) dies; the reaper itself dies with
  the process that started it (PR_SET_PDEATHSIG);
- loop devices are attached by `mount -o loop`, which sets them to clear themselves when unmounted.

The process tree: the imagebuilder the user started waits and passes signals on; its child makes the
namespaces and does the same; the grandchild is PID 1 of the new namespace and only reaps orphans; the
great-grandchild runs the command.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import sys
from collections.abc import Callable

from imagebuilder.core.errors import ImageBuilderError

CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
PR_SET_PDEATHSIG = 1
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
MARK = "IMAGEBUILDER_ISOLATED"


def isolated() -> bool:
    return os.environ.get(MARK) == "1"


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise ImageBuilderError(f"cannot {what}: {os.strerror(code)}",
                                "imagebuilder needs to make mount and PID namespaces as root "
                                "(in a container: run it privileged)")


def run_isolated(body: Callable[[], int]) -> int:
    """Run body() in new mount and PID namespaces and return its exit status (128+N when killed by N).

    The calling process stays where it is: a child makes the namespaces.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    alive_read, alive_write = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(alive_write)
        os._exit(_enter(alive_read, body))
    os.close(alive_read)
    status = _wait_passing_signals(child)
    os.close(alive_write)
    return status


def _wait_passing_signals(pid: int) -> int:
    previous = {signum: signal.signal(signum, lambda s, _frame: _pass_on(pid, s)) for signum in FORWARDED}
    try:
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                break
            except ChildProcessError:
                return 1
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def _enter(alive: int, body: Callable[[], int]) -> int:
    """In the child: make the namespaces, then wait for the namespace's first process."""
    libc = _libc()
    if not _dies_with_parent(libc, alive):
        return 128 + signal.SIGKILL
    # A process group of our own: a Ctrl-C on the terminal reaches only the parent, which passes it on,
    # so the command sees it once.
    os.setpgid(0, 0)
    try:
        _check(libc.unshare(CLONE_NEWNS | CLONE_NEWPID), "make a mount and PID namespace")
        # Nothing mounted in here is propagated back to the host's namespace.
        _check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "make the mounts private")
    except ImageBuilderError as e:
        print("\n".join(e.lines()), file=sys.stderr)
        return e.exit_status
    reaper = os.fork()  # the first process forked after unshare is PID 1 of the new namespace
    if reaper == 0:
        os._exit(_reap(libc, alive, body))
    return _wait_passing_signals(reaper)


def _dies_with_parent(libc: ctypes.CDLL, alive: int) -> bool:
    """Ask for SIGKILL when the parent dies; False if it died already (its end of the pipe is closed)."""
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    return not select.select([alive], [], [], 0)[0]


def _pass_on(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _reap(libc: ctypes.CDLL, alive: int, body: Callable[[], int]) -> int:
    """PID 1 of the namespace: die with the parent, run body() in a child, reap every orphan."""
    if not _dies_with_parent(libc, alive):
        return 128 + signal.SIGKILL
    # A /proc of this namespace, so that process ids seen in it are ours.
    libc.mount(b"proc", b"/proc", b"proc", 0, None)
    os.environ[MARK] = "1"
    worker = os.fork()
    if worker == 0:
        os.close(alive)
        for signum in FORWARDED:
            signal.signal(signum, signal.SIG_DFL)
        try:
            code = body()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
    for signum in FORWARDED:
        signal.signal(signum, lambda s, _frame: _pass_on(worker, s))
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            return 1
        if pid == worker:
            return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
