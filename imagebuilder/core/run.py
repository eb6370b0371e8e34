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

# Which Debian package provides a program, for the "not found: install X" line.
PACKAGE_OF = {
    "losetup": "util-linux", "partx": "util-linux", "mount": "mount", "umount": "mount",
    "findmnt": "util-linux", "sfdisk": "fdisk", "mkfs.ext4": "e2fsprogs", "e2fsck": "e2fsprogs",
    "resize2fs": "e2fsprogs", "debugfs": "e2fsprogs", "tune2fs": "e2fsprogs", "fsck.ext4": "e2fsprogs",
    "mkfs.vfat": "dosfstools", "fsck.vfat": "dosfstools", "mcopy": "mtools", "mdir": "mtools",
    "mtype": "mtools", "mdel": "mtools", "mmd": "mtools", "mlabel": "mtools",
    "mmdebstrap": "mmdebstrap", "qemu-aarch64-static": "qemu-user-static",
    "qemu-arm-static": "qemu-user-static", "update-binfmts": "binfmt-support",
    "xz": "xz-utils", "zstd": "zstd", "bmaptool": "bmap-tools", "chroot": "coreutils",
    "qemu-system-aarch64": "qemu-system-arm", "qemu-system-arm": "qemu-system-arm",
    "qemu-img": "qemu-utils", "dnsmasq": "dnsmasq-base", "nft": "nftables",
    "cloud-init": "cloud-init", "systemd-analyze": "systemd", "exportfs": "nfs-kernel-server",
    "unzip": "unzip", "openssl": "openssl", "unshare": "util-linux", "fstrim": "util-linux", "apt-config": "apt",
}

# Programs live in sbin too, which a user's PATH may lack.
_EXTRA_PATH = ("/usr/local/sbin", "/usr/sbin", "/sbin")
_TAIL_LINES = 15


def find_program(name: str) -> str:
    """Return the path of `name`, or raise ToolMissing naming the package that provides it."""
    path = os.environ.get("PATH", "")
    found = shutil.which(name, path=os.pathsep.join([path, *_EXTRA_PATH]))
    if found is None:
        package = PACKAGE_OF.get(name, name)
        raise ToolMissing(f"{name} not found: install {package}", f"apt-get install {package}")
    return found


def _pump(stream: IO[bytes], sink: Callable[[str], None]) -> None:
    for raw in iter(stream.readline, b""):
        sink(raw.decode(errors="replace").rstrip("\n"))
    stream.close()


def run(
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
    if inherit_env:
        full_env = dict(os.environ)
        full_env.setdefault("LC_ALL", "C.UTF-8")
        full_env.update(env or {})
    else:
        full_env = dict(env or {})

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
