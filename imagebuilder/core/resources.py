"""Everything imagebuilder acquires, as context managers that undo exactly what they did.

Each manager registers its undo the moment the acquisition succeeds (the `try` starts right after
it), so a failure or a signal at any later point unwinds it. Callers put them on the one ExitStack of
the command; see `Context.stack`.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from imagebuilder.core.log import VERBOSE, log
from imagebuilder.core.run import find_program, output, run, terminate

# Called with a description after each acquisition has registered its undo. The failure-injection
# tests put a hook here that raises at the N-th acquisition, to prove that every later point unwinds.
ACQUIRE_HOOKS: list[Callable[[str], None]] = []


def acquired(what: str) -> None:
    for hook in ACQUIRE_HOOKS:
        hook(what)


@contextlib.contextmanager
def temporary_directory(prefix: str = "imagebuilder-", parent: Path | None = None) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        acquired(f"temporary directory {path}")
        yield path
    finally:
        remove_tree(path)


def remove_tree(path: Path) -> None:
    """Delete a tree without crossing into anything still mounted below it."""
    if not path.exists():
        return
    if path.is_dir() and not path.is_symlink():
        # --one-file-system: a forgotten bind mount of /dev must never be walked into.
        run(["rm", "-rf", "--one-file-system", "--", path])
    else:
        path.unlink()


@contextlib.contextmanager
def atomic_output(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it into place only if the block succeeds."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.partial-{os.getpid()}")
    try:
        yield tmp
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            remove_tree(tmp)
        raise
    os.replace(tmp, final)


@contextlib.contextmanager
def loop_device(
    image: Path, *, offset: int | None = None, size: int | None = None, read_only: bool = False,
) -> Iterator[Path]:
    """Attach `image` (or the byte range offset..offset+size of it) to a free loop device."""
    argv: list[str | os.PathLike[str]] = ["losetup", "--find", "--show"]
    if offset is not None:
        argv += ["--offset", str(offset)]
    if size is not None:
        argv += ["--sizelimit", str(size)]
    if read_only:
        argv.append("--read-only")
    device = Path(output([*argv, image]))
    try:
        acquired(f"loop device {device}")
        yield device
    finally:
        run(["losetup", "--detach", device])


@contextlib.contextmanager
def mounted(
    source: Path | str, target: Path, *, fstype: str | None = None, options: Sequence[str] = (),
) -> Iterator[Path]:
    argv: list[str | os.PathLike[str]] = ["mount"]
    if fstype:
        argv += ["-t", fstype]
    if options:
        argv += ["-o", ",".join(options)]
    target.mkdir(parents=True, exist_ok=True)
    run([*argv, source, target])
    try:
        acquired(f"mount {target}")
        yield target
    finally:
        unmount(target)


@contextlib.contextmanager
def bind_mount(source: Path, target: Path, *, read_only: bool = False) -> Iterator[Path]:
    if source.is_dir():
        target.mkdir(parents=True, exist_ok=True)
    elif not target.exists():
        target.touch()
    run(["mount", "--bind", source, target])
    try:
        acquired(f"bind mount {target}")
        # Private, so mounts made below the target are not propagated back to the host.
        run(["mount", "--make-rprivate", target])
        if read_only:
            run(["mount", "-o", "remount,bind,ro", target])
        yield target
    finally:
        unmount(target, recursive=True)


def unmount(target: Path, *, recursive: bool = False) -> None:
    argv: list[str | os.PathLike[str]] = ["umount"]
    if recursive:
        argv.append("--recursive")
    try:
        run([*argv, target])
    except Exception:
        # Busy (a process still has a file open): detach lazily so nothing stays visible.
        log.warning("umount %s failed; detaching it lazily", target)
        run([*argv, "--lazy", target])


@contextlib.contextmanager
def spawned(argv: Sequence[str | os.PathLike[str]], *, stdout: int | None = None,
            **kwargs: object) -> Iterator[subprocess.Popen[bytes]]:
    """Start a long-running program (a qemu guest, a server) that must end with the block."""
    args = [os.fspath(a) for a in argv]
    args[0] = find_program(args[0]) if "/" not in args[0] else args[0]
    log.log(VERBOSE, "+ %s &", " ".join(args))
    proc: subprocess.Popen[bytes] = subprocess.Popen(  # type: ignore[call-overload]
        args, stdin=subprocess.DEVNULL, stdout=stdout, **kwargs
    )
    try:
        acquired(f"process {proc.pid}")
        yield proc
    finally:
        terminate(proc)


@contextlib.contextmanager
def network_namespace(name: str) -> Iterator[str]:
    """A network namespace of our own; what is made inside it (bridge, taps, forwards) goes with it."""
    run(["ip", "netns", "add", name])
    try:
        acquired(f"network namespace {name}")
        yield name
    finally:
        run(["ip", "netns", "delete", name], check=False)


def copy_sparse(source: Path, target: Path) -> None:
    """Copy keeping holes, with a reflink where the filesystem offers one."""
    run(["cp", "--reflink=auto", "--sparse=always", source, target])


@contextlib.contextmanager
def file_lock(path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if needed): one builder of a cache entry at a time."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another imagebuilder that is making %s", what)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
