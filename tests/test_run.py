"""run(): argv only, a copyable line and the stderr tail on failure, the package of a missing tool."""

from __future__ import annotations

import os
import shlex
import subprocess
import time

import pytest

from imagebuilder.core.errors import CommandFailed, CommandTimedOut, ToolMissing
from imagebuilder.core.run import output, run, search_path, terminate


def test_capture_and_argv_with_spaces(tmp_path) -> None:
    odd = tmp_path / "a dir; with $pecial"
    odd.mkdir()
    assert output(["ls", "-d", odd]) == str(odd)


def test_failure_is_a_copyable_line_with_stderr_tail() -> None:
    script = "for i in $(seq 1 40); do echo line$i >&2; done; exit 3"
    with pytest.raises(CommandFailed) as excinfo:
        run(["sh", "-c", script])
    error = excinfo.value
    assert error.returncode == 3
    assert error.message == f"command failed (exit 3): {shlex.join(['sh', '-c', script])}"
    # The copyable part parses back to the argv we ran.
    assert shlex.split(error.message.split(": ", 1)[1]) == ["sh", "-c", script]
    assert error.stderr_tail[-1] == "line40" and len(error.stderr_tail) == 15


def test_a_program_the_table_does_not_know_names_no_package() -> None:
    with pytest.raises(ToolMissing) as excinfo:
        run(["mkfs.nonexistentfs"])
    assert excinfo.value.message == "mkfs.nonexistentfs not found"
    assert excinfo.value.hint == "imagebuilder doctor lists what this machine lacks"


def test_missing_program_names_the_package_of_the_table(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # no sbin beside it: nothing is found
    with pytest.raises(ToolMissing) as excinfo:
        run(["lsinitramfs", "/boot/initrd.img"])
    assert excinfo.value.message == "lsinitramfs not found: install initramfs-tools-core"
    assert excinfo.value.hint == "apt-get install initramfs-tools-core"


def test_search_path_adds_the_sbin_beside_each_bin() -> None:
    assert search_path("/usr/local/bin:/usr/bin:/bin:/opt/tools") == \
        "/usr/local/bin:/usr/bin:/bin:/opt/tools:/usr/local/sbin:/usr/sbin:/sbin"
    assert search_path("/usr/bin:/usr/sbin") == "/usr/bin:/usr/sbin"


def test_check_false_returns_code() -> None:
    assert run(["sh", "-c", "exit 4"], check=False).returncode == 4


def test_input_is_fed() -> None:
    assert output(["cat"], input=b"hello") == "hello"


def test_a_feed_writes_standard_input_and_a_command_that_stops_reading_tells_by_its_status() -> None:
    def feed(pipe: int) -> None:
        for _ in range(64):  # 4 MiB: more than any pipe holds
            os.write(pipe, b"x" * 65536)

    assert len(run(["wc", "-c"], capture=True, feed=feed).stdout.strip()) > 0
    assert output(["wc", "-c"], feed=feed) == str(64 * 65536)
    assert output(["head", "-c", "3"], feed=feed) == "xxx"  # it stopped reading: no BrokenPipeError here
    with pytest.raises(CommandFailed) as failed:
        run(["sh", "-c", "head -c 1 >/dev/null; exit 5"], feed=feed, feed_from="/tmp/an image")
    assert failed.value.message.endswith("exit 5' < '/tmp/an image'")


def test_a_command_past_its_timeout_is_stopped_and_said_so() -> None:
    started = time.monotonic()
    with pytest.raises(CommandTimedOut, match=r"command stopped after 1 s: sh -c"):
        run(["sh", "-c", "echo started >&2; exec sleep 30.25"], timeout=1, check=False)
    assert time.monotonic() - started < 10
    assert not subprocess.run(["pgrep", "-fx", "sleep 30.25"], capture_output=True, check=False).stdout


def test_a_child_is_reaped_even_when_popen_wait_is_wedged() -> None:
    # A Ctrl-C that lands inside Popen.wait(timeout) can leave Popen's internal lock taken; every later
    # Popen.wait() then blocks for ever. terminate() must stop and reap the child all the same.
    proc = subprocess.Popen(["sleep", "30.5"])
    assert proc._waitpid_lock.acquire(False)  # type: ignore[attr-defined]
    started = time.monotonic()
    terminate(proc, grace=1)
    assert time.monotonic() - started < 5
    assert proc.returncode == -15
    assert not subprocess.run(["pgrep", "-fx", "sleep 30.5"], capture_output=True, check=False).stdout


def test_a_child_that_ignores_sigterm_is_killed() -> None:
    proc = subprocess.Popen(["sh", "-c", "trap '' TERM; exec sleep 30.75"])
    time.sleep(0.3)
    terminate(proc, grace=0.5)
    assert proc.returncode == -9
