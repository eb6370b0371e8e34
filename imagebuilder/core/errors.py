"""Expected errors: a user's mistake or the machine's state, never a bug.

The command line prints them as one line (plus a hint) and exits 2; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations


class ImageBuilderError(Exception):
    """An error the user can fix; `hint` says how."""

    exit_status = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def lines(self) -> list[str]:
        out = [f"imagebuilder: {self.message}"]
        if self.hint:
            out.append(f"  hint: {self.hint}")
        return out


class ChecksFailed(ImageBuilderError):
    """What was checked (a booted cluster, an image) is not right: exit status 3, apart from the user's
    mistakes (2), so scripts can tell a broken image from a bad command line."""

    exit_status = 3


class RecipeError(ImageBuilderError):
    """A recipe that does not validate; carries one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(problems[0] if problems else "invalid recipe")
        self.problems = problems

    def lines(self) -> list[str]:
        return list(self.problems)


class ToolMissing(ImageBuilderError):
    """An external program is not installed."""


class CommandFailed(ImageBuilderError):
    """An external program exited non-zero."""

    def __init__(self, message: str, hint: str | None, returncode: int, stderr_tail: list[str]) -> None:
        super().__init__(message, hint)
        self.returncode = returncode
        self.stderr_tail = stderr_tail


class CommandTimedOut(CommandFailed):
    """An external program ran past the time it was given, and was stopped."""


class NeedsRoot(ImageBuilderError):
    """The command needs root and we are not."""


class AccessDenied(ImageBuilderError):
    """A file or folder this user may not read or write (often one a run as root made)."""


class DiskFull(ImageBuilderError):
    """A folder ran out of space (the cache or the output folder)."""


class ChecksumMismatch(ImageBuilderError):
    """A download or file whose digest is not the published one."""


class DownloadError(ImageBuilderError):
    """A download that failed after retries (HTTP error, connection, truncation)."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM: unwinds every ExitStack like KeyboardInterrupt does."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class Cancelled(BaseException):
    """A job run beside another (core/beside.py) is stopped because the other failed or a signal came: it
    unwinds what it holds like Interrupted does, and the error that stopped it is the one reported."""
