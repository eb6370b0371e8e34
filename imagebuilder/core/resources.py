"""Everything imagebuilder acquires, as context managers that undo exactly what they did.

Each manager registers its undo the moment the acquisition succeeds (the `try` starts right after
it), so a failure or a signal at any later point unwinds it. Callers put them on the one ExitStack of
the command; see `Context.stack`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from imagebuilder.core import loopdev
from imagebuilder.core.errors import DiskFull
from imagebuilder.core.log import VERBOSE, log
from imagebuilder.core.mountinfo import mounts_at
from imagebuilder.core.run import find_program, run, terminate

# Called with a description after each acquisition has registered its undo. The failure-injection
# tests put a hook here that raises at the N-th acquisition, to prove that every later point unwinds.
ACQUIRE_HOOKS: list[Callable[[str], None]] = []


def acquired(what: str) -> None:
    for hook in ACQUIRE_HOOKS:
        hook(what)


# Partial outputs and temporary directories are locked (flock) by the process that writes them while it
# lives; a lock that can be taken means its writer is gone, and the next run sweeps the leftover.
PARTIAL = ".partial-"
# Temporary directories made in the system's temporary folder (no parent given) are named so, and only
# those of them, owned by the user who sweeps, are swept there: that folder is everyone's, and other
# programs (the test suite among them) name theirs "imagebuilder-..." too.
TEMPORARY_PREFIX = "imagebuilder-tmp-"
# mkdtemp makes the directory a moment before it is locked: a directory of ours younger than this is left.
TEMPORARY_AGE = 10.0


@contextlib.contextmanager
def temporary_directory(prefix: str = "", parent: Path | None = None) -> Iterator[Path]:
    name = prefix if parent is not None else TEMPORARY_PREFIX + prefix
    path = Path(tempfile.mkdtemp(prefix=name or "tmp-", dir=parent))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            acquired(f"temporary directory {path}")
            yield path
        finally:
            os.close(fd)
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
def atomic_output(final: Path, mode: int = 0o666, *, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary file beside `final`; when the block succeeds, flush it to the disk and rename it
    into place (and flush the directory), so that after a power cut `final` is either whole or absent.

    mode: of the new file (less the umask); 0o600 for what holds secrets.
    durable False: renamed without the flush, for a cache entry whose digest is checked whenever it is
    read (a stage): a power cut may damage it, and the next build that reads it finds that out.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}{PARTIAL}{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield tmp
        if durable:
            sync_path(tmp)
        os.replace(tmp, final)
        if os.path.lexists(tmp):  # rename(2) does nothing when both names are links to one file (share_image)
            os.unlink(tmp)
        if durable:
            sync_path(final.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            remove_tree(tmp)
        raise
    finally:
        os.close(fd)


def free_space(directory: Path) -> int:
    """Bytes an unprivileged user may still write on the file system holding `directory`."""
    while not directory.exists():
        directory = directory.parent
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def ensure_space(directory: Path, needed: int, what: str) -> None:
    """Stop before a step that needs `needed` bytes in `directory` and would not find them."""
    free = free_space(directory)
    if free < needed:
        raise DiskFull(f"{directory}: not enough space for {what}: it needs about {needed // 2**20} MiB there, "
                       f"{free // 2**20} MiB are free",
                       "free some space there (imagebuilder cache prune for the cache), or choose another "
                       "folder (--cache-dir, or output.dir in the recipe)")


def disk_full(directory: Path, what: str) -> DiskFull:
    """The error for a write that failed with ENOSPC in `directory`."""
    return DiskFull(f"{directory}: no space left on its file system while writing {what} "
                    f"({free_space(directory) // 2**20} MiB free now); nothing partial was kept",
                    "free some space there (imagebuilder cache prune for the cache), or choose another "
                    "folder (--cache-dir, or output.dir in the recipe)")


def allocated(path: Path) -> int:
    """Bytes a file takes on disk (its holes take none)."""
    return path.stat().st_blocks * 512


def sync_path(path: Path) -> None:
    """fsync a file or a directory (a directory's entry of a renamed file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sweep_partials(directories: Sequence[Path], grace: float = 0.0, temporary: Path | None = None) -> list[Path]:
    """Remove the partial outputs and temporary directories in `directories` whose writer is gone (a build
    that was killed or lost its power), and our temporary directories in `temporary` (the system's
    temporary folder: a command killed while it verified an image left its work there). Returns what was
    removed.

    grace: seconds to wait for the locks still held to come free. A killed build holds them until the
    kernel has unmounted the file systems of its namespace, which writes their dirty blocks out first
    (0.3 to 0.8 s measured after a SIGKILL); a build that is alive holds them for as long as it runs.
    """
    held = [path for d in directories if d.is_dir() for path in d.iterdir()
            if PARTIAL in path.name or (path.is_dir() and d.name == "tmp")]
    if temporary is not None and temporary.is_dir():
        made_before = time.time() - TEMPORARY_AGE
        held += [path for path in temporary.iterdir()
                 if path.name.startswith(TEMPORARY_PREFIX) and path.is_dir() and not path.is_symlink()
                 and path.lstat().st_uid == os.getuid() and path.lstat().st_mtime < made_before]
    removed: list[Path] = []
    deadline = time.monotonic() + grace
    while True:
        for path in list(held):
            if _writer_gone(path):
                held.remove(path)
                remove_tree(path)
                removed.append(path)
            elif not path.exists():
                held.remove(path)
        if not held or time.monotonic() >= deadline:
            return removed
        time.sleep(0.05)


def _writer_gone(path: Path) -> bool:
    """Whether nobody holds the lock of a partial output or temporary directory (taken and let go here)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


@contextlib.contextmanager
def loop_device(
    image: Path, *, offset: int | None = None, size: int | None = None, read_only: bool = False,
) -> Iterator[Path]:
    """Attach `image` (or the byte range offset..offset+size of it) to a free loop device.

    The device clears itself at its last close (loopdev.py): when the block ends, when this process dies,
    or when a mount made on it during the block is unmounted.
    """
    device, fd = loopdev.attach(image, offset or 0, size or 0, read_only)
    try:
        acquired(f"loop device {device}")
        yield device
    finally:
        os.close(fd)


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
    mount_now([*argv, source, target], target)
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
    mount_now(["mount", "--bind", source, target], target)
    try:
        acquired(f"bind mount {target}")
        # Private, so mounts made below the target are not propagated back to the host.
        run(["mount", "--make-rprivate", target])
        if read_only:
            run(["mount", "-o", "remount,bind,ro", target])
        yield target
    finally:
        unmount(target, recursive=True)


def mount_now(argv: list[str | os.PathLike[str]], target: Path) -> None:
    """Run a mount command. A signal that lands while it runs may come after the kernel made the mount and
    before its undo is registered (test_signal_during_build_unwinds caught a /proc bind left that way, so
    the tree above it could not be unmounted): then the mount is undone here."""
    before = mounts_at(target)
    try:
        run(argv)
    except BaseException:
        if mounts_at(target) > before:
            unmount(target, recursive=True)
        raise


def unmount(target: Path, *, recursive: bool = False) -> None:
    """Unmount; when busy, end the processes still running inside it and try once more.

    A lazy unmount never counts as success: it would hide a file system that is still being written.
    """
    argv: list[str | os.PathLike[str]] = ["umount"]
    if recursive:
        argv.append("--recursive")
    if run([*argv, target], check=False).returncode == 0:
        return
    killed = kill_processes_in(target)
    if killed:
        log.warning("killed %d process(es) left running in %s: %s", len(killed), target, ", ".join(killed))
    run([*argv, target])


def kill_processes_in(root: Path) -> list[str]:
    """SIGKILL every process whose root or working directory is at or below `root` (a chroot's leftovers:
    a daemon a package script started); wait until they are gone. Returns "pid name" of each."""
    prefix = os.path.realpath(root)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            places = [os.readlink(entry / "root"), os.readlink(entry / "cwd")]
            name = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if any(p == prefix or p.startswith(prefix + "/") for p in places):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)
                found.append(f"{entry.name} {name}")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_running(int(f.split()[0])) for f in found):
        time.sleep(0.1)
    return found


def _running(pid: int) -> bool:
    """Alive and not a zombie (a killed process waiting for its parent to reap it holds nothing)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


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


@contextlib.contextmanager
def file_lock(path: Path, what: str, holder: str = "another imagebuilder that is making") -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if needed): one builder of a cache entry at a time."""

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for %s %s", holder, what)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
