"""Ask before destroying something: on a terminal a question, without one a refusal unless --yes."""

from __future__ import annotations

import sys

from imagebuilder.core.errors import ImageBuilderError


def confirm(question: str, *, yes: bool, undone: str, error: type[ImageBuilderError] = ImageBuilderError) -> None:
    """Return when the user agreed (or gave --yes); raise `error` otherwise.

    undone: what the refusal leaves as it was ("nothing was written").
    """
    if yes:
        return
    if not sys.stdin.isatty():
        # A script or a pipe cannot answer: it says --yes, or nothing happens.
        raise error(f"not confirmed: stdin is not a terminal; {undone}", "add --yes to go ahead without asking")
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        answer = ""
    if answer.strip().lower() not in ("y", "yes"):
        raise error(f"not confirmed: {undone}")
